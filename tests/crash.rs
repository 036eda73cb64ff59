//! Crash safety: a stage killed mid-way never publishes, never damages the last good
//! output, and its rerun equals a clean run.

use crate::common::{
    assert_same_files, run_dir, small_config, snapshot, stderr, synthetic_log, Project,
};
use std::time::{Duration, Instant};

fn project(extra: &str) -> Project {
    let p = Project::new();
    p.write("data.tsv", &synthetic_log(400, 120, 21));
    p.config(
        &small_config(extra)
            .replace("epochs = 3", "epochs = 6")
            .replace("shard-rows = 500", "shard-rows = 200"),
    );
    p
}

/// [`project`] with some of its config's settings replaced.
fn project_edited(edits: &[(&str, &str)]) -> Project {
    let p = project("");
    let mut cfg = std::fs::read_to_string(p.path().join("pipeline.toml")).expect("read");
    for (from, to) in edits {
        assert!(cfg.contains(from), "{from}");
        cfg = cfg.replace(from, to);
    }
    p.config(&cfg);
    p
}

#[test]
fn negatives_killed_half_way_resumes_only_what_is_missing_and_equals_a_clean_run() {
    let clean = project("");
    clean.ok(&["run", "--to", "negatives"]);
    let p = project("");
    p.ok(&["run", "--to", "graph"]);
    let o = p.gnno_env(&["stage", "negatives"], &[("GNNO_FAULT_AFTER_SHARDS", "4")]);
    assert!(!o.status.success(), "aborted: {}", stderr(&o));
    assert_eq!(
        p.json(&["status", "--json"])[2]["status"]["state"],
        "missing",
        "nothing published"
    );
    p.ok(&["stage", "negatives"]);
    let rep = p.json(&["report", "negatives", "--json"])["report"].clone();
    assert!(rep["shards_reused"].as_u64().expect("reused") >= 4, "{rep}");
    assert!(
        rep["shards_written"].as_u64().expect("written") > 0,
        "{rep}"
    );
    let (pa, pc) = (
        run_dir(&p.workdir(), "negatives"),
        run_dir(&clean.workdir(), "negatives"),
    );
    assert_same_files(&snapshot(&pa), &snapshot(&pc), &pa, &pc);
}

#[test]
fn sigkill_before_publication_then_rerun_equals_a_clean_run() {
    // Deterministic (issue 11, item 13): the stage pauses at a known point through a
    // test hook and is SIGKILLed there, instead of racing a poll loop against it.
    let p = project("");
    let cfg = std::fs::read_to_string(p.path().join("pipeline.toml")).expect("read");
    let cfg = cfg
        .replace("epochs = 6", "epochs = 12")
        .replace("shard-rows = 200", "shard-rows = 100");
    p.config(&cfg);
    p.ok(&["run", "--to", "graph"]);
    let marker = p.path().join("paused");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gnno"))
        .args([
            "--config",
            p.path().join("pipeline.toml").to_str().expect("utf8"),
            "--quiet",
            "stage",
            "negatives",
        ])
        .env(
            "GNNO_FAULT_PAUSE_BEFORE_PUBLISH",
            format!("negatives:{}", marker.display()),
        )
        .spawn()
        .expect("spawn");
    // Wait for the hook (the bound only stops a broken build from hanging the suite).
    let t0 = Instant::now();
    while !marker.exists() {
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the stage ended before reaching the hook"
        );
        assert!(t0.elapsed() < Duration::from_secs(300), "never paused");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let neg = p.workdir().join("negatives");
    assert!(
        !neg.join("manifest.json").exists(),
        "a killed stage publishes nothing"
    );
    // A writer killed mid-shard leaves a temporary file: plant one too.
    let run = std::fs::read_dir(&neg)
        .expect("stage dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|d| {
            d.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("run-"))
        })
        .expect("the killed run's folder");
    std::fs::write(
        run.join("epoch-0002/part-00003.parquet.tmp-999999"),
        b"PAR1 half a shard",
    )
    .expect("plant");
    p.ok(&["stage", "negatives"]);
    let pdir = run_dir(&p.workdir(), "negatives");
    let got = snapshot(&pdir);
    let rep = p.json(&["report", "negatives", "--json"])["report"].clone();
    assert_eq!(rep["shards_written"], 0, "every shard was finished: {rep}");
    assert!(rep["shards_reused"].as_u64().expect("n") > 10, "{rep}");
    assert_eq!(rep["epochs"].as_array().expect("e").len(), 12);
    // A clean run of the same config gives the same bytes.
    let q = project("");
    q.config(&cfg);
    q.ok(&["run", "--to", "negatives"]);
    let qdir = run_dir(&q.workdir(), "negatives");
    assert_same_files(&got, &snapshot(&qdir), &pdir, &qdir);
}

#[test]
fn a_failed_rerun_leaves_the_previous_good_output_intact() {
    let p = project("");
    p.ok(&["run", "--to", "negatives"]);
    let before_manifest =
        std::fs::read(p.workdir().join("negatives/manifest.json")).expect("manifest");
    let before = snapshot(&run_dir(&p.workdir(), "negatives"));
    let cfg = std::fs::read_to_string(p.path().join("pipeline.toml")).expect("read");
    p.config(&cfg.replace("n-hard = 3", "n-hard = 5"));
    let o = p.gnno_env(
        &["run", "--to", "negatives"],
        &[("GNNO_FAULT_BEFORE_PUBLISH", "negatives")],
    );
    assert!(!o.status.success());
    assert_eq!(
        std::fs::read(p.workdir().join("negatives/manifest.json")).expect("manifest"),
        before_manifest
    );
    assert_eq!(
        snapshot(&run_dir(&p.workdir(), "negatives")),
        before,
        "the published shards are untouched"
    );
    let st = p.ok(&["status"]);
    assert!(
        st.contains("negatives  stale: setting negatives.n-hard changed: 3 -> 5"),
        "{st}"
    );
    // The old output still audits cleanly (checksums verified).
    p.config(&cfg);
    p.ok(&["audit", "negatives"]);
    // And an ingest failure on bad data leaves the previous ingest output published.
    p.write(
        "data.tsv",
        "user_id\titem_id\ttimestamp\nu1\ti1\tnot-a-time\n",
    );
    let o = p.gnno(&["run", "--to", "ingest"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("data.tsv:2"), "{}", stderr(&o));
    p.write("data.tsv", &synthetic_log(400, 120, 21));
    let st = p.ok(&["status"]);
    assert!(st.contains("ingest     up to date"), "{st}");
}

#[test]
fn a_disk_that_fills_while_a_checkpoint_is_written_fails_cleanly_and_resumes() {
    // libtorch aborted the process here (its archive writer throws again from its
    // destructor when a write fails).
    // A model of a few hundred KiB (encoder, 64-d), so its files pass the limit and
    // nothing else does.
    let edits = [("dim = 16", "dim = 64"), ("epochs = 6", "epochs = 1")];
    let clean = project_edited(&edits);
    clean.ok(&["run"]);
    let p = project_edited(&edits);
    p.ok(&["run", "--to", "negatives"]);
    // best.ot and the checkpoint pass 128 KiB inside libtorch's writes (the sink
    // buffers 64 KiB); nothing else the train stage writes does.
    let o = limited(&p, 128, "train");
    failed_cleanly(&p, &o, ".ot.tmp-", 3);
    p.ok(&["run"]);
    let best = |q: &Project| {
        std::fs::read(run_dir(&q.workdir(), "train").join("best.ot")).expect("best.ot")
    };
    assert_eq!(best(&p), best(&clean), "the rerun equals a clean run");
}

/// `gnno stage <stage>` under a file-size limit of `kib` KiB (SIGXFSZ ignored): a
/// write past it fails part-way with EFBIG, as one fails with ENOSPC on a full disk.
fn limited(p: &Project, kib: u32, stage: &str) -> std::process::Output {
    std::process::Command::new("bash")
        .args([
            "-c",
            &format!(r#"ulimit -f {kib}; trap '' XFSZ; exec "$@""#),
            "bash",
        ])
        .arg(env!("CARGO_BIN_EXE_gnno"))
        .args(["--config", "pipeline.toml", "--quiet", "stage", stage])
        .current_dir(p.path())
        .output()
        .expect("bash runs")
}

/// A stage that hit the limit: exit 1 (an error, not a signal) naming the temp file
/// (`file` is part of its name) with the free-space hint, no temp file left, and
/// the stage (`index` in `status`) not published.
fn failed_cleanly(p: &Project, o: &std::process::Output, file: &str, index: usize) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "an error, not a signal: {err}");
    assert!(err.contains("File too large"), "{err}");
    assert!(err.contains(file), "names the file: {err}");
    assert!(err.contains("free space where the workdir is"), "{err}");
    let left: Vec<_> = gnno_core::fsutil::list_files(&p.workdir())
        .expect("list")
        .into_iter()
        .filter(|f| f.to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(left.is_empty(), "temp files left: {left:?}");
    assert_eq!(
        p.json(&["status", "--json"])[index]["status"]["state"],
        "missing",
        "nothing published"
    );
}

#[test]
fn a_disk_that_fills_while_shards_are_written_fails_cleanly_and_resumes() {
    // Shards of a few MB (100 hard negatives per instance) pass a 1 MiB limit; the
    // private copy of the graph store the stage reads (about 0.5 MB) does not.
    let edits = [
        ("n-hard = 3", "n-hard = 100"),
        ("shard-rows = 200", "shard-rows = 5000"),
    ];
    let clean = project_edited(&edits);
    clean.ok(&["run", "--to", "negatives"]);
    let p = project_edited(&edits);
    p.ok(&["run", "--to", "graph"]);
    let o = limited(&p, 1024, "negatives");
    failed_cleanly(&p, &o, ".parquet.tmp-", 2);
    p.ok(&["stage", "negatives"]);
    let (pa, pc) = (
        run_dir(&p.workdir(), "negatives"),
        run_dir(&clean.workdir(), "negatives"),
    );
    assert_same_files(&snapshot(&pa), &snapshot(&pc), &pa, &pc);
}
