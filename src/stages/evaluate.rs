//! evaluate: full-ranking and sampled metrics of the best model (crate `gnno-train`).

use super::{section_without, train_job, Stage, StageName, StageOutput};
use crate::pipeline::Pipeline;
use anyhow::Result;
use gnno_core::config::Config;
use gnno_core::progress::Progress;
use std::collections::BTreeMap;
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
    /// `dev.<metric>` and `test.<metric>` of the headline protocol, and `users`.
    fn figures(&self, report: &serde_json::Value) -> BTreeMap<String, f64> {
        let mut f = super::pick(report, &[("users", "test_users")]);
        for (split, key) in [("dev", "dev_full"), ("test", "test_full")] {
            if let Some(m) = report.get(key).and_then(serde_json::Value::as_object) {
                for (metric, v) in m {
                    if let Some(v) = v.as_f64() {
                        f.insert(format!("{split}.{metric}"), v);
                    }
                }
            }
        }
        f
    }
}
