//! The stages as the runner sees them: each one says, next to its own code, which
//! stages it reads, which settings can change its output, and how it runs. The
//! runner (src/runner.rs) derives hashes and staleness from these declarations and
//! never names a stage's settings itself.

mod evaluate;
mod export;
mod graph;
mod ingest;
mod negatives;
mod train;

use crate::pipeline::Pipeline;
use anyhow::Result;
use gnno_core::config::Config;
use gnno_core::progress::Progress;
use std::collections::BTreeMap;
use std::path::Path;

pub const STORE_DIR: &str = "store";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum StageName {
    Ingest,
    Graph,
    Negatives,
    Train,
    Evaluate,
    Export,
}

impl StageName {
    pub const ALL: [Self; 6] = [
        Self::Ingest,
        Self::Graph,
        Self::Negatives,
        Self::Train,
        Self::Evaluate,
        Self::Export,
    ];

    pub fn as_str(self) -> &'static str {
        self.stage().name()
    }

    /// The stage's declaration.
    pub fn stage(self) -> &'static dyn Stage {
        match self {
            Self::Ingest => &ingest::Ingest,
            Self::Graph => &graph::Graph,
            Self::Negatives => &negatives::Negatives,
            Self::Train => &train::Train,
            Self::Evaluate => &evaluate::Evaluate,
            Self::Export => &export::Export,
        }
    }

    /// The stages whose outputs this one reads.
    pub fn upstream(self) -> &'static [Self] {
        self.stage().upstream()
    }
}

impl std::fmt::Display for StageName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One stage of the graph (DVC's deps / params / outs, in code).
pub trait Stage: Sync {
    fn name(&self) -> &'static str;
    /// The stages whose published outputs it reads.
    fn upstream(&self) -> &'static [StageName];
    /// Every setting that can change its output, keyed by config key path: a whole
    /// section (`"graph"`) or one key (`"run.seed"`). Settings that cannot change
    /// the output (threads, device, memory-only batch sizes) stay out, so changing
    /// them never makes the stage stale. A test walks docs/CONFIG.md against this.
    fn settings(&self, cfg: &Config) -> serde_json::Value;
    /// Mixed into the run folder's key only, never into staleness: what selects
    /// a different output without making a published one stale (the train
    /// stage's warm-start source).
    fn run_key_extra(&self, _p: &Pipeline) -> Result<String> {
        Ok(String::new())
    }
    /// Run into `out` (a fresh or resumable run folder) and describe the result.
    fn run(&self, p: &Pipeline, out: &Path, progress: &dyn Progress) -> Result<StageOutput>;
    /// The headline figures of a report, named as in `gnno_core::config::STAGE_FIGURES`:
    /// what gates bound and what `gnno history` shows.
    fn figures(&self, report: &serde_json::Value) -> BTreeMap<String, f64>;
}

/// Figures read from report fields: `(figure name, report key)`.
fn pick(report: &serde_json::Value, names: &[(&str, &str)]) -> BTreeMap<String, f64> {
    names
        .iter()
        .filter_map(|(fig, key)| {
            report
                .get(*key)
                .and_then(serde_json::Value::as_f64)
                .map(|v| ((*fig).to_owned(), v))
        })
        .collect()
}

/// What a stage hands back to the runner for its manifest.
pub struct StageOutput {
    pub report: serde_json::Value,
    /// Content fingerprint for downstream stages; None = hash of the output files.
    pub fingerprint: Option<String>,
    pub rows: BTreeMap<String, u64>,
    pub timings: BTreeMap<String, f64>,
    /// Sub-folders kept as one unit, with their content fingerprints.
    pub opaque: BTreeMap<String, String>,
}

impl StageOutput {
    fn new(report: impl serde::Serialize) -> Self {
        Self {
            report: serde_json::to_value(report).unwrap_or_default(),
            fingerprint: None,
            rows: BTreeMap::new(),
            timings: BTreeMap::new(),
            opaque: BTreeMap::new(),
        }
    }
}

/// A config section serialized, without the keys that cannot change an output.
/// What gnno-train's train and evaluate stages are given: the dataset, the
/// upstream run folder (`input`) and the config's train, evaluate and run settings.
pub(crate) fn train_job<'a>(
    p: &'a Pipeline,
    ds: &'a gnno_core::dataset::Dataset,
    input: &'a Path,
    out: &'a Path,
    progress: &'a dyn Progress,
) -> gnno_train::Job<'a> {
    gnno_train::Job {
        ds,
        input,
        cfg: &p.cfg.train,
        eval: &p.cfg.evaluate,
        hard_from: p.cfg.negatives.warmup,
        n_hard: p.cfg.negatives.n_hard,
        seed: p.cfg.run.seed,
        device: &p.cfg.run.device,
        threads: p.cfg.threads(),
        out,
        progress,
        warm_from: None,
    }
}

fn section_without(v: &impl serde::Serialize, drop: &[&str]) -> serde_json::Value {
    let mut v = serde_json::to_value(v).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        for k in drop {
            m.remove(*k);
        }
    }
    v
}

#[cfg(test)]
mod tests;
