//! Config validation, exit codes, the lock, status and reports.

use crate::common::{small_config, stderr, synthetic_log, Project};

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
fn asking_for_cuda_without_it_is_a_clear_user_error() {
    if tch::Cuda::is_available() {
        return; // Only meaningful where CUDA is absent (CI); the GPU script covers the rest.
    }
    let p = Project::new();
    p.write("data.tsv", &synthetic_log(80, 40, 2));
    p.config(&small_config("").replace("device = \"cpu\"", "device = \"cuda\""));
    let o = p.gnno(&["run"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("CUDA is not available"),
        "{}",
        stderr(&o)
    );
    // The stages before train completed and are kept.
    assert!(p.json(&["status", "--json"])[2]["status"]["state"] == "up-to-date");
}
