//! negatives: the hard-negative shards of every epoch (crate `gnno-negatives`).

use super::{Stage, StageName, StageOutput};
use crate::pipeline::Pipeline;
use anyhow::Result;
use gnno_core::config::{Config, SamplerKind};
use gnno_core::progress::Progress;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

pub struct Negatives;

impl Stage for Negatives {
    fn name(&self) -> &'static str {
        "negatives"
    }
    fn upstream(&self) -> &'static [StageName] {
        &[StageName::Ingest, StageName::Graph]
    }
    fn settings(&self, cfg: &Config) -> serde_json::Value {
        // The stage draws `train.epochs` epochs, each from its own seeded stream.
        serde_json::json!({
            "negatives": cfg.negatives,
            "train.epochs": cfg.train.epochs,
            "run.seed": cfg.run.seed,
        })
    }
    fn run(&self, p: &Pipeline, out: &Path, progress: &dyn Progress) -> Result<StageOutput> {
        let (ds, ingest_fp) = p.dataset()?;
        let (gm, _) = p.require(StageName::Graph)?;
        let cfg = &p.cfg.negatives;
        let t0 = Instant::now();
        let store;
        let graph: Option<&dyn gnno_store::GraphRead> = if cfg.sampler == SamplerKind::Gnno {
            store = p.graph_store(Some(&ingest_fp))?;
            Some(store.store())
        } else {
            None
        };
        let sampler = gnno_negatives::Sampler::new(cfg, &ds, graph)?;
        let prep = t0.elapsed().as_secs_f64();
        let id = gnno_negatives::RunIdentity {
            seed: p.cfg.run.seed,
            settings_hash: gnno_core::manifest::settings_hash(&self.settings(&p.cfg)),
            graph_fingerprint: gm.fingerprint,
            ingest_fingerprint: ingest_fp,
        };
        let t1 = Instant::now();
        let rep = gnno_negatives::run(&ds, &sampler, cfg, p.cfg.train.epochs, &id, out, progress)?;
        let draw = t1.elapsed().as_secs_f64();
        let mut o = StageOutput::new(&rep);
        o.timings.insert("load_graph".into(), prep);
        o.timings.insert("draw_and_write".into(), draw);
        #[expect(clippy::cast_precision_loss, reason = "rates")]
        if draw > 0.0 {
            o.report["negatives_per_second"] = serde_json::json!(rep.negatives_total as f64 / draw);
        }
        for e in &rep.epochs {
            if e.hardness.is_some() {
                o.rows.insert(
                    format!("{}/", gnno_core::shards::epoch_dir(e.epoch)),
                    e.rows,
                );
            }
        }
        Ok(o)
    }
    fn figures(&self, report: &serde_json::Value) -> BTreeMap<String, f64> {
        super::pick(
            report,
            &[("negatives", "negatives_total"), ("leakage", "leakage")],
        )
    }
}
