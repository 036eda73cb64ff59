//! evaluate: full-ranking and sampled metrics of the best model (crate `gnno-train`).

use super::{section_without, train_job, Stage, StageName, StageOutput};
use crate::pipeline::Pipeline;
use anyhow::Result;
use gnno_core::config::Config;
use gnno_core::progress::Progress;
use std::path::Path;

pub struct Evaluate;

impl Stage for Evaluate {
    fn name(&self) -> &'static str {
        "evaluate"
    }
    fn upstream(&self) -> &'static [StageName] {
        &[StageName::Ingest, StageName::Train]
    }
    fn settings(&self, cfg: &Config) -> serde_json::Value {
        // The sampled protocol draws its candidates from the seed; the batch size
        // only sizes memory.
        serde_json::json!({
            "evaluate": section_without(&cfg.evaluate, &["batch_size"]),
            "run.seed": cfg.run.seed,
        })
    }
    fn run(&self, p: &Pipeline, out: &Path, progress: &dyn Progress) -> Result<StageOutput> {
        let (ds, _) = p.dataset()?;
        let (_, tdir) = p.require(StageName::Train)?;
        let rep = gnno_train::evaluate(&train_job(p, &ds, &tdir, out, progress))?;
        Ok(StageOutput::new(&rep))
    }
}
