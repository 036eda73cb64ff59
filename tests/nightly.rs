//! Nightly operation: the run history, gates, retention and rollback (issue 12).

use crate::common::{run_dir, small_config, stderr, synthetic_log, Project};

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

    // An on-call person who accepts the drop overrides the gate: published, recorded.
    p.ok(&["run", "--to", "ingest", "--override-gates"]);
    assert_ne!(run_dir(&p.workdir(), "ingest"), ingest_run);
    let h = history(&p);
    assert_eq!(h.last().expect("record")["outcome"], "overridden");
    // The next night compares with the overridden (now accepted) run: it passes.
    let o = p.gnno(&["run", "--to", "graph"]);
    assert!(o.status.success(), "{}", stderr(&o));
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
