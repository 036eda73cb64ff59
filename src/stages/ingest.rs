//! ingest: raw files to the interaction table (crate `gnno-ingest`).

use super::{Stage, StageName, StageOutput};
use crate::pipeline::Pipeline;
use anyhow::Result;
use gnno_core::config::Config;
use gnno_core::dataset::{INTERACTIONS_FILE, ITEMS_FILE, USERS_FILE};
use gnno_core::progress::Progress;
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
        let rep = gnno_ingest::run(&p.cfg.ingest, &p.config_dir, out, progress)?;
        let mut o = StageOutput::new(&rep);
        o.rows.insert(INTERACTIONS_FILE.into(), rep.rows_out);
        o.rows.insert(ITEMS_FILE.into(), rep.items);
        o.rows.insert(USERS_FILE.into(), rep.users);
        Ok(o)
    }
}
