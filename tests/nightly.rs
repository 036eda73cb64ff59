//! Nightly operation: the run history, gates, retention and rollback (issue 12).

use crate::common::{glob_logs, run_dir, small_config, stderr, synthetic_log, with_train, Project};

/// The first `frac` of a log's rows (header kept).
fn head(log: &str, frac: f64) -> String {
    let lines: Vec<&str> = log.lines().collect();
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "a row count"
    )]
    let keep = 1 + ((lines.len() - 1) as f64 * frac) as usize;
    lines[..keep].join("\n") + "\n"
}

/// (stage, outcome) of every record of the last invocation, in order.
fn last_night(p: &Project) -> Vec<(String, String)> {
    let h = history(p);
    let last = h.last().expect("a record")["invocation"].clone();
    h.iter()
        .filter(|r| r["invocation"] == last)
        .map(|r| {
            let text = |k: &str| r[k].as_str().expect("a string").to_owned();
            (text("stage"), text("outcome"))
        })
        .collect()
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

fn history(p: &Project) -> Vec<serde_json::Value> {
    p.json(&["history", "--json"])
        .as_array()
        .expect("array")
        .clone()
}

#[test]
fn a_failed_data_gate_publishes_nothing_exits_3_and_is_recorded() {
    let p = Project::new();
    let log = synthetic_log(300, 120, 11);
    p.write("data.tsv", &log);
    p.config(&small_config(
        "[gates.ingest]\nrows = { min = 100, max-drop = 0.2 }\nbad-row-share = { max = 0.0 }\n",
    ));
    p.ok(&["run", "--to", "graph"]);
    let ingest_run = run_dir(&p.workdir(), "ingest");
    let manifest = std::fs::read(p.workdir().join("ingest/manifest.json")).expect("manifest");
    let rows = p.json(&["report", "ingest", "--json"])["report"]["rows_out"]
        .as_f64()
        .expect("rows");

    // Night 2: the log lost half its rows.
    p.write("data.tsv", &head(&log, 0.5));
    let o = p.gnno(&["run", "--to", "graph"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let err = stderr(&o);
    let base = ingest_run
        .file_name()
        .expect("name")
        .to_string_lossy()
        .to_string();
    assert!(
        err.contains("gate failed after stage ingest")
            && err.contains("rows = ")
            && err.contains(&format!(
                "max-drop 0.2 from {rows} in the last accepted run {base}"
            )),
        "{err}"
    );
    // Nothing published: the previous manifest is byte-identical, the graph is
    // still up to date against the accepted ingest output.
    assert_eq!(
        std::fs::read(p.workdir().join("ingest/manifest.json")).expect("manifest"),
        manifest
    );
    assert_eq!(run_dir(&p.workdir(), "ingest"), ingest_run);
    let h = history(&p);
    let last = h.last().expect("a record");
    assert_eq!(last["stage"], "ingest");
    assert_eq!(last["outcome"], "gate-failed");
    let failed = &last["gates"][0];
    assert_eq!(failed["figure"], "rows");
    assert_eq!(failed["rule"], "max-drop");
    assert_eq!(failed["passed"], false);
    assert_eq!(failed["baseline_run"], base.as_str());
    assert!(failed["value"].as_f64().expect("value") < 0.6 * rows);
    assert!((failed["bound"].as_f64().expect("bound") - 0.8 * rows).abs() < 1e-9);
    // The graph stage did not run that night.
    assert!(!h
        .iter()
        .any(|r| r["stage"] == "graph" && r["invocation"] == last["invocation"]));

    // The nights side by side: night 1 published, night 2 stopped at the gate with
    // its rejected row count marked.
    let table = p.ok(&["history"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("night (UTC)") && lines[0].contains("test NDCG@10"));
    assert!(lines[1].contains(" published "), "{table}");
    assert!(lines[1].contains(&format!(" {rows} ")), "{table}");
    assert!(lines[2].contains("gate-failed at ingest"), "{table}");
    assert!(lines[2].contains('!'), "{table}");
    let stage = p.ok(&["history", "--stage", "ingest"]);
    assert!(
        stage.contains("rows = ") && stage.contains("below the bound"),
        "{stage}"
    );

    // An on-call person who accepts the drop overrides ingest's gate: published,
    // recorded.
    p.ok(&["run", "--to", "ingest", "--override-gates", "ingest"]);
    let overridden = run_dir(&p.workdir(), "ingest");
    assert_ne!(overridden, ingest_run);
    let h = history(&p);
    assert_eq!(h.last().expect("record")["outcome"], "overridden");
    // Later nights compare with the overridden (now accepted) run: 10% more rows
    // pass, and a drop of 40% from it fails, naming it.
    p.write("data.tsv", &head(&log, 0.55));
    let o = p.gnno(&["run", "--to", "graph"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let accepted = run_dir(&p.workdir(), "ingest");
    p.write("data.tsv", &head(&log, 0.33));
    let o = p.gnno(&["run", "--to", "graph"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let name = accepted
        .file_name()
        .expect("name")
        .to_string_lossy()
        .to_string();
    assert!(
        stderr(&o).contains(&format!("in the last accepted run {name}")),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_failed_quality_gate_keeps_serving_the_accepted_model() {
    let p = Project::new();
    p.write("logs/day-1.tsv", &synthetic_log(300, 120, 11));
    let cfg = glob_logs(&small_config("[export]\ntop-k = 5\n"));
    p.config(&cfg);
    p.ok(&["run"]);
    let current = p.workdir().join("current");
    let night1 = readlink(&current);
    let export_manifest = std::fs::read(p.workdir().join("export/manifest.json")).expect("m");
    // Night 2: new data and a floor no model reaches.
    p.write("logs/day-2.tsv", &next_day(12));
    p.config(&format!(
        "{cfg}[gates.evaluate]\n\"test.NDCG@10\" = {{ min = 0.99 }}\n"
    ));
    let o = p.gnno(&["run"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("gate failed after stage evaluate")
            && err.contains("test.NDCG@10 = ")
            && err.contains("below the bound 0.99"),
        "{err}"
    );
    // Train published the new model; evaluate, export and `current` did not move.
    assert_eq!(readlink(&current), night1);
    assert_eq!(
        std::fs::read(p.workdir().join("export/manifest.json")).expect("m"),
        export_manifest
    );
    let h = history(&p);
    let last = h.last().expect("record");
    assert_eq!(
        (last["stage"].as_str(), last["outcome"].as_str()),
        (Some("evaluate"), Some("gate-failed"))
    );
    assert!(last["figures"]["test.NDCG@10"].as_f64().expect("figure") < 0.99);
    assert!(
        last["inputs"]["train"]
            .as_str()
            .is_some_and(|f| !f.is_empty()),
        "a rejected run's record names its inputs: {last}"
    );
    // Exporting the unevaluated model by hand is refused.
    let o = p.gnno(&["stage", "export", "--force"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("has not passed evaluation"),
        "{}",
        stderr(&o)
    );
    assert_eq!(readlink(&current), night1);
    // The on-call person accepts the model: evaluate's gate alone is overridden.
    p.ok(&["run", "--override-gates", "evaluate"]);
    assert_ne!(readlink(&current), night1);
    assert_eq!(
        last_night(&p),
        owned(&[
            ("ingest", "up-to-date"),
            ("graph", "up-to-date"),
            ("negatives", "up-to-date"),
            ("train", "up-to-date"),
            ("evaluate", "overridden"),
            ("export", "published"),
        ])
    );
}

#[test]
fn keep_runs_keeps_the_last_n_runs_and_rollback_republishes_one() {
    let p = Project::new();
    let log = synthetic_log(300, 120, 11);
    p.config(&small_config("").replace("[run]\n", "[run]\nkeep-runs = 2\n"));
    let mut runs = Vec::new();
    for frac in [0.8, 0.9, 1.0] {
        p.write("data.tsv", &head(&log, frac));
        p.ok(&["run", "--to", "ingest"]);
        runs.push(
            run_dir(&p.workdir(), "ingest")
                .file_name()
                .expect("name")
                .to_string_lossy()
                .to_string(),
        );
    }
    let on_disk = |p: &Project| {
        let mut v: Vec<String> = std::fs::read_dir(p.workdir().join("ingest"))
            .expect("dir")
            .filter_map(|e| {
                let n = e.ok()?.file_name().to_string_lossy().to_string();
                n.starts_with("run-").then_some(n)
            })
            .collect();
        v.sort();
        v
    };
    let mut want = vec![runs[1].clone(), runs[2].clone()];
    want.sort();
    assert_eq!(on_disk(&p), want, "the oldest run is removed");
    let list = p.ok(&["rollback", "ingest", "--list"]);
    assert_eq!(list.lines().count(), 2, "{list}");
    assert!(list
        .lines()
        .last()
        .expect("line")
        .contains(&format!("{}  (published)", runs[2])));

    // Roll back: the previous run is published again and downstream sees it.
    let out = p.ok(&["rollback", "ingest"]);
    assert!(
        out.contains(&format!("ingest: published {} again", runs[1])),
        "{out}"
    );
    assert!(run_dir(&p.workdir(), "ingest").ends_with(&runs[1]));
    let h = p.json(&["history", "--stage", "ingest", "--json"]);
    let last = h.as_array().expect("array").last().expect("record").clone();
    assert_eq!(last["outcome"], "rolled-back");
    assert_eq!(last["run_dir"], runs[1].as_str());
    // The input file is newer than the rolled-back run: ingest is stale again.
    let status = p.json(&["status", "--json"]);
    assert_eq!(status[0]["status"]["state"], "stale");
    // Nothing older than what is kept can be rolled back to.
    let o = p.gnno(&["rollback", "ingest", "--to", &runs[0]]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("keeps no run"), "{}", stderr(&o));
    // A rollback checks checksums first: a damaged kept run is refused.
    let victim = p
        .workdir()
        .join("ingest")
        .join(&runs[2])
        .join("items.parquet");
    let mut bytes = std::fs::read(&victim).expect("read");
    bytes[10] ^= 0xff;
    std::fs::write(&victim, bytes).expect("write");
    let o = p.gnno(&["rollback", "ingest", "--to", &runs[2]]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("items.parquet") && stderr(&o).contains("checksum"),
        "{}",
        stderr(&o)
    );
    assert!(
        run_dir(&p.workdir(), "ingest").ends_with(&runs[1]),
        "still the rolled-back run"
    );
}

/// A day of logs for existing users, after everything in `synthetic_log`: half of its
/// items are new (`n*`), the rest known (`i*`).
fn next_day(seed: u64) -> String {
    let log = synthetic_log(150, 60, seed);
    let mut out = String::from("user_id\titem_id\ttimestamp\n");
    for line in log.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        let item: u32 = f[1][1..].parse().expect("item");
        let name = if item < 30 {
            format!("n{item}")
        } else {
            format!("i{item}")
        };
        let t: u64 = f[2].parse().expect("time");
        out += &format!("{}\t{name}\t{}\n", f[0], t + 100_000_000);
    }
    out
}

fn readlink(p: &std::path::Path) -> String {
    std::fs::read_link(p)
        .expect("current is a link")
        .display()
        .to_string()
}

#[test]
fn three_nights_cold_warm_and_stopped_at_the_data_gate() {
    let p = Project::new();
    let day1 = synthetic_log(300, 120, 11);
    p.write("logs/day-1.tsv", &day1);
    let cfg = glob_logs(&small_config(
        "[export]\ntop-k = 10\n[gates.ingest]\nrows = { min = 100, max-drop = 0.2 }\n[gates.evaluate]\n\"test.HR@50\" = { min = 0.05 }\n",
    ));
    let cfg = with_train(&cfg, "warm-start = \"last-accepted\"");
    p.config(&cfg);
    let current = p.workdir().join("current");

    // Night 1: cold.
    p.ok(&["run"]);
    let night1 = readlink(&current);
    assert!(night1.starts_with("export/run-"), "{night1}");
    let t1 = p.json(&["report", "train", "--json"]);
    assert!(
        t1["report"]["warm_start"].is_null(),
        "night 1 trains cold: {t1}"
    );
    let neg1 = run_dir(&p.workdir(), "negatives");

    // Night 2: a new day's file with new items; the model starts from night 1's.
    p.write("logs/day-2.tsv", &next_day(12));
    p.ok(&["run"]);
    let night2 = readlink(&current);
    assert_ne!(night2, night1);
    let t2 = p.json(&["report", "train", "--json"]);
    let ws = &t2["report"]["warm_start"];
    assert!(ws["items_carried"].as_u64().expect("carried") > 50, "{ws}");
    assert!(ws["items_new"].as_u64().expect("new") > 0, "{ws}");
    assert!(
        ws["from"]
            .as_str()
            .expect("from")
            .contains(night1.trim_start_matches("export/")),
        "warm start names night 1's export: {ws}"
    );
    let served = p.workdir().join("current/recommendations.parquet");
    let recs2 = std::fs::read(&served).expect("night 2's recommendations");

    // Night 3: the first day's log arrives truncated: the data gate stops the night.
    p.write("logs/day-1.tsv", &head(&day1, 0.3));
    let o = p.gnno(&["run"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("gate failed after stage ingest"),
        "{}",
        stderr(&o)
    );
    // `current` still serves night 2's export, byte for byte, and it verifies.
    assert_eq!(readlink(&current), night2);
    assert_eq!(std::fs::read(&served).expect("still served"), recs2);
    let m = gnno_core::manifest::Manifest::read(&p.workdir().join("export"))
        .expect("readable")
        .expect("published");
    assert_eq!(format!("export/{}", m.run_dir), night2);
    m.verify_outputs(&p.workdir().join("export"), true)
        .expect("night 2's export is whole");

    // The history shows the three nights.
    let h = p.json(&["history", "--json"]);
    let recs = h.as_array().expect("array");
    let mut nights: Vec<&str> = Vec::new();
    for r in recs {
        let id = r["invocation"].as_str().expect("id");
        if !nights.contains(&id) {
            nights.push(id);
        }
    }
    assert_eq!(nights.len(), 3, "{h}");
    let of = |night: &str, stage: &str| {
        recs.iter()
            .find(|r| r["invocation"] == night && r["stage"] == stage)
            .map(|r| r["outcome"].as_str().expect("outcome").to_owned())
    };
    for n in &nights[..2] {
        for s in [
            "ingest",
            "graph",
            "negatives",
            "train",
            "evaluate",
            "export",
        ] {
            assert_eq!(of(n, s).as_deref(), Some("published"), "{n} {s}");
        }
    }
    assert_eq!(of(nights[2], "ingest").as_deref(), Some("gate-failed"));
    assert_eq!(of(nights[2], "graph"), None, "nothing after the gate ran");
    let table = p.ok(&["history"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(lines[3].contains("gate-failed at ingest"), "{table}");
    let svg = p.path().join("trend.svg");
    p.ok(&["history", "--plot", svg.to_str().expect("utf8")]);
    let plot = std::fs::read_to_string(&svg).expect("svg");
    assert_eq!(
        plot.matches("<circle").count(),
        4,
        "dev and test of two nights: {plot}"
    );

    // Night 1's shards can still be audited against night 1's ingest and graph runs.
    let run1 = neg1
        .file_name()
        .expect("name")
        .to_string_lossy()
        .to_string();
    let a = p.json(&["audit", "negatives", "--run", &run1, "--json"]);
    let epochs = a["epochs"].as_array().expect("epochs");
    assert_eq!(epochs.len(), 3);
    assert!(epochs[2]["rows"].as_u64().expect("rows") > 0);

    // An on-call rollback serves night 1 again, with the runs night 1's export
    // was made from, so the workdir stays consistent.
    let out = p.ok(&["rollback", "export"]);
    assert_eq!(readlink(&current), night1);
    for s in [
        "ingest",
        "graph",
        "negatives",
        "train",
        "evaluate",
        "export",
    ] {
        assert!(out.contains(&format!("{s}: published run-")), "{out}");
    }
    let status = p.json(&["status", "--json"]);
    let st = status.as_array().expect("stages");
    // Only newer raw logs make anything stale: ingest, and what follows it.
    assert!(
        st[0]["status"]["reasons"].to_string().contains("day-2.tsv"),
        "{status}"
    );
    for s in &st[1..] {
        for r in s["status"]["reasons"].as_array().expect("reasons") {
            assert!(
                r.as_str().expect("r").starts_with("upstream stage"),
                "{status}"
            );
        }
    }
    // The next night (still the truncated log) is held to the rolled-back run.
    let ingest1 = p.json(&["history", "--stage", "ingest", "--json"]);
    let rolled = ingest1.as_array().expect("a").last().expect("r").clone();
    assert_eq!(rolled["outcome"], "rolled-back");
    p.ok(&["run"]);
    let ingest2 = p.json(&["history", "--stage", "ingest", "--json"]);
    let last = ingest2.as_array().expect("a").last().expect("r").clone();
    assert_eq!(last["outcome"], "published");
    let drop = last["gates"]
        .as_array()
        .expect("gates")
        .iter()
        .find(|g| g["rule"] == "max-drop")
        .expect("the relative gate was checked")
        .clone();
    assert_eq!(drop["baseline_run"], rolled["run_dir"], "{drop}");
    assert_eq!(drop["baseline_value"], rolled["figures"]["rows"], "{drop}");
    assert_ne!(readlink(&current), night1, "the new night is served");
}

#[test]
fn a_new_file_with_nothing_new_reruns_ingest_alone() {
    let p = Project::new();
    let log = synthetic_log(300, 120, 11);
    p.write("logs/day-1.tsv", &log);
    p.config(&glob_logs(&small_config("")));
    p.ok(&["run", "--to", "negatives"]);
    // A second file repeating rows already seen: exact duplicates are dropped, so
    // the ingest output, and everything drawn from it, is unchanged.
    p.write("logs/day-2.tsv", &head(&log, 0.1));
    let status = p.json(&["status", "--json"]);
    assert!(
        status[0]["status"]["reasons"][0]
            .as_str()
            .expect("reason")
            .contains("day-2.tsv"),
        "{status}"
    );
    p.ok(&["run", "--to", "negatives"]);
    assert_eq!(
        last_night(&p),
        owned(&[
            ("ingest", "published"),
            ("graph", "up-to-date"),
            ("negatives", "up-to-date")
        ])
    );
    let ingest = p.json(&["report", "ingest", "--json"]);
    assert!(
        ingest["report"]["dropped_duplicates"]
            .as_u64()
            .expect("dups")
            > 0
    );
}
