//! train: the model, trained on the shards (crate `gnno-train`).

use super::{train_job, Stage, StageName, StageOutput};
use crate::pipeline::Pipeline;
use anyhow::Result;
use gnno_core::config::Config;
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
    fn run(&self, p: &Pipeline, out: &Path, progress: &dyn Progress) -> Result<StageOutput> {
        let (ds, _) = p.dataset()?;
        let (_, ndir) = p.require(StageName::Negatives)?;
        let rep = gnno_train::train(&train_job(p, &ds, &ndir, out, progress))?;
        Ok(StageOutput::new(&rep))
    }
    fn figures(&self, report: &serde_json::Value) -> BTreeMap<String, f64> {
        super::pick(
            report,
            &[("best-dev", "best_dev_metric"), ("epochs", "epochs_run")],
        )
    }
}
