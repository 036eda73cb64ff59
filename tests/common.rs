//! Helpers shared by the end-to-end tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// ../shared, from the manifest folder cargo gives the running test (not the one
/// baked in at compile time: one target folder serves several checkouts).
pub fn shared() -> PathBuf {
    PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR"),
    )
    .join("../shared")
}

/// A temporary project folder with its own pipeline.toml.
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join(name);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::write(&p, text).expect("write");
        p
    }

    pub fn config(&self, text: &str) -> PathBuf {
        self.write("pipeline.toml", text)
    }

    pub fn workdir(&self) -> PathBuf {
        self.path().join("work")
    }

    /// Run gnno with this project's config; returns the output whatever the status.
    pub fn gnno(&self, args: &[&str]) -> Output {
        self.gnno_env(args, &[])
    }

    pub fn gnno_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_gnno"));
        c.arg("--config")
            .arg(self.path().join("pipeline.toml"))
            .arg("--quiet")
            .args(args)
            .current_dir(self.path());
        c.env_remove("RUST_LOG");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().expect("gnno runs")
    }

    /// Run and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.gnno(args);
        assert!(
            o.status.success(),
            "gnno {args:?} failed ({:?}):\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.ok(args);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("gnno {args:?}: not JSON ({e}):\n{out}"))
    }
}

/// Run gnno in `cwd` with exactly `args` (the config named as the test names it).
pub fn gnno_in(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gnno"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("gnno runs")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A deterministic synthetic log (TSV with header): users browse clusters of items.
pub fn synthetic_log(users: u32, items: u32, seed: u64) -> String {
    let mut s = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    let mut next = move |n: u32| {
        s = s
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        u32::try_from((s >> 33) % u64::from(n)).unwrap_or(0)
    };
    let clusters = 10;
    let per = items / clusters;
    let mut out = String::from("user_id\titem_id\ttimestamp\n");
    for u in 0..users {
        let len = 6 + next(12);
        let mut c = next(clusters);
        let mut p = next(per);
        let mut t = 1_400_000_000 + u64::from(next(1_000_000));
        for _ in 0..len {
            if next(10) == 0 {
                c = next(clusters);
                p = next(per);
            } else {
                p = (p + 1 + next(3)) % per;
            }
            t += u64::from(next(86_400));
            out += &format!("u{u}\ti{}\t{t}\n", c * per + p);
        }
    }
    out
}

/// A small, fast pipeline config over `data.tsv`.
pub fn small_config(extra: &str) -> String {
    format!(
        r#"[run]
workdir = "work"
seed = 7
threads = 2
device = "cpu"
[ingest]
inputs = ["data.tsv"]
separator = "\t"
time-col = "timestamp"
user-core = 3
item-core = 3
[negatives]
n-hard = 3
warmup = 1
pace = 0.1
max-hardness = 0.5
shard-rows = 500
[train]
epochs = 3
dim = 16
heads = 2
layers = 1
n-random = 4
batch-size = 128
lr = 0.005
[evaluate]
sampled-negatives = 20
batch-size = 256
{extra}"#
    )
}

/// Every file under `dir` with its bytes, by relative path.
pub fn snapshot(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    for f in gnno_core::fsutil::list_files(dir).expect("list") {
        out.insert(
            f.display().to_string(),
            std::fs::read(dir.join(&f)).expect("read"),
        );
    }
    out
}

/// The published run folder of a stage.
pub fn run_dir(workdir: &Path, stage: &str) -> PathBuf {
    let m = gnno_core::manifest::Manifest::read(&workdir.join(stage))
        .expect("manifest readable")
        .expect("manifest exists");
    m.run_path(&workdir.join(stage))
}

/// Assert two folder snapshots are identical, naming the first differing file and,
/// for shards, the footer keys that differ.
pub fn assert_same_files(
    a: &std::collections::BTreeMap<String, Vec<u8>>,
    b: &std::collections::BTreeMap<String, Vec<u8>>,
    a_dir: &Path,
    b_dir: &Path,
) {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "different file sets"
    );
    for (k, v) in a {
        if v != &b[k] {
            let mut why = String::new();
            if k.ends_with(".parquet") {
                let (ma, _) = gnno_core::shards::read_meta(&a_dir.join(k)).expect("meta");
                let (mb, _) = gnno_core::shards::read_meta(&b_dir.join(k)).expect("meta");
                for (key, val) in &ma {
                    if mb.get(key) != Some(val) {
                        why += &format!("\n  {key}: {val:?} vs {:?}", mb.get(key));
                    }
                }
            }
            panic!("{k} differs ({} vs {} bytes){why}", v.len(), b[k].len());
        }
    }
}

/// HR@k of ranking every item by its train popularity (ties pessimistic, as the
/// evaluate stage ranks), on the test users of the published ingest output: the
/// baseline a trained model must beat.
pub fn popularity_hr(workdir: &Path, k: u64) -> f64 {
    let ds = gnno_core::dataset::Dataset::load(&run_dir(workdir, "ingest")).expect("ingest");
    let mut count = vec![0u64; ds.n_items as usize + 1];
    for &i in &ds.train_items {
        count[i as usize] += 1;
    }
    let (mut hits, mut users) = (0u64, 0u64);
    for &t in ds.test.iter().filter(|&&t| t != 0) {
        let ahead = (1..=ds.n_items as usize)
            .filter(|&j| j != t as usize && count[j] >= count[t as usize])
            .count() as u64;
        users += 1;
        hits += u64::from(ahead < k);
    }
    assert!(users > 0, "no test user");
    #[expect(clippy::cast_precision_loss, reason = "small counts")]
    let hr = hits as f64 / users as f64;
    hr
}

/// `cfg` with `keys` (`key = value` lines) set in its [train] table, replacing the
/// lines it had for those keys.
pub fn with_train(cfg: &str, keys: &str) -> String {
    let key = |l: &str| l.split('=').next().unwrap_or("").trim().to_owned();
    let names: std::collections::BTreeSet<String> =
        keys.lines().map(key).filter(|k| !k.is_empty()).collect();
    let mut out = String::new();
    let mut in_train = false;
    for line in cfg.lines() {
        if line.starts_with('[') {
            in_train = line == "[train]";
        }
        if in_train && names.contains(&key(line)) {
            continue;
        }
        out += line;
        out += "\n";
        if line == "[train]" {
            out += keys;
            out += "\n";
        }
    }
    out
}

/// `small_config`'s input `data.tsv` replaced by the glob `logs/*.tsv`.
pub fn glob_logs(cfg: &str) -> String {
    cfg.replace("inputs = [\"data.tsv\"]", "inputs = [\"logs/*.tsv\"]")
}
