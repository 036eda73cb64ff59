//! The whole stage graph on a small synthetic log: reruns, staleness, reports,
//! audit, inspect, determinism and training resume.

use crate::common::{run_dir, small_config, snapshot, stderr, synthetic_log, Project};

fn project(extra: &str) -> Project {
    let p = Project::new();
    p.write("data.tsv", &synthetic_log(300, 120, 11));
    p.config(&small_config(extra));
    p
}

#[test]
fn run_skips_what_is_up_to_date_and_reruns_what_changed() {
    let p = project("");
    let out = p.ok(&["run"]);
    assert!(out.contains("evaluate   ran"), "{out}");
    assert!(
        out.contains("test (full ranking, history excluded): HR@10"),
        "{out}"
    );
    let status = p.json(&["status", "--json"]);
    for s in status.as_array().expect("array") {
        assert_eq!(s["status"]["state"], "up-to-date", "{s}");
    }
    let out = p.ok(&["run"]);
    assert_eq!(out.matches("up to date").count(), 6, "{out}");

    // Reports carry the figures.
    let ingest = p.json(&["report", "ingest", "--json"]);
    let r = &ingest["report"];
    assert_eq!(
        r["rows_out"],
        r["train_rows"].as_u64().expect("n")
            + r["dev_rows"].as_u64().expect("n")
            + r["test_rows"].as_u64().expect("n")
    );
    assert_eq!(
        r["training_instances"],
        r["train_rows"].as_u64().expect("n") - r["users"].as_u64().expect("n")
    );
    let eval = p.json(&["report", "evaluate", "--json"])["report"].clone();
    for k in [
        "HR@5", "NDCG@5", "HR@10", "NDCG@10", "HR@20", "NDCG@20", "HR@50", "NDCG@50",
    ] {
        let v = eval["test_full"][k].as_f64().unwrap_or(-1.0);
        assert!((0.0..=1.0).contains(&v), "{k} = {v}");
    }
    assert!(eval["test_full"]["HR@50"].as_f64() >= eval["test_full"]["HR@10"].as_f64());
    assert!(
        eval["test_sampled"]["HR@10"].as_f64().expect("sampled")
            >= eval["test_full"]["HR@10"].as_f64().expect("full"),
        "20 sampled candidates rank easier than all items"
    );
    assert_eq!(eval["test_users"], r["users"]);
    let train = p.json(&["report", "train", "--json"])["report"].clone();
    assert_eq!(train["epochs"].as_array().expect("epochs").len(), 3);
    assert_eq!(
        train["epochs"][0]["hard_negatives"], false,
        "epoch 0 is warm-up"
    );
    assert_eq!(train["epochs"][1]["hard_negatives"], true);

    // A graph setting changes: graph is stale (naming the setting), downstream stale too.
    let cfg = std::fs::read_to_string(p.path().join("pipeline.toml")).expect("read");
    p.config(&cfg.replace("[negatives]", "[graph]\nhops = 2\n[negatives]"));
    let st = p.ok(&["status"]);
    assert!(
        st.contains("graph      stale: setting graph.hops changed: 3 -> 2"),
        "{st}"
    );
    assert!(
        st.contains("negatives  stale: upstream stage graph is stale"),
        "{st}"
    );
    assert!(st.contains("ingest     up to date"), "{st}");
    let out = p.ok(&["run", "--to", "negatives"]);
    assert!(
        out.contains("ingest     up to date")
            && out.contains("graph      ran")
            && out.contains("negatives  ran"),
        "{out}"
    );
    // --from reruns a stage and everything after it even when up to date.
    let out = p.ok(&["run", "--from", "negatives", "--to", "negatives"]);
    assert!(
        out.contains("graph      up to date") && out.contains("negatives  ran"),
        "{out}"
    );
    // A raw input change makes ingest stale.
    std::fs::write(p.path().join("data.tsv"), synthetic_log(300, 120, 12)).expect("write");
    let st = p.ok(&["status"]);
    assert!(st.contains("ingest     stale: input file:"), "{st}");
}

#[test]
fn audit_reports_each_epoch_and_names_a_damaged_shard() {
    let p = project("");
    p.ok(&["run", "--to", "negatives"]);
    let a = p.json(&["audit", "negatives", "--json"]);
    let epochs = a["epochs"].as_array().expect("epochs");
    assert_eq!(epochs.len(), 3);
    assert!(epochs[0]["hardness"].is_null(), "warm-up epoch");
    assert_eq!(epochs[1]["hardness"].as_f64(), Some(0.0));
    let e1 = &epochs[1];
    // At h = 0 only zero-overlap items are drawn, never the user's history.
    assert_eq!(e1["overlap_quantiles"][6].as_f64(), Some(0.0), "{e1}");
    assert_eq!(e1["share_in_train_history"].as_f64(), Some(0.0));
    let e2 = &epochs[2];
    assert!((e2["hardness"].as_f64().expect("h") - 0.1).abs() < 1e-12);
    assert!(
        e2["overlap_quantiles"][6].as_f64().expect("max") <= 0.1 + 1e-6,
        "{e2}"
    );
    assert!(
        e2["share_overlap_positive"].as_f64().expect("share") > 0.0,
        "{e2}"
    );
    let ingest = p.json(&["report", "ingest", "--json"]);
    assert_eq!(e2["rows"], ingest["report"]["training_instances"]);
    assert_eq!(e2["negatives"].as_u64(), e2["rows"].as_u64().map(|r| r * 3));
    assert_eq!(
        e2["overlap_mismatches"], 0,
        "stored J equals the graph store's J"
    );
    // The negatives report's leakage counts the negatives that are their user's dev
    // or test item: between the larger of the audit's two counts and their sum
    // (a user whose dev and test items are the same counts once).
    let neg = p.json(&["report", "negatives", "--json"]);
    let total = neg["report"]["negatives_total"].as_f64().expect("total");
    let leaked = neg["report"]["leakage"].as_f64().expect("leakage") * total;
    let (mut dev, mut test) = (0.0, 0.0);
    for e in epochs {
        let n = e["negatives"].as_f64().expect("negatives");
        dev += e["share_dev_item"].as_f64().expect("dev") * n;
        test += e["share_test_item"].as_f64().expect("test") * n;
    }
    assert!(
        leaked > 0.5,
        "some held-out items are drawn at h = 0.1: {neg}"
    );
    assert!(
        leaked >= dev.max(test) - 1e-6 && leaked <= dev + test + 1e-6,
        "leaked {leaked}, audit dev {dev} test {test}"
    );
    let plot = std::fs::read_to_string(a["plot"].as_str().expect("plot")).expect("svg");
    assert!(plot.starts_with("<svg") && plot.contains("polyline"));
    // Text output too.
    let text = p.ok(&["audit", "negatives", "--epoch", "2"]);
    assert!(text.contains("shard files verified"), "{text}");

    // Damage one shard: the audit names it.
    let run = run_dir(&p.workdir(), "negatives");
    let shard = run.join("epoch-0002/part-00000.parquet");
    let mut bytes = std::fs::read(&shard).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&shard, bytes).expect("write");
    let o = p.gnno(&["audit", "negatives"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("epoch-0002/part-00000.parquet") && stderr(&o).contains("checksum"),
        "{}",
        stderr(&o)
    );
    // A foreign file in place of a shard is named too (schema check).
    std::fs::copy(
        p.path()
            .join("work/ingest")
            .join(run_dir(&p.workdir(), "ingest").file_name().expect("name"))
            .join("items.parquet"),
        &shard,
    )
    .expect("copy");
    let e = gnno_core::shards::read(&shard).expect_err("not a shard");
    assert!(
        e.to_string().contains("part-00000.parquet")
            && e.to_string().contains("shard version missing"),
        "{e}"
    );
}

#[test]
fn audit_scores_the_negatives_with_a_trained_model() {
    let p = project("");
    p.ok(&["run"]);
    let model = p.workdir().join("current");
    let m = model.to_str().expect("path");
    let a = p.json(&[
        "audit",
        "negatives",
        "--epoch",
        "0,2",
        "--model",
        m,
        "--json",
    ]);
    let epochs = a["epochs"].as_array().expect("epochs");
    assert_eq!(epochs.len(), 2, "{a}");
    let (e0, e2) = (&epochs[0]["model"], &epochs[1]["model"]);
    assert_eq!(
        (e0["epoch"].as_u64(), e2["epoch"].as_u64()),
        (Some(0), Some(2))
    );
    // The warm-up epoch has random negatives only.
    assert!(e0["hard_above_target"].is_null(), "{e0}");
    for e in [e0, e2] {
        let loss = e["loss"].as_f64().expect("loss");
        assert!(loss.is_finite() && loss > 0.0, "{e}");
        let r = e["random_above_target"].as_f64().expect("random");
        // A trained model puts the target above most random items (an untrained
        // one above half of them).
        assert!(r < 0.4, "{e}");
    }
    let h = e2["hard_above_target"].as_f64().expect("hard");
    assert!((0.0..=1.0).contains(&h), "{e2}");
    // Deterministic: the same figures again, with the model named by its file
    // instead of its export folder.
    let file = model.join("model.safetensors");
    let again = p.json(&[
        "audit",
        "negatives",
        "--epoch",
        "2",
        "--model",
        file.to_str().expect("path"),
        "--json",
    ]);
    assert_eq!(again["epochs"][0]["model"], *e2);
    let text = p.ok(&["audit", "negatives", "--epoch", "2", "--model", m]);
    assert!(
        text.contains("share of the valid negatives above the target"),
        "{text}"
    );
    // An epoch that was never drawn is named.
    let o = p.gnno(&["audit", "negatives", "--epoch", "2,9", "--model", m]);
    assert_ne!(o.status.code(), Some(0));
    assert!(
        stderr(&o).contains("epoch 9 was not drawn"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn inspect_item_shows_neighbours_with_raw_ids() {
    let p = project("");
    p.ok(&["run", "--to", "graph"]);
    let v = p.json(&["inspect", "item", "#1", "--json", "--top", "5"]);
    assert_eq!(v["item"], 1);
    let raw = v["raw_id"].as_str().expect("raw").to_owned();
    assert!(raw.starts_with('i'), "{raw}");
    let witg = v["witg"].as_array().expect("witg");
    assert!(!witg.is_empty() && witg.len() <= 5);
    let w: Vec<f64> = witg
        .iter()
        .map(|x| x["weight"].as_f64().expect("w"))
        .collect();
    assert!(
        w.windows(2).all(|p| p[0] >= p[1]),
        "sorted by weight: {w:?}"
    );
    let ov = v["overlap"].as_array().expect("overlap");
    assert!(!ov.is_empty(), "item 1 overlaps other items: {v}");
    assert!(ov
        .iter()
        .all(|x| x["item"] != 1 && x["raw_id"].as_str().is_some_and(|r| r.starts_with('i'))));
    // By raw id gives the same item.
    let by_raw = p.json(&["inspect", "item", &raw, "--json"]);
    assert_eq!(by_raw["item"], 1);
    let o = p.gnno(&["inspect", "item", "no-such-item"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn negatives_are_byte_identical_across_thread_counts_and_row_identical_across_shard_sizes() {
    let a = project("");
    let b = project("");
    let cfg = std::fs::read_to_string(b.path().join("pipeline.toml")).expect("read");
    b.config(&cfg.replace("threads = 2", "threads = 1"));
    a.ok(&["run", "--to", "negatives"]);
    b.ok(&["run", "--to", "negatives"]);
    for stage in ["ingest", "negatives"] {
        let (sa, sb) = (
            snapshot(&run_dir(&a.workdir(), stage)),
            snapshot(&run_dir(&b.workdir(), stage)),
        );
        assert!(!sa.is_empty());
        assert_eq!(sa, sb, "{stage} differs between 2 threads and 1");
    }
    assert_eq!(
        a.json(&["report", "graph", "--json"])["fingerprint"],
        b.json(&["report", "graph", "--json"])["fingerprint"]
    );
    // Another shard size: other files, the same rows.
    let c = project("");
    let cfg = std::fs::read_to_string(c.path().join("pipeline.toml")).expect("read");
    c.config(&cfg.replace("shard-rows = 500", "shard-rows = 333"));
    c.ok(&["run", "--to", "negatives"]);
    let rows = |p: &Project| {
        let dir = run_dir(&p.workdir(), "negatives").join("epoch-0002");
        let mut all = Vec::new();
        for f in gnno_core::shards::list(&dir).expect("list") {
            let s = gnno_core::shards::read(&f).expect("read");
            for r in 0..s.instance.len() {
                all.push((
                    s.instance[r],
                    s.negatives[s.offsets[r]..s.offsets[r + 1]].to_vec(),
                ));
            }
        }
        all
    };
    let (ra, rc) = (rows(&a), rows(&c));
    assert!(ra.len() > 500);
    assert_eq!(ra, rc);
}

#[test]
fn distinct_negatives_hold_no_repeats_and_are_byte_identical_across_thread_counts() {
    // negatives.distinct through the CLI: rows without repeats where the default
    // draws repeat, the same bytes on 1 and 2 threads, and a stage key of its own.
    let distinct = |threads: &str| {
        let p = project("");
        let cfg = std::fs::read_to_string(p.path().join("pipeline.toml")).expect("read");
        p.config(
            &cfg.replace("threads = 2", threads)
                .replace(
                    "n-hard = 3",
                    "n-hard = 8\ntemperature = 0.05\ndistinct = true",
                )
                .replace("pace = 0.1", "pace = 0.5"),
        );
        p.ok(&["run", "--to", "negatives"]);
        p
    };
    let (a, b) = (distinct("threads = 2"), distinct("threads = 1"));
    let sa = snapshot(&run_dir(&a.workdir(), "negatives"));
    assert!(!sa.is_empty());
    assert_eq!(sa, snapshot(&run_dir(&b.workdir(), "negatives")));
    let plain = project("");
    let cfg = std::fs::read_to_string(plain.path().join("pipeline.toml")).expect("read");
    plain.config(
        &cfg.replace("n-hard = 3", "n-hard = 8\ntemperature = 0.05")
            .replace("pace = 0.1", "pace = 0.5"),
    );
    plain.ok(&["run", "--to", "negatives"]);
    let repeats = |p: &Project| {
        let (mut rows, mut with_repeats) = (0, 0);
        // Epoch 2, h = 0.5 (epoch 1's h = 0 leaves nothing to draw in this dense
        // graph: every item overlaps every target).
        let dir = run_dir(&p.workdir(), "negatives").join("epoch-0002");
        for f in gnno_core::shards::list(&dir).expect("list") {
            let s = gnno_core::shards::read(&f).expect("read");
            for r in 0..s.instance.len() {
                let mut row = s.negatives[s.offsets[r]..s.offsets[r + 1]].to_vec();
                assert_eq!(row.len(), 8, "row {r}: every row has 8 items to draw from");
                row.sort_unstable();
                row.dedup();
                rows += 1;
                with_repeats += usize::from(row.len() < 8);
            }
        }
        (rows, with_repeats)
    };
    let (rows, with_repeats) = repeats(&a);
    assert!(rows > 500, "{rows}");
    assert_eq!(with_repeats, 0);
    let (_, plain_repeats) = repeats(&plain);
    assert!(plain_repeats > rows / 10, "{plain_repeats} of {rows}");
    assert_ne!(
        a.json(&["report", "negatives", "--json"])["fingerprint"],
        plain.json(&["report", "negatives", "--json"])["fingerprint"]
    );
}

#[test]
fn training_killed_after_a_checkpoint_resumes_to_the_same_metrics() {
    let clean = project("");
    clean.ok(&["run"]);
    let p = project("");
    let o = p.gnno_env(&["run"], &[("GNNO_FAULT_AFTER_EPOCH", "2")]);
    assert!(!o.status.success(), "the fault hook aborts the run");
    let st = p.json(&["status", "--json"]);
    assert_eq!(
        st[3]["status"]["state"], "missing",
        "no train manifest from the killed run"
    );
    p.ok(&["run"]);
    let train = p.json(&["report", "train", "--json"])["report"].clone();
    assert_eq!(train["resumed_at_epoch"], 2, "{train}");
    let want = clean.json(&["report", "train", "--json"])["report"].clone();
    for e in 0..3 {
        assert_eq!(
            train["epochs"][e]["loss"], want["epochs"][e]["loss"],
            "epoch {e}"
        );
        assert_eq!(
            train["epochs"][e]["dev_metric"], want["epochs"][e]["dev_metric"],
            "epoch {e}"
        );
    }
    let got = p.json(&["report", "evaluate", "--json"])["report"].clone();
    let exp = clean.json(&["report", "evaluate", "--json"])["report"].clone();
    assert_eq!(got["test_full"], exp["test_full"]);
    assert_eq!(got["test_sampled"], exp["test_sampled"]);
}

#[test]
fn readers_work_while_a_run_holds_the_workdir_and_never_change_published_artifacts() {
    // Issue 11, item 11: inspect and audit opened the sled store read-write.
    let p = project("");
    p.ok(&["run", "--to", "negatives"]);
    let work = p.workdir();
    let published = |w: &std::path::Path| {
        let mut all = std::collections::BTreeMap::new();
        for stage in ["ingest", "graph", "negatives"] {
            let dir = w.join(stage);
            all.insert(
                format!("{stage}/manifest.json"),
                std::fs::read(dir.join("manifest.json")).expect("manifest"),
            );
            for (f, b) in snapshot(&run_dir(w, stage)) {
                all.insert(format!("{stage}/{f}"), b);
            }
        }
        all
    };
    let before = published(&work);
    // Another process holds the workdir lock, as a running `gnno run` does.
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .open(work.join(".lock"))
        .expect("lock file");
    lock.try_lock().expect("take the lock");
    let st = p.ok(&["status"]);
    assert!(st.contains("negatives  up to date"), "{st}");
    let v = p.json(&["inspect", "item", "#1", "--json"]);
    assert_eq!(v["item"], 1);
    p.ok(&["audit", "negatives", "--json"]);
    p.ok(&["inspect", "item", "#2"]);
    drop(lock);
    let after = published(&work);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    for (k, v) in &before {
        assert!(v == &after[k], "{k} changed by a reader");
    }
    // The manifests' checksums still hold, the store's files included.
    for stage in ["ingest", "negatives"] {
        let m = gnno_core::manifest::Manifest::read(&work.join(stage))
            .expect("read")
            .expect("manifest");
        m.verify_outputs(&work.join(stage), true)
            .expect("checksums");
    }
}
