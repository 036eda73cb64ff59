//! Whole-stage benchmarks (`cargo bench --bench stages -- [graph|negatives|ingest|all]`).
//!
//! Each section times our code next to a baseline run in the same process or the
//! same run (python/scipy, polars reading the file) and prints the ratio, because
//! these machines are shared and noisy. Needs ../shared/data for the Beauty sections.

use gnno_core::config::{Config, NegativesSettings};
use gnno_core::dataset::Dataset;
use gnno_core::progress::NoProgress;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared")
}

/// Peak resident memory of this process so far, in MiB (Linux VmHWM).
fn peak_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn beauty(tmp: &Path) -> Dataset {
    let mut cfg = Config::defaults(Path::new("/"));
    cfg.ingest.inputs = vec![shared().join("data/s3rec/Beauty.txt").display().to_string()];
    cfg.ingest.format = gnno_core::config::InputFormat::Sequences;
    cfg.ingest.user_core = 0;
    cfg.ingest.item_core = 0;
    let out = tmp.join("ingest");
    std::fs::create_dir_all(&out).expect("mkdir");
    gnno_ingest::run(&cfg.ingest, Path::new("/"), &out, &NoProgress).expect("ingest Beauty");
    Dataset::load(&out).expect("load")
}

fn bench_graph(tmp: &Path) {
    let ds = beauty(tmp);
    let seqs: Vec<&[u32]> = (0..ds.n_users()).map(|u| ds.train_seq(u as u32)).collect();
    let cfg = Config::defaults(Path::new("/")).graph;
    let t = Instant::now();
    let g = gnno_graph::build_witg(&seqs, ds.n_items, 3);
    let t_witg = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let rows = gnno_graph::overlap_rows(&g, cfg.overlap, 0.0, 0);
    let t_overlap = t.elapsed().as_secs_f64();
    drop(rows);
    let store = tmp.join("store");
    let t = Instant::now();
    let (rep, _) = gnno_graph::run(&seqs, ds.n_items, &cfg, "bench", &store, &NoProgress)
        .expect("graph stage");
    let t_stage = t.elapsed().as_secs_f64();
    println!("graph (Beauty): WITG {t_witg:.3} s, overlap {t_overlap:.3} s, whole stage incl. store write {t_stage:.3} s");
    println!(
        "  pairs {} , store {:.1} MiB, peak RSS so far {:.0} MiB",
        rep.overlap_pairs,
        rep.store_bytes as f64 / 1048576.0,
        peak_mib()
    );
    let mut cfg2 = cfg.clone();
    cfg2.max_neighbors = 200;
    let t = Instant::now();
    let (rep2, _) = gnno_graph::run(
        &seqs,
        ds.n_items,
        &cfg2,
        "bench",
        &tmp.join("store200"),
        &NoProgress,
    )
    .expect("graph stage");
    println!(
        "  with max-neighbors 200: {:.3} s, pairs {}, store {:.1} MiB",
        t.elapsed().as_secs_f64(),
        rep2.overlap_pairs,
        rep2.store_bytes as f64 / 1048576.0
    );
    // Baseline: scipy sparse overlap, in the same run, when python3 has scipy.
    let script = r#"
import sys, time
import numpy as np, scipy.sparse as sp
seqs = [list(map(int, l.split()[1:])) for l in open(sys.argv[1])]
t0 = time.time()
rows, cols = [], []
for s in seqs:
    s = s[:-2]
    for j in range(len(s)):
        for k in (1, 2, 3):
            if j + k < len(s) and s[j] != s[j + k]:
                rows += [s[j], s[j + k]]; cols += [s[j + k], s[j]]
n = max(max(s) for s in seqs) + 1
A = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
A.data[:] = 1.0
t1 = time.time()
I = (A @ A.T).tocsr()
d = np.asarray(A.sum(1)).ravel()
I.data = I.data / (d[I.indices] + np.repeat(d, np.diff(I.indptr)) - I.data)
t2 = time.time()
print(f"{t1-t0:.3f} {t2-t1:.3f} {I.nnz}")
"#;
    let py = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    match Command::new(&py)
        .arg("-c")
        .arg(script)
        .arg(shared().join("data/s3rec/Beauty.txt"))
        .output()
    {
        Ok(o) if o.status.success() => {
            let out = String::from_utf8_lossy(&o.stdout);
            let v: Vec<f64> = out
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if v.len() >= 2 {
                println!("  scipy baseline: graph {:.3} s, overlap {:.3} s (nnz {}) -> whole gnno stage is {:.1}x faster than scipy's overlap alone", v[0], v[1], v.get(2).copied().unwrap_or(0.0), v[1] / t_stage);
            }
        }
        _ => println!("  scipy baseline skipped: `{py}` with numpy and scipy is not available"),
    }
}

fn bench_negatives(tmp: &Path) {
    let ds = beauty(tmp);
    let seqs: Vec<&[u32]> = (0..ds.n_users()).map(|u| ds.train_seq(u as u32)).collect();
    let mut cfg = Config::defaults(Path::new("/"));
    let store_path = tmp.join("store");
    if !store_path.exists() {
        gnno_graph::run(
            &seqs,
            ds.n_items,
            &cfg.graph,
            "bench",
            &store_path,
            &NoProgress,
        )
        .expect("graph");
    }
    let store = gnno_store::Store::open(&store_path, None).expect("store");
    let ncfg: NegativesSettings = cfg.negatives.clone();
    let t = Instant::now();
    let sampler = gnno_negatives::Sampler::new(&ncfg, &ds, Some(&store)).expect("sampler");
    let t_load = t.elapsed().as_secs_f64();
    let inst = ds.instances();
    // Draw only: one epoch at h = 0.2 (the authors' Beauty curriculum reaches 0.5).
    for h in [0.0, 0.2, 0.5] {
        let t = Instant::now();
        let total: usize = {
            use rayon::prelude::*;
            (0..inst.len())
                .into_par_iter()
                .map_init(Vec::new, |buf, i| {
                    let mut rng = gnno_negatives::instance_rng(42, 20, i as u64);
                    buf.clear();
                    sampler.draw(
                        inst.target[i],
                        h,
                        ncfg.n_hard,
                        ds.train_seq(inst.user[i]),
                        &mut rng,
                        buf,
                    );
                    buf.len()
                })
                .sum()
        };
        let s = t.elapsed().as_secs_f64();
        println!("negatives (Beauty, n_hard 9): h={h}: {total} drawn in {s:.3} s = {:.1} M/s (authors' dense draw: 30,500/s -> {:.0}x)", total as f64 / s / 1e6, total as f64 / s / 30_500.0);
    }
    // Draw and write: the stage's epoch loop, 3 hard epochs.
    cfg.train.epochs = ncfg.warmup + 3;
    let id = gnno_negatives::RunIdentity {
        seed: 42,
        settings_hash: "bench".into(),
        graph_fingerprint: "bench".into(),
        ingest_fingerprint: "bench".into(),
    };
    let out = tmp.join("neg");
    let _ = std::fs::remove_dir_all(&out);
    let t = Instant::now();
    let rep = gnno_negatives::run(
        &ds,
        &sampler,
        &ncfg,
        cfg.train.epochs,
        &id,
        &out,
        &NoProgress,
    )
    .expect("negatives");
    let s = t.elapsed().as_secs_f64();
    let bytes: u64 = rep.epochs.iter().map(|e| e.bytes).sum();
    println!(
        "  stage loop, 3 hard epochs: {s:.3} s, {:.2} s/epoch (authors: 38.7 s/epoch), {:.1} M negatives/s incl. Parquet, {:.2} MiB/epoch on disk; sampler load {t_load:.3} s; peak RSS {:.0} MiB",
        s / 3.0,
        rep.negatives_total as f64 / s / 1e6,
        bytes as f64 / 3.0 / 1048576.0,
        peak_mib()
    );
}

fn bench_train() {
    let mut cfg = Config::defaults(Path::new("/")).train;
    let batches = 4;
    let n_items = 12_101;
    let threads = rayon::current_num_threads();
    let py = std::env::var("PYTHON").unwrap_or_else(|_| "python".into());
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/torch_baseline.py");
    println!(
        "train (batch {}, {} random + 9 hard negatives, {n_items} items, {threads} threads):",
        cfg.batch_size, cfg.n_random
    );
    for (backbone, gamma) in [
        (gnno_core::config::Backbone::Encoder, 1.0),
        (gnno_core::config::Backbone::Encoder, 0.0),
        (gnno_core::config::Backbone::Sasrec, 0.0),
        (gnno_core::config::Backbone::Gru4rec, 0.0),
    ] {
        cfg.backbone = backbone;
        cfg.gamma = gamma;
        let ours =
            gnno_train::throughput(&cfg, n_items, 9, batches, "cpu", threads).expect("throughput");
        let name = serde_json::to_value(backbone)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let theirs = Command::new(&py)
            .arg(&script)
            .args([
                name.as_str(),
                &n_items.to_string(),
                &cfg.batch_size.to_string(),
                &(1 + cfg.n_random + 9).to_string(),
                &batches.to_string(),
                &gamma.to_string(),
                &threads.to_string(),
            ])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .parse::<f64>()
                    .ok()
            });
        match theirs {
            Some(t) => println!("  {name:<8} gamma={gamma}: gnno {ours:.0} inst/s, PyTorch eager {t:.0} inst/s, ratio {:.2}x; Beauty epoch (131,413) {:.1} s vs {:.1} s", ours / t, 131_413.0 / ours, 131_413.0 / t),
            None => println!("  {name:<8} gamma={gamma}: gnno {ours:.0} inst/s (PyTorch baseline unavailable: `{py}` with torch)"),
        }
    }
}

fn main() {
    let which: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let all = which.is_empty() || which.iter().any(|w| w == "all");
    let tmp = tempfile::tempdir().expect("tempdir");
    let want = |s: &str| all || which.iter().any(|w| w == s);
    println!("threads: {}", rayon::current_num_threads());
    if want("graph") {
        bench_graph(tmp.path());
    }
    if want("negatives") {
        bench_negatives(tmp.path());
    }
    if want("train") {
        bench_train();
    }
}
