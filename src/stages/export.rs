//! export: embeddings, the model file and top-K recommendations with raw ids, for
//! serving (crate `gnno-train`). It reads evaluate's output only to run after it:
//! a model is exported once its evaluation has published.

use super::{section_without, train_job, Stage, StageName, StageOutput};
use crate::pipeline::Pipeline;
use anyhow::Result;
use gnno_core::config::Config;
use gnno_core::progress::Progress;
use gnno_train::export::{EMBEDDINGS_FILE, RECOMMENDATIONS_FILE};
use std::collections::BTreeMap;
use std::path::Path;

pub struct Export;

impl Stage for Export {
    fn name(&self) -> &'static str {
        "export"
    }
    fn upstream(&self) -> &'static [StageName] {
        &[StageName::Ingest, StageName::Train, StageName::Evaluate]
    }
    fn settings(&self, cfg: &Config) -> serde_json::Value {
        // The batch size only sizes memory. The users file counts by content: its
        // path and SHA-256, so editing the list makes the stage stale.
        let mut export = section_without(&cfg.export, &["batch_size"]);
        if let (Some(path), Some(raw)) = (&cfg.export.users_path, &cfg.export.users) {
            let sha256 = gnno_core::fsutil::sha256_file(path)
                .unwrap_or_else(|e| format!("<unreadable: {e}>"));
            export["users"] = serde_json::json!({ "path": raw, "sha256": sha256 });
        }
        serde_json::json!({ "export": export })
    }
    fn run(&self, p: &Pipeline, out: &Path, progress: &dyn Progress) -> Result<StageOutput> {
        let (ds, _) = p.dataset()?;
        let (tm, tdir) = p.require(StageName::Train)?;
        // Only a model that evaluate has scored (and whose gates it passed) is
        // served: `gnno stage export` after a failed evaluate gate is refused.
        let (em, _) = p.require(StageName::Evaluate)?;
        if !em
            .inputs
            .iter()
            .any(|i| i.name == StageName::Train.as_str() && i.fingerprint == tm.fingerprint)
        {
            return Err(gnno_core::Error::usage(format!(
                "the published model (train {}) has not passed evaluation: the published evaluate run scored another one",
                tm.run_dir
            ))
            .with_hint("run `gnno run` (evaluate, then export), or `gnno rollback train` to the evaluated model")
            .into());
        }
        let rep =
            gnno_train::export::export(&train_job(p, &ds, &tdir, out, progress), &p.cfg.export)?;
        let mut o = StageOutput::new(&rep);
        o.rows.insert(EMBEDDINGS_FILE.into(), rep.items);
        o.rows
            .insert(RECOMMENDATIONS_FILE.into(), rep.recommendations);
        o.timings.insert("export".into(), rep.seconds);
        Ok(o)
    }
    fn figures(&self, report: &serde_json::Value) -> BTreeMap<String, f64> {
        super::pick(report, &[("users", "users"), ("items", "items")])
    }
}
