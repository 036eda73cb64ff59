//! Glue between the runner and the stage crates: what each stage reads from its
//! upstream folders and what it reports.

use crate::cli::StageName;
use crate::runner::Pipeline;
use anyhow::Result;
use gnno_core::config::SamplerKind;
use gnno_core::dataset::Dataset;
use gnno_core::progress::Progress;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

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

pub const STORE_DIR: &str = "store";

pub fn run(p: &Pipeline, s: StageName, out: &Path, progress: &dyn Progress) -> Result<StageOutput> {
    match s {
        StageName::Ingest => ingest(p, out, progress),
        StageName::Graph => graph(p, out, progress),
        StageName::Negatives => negatives(p, out, progress),
        StageName::Train => train(p, out, progress),
        StageName::Evaluate => evaluate(p, out, progress),
    }
}

fn ingest(p: &Pipeline, out: &Path, progress: &dyn Progress) -> Result<StageOutput> {
    let rep = gnno_ingest::run(&p.cfg.ingest, &p.config_dir, out, progress)?;
    let mut o = StageOutput::new(&rep);
    o.rows
        .insert(gnno_core::dataset::INTERACTIONS_FILE.into(), rep.rows_out);
    o.rows
        .insert(gnno_core::dataset::ITEMS_FILE.into(), rep.items);
    o.rows
        .insert(gnno_core::dataset::USERS_FILE.into(), rep.users);
    Ok(o)
}

/// The ingest output, loaded.
pub fn dataset(p: &Pipeline) -> Result<(Dataset, String)> {
    let (m, dir) = p.require(StageName::Ingest)?;
    Ok((Dataset::load(&dir)?, m.fingerprint))
}

fn graph(p: &Pipeline, out: &Path, progress: &dyn Progress) -> Result<StageOutput> {
    let t0 = Instant::now();
    let (ds, ingest_fp) = dataset(p)?;
    let seqs: Vec<&[u32]> = (0..ds.n_users())
        .map(|u| ds.train_seq(u32::try_from(u).unwrap_or(0)))
        .collect();
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

fn negatives(p: &Pipeline, out: &Path, progress: &dyn Progress) -> Result<StageOutput> {
    let (ds, ingest_fp) = dataset(p)?;
    let (gm, gdir) = p.require(StageName::Graph)?;
    let cfg = &p.cfg.negatives;
    let t0 = Instant::now();
    let store;
    let graph: Option<&dyn gnno_store::GraphRead> = if cfg.sampler == SamplerKind::Gnno {
        store = gnno_store::Store::open(&gdir.join(STORE_DIR), Some(&ingest_fp))?;
        Some(&store)
    } else {
        None
    };
    let sampler = gnno_negatives::Sampler::new(cfg, &ds, graph)?;
    let prep = t0.elapsed().as_secs_f64();
    let id = gnno_negatives::RunIdentity {
        seed: p.cfg.run.seed,
        settings_hash: gnno_core::manifest::settings_hash(&p.settings(StageName::Negatives)),
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

fn train(p: &Pipeline, out: &Path, progress: &dyn Progress) -> Result<StageOutput> {
    let (ds, _) = dataset(p)?;
    let (_, ndir) = p.require(StageName::Negatives)?;
    let rep = gnno_train::train(&gnno_train::Job {
        ds: &ds,
        input: &ndir,
        cfg: &p.cfg.train,
        eval: &p.cfg.evaluate,
        hard_from: p.cfg.negatives.warmup,
        n_hard: p.cfg.negatives.n_hard,
        seed: p.cfg.run.seed,
        device: &p.cfg.run.device,
        threads: p.cfg.threads(),
        out,
        progress,
    })?;
    Ok(StageOutput::new(&rep))
}

fn evaluate(p: &Pipeline, out: &Path, progress: &dyn Progress) -> Result<StageOutput> {
    let (ds, _) = dataset(p)?;
    let (_, tdir) = p.require(StageName::Train)?;
    let rep = gnno_train::evaluate(&gnno_train::Job {
        ds: &ds,
        input: &tdir,
        cfg: &p.cfg.train,
        eval: &p.cfg.evaluate,
        hard_from: p.cfg.negatives.warmup,
        n_hard: p.cfg.negatives.n_hard,
        seed: p.cfg.run.seed,
        device: &p.cfg.run.device,
        threads: p.cfg.threads(),
        out,
        progress,
    })?;
    Ok(StageOutput::new(&rep))
}
