//! graph: the WITG and the overlap lists into the sled store (crate `gnno-graph`).

use super::{Stage, StageName, StageOutput, STORE_DIR};
use crate::pipeline::Pipeline;
use anyhow::Result;
use gnno_core::config::Config;
use gnno_core::progress::Progress;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

pub struct Graph;

impl Stage for Graph {
    fn name(&self) -> &'static str {
        "graph"
    }
    fn upstream(&self) -> &'static [StageName] {
        &[StageName::Ingest]
    }
    fn settings(&self, cfg: &Config) -> serde_json::Value {
        serde_json::json!({ "graph": cfg.graph })
    }
    fn run(&self, p: &Pipeline, out: &Path, progress: &dyn Progress) -> Result<StageOutput> {
        let t0 = Instant::now();
        let (ds, ingest_fp) = p.dataset()?;
        let seqs: Vec<&[u32]> = ds.train_seqs().collect();
        let load_s = t0.elapsed().as_secs_f64();
        let (rep, info) = gnno_graph::run(
            &seqs,
            ds.n_items,
            &p.cfg.graph,
            &ingest_fp,
            &out.join(STORE_DIR),
            progress,
        )?;
        let mut o = StageOutput::new(&rep);
        o.opaque
            .insert(STORE_DIR.into(), info.content_fingerprint.clone());
        o.rows.insert(STORE_DIR.into(), rep.overlap_pairs);
        o.fingerprint = Some(info.content_fingerprint);
        o.timings.insert("load".into(), load_s);
        Ok(o)
    }
    fn figures(&self, report: &serde_json::Value) -> BTreeMap<String, f64> {
        super::pick(
            report,
            &[
                ("edges", "directed_edges"),
                ("pairs", "overlap_pairs"),
                ("items-with-edges", "items_with_edges"),
            ],
        )
    }
}
