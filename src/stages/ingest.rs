//! ingest: raw files to the interaction table (crate `gnno-ingest`).

use super::{Stage, StageName, StageOutput};
use crate::pipeline::Pipeline;
use anyhow::Result;
use gnno_core::config::Config;
use gnno_core::dataset::{INTERACTIONS_FILE, ITEMS_FILE, USERS_FILE};
use gnno_core::progress::Progress;
use std::collections::BTreeMap;
use std::path::Path;

pub struct Ingest;

impl Stage for Ingest {
    fn name(&self) -> &'static str {
        "ingest"
    }
    fn upstream(&self) -> &'static [StageName] {
        &[]
    }
    fn settings(&self, cfg: &Config) -> serde_json::Value {
        serde_json::json!({ "ingest": cfg.ingest })
    }
    fn run(&self, p: &Pipeline, out: &Path, progress: &dyn Progress) -> Result<StageOutput> {
        let rep = gnno_ingest::run(&p.cfg.ingest, &p.cfg.folder, out, progress)?;
        let mut o = StageOutput::new(&rep);
        o.rows.insert(INTERACTIONS_FILE.into(), rep.rows_out);
        o.rows.insert(ITEMS_FILE.into(), rep.items);
        o.rows.insert(USERS_FILE.into(), rep.users);
        Ok(o)
    }
    fn figures(&self, report: &serde_json::Value) -> BTreeMap<String, f64> {
        let mut f = super::pick(
            report,
            &[
                ("rows", "rows_out"),
                ("rows-read", "rows_read"),
                ("users", "users"),
                ("items", "items"),
                ("bad-rows", "bad_rows"),
                ("train-rows", "train_rows"),
                ("dev-rows", "dev_rows"),
                ("test-rows", "test_rows"),
            ],
        );
        if let (Some(bad), Some(read)) = (f.get("bad-rows"), f.get("rows-read")) {
            f.insert(
                "bad-row-share".into(),
                if *read > 0.0 { bad / read } else { 0.0 },
            );
        }
        f
    }
}
