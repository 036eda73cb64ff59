//! Config validation, exit codes, the lock, status and reports.

use crate::common::{gnno_in, small_config, stderr, synthetic_log, Project};

#[test]
fn validate_accepts_the_repository_default() {
    let root = env!("CARGO_MANIFEST_DIR");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_gnno"))
        .args(["--config", &format!("{root}/pipeline.toml"), "validate"])
        .output()
        .expect("runs");
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("valid; 1 input file(s)"), "{out}");
}

#[test]
fn invalid_config_lists_every_problem_and_exits_2() {
    let p = Project::new();
    p.write("data.tsv", "user_id\titem_id\ttimestamp\n");
    p.config("[run]\nthreads = -1\ncolour = 1\n[ingest]\ninputs = [\"data.tsv\"]\nsplit = \"random\"\n[train]\nheads = 3\n[evaluate]\nks = [0]\n");
    let o = p.gnno(&["validate"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    for needle in [
        "run.threads: -1 is out of range",
        "run.colour: unknown key",
        "ingest.split: expected one of",
        "train.heads: 3 does not divide train.dim = 64",
        "evaluate.ks[0]: unexpected value 0",
        "hint:",
    ] {
        assert!(e.contains(needle), "missing {needle:?} in:\n{e}");
    }
    // `run` refuses the same config before touching the workdir.
    let o = p.gnno(&["run"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(!p.workdir().exists());
}

#[test]
fn missing_input_names_the_file() {
    let p = Project::new();
    p.config(&small_config("").replace("data.tsv", "nope.tsv"));
    let o = p.gnno(&["run", "--to", "ingest"]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("nope.tsv") && e.contains("input file not found"),
        "{e}"
    );
}

#[test]
fn a_held_lock_is_refused_with_the_holders_pid_and_a_dead_holder_is_taken_over() {
    let p = Project::new();
    p.write("data.tsv", &synthetic_log(60, 40, 1));
    p.config(&small_config(""));
    std::fs::create_dir_all(p.workdir()).expect("mkdir");
    let lock_path = p.workdir().join(".lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .expect("lock file");
    f.try_lock().expect("take the lock");
    std::fs::write(&lock_path, "424242").expect("pid");
    let o = p.gnno(&["run", "--to", "ingest"]);
    assert_eq!(o.status.code(), Some(75), "{}", stderr(&o));
    assert!(stderr(&o).contains("pid 424242"), "{}", stderr(&o));
    drop(f);
    // The holder is gone (its lock released) but its pid file stays: taken over.
    p.ok(&["run", "--to", "ingest"]);
    let pid = std::fs::read_to_string(&lock_path).expect("lock");
    assert_ne!(pid.trim(), "424242");
}

#[test]
fn asking_for_a_cuda_device_that_is_not_there_is_a_clear_user_error() {
    // Runs everywhere (issue 11, item 13): no machine has 64 GPUs, so `cuda:64` is
    // refused with CUDA (no such device) and without it (no CUDA at all).
    let p = Project::new();
    p.write("data.tsv", &synthetic_log(80, 40, 2));
    p.config(&small_config("").replace("device = \"cpu\"", "device = \"cuda:64\""));
    let o = p.gnno(&["run"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let want = if tch::Cuda::is_available() {
        "CUDA device(s) exist"
    } else {
        "CUDA is not available"
    };
    assert!(
        stderr(&o).contains(want) && stderr(&o).contains("cuda:64"),
        "{}",
        stderr(&o)
    );
    // The stages before train completed and are kept.
    assert_eq!(
        p.json(&["status", "--json"])[2]["status"]["state"],
        "up-to-date"
    );
}

/// Run gnno with its stdout a pipe whose reader is already gone.
fn with_closed_stdout(p: &Project, args: &[&str]) -> std::process::Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    std::process::Command::new(env!("CARGO_BIN_EXE_gnno"))
        .arg("--config")
        .arg(p.path().join("pipeline.toml"))
        .arg("--quiet")
        .args(args)
        .stdout(writer)
        .output()
        .expect("runs")
}

#[test]
fn a_closed_stdout_ends_quietly_with_exit_0() {
    // Issue 11, item 16: `gnno report … | head` ended with "error: Broken pipe".
    let p = Project::new();
    p.write("data.tsv", &synthetic_log(60, 40, 3));
    p.config(&small_config(""));
    p.ok(&["run", "--to", "graph"]);
    for args in [
        &["report", "ingest"][..],
        &["report", "graph", "--json"],
        &["status"],
        &["inspect", "item", "#1"],
        &["validate"],
    ] {
        let o = with_closed_stdout(&p, args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).is_empty(), "{args:?} printed: {}", stderr(&o));
    }
    // Other errors still fail.
    let o = with_closed_stdout(&p, &["report", "train"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn the_same_config_named_relatively_or_absolutely_is_the_same_pipeline() {
    // A nightly job names the config by its full path, a person in the project
    // folder as `pipeline.toml`: both must see the same inputs, not a stale ingest.
    let p = Project::new();
    p.write("data.tsv", &synthetic_log(200, 60, 3));
    p.config(&small_config(""));
    p.ok(&["run", "--to", "ingest"]);
    let sub = p.path().join("sub");
    std::fs::create_dir_all(&sub).expect("mkdir");
    // A folder reached through a link is the same folder.
    std::os::unix::fs::symlink(p.path(), p.path().join("alias")).expect("symlink");
    for (cwd, name) in [
        (p.path(), "pipeline.toml"),
        (p.path(), "./pipeline.toml"),
        (sub.as_path(), "../pipeline.toml"),
        (p.path(), "alias/pipeline.toml"),
    ] {
        let o = gnno_in(cwd, &["--config", name, "status", "--json"]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let st: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
        assert_eq!(st[0]["stage"], "ingest", "{st}");
        assert_eq!(st[0]["status"]["state"], "up-to-date", "{name}: {st}");
    }
}

#[test]
fn a_config_that_is_a_link_resolves_paths_against_the_links_folder() {
    let p = Project::new();
    p.write("data.tsv", &synthetic_log(200, 60, 3));
    p.config(&small_config(""));
    let sub = p.path().join("sub");
    std::fs::create_dir_all(&sub).expect("mkdir");
    std::os::unix::fs::symlink("../pipeline.toml", sub.join("pipeline.toml")).expect("symlink");
    let o = gnno_in(p.path(), &["--config", "sub/pipeline.toml", "validate"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("sub/data.tsv"), "{}", stderr(&o));
}
