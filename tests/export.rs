//! The export stage end to end: the three files and their schemas, the
//! recommendations against the users' histories, byte-identical files across
//! thread counts, docs/load_model.py reproducing the recommendations from
//! model.safetensors, the users file, and warm start from the last accepted export.

use crate::common::{glob_logs, run_dir, small_config, stderr, synthetic_log, with_train, Project};
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float32Type, UInt32Type};
use gnno_core::dataset::{read_parquet, Dataset};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

const K: usize = 10;

/// A SASRec pipeline on the synthetic log with `train` keys set in its [train]
/// table (replacing what it sets for them) and `extra` appended (e.g. [export]).
fn config(train: &str, extra: &str) -> String {
    with_train(
        &small_config(extra),
        &format!("backbone = \"sasrec\"\nhistory-len = 8\n{train}"),
    )
}

fn read(path: &Path) -> Vec<RecordBatch> {
    read_parquet(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn strings(b: &RecordBatch, col: &str) -> Vec<String> {
    let c = b.column_by_name(col).expect("column");
    assert_eq!(c.data_type(), &DataType::Utf8, "{col}");
    c.as_string::<i32>()
        .iter()
        .map(|s| s.expect("no nulls").to_owned())
        .collect()
}

/// `item_embeddings.parquet` as (raw id, vector), checking its schema.
fn embeddings(dir: &Path, dim: i32) -> Vec<(String, Vec<f32>)> {
    let mut out = Vec::new();
    for b in read(&dir.join("item_embeddings.parquet")) {
        let v = b.column_by_name("vector").expect("vector");
        let DataType::FixedSizeList(f, d) = v.data_type() else {
            panic!("vector is {}", v.data_type())
        };
        assert_eq!((f.data_type(), *d), (&DataType::Float32, dim));
        let v = v.as_fixed_size_list();
        for (i, item) in strings(&b, "item").into_iter().enumerate() {
            let row = v.value(i);
            out.push((item, row.as_primitive::<Float32Type>().values().to_vec()));
        }
    }
    out
}

/// `recommendations.parquet` as (user, rank, item, score) rows, checking its schema.
fn recommendations(dir: &Path) -> Vec<(String, u32, String, f32)> {
    let mut out = Vec::new();
    for b in read(&dir.join("recommendations.parquet")) {
        let rank = b.column_by_name("rank").expect("rank");
        let score = b.column_by_name("score").expect("score");
        assert_eq!(rank.data_type(), &DataType::UInt32);
        assert_eq!(score.data_type(), &DataType::Float32);
        let rank = rank.as_primitive::<UInt32Type>().values();
        let score = score.as_primitive::<Float32Type>().values();
        for (i, (u, it)) in strings(&b, "user")
            .into_iter()
            .zip(strings(&b, "item"))
            .enumerate()
        {
            out.push((u, rank[i], it, score[i]));
        }
    }
    out
}

/// Metadata, and tensor name -> (dtype, shape), of a safetensors header.
type Header = (
    BTreeMap<String, String>,
    BTreeMap<String, (String, Vec<i64>)>,
);

/// The safetensors header, parsed here independently of the writer.
fn safetensors_header(path: &Path) -> Header {
    let bytes = std::fs::read(path).expect("read");
    let n = usize::try_from(u64::from_le_bytes(bytes[..8].try_into().expect("8"))).expect("size");
    let h: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).expect("header");
    let mut meta = BTreeMap::new();
    let mut tensors = BTreeMap::new();
    for (k, v) in h.as_object().expect("object") {
        if k == "__metadata__" {
            for (mk, mv) in v.as_object().expect("metadata") {
                meta.insert(mk.clone(), mv.as_str().expect("string").to_owned());
            }
        } else {
            let shape = v["shape"]
                .as_array()
                .expect("shape")
                .iter()
                .map(|d| d.as_i64().expect("dim"))
                .collect();
            tensors.insert(
                k.clone(),
                (v["dtype"].as_str().expect("dtype").to_owned(), shape),
            );
        }
    }
    (meta, tensors)
}

/// The Python with torch that scripts/env.sh sets up (README: scripts/setup.sh):
/// `VIRTUAL_ENV`, else `$GNNO_HOME/venv` (default ~/.cache/gnno), else python3
/// with `$GNNO_HOME/pylib`. No torch fails the test: the loader is part of what
/// is delivered.
fn python() -> Command {
    let home = std::env::var_os("GNNO_HOME").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/gnno"),
        PathBuf::from,
    );
    let venv = std::env::var_os("VIRTUAL_ENV")
        .map(PathBuf::from)
        .into_iter()
        .chain([home.join("venv")])
        .map(|v| v.join("bin/python"))
        .find(|py| py.exists());
    match venv {
        Some(py) => Command::new(py),
        None => {
            let mut c = Command::new("python3");
            c.env("PYTHONPATH", home.join("pylib"));
            c
        }
    }
}

/// Run docs/load_model.py as its command line (`model ITEM... --top K --json`)
/// once per history, in one Python process (torch is imported once); returns
/// each run's JSON output.
fn load_model_py(model: &Path, histories: &[Vec<&String>]) -> Vec<Vec<serde_json::Value>> {
    use std::io::Write;
    const DRIVER: &str = r"import json, runpy, sys
script, model, k = sys.argv[1:4]
for line in sys.stdin:
    sys.argv = [script, model, *json.loads(line), '--top', k, '--json']
    runpy.run_path(script, run_name='__main__')
";
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/load_model.py");
    let mut child = python()
        .args(["-c", DRIVER])
        .arg(&script)
        .arg(model)
        .arg(K.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python starts");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        for h in histories {
            writeln!(stdin, "{}", serde_json::to_string(h).expect("json")).expect("write");
        }
    }
    let o = child.wait_with_output().expect("python runs");
    assert!(
        o.status.success(),
        "docs/load_model.py failed (a Python with torch is required: scripts/setup.sh):\n{}",
        stderr(&o)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// docs/load_model.py, given `model` and four users' whole histories (the first,
/// middle and last user, and one with the shortest history), prints the export's
/// top K for them (`recs`: the recommendations file's rows). Returns the shortest
/// history's length.
fn loader_reproduces(ds: &Dataset, model: &Path, recs: &[(String, u32, String, f32)]) -> usize {
    let len = |u: usize| ds.full_seq(u32::try_from(u).expect("u")).len();
    let shortest = (0..ds.n_users()).min_by_key(|&u| len(u)).expect("users");
    let users = [0usize, ds.n_users() / 2, ds.n_users() - 1, shortest];
    let histories: Vec<Vec<&String>> = users
        .iter()
        .map(|&u| {
            ds.full_seq(u32::try_from(u).expect("u"))
                .into_iter()
                .map(|i| &ds.item_raw[i as usize])
                .collect()
        })
        .collect();
    let outputs = load_model_py(model, &histories);
    assert_eq!(outputs.len(), users.len());
    for (&u, got) in users.iter().zip(&outputs) {
        let want = &recs[u * K..(u + 1) * K];
        assert_eq!(got.len(), K);
        for (g, w) in got.iter().zip(want) {
            let (gi, gs) = (
                g["item"].as_str().expect("item"),
                g["score"].as_f64().expect("s"),
            );
            assert!(
                (gs - f64::from(w.3)).abs() < 1e-4,
                "user {u}: python {gi} {gs} vs export {} {}",
                w.2,
                w.3
            );
            // Equal items, unless two items' scores are within rounding of each other.
            let near_tie = want
                .iter()
                .any(|x| x.2 == gi && (f64::from(x.3) - gs).abs() < 1e-5);
            assert!(
                gi == w.2 || near_tie,
                "user {u}: python {got:?} vs export {want:?}"
            );
        }
    }

    len(shortest)
}

#[test]
fn an_export_with_freerecs_block_is_reproduced_by_the_python_loader() {
    let p = Project::new();
    p.write("data.tsv", &synthetic_log(300, 120, 11));
    let form = "epochs = 2\nsasrec-residual = \"input\"\nsasrec-padding = \"attended\"\nsasrec-init = \"xavier\"\n";
    p.config(&config(form, &format!("[export]\ntop-k = {K}\n")));
    p.ok(&["run"]);
    let ds = Dataset::load(&run_dir(&p.workdir(), "ingest")).expect("ingest");
    let model = run_dir(&p.workdir(), "export").join("model.safetensors");
    let (meta, _) = safetensors_header(&model);
    assert_eq!(meta["sasrec_residual"], "input");
    assert_eq!(meta["sasrec_padding"], "attended");
    let recs = recommendations(&run_dir(&p.workdir(), "export"));
    assert_eq!(recs.len(), ds.n_users() * K);
    // A history shorter than history-len = 8, so the padding slots take part.
    assert!(loader_reproduces(&ds, &model, &recs) < 8);
}

#[test]
fn an_export_with_a_separate_output_table_is_reproduced_by_the_python_loader() {
    let p = Project::new();
    p.write("data.tsv", &synthetic_log(300, 120, 11));
    p.config(&config(
        "epochs = 2\noutput-embedding = \"separate\"\n",
        &format!("[export]\ntop-k = {K}\n"),
    ));
    p.ok(&["run"]);
    let ds = Dataset::load(&run_dir(&p.workdir(), "ingest")).expect("ingest");
    let dir = run_dir(&p.workdir(), "export");
    let model = dir.join("model.safetensors");
    let (_, tensors) = safetensors_header(&model);
    assert!(
        tensors.contains_key("out_items.weight"),
        "{:?}",
        tensors.keys()
    );
    let recs = recommendations(&dir);
    assert_eq!(recs.len(), ds.n_users() * K);
    assert!(loader_reproduces(&ds, &model, &recs) < 8);
}

#[test]
fn export_writes_embeddings_model_and_top_k_that_the_python_loader_reproduces() {
    let p = Project::new();
    p.write("data.tsv", &synthetic_log(300, 120, 11));
    p.config(&config("epochs = 2", &format!("[export]\ntop-k = {K}\n")));
    let out = p.ok(&["run"]);
    assert!(
        out.contains("evaluate   ran") && out.contains("export     ran"),
        "{out}"
    );
    let ds = Dataset::load(&run_dir(&p.workdir(), "ingest")).expect("ingest");
    let dir = run_dir(&p.workdir(), "export");
    let n = ds.n_items as usize;

    // Embeddings: one row per item, in index order, with raw ids.
    let emb = embeddings(&dir, 16);
    let ids: Vec<&String> = emb.iter().map(|e| &e.0).collect();
    assert_eq!(ids, ds.item_raw[1..].iter().collect::<Vec<_>>());

    // The model file: every tensor as F32 with its VarStore name, the metadata a
    // loader needs, and item rows equal to the embeddings file's vectors.
    let model = dir.join("model.safetensors");
    let (meta, tensors) = safetensors_header(&model);
    for (k, v) in [
        ("format", "gnno-model"),
        ("format_version", "1"),
        ("backbone", "sasrec"),
        ("dim", "16"),
        ("layers", "1"),
        ("heads", "2"),
        ("history_len", "8"),
        ("sasrec_residual", "query"),
        ("sasrec_padding", "masked"),
    ] {
        assert_eq!(meta.get(k).map(String::as_str), Some(v), "{k}");
    }
    let raw: Vec<String> = serde_json::from_str(&meta["items"]).expect("items");
    assert_eq!(raw, ds.item_raw[1..]);
    let shape = |name: &str| tensors.get(name).map(|t| t.1.clone());
    assert_eq!(shape("items.weight"), Some(vec![n as i64 + 2, 16]));
    assert_eq!(shape("pos.weight"), Some(vec![8, 16]));
    assert_eq!(shape("block0.att.q.weight"), Some(vec![16, 16]));
    assert_eq!(shape("last_ln.bias"), Some(vec![16]));
    assert_eq!(tensors.len(), 2 + 4 * 2 + 2 * 2 + 2 * 2 + 2, "{tensors:?}");
    assert!(tensors.values().all(|t| t.0 == "F32"));
    let st = gnno_train::safetensors::SafeTensors::read(&model).expect("reads");
    let items = &st.tensors["items.weight"].data;
    for (k, (_, v)) in emb.iter().enumerate() {
        assert_eq!(
            &items[(k + 1) * 16..(k + 2) * 16],
            v.as_slice(),
            "row {}",
            k + 1
        );
    }

    // Recommendations: K per user in user order, ranks 1..K, scores not
    // increasing, never an item of the user's whole sequence.
    let recs = recommendations(&dir);
    assert_eq!(recs.len(), ds.n_users() * K);
    let index: BTreeMap<&str, u32> = ds.item_raw[1..]
        .iter()
        .enumerate()
        .map(|(i, r)| (r.as_str(), u32::try_from(i + 1).expect("idx")))
        .collect();
    for (u, rows) in recs.chunks(K).enumerate() {
        let uu = u32::try_from(u).expect("u");
        let hist: BTreeSet<u32> = ds.full_seq(uu).into_iter().collect();
        assert!(
            hist.contains(&ds.test[u]) || ds.test[u] == 0,
            "the whole sequence"
        );
        for (r, row) in rows.iter().enumerate() {
            assert_eq!(row.0, ds.user_raw[u], "user order");
            assert_eq!(row.1 as usize, r + 1, "rank");
            assert!(
                !hist.contains(&index[row.2.as_str()]),
                "{row:?} is in the history"
            );
        }
        assert!(rows.windows(2).all(|w| w[0].3 >= w[1].3), "{rows:?}");
        let distinct: BTreeSet<&String> = rows.iter().map(|r| &r.2).collect();
        assert_eq!(distinct.len(), K);
    }
    let rep = p.json(&["report", "export", "--json"])["report"].clone();
    assert_eq!(rep["users"], ds.n_users());
    assert_eq!(rep["items"], n);
    assert_eq!(rep["k"], K);
    assert_eq!(rep["exclude_history"], true);
    assert!(rep["seconds"].as_f64().expect("seconds") > 0.0);
    let m = gnno_core::manifest::Manifest::read(&p.workdir().join("export"))
        .expect("manifest")
        .expect("published");
    let rows = |f: &str| {
        m.outputs
            .iter()
            .find(|o| o.path.ends_with(f))
            .and_then(|o| o.rows)
    };
    assert_eq!(
        rows("recommendations.parquet"),
        Some((ds.n_users() * K) as u64)
    );
    assert_eq!(rows("item_embeddings.parquet"), Some(n as u64));

    // docs/load_model.py rebuilds the model from the file alone and gives the
    // same top 10 for a user's whole history.
    let _ = loader_reproduces(&ds, &model, &recs);

    // Byte-identical with another thread count (threads change no setting: a
    // forced rerun into a fresh folder).
    let files = [
        "item_embeddings.parquet",
        "model.safetensors",
        "recommendations.parquet",
    ];
    let before: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(dir.join(f)).expect("read"))
        .collect();
    let cfg = std::fs::read_to_string(p.path().join("pipeline.toml")).expect("read");
    p.config(
        &cfg.replace("threads = 2", "threads = 1")
            .replace("[export]\n", "[export]\nbatch-size = 7\n"),
    );
    p.ok(&["stage", "export", "--force"]);
    let dir1 = run_dir(&p.workdir(), "export");
    assert_ne!(dir1, dir);
    for (f, b) in files.iter().zip(&before) {
        assert!(
            &std::fs::read(dir1.join(f)).expect("read") == b,
            "{f} differs with 1 thread and batch 7"
        );
    }

    // A users file: its users only, in its order; an unknown id names the line.
    let (a, b) = (&ds.user_raw[5], &ds.user_raw[2]);
    p.write("users.txt", &format!("{a}\n\n{b}\n"));
    p.config(&cfg.replace("[export]\n", "[export]\nusers = \"users.txt\"\n"));
    let st = p.ok(&["status"]);
    assert!(
        st.contains("export     stale: setting export.users changed"),
        "{st}"
    );
    p.ok(&["run"]);
    let users: Vec<String> = recommendations(&run_dir(&p.workdir(), "export"))
        .into_iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(users, [vec![a.clone(); K], vec![b.clone(); K]].concat());
    // Its content counts, not only its path.
    p.write("users.txt", &format!("{b}\nnobody\n"));
    let st = p.ok(&["status"]);
    assert!(
        st.contains("export     stale: setting export.users.sha256 changed"),
        "{st}"
    );
    let o = p.gnno(&["run"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("users.txt:2: unknown user id \"nobody\""),
        "{}",
        stderr(&o)
    );
}

#[test]
fn warm_start_carries_items_by_raw_id_from_the_last_accepted_export() {
    let p = Project::new();
    p.write("logs/a.tsv", &synthetic_log(300, 120, 11));
    let base = glob_logs(&config("epochs = 3\nwarm-start = \"last-accepted\"", ""));
    p.config(&base);
    // First night: no accepted export yet, so a cold start that says so.
    p.ok(&["run"]);
    let t = p.json(&["report", "train", "--json"])["report"].clone();
    assert!(t["warm_start"].is_null(), "{t}");
    let old_export = run_dir(&p.workdir(), "export");
    let old_emb: BTreeMap<String, Vec<f32>> = embeddings(&old_export, 16).into_iter().collect();
    // The runner accepted it: `current -> export/<run_dir>`, relative.
    let link = p.workdir().join("current");
    let rel = Path::new("export").join(old_export.file_name().expect("name"));
    assert_eq!(std::fs::read_link(&link).expect("current is a link"), rel);
    // An accepted export is not an input: nothing is stale.
    for s in p.json(&["status", "--json"]).as_array().expect("stages") {
        assert_eq!(s["status"]["state"], "up-to-date", "{s}");
    }

    // Next night: a new log with new users and new items. lr = 0 keeps the
    // model exactly where it starts, so the new export shows what was carried.
    // Users w*, items n*: none seen before.
    let log = synthetic_log(60, 40, 5);
    let mut lines = log.lines();
    let mut more = format!("{}\n", lines.next().expect("header"));
    for l in lines {
        more += &format!("w{}\n", l[1..].replacen("\ti", "\tn", 1));
    }
    p.write("logs/b.tsv", &more);
    let from = std::fs::canonicalize(&link).expect("resolves");
    p.config(&with_train(
        &base,
        "lr = 0.0\nweight-decay = 0.0\nwarm-start-epochs = 2",
    ));
    // Killed after its first epoch, then rerun: it resumes from its own
    // checkpoint (same run folder), not from the export again.
    let o = p.gnno_env(&["run"], &[("GNNO_FAULT_AFTER_EPOCH", "1")]);
    assert!(!o.status.success(), "the fault hook stops the run");
    p.ok(&["run"]);
    let t = p.json(&["report", "train", "--json"])["report"].clone();
    assert_eq!(t["resumed_at_epoch"], 1, "{t}");
    let ds = Dataset::load(&run_dir(&p.workdir(), "ingest")).expect("ingest");
    let new_ids: BTreeSet<&String> = ds.item_raw[1..].iter().collect();
    let old_ids: BTreeSet<&String> = old_emb.keys().collect();
    let w = &t["warm_start"];
    assert_eq!(w["from"], from.display().to_string(), "{w}");
    assert_eq!(
        w["items_carried"],
        new_ids.intersection(&old_ids).count(),
        "{w}"
    );
    assert_eq!(w["items_new"], new_ids.difference(&old_ids).count(), "{w}");
    assert_eq!(
        w["items_dropped"],
        old_ids.difference(&new_ids).count(),
        "{w}"
    );
    assert!(
        w["items_new"].as_u64().expect("n") >= 30,
        "the new log's items: {w}"
    );
    // warm-start-epochs, not epochs; the model never changes (lr = 0), so each
    // epoch scores the starting model's dev metric and none replaces it.
    let epochs = t["epochs"].as_array().expect("epochs");
    assert_eq!(epochs.len(), 2);
    for e in epochs {
        assert_eq!(e["dev_metric"], w["dev_metric"], "{e}");
    }
    assert!(t["best_epoch"].is_null(), "{t}");
    // Carried items keep their exported vectors exactly; new ones are fresh.
    let new_emb = embeddings(&run_dir(&p.workdir(), "export"), 16);
    let mut carried = 0;
    for (id, v) in &new_emb {
        match old_emb.get(id) {
            Some(old) => {
                assert_eq!(v, old, "item {id}");
                carried += 1;
            }
            None => assert!(
                !old_emb.values().any(|o| o == v) && v.iter().any(|x| *x != 0.0),
                "new item {id}"
            ),
        }
    }
    assert_eq!(w["items_carried"], carried);

    // The new export is accepted (`current` points at it): train stays up to date
    // (the source is mixed into its run folder's key only).
    let rel = Path::new("export").join(run_dir(&p.workdir(), "export").file_name().expect("name"));
    assert_eq!(std::fs::read_link(&link).expect("current is a link"), rel);
    let st = p.json(&["status", "--json"]);
    assert_eq!(st[3]["status"]["state"], "up-to-date", "{st}");
    // A model of another shape is refused, naming the file and the tensor.
    p.config(&base.replace("history-len = 8", "history-len = 6"));
    let o = p.gnno(&["run", "--to", "train"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("model.safetensors") && err.contains("tensor pos.weight has shape [8, 16]"),
        "{err}"
    );
}
