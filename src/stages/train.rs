//! train: the model, trained on the shards (crate `gnno-train`).

use super::{train_job, Stage, StageName, StageOutput};
use crate::pipeline::Pipeline;
use anyhow::Result;
use gnno_core::config::{Config, WarmStart};
use gnno_core::progress::Progress;
use std::collections::BTreeMap;
use std::path::Path;

pub struct Train;

impl Stage for Train {
    fn name(&self) -> &'static str {
        "train"
    }
    fn upstream(&self) -> &'static [StageName] {
        &[StageName::Ingest, StageName::Negatives]
    }
    fn settings(&self, cfg: &Config) -> serde_json::Value {
        // Every [train] key; `evaluate.exclude-history` shapes the dev ranking that
        // picks the best epoch. `evaluate.batch-size` only sizes memory: left out.
        serde_json::json!({
            "train": cfg.train,
            "run.seed": cfg.run.seed,
            "evaluate.exclude-history": cfg.evaluate.exclude_history,
        })
    }
    /// A warm-started run's folder depends on the model it starts from (the
    /// model file's SHA-256), so it never reuses a cold run's folder or another
    /// source's; a new accepted export alone does not make train stale, or every
    /// export would retrain the next night.
    fn run_key_extra(&self, p: &Pipeline) -> Result<String> {
        Ok(match warm_source(p)? {
            Some(dir) => format!(
                "warm-start={}",
                gnno_core::fsutil::sha256_file(&dir.join(gnno_train::export::MODEL_FILE))?
            ),
            None => String::new(),
        })
    }
    fn run(&self, p: &Pipeline, out: &Path, progress: &dyn Progress) -> Result<StageOutput> {
        let (ds, _) = p.dataset()?;
        let (_, ndir) = p.require(StageName::Negatives)?;
        let warm = warm_source(p)?;
        if p.cfg.train.warm_start != WarmStart::Off && warm.is_none() {
            tracing::warn!("train.warm-start: no accepted export yet (no <workdir>/current); training from scratch");
        }
        let mut job = train_job(p, &ds, &ndir, out, progress);
        job.warm_from = warm.as_deref();
        let rep = gnno_train::train(&job)?;
        Ok(StageOutput::new(&rep))
    }
    fn figures(&self, report: &serde_json::Value) -> BTreeMap<String, f64> {
        super::pick(
            report,
            &[("best-dev", "best_dev_metric"), ("epochs", "epochs_run")],
        )
    }
}

/// The export folder to warm-start from, when `train.warm-start` asks for one and
/// one has been accepted.
fn warm_source(p: &Pipeline) -> Result<Option<std::path::PathBuf>> {
    match p.cfg.train.warm_start {
        WarmStart::Off => Ok(None),
        WarmStart::LastAccepted => p.current_export(),
    }
}
