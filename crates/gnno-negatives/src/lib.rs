//! The negatives stage: for every training instance and epoch, hard negatives drawn
//! under the curriculum (GNNO.md §4), written as Parquet shards that training
//! streams and people audit (docs/FORMATS.md, "negatives").
//!
//! Every (seed, epoch, instance) has its own random stream, so shards are identical
//! whatever the thread count, and a shard can be redrawn alone on resume.

pub mod audit;
pub mod sampler;
pub mod shard;

use gnno_core::config::{NegativesSettings, SamplerKind};
use gnno_core::dataset::Dataset;
use gnno_core::error::{Error, Result};
use gnno_core::progress::Progress;
use gnno_core::{mix_seed, ItemIdx};
use rand::rngs::Xoshiro256PlusPlus;
use rand::SeedableRng;
use rayon::prelude::*;
use sampler::{OverlapIndex, Popularity};
use serde::Serialize;
use std::path::Path;

/// Hardness of epoch `e`: None during warm-up, else min((e − warmup)·pace, max).
pub fn hardness(cfg: &NegativesSettings, epoch: u32) -> Option<f64> {
    (epoch >= cfg.warmup).then(|| (f64::from(epoch - cfg.warmup) * cfg.pace).min(cfg.max_hardness))
}

/// The sampler chosen in the config, ready to draw.
#[expect(
    clippy::large_enum_variant,
    reason = "one sampler per run, never moved in a loop"
)]
pub enum Sampler {
    Gnno { index: OverlapIndex, tau: f64 },
    Uniform { n_items: u32 },
    Popularity(Popularity),
}

impl Sampler {
    /// Prepare the sampler. `graph` is needed for `gnno` only.
    pub fn new(
        cfg: &NegativesSettings,
        ds: &Dataset,
        graph: Option<&dyn gnno_store::GraphRead>,
    ) -> Result<Self> {
        Ok(match cfg.sampler {
            SamplerKind::Gnno => {
                let g = graph
                    .ok_or_else(|| Error::internal("the gnno sampler needs the graph store"))?;
                if g.info().n_items != ds.n_items {
                    return Err(Error::artifact(
                        "graph store",
                        format!(
                            "built for {} items, the ingest output has {}",
                            g.info().n_items,
                            ds.n_items
                        ),
                    )
                    .with_hint("rerun `gnno run --from graph`"));
                }
                Self::Gnno {
                    index: OverlapIndex::load(g, cfg.temperature)?,
                    tau: cfg.temperature,
                }
            }
            SamplerKind::Uniform => Self::Uniform {
                n_items: ds.n_items,
            },
            SamplerKind::Popularity => {
                let mut counts = vec![0u64; ds.n_items as usize + 1];
                for &i in &ds.train_items {
                    counts[i as usize] += 1;
                }
                Self::Popularity(Popularity::new(&counts, cfg.popularity_alpha))
            }
        })
    }

    /// Draw `n` negatives for target `t` at hardness `h` into `out`.
    pub fn draw<R: rand::Rng>(
        &self,
        t: ItemIdx,
        h: f64,
        n: u32,
        exclude: &[ItemIdx],
        rng: &mut R,
        out: &mut Vec<Drawn>,
    ) {
        let prep = self.prepare(t, h);
        self.draw_prepared(prep.as_ref(), None, t, n, false, exclude, rng, out);
    }

    /// The per-(target, hardness) part of a draw, reusable across instances.
    pub fn prepare(&self, t: ItemIdx, h: f64) -> Option<sampler::Prepared> {
        match self {
            Self::Gnno { index, .. } => Some(index.prepare(t, h)),
            _ => None,
        }
    }

    /// Where t and `exclude` sit in t's overlap list (GNNO only; `prep` for t at
    /// any hardness): the part of a draw that depends on the instance but not on
    /// the epoch's hardness.
    pub fn locate(
        &self,
        prep: &sampler::Prepared,
        t: ItemIdx,
        exclude: &[ItemIdx],
    ) -> Option<sampler::Located> {
        match self {
            Self::Gnno { index, .. } => Some(index.locate(prep, t, exclude)),
            _ => None,
        }
    }

    /// [`Sampler::draw`] with the (target, hardness) part prepared and, when
    /// given, the instance's exclusions located (`loc`, for this t and `exclude`).
    /// `distinct`: each draw is excluded from the row's later ones (successive
    /// sampling without replacement), and its ln q is conditional on the draws
    /// before it; fewer than n come back when fewer items are left.
    #[expect(
        clippy::too_many_arguments,
        reason = "the draw's inputs, each prepared by the caller"
    )]
    pub fn draw_prepared<R: rand::Rng>(
        &self,
        prep: Option<&sampler::Prepared>,
        loc: Option<&sampler::Located>,
        t: ItemIdx,
        n: u32,
        distinct: bool,
        exclude: &[ItemIdx],
        rng: &mut R,
        out: &mut Vec<Drawn>,
    ) {
        if n == 0 {
            return;
        }
        match self {
            // GNNO draws from the instance's conditional distribution (t and the
            // exclusions removed), prepared once for its n draws, each draw with
            // its exact ln q; when distinct, each draw is then taken out of it in
            // place (`Conditioned::remove`), on the row's own copy of the
            // located exclusions.
            Self::Gnno { index, .. } => {
                let Some(p) = prep else { return };
                let located;
                let loc = if let Some(l) = loc {
                    l
                } else {
                    located = index.locate(p, t, exclude);
                    &located
                };
                draw_gnno(
                    &index.condition_located(p, loc),
                    distinct.then_some(loc),
                    n,
                    rng,
                    out,
                );
            }
            // The others give ln of their normaliser, subtracted from each draw's
            // log-weight; when distinct, each draw joins the exclusions.
            Self::Uniform { n_items } => draw_plain(
                n,
                distinct,
                exclude,
                |ex| sampler::uniform_log_norm(*n_items, t, ex),
                |ex| sampler::draw_uniform(*n_items, t, ex, rng).map(|j| (j, 0.0)),
                |d| out.push(stored(d)),
            ),
            Self::Popularity(pop) => draw_plain(
                n,
                distinct,
                exclude,
                |ex| pop.log_norm(t, ex),
                |ex| pop.draw(t, ex, rng).map(|j| (j, pop.weight(j).ln())),
                |d| out.push(stored(d)),
            ),
        }
    }

    /// One instance's rows for several epochs, `preps[x]` prepared for epoch x's
    /// hardness and `rng(x)` its random stream; `out(x, row)` takes each row. The
    /// rows [`Sampler::draw_prepared`] gives epoch by epoch, to the bit: GNNO
    /// locates the exclusions once, and conditions once for a run of epochs
    /// prepared alike (every epoch at the curriculum's cap), each epoch drawing
    /// from its own copy.
    #[expect(
        clippy::too_many_arguments,
        reason = "the draw's inputs, each prepared by the caller"
    )]
    pub fn draw_epochs<R: rand::Rng>(
        &self,
        preps: &[Option<sampler::Prepared>],
        t: ItemIdx,
        n: u32,
        distinct: bool,
        exclude: &[ItemIdx],
        mut rng: impl FnMut(usize) -> R,
        mut out: impl FnMut(usize, &[Drawn]),
    ) {
        let mut row = Vec::with_capacity(n as usize);
        let (Self::Gnno { index, .. }, Some(Some(first))) = (self, preps.first()) else {
            for (x, p) in preps.iter().enumerate() {
                row.clear();
                self.draw_prepared(
                    p.as_ref(),
                    None,
                    t,
                    n,
                    distinct,
                    exclude,
                    &mut rng(x),
                    &mut row,
                );
                out(x, &row);
            }
            return;
        };
        let loc = index.locate(first, t, exclude);
        let mut last: Option<(sampler::Prepared, sampler::Conditioned<'_>)> = None;
        for (x, p) in preps.iter().enumerate() {
            row.clear();
            if let Some(p) = p.filter(|_| n > 0) {
                if last.as_ref().is_none_or(|(q, _)| *q != p) {
                    last = Some((p, index.condition_located(&p, &loc)));
                }
                if let Some((_, cond)) = &last {
                    draw_gnno(cond, distinct.then_some(&loc), n, &mut rng(x), &mut row);
                }
            }
            out(x, &row);
        }
    }

    /// J(t, j) when the sampler knows it (gnno), else 0.
    pub fn overlap(&self, t: ItemIdx, j: ItemIdx) -> f32 {
        match self {
            Self::Gnno { index, .. } => index.overlap(t, j),
            _ => 0.0,
        }
    }
}

/// A draw as stored. One that holds all the remaining mass has ln q = 0, which
/// the subtraction can overshoot by rounding (ln q = 7e-15 at τ = 0.01 with the
/// heavier items excluded); no probability exceeds 1.
#[expect(clippy::cast_possible_truncation, reason = "stored as f32")]
fn stored((item, overlap, log_q): (ItemIdx, f32, f64)) -> Drawn {
    Drawn {
        item,
        overlap,
        log_prob: log_q.min(0.0) as f32,
    }
}

/// n GNNO draws from `cond`. With `distinct` (the exclusions `cond` was
/// conditioned on), each draw is taken out of a copy of `cond` before the next
/// (successive sampling without replacement); fewer than n come back when no
/// mass is left.
fn draw_gnno<R: rand::Rng>(
    cond: &sampler::Conditioned<'_>,
    distinct: Option<&sampler::Located>,
    n: u32,
    rng: &mut R,
    out: &mut Vec<Drawn>,
) {
    let Some(loc) = distinct else {
        out.extend((0..n).filter_map(|_| cond.draw(rng)).map(stored));
        return;
    };
    let (mut cond, mut loc) = (cond.clone(), loc.clone());
    for i in 0..n {
        // None only when no mass is left: the slot stays empty (the row is short).
        let Some((d, at)) = cond.draw_placed(rng) else {
            continue;
        };
        out.push(stored(d));
        // The last draw is not taken out: nothing is drawn after it.
        if i + 1 < n {
            cond.remove(&mut loc, at);
        }
    }
}

/// n draws of a sampler without a graph: `draw` gives an item and its ln weight
/// with the items of its argument excluded, `log_norm` ln of their normaliser;
/// `distinct` adds each draw to the exclusions (and renormalises).
fn draw_plain(
    n: u32,
    distinct: bool,
    exclude: &[ItemIdx],
    log_norm: impl Fn(&[ItemIdx]) -> f64,
    mut draw: impl FnMut(&[ItemIdx]) -> Option<(ItemIdx, f64)>,
    mut push: impl FnMut((ItemIdx, f32, f64)),
) {
    let mut ex = std::borrow::Cow::Borrowed(exclude);
    let mut norm = log_norm(&ex);
    for _ in 0..n {
        let Some((j, log_w)) = draw(&ex) else {
            continue;
        };
        push((j, 0.0, log_w - norm));
        if distinct {
            ex.to_mut().push(j);
            norm = log_norm(&ex);
        }
    }
}

/// One drawn negative: the item, J(target, item) (0 for samplers without a graph)
/// and the exact ln-probability of drawing it for this instance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Drawn {
    pub item: ItemIdx,
    pub overlap: f32,
    pub log_prob: f32,
}

/// The random stream of one instance in one epoch.
pub fn instance_rng(seed: u64, epoch: u32, instance: u64) -> Xoshiro256PlusPlus {
    Xoshiro256PlusPlus::seed_from_u64(mix_seed(&[seed, u64::from(epoch), instance]))
}

/// One epoch in the report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EpochReport {
    pub epoch: u32,
    /// None: a warm-up epoch, no hard negatives drawn.
    pub hardness: Option<f64>,
    pub shards: u32,
    pub rows: u64,
    pub negatives: u64,
    pub bytes: u64,
    pub shards_reused: u32,
    /// Negatives equal to their user's evaluated dev or test item.
    pub leaked: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NegativesReport {
    pub sampler: SamplerKind,
    pub instances: u64,
    pub epochs: Vec<EpochReport>,
    pub negatives_total: u64,
    /// Share of all negatives that are their user's evaluated dev or test item:
    /// false negatives drawn from the future (0 when nothing was drawn).
    pub leakage: f64,
    pub shards_written: u32,
    pub shards_reused: u32,
}

/// What identifies the inputs of this run (recorded in every shard's footer).
#[derive(Debug, Clone)]
pub struct RunIdentity {
    pub seed: u64,
    pub settings_hash: String,
    pub graph_fingerprint: String,
    pub ingest_fingerprint: String,
}

/// What every shard of a run shares.
struct Draw<'a> {
    ds: &'a Dataset,
    inst: &'a gnno_core::dataset::Instances,
    sampler: &'a Sampler,
    cfg: &'a NegativesSettings,
    seed: u64,
}

/// One shard's outcome: (epoch, rows, bytes, negatives, reused).
struct Outcome {
    epoch: u32,
    rows: u64,
    bytes: u64,
    negatives: u64,
    leaked: u64,
    reused: bool,
}

impl Draw<'_> {
    /// Draw instances `first..last` for several epochs at once (one shard each).
    ///
    /// Instances are visited grouped by target, and each target's draws for every
    /// epoch of the block are made together, so its overlap list stays in cache;
    /// each (epoch, instance) has its own random stream, so the visiting order does
    /// not change what is drawn. Rows are returned in instance order.
    fn shards(&self, epochs: &[(u32, f64)], first: u64, last: u64) -> Vec<shard::ShardRows> {
        let (ds, inst, cfg) = (self.ds, self.inst, self.cfg);
        let n = (last - first) as usize;
        let k = cfg.n_hard as usize;
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&r| inst.target[first as usize + r]);
        let none = Drawn {
            item: 0,
            overlap: 0.0,
            log_prob: 0.0,
        };
        let mut drawn: Vec<Vec<Drawn>> = epochs.iter().map(|_| vec![none; n * k]).collect();
        let mut counts: Vec<Vec<usize>> = epochs.iter().map(|_| vec![0usize; n]).collect();
        let mut preps: Vec<Option<sampler::Prepared>> = Vec::new();
        let mut prep_target = None;
        for r in order {
            let i = first as usize + r;
            let (u, t) = (inst.user[i], inst.target[i]);
            let exclude = if cfg.exclude_history {
                ds.train_seq(u)
            } else {
                &[][..]
            };
            // Instances come grouped by target: prepare each (target, h) once.
            if prep_target != Some(t) {
                preps = epochs
                    .iter()
                    .map(|&(_, h)| self.sampler.prepare(t, h))
                    .collect();
                prep_target = Some(t);
            }
            self.sampler.draw_epochs(
                &preps,
                t,
                cfg.n_hard,
                cfg.distinct,
                exclude,
                |x| instance_rng(self.seed, epochs[x].0, i as u64),
                |x, row| {
                    drawn[x][r * k..r * k + row.len()].copy_from_slice(row);
                    counts[x][r] = row.len();
                },
            );
        }
        drawn
            .iter()
            .zip(&counts)
            .map(|(d, c)| {
                let mut rows = shard::ShardRows::with_capacity(n, k);
                for (r, &cnt) in c.iter().enumerate() {
                    let i = first as usize + r;
                    rows.push(
                        i as u64,
                        inst.user[i],
                        inst.target[i],
                        &d[r * k..r * k + cnt],
                        [
                            ds.dev[inst.user[i] as usize],
                            ds.test[inst.user[i] as usize],
                        ],
                    );
                }
                rows
            })
            .collect()
    }
}

/// Hard epochs drawn together by one task (bounds the task's buffers).
const EPOCH_BLOCK: usize = 8;

/// Draw every epoch's shards into `out`, reusing shards a killed run already finished.
/// All (epoch, shard) tasks share one parallel loop, so small epochs still use every core.
pub fn run(
    ds: &Dataset,
    sampler: &Sampler,
    cfg: &NegativesSettings,
    epochs: u32,
    id: &RunIdentity,
    out: &Path,
    progress: &dyn Progress,
) -> Result<NegativesReport> {
    let inst = ds.instances();
    let n = inst.len() as u64;
    let per = u64::from(cfg.shard_rows);
    let n_shards = n.div_ceil(per).max(1);
    let hard: Vec<(u32, f64)> = (0..epochs)
        .filter_map(|e| hardness(cfg, e).map(|h| (e, h)))
        .collect();
    progress.start("negatives: drawing", n * hard.len() as u64);
    for &(e, _) in &hard {
        gnno_core::fsutil::create_dir_durable(&out.join(shard::epoch_dir(e)))?;
    }
    // One task per (shard, block of hard epochs).
    let tasks: Vec<(u64, &[(u32, f64)])> = (0..n_shards)
        .flat_map(|s| hard.chunks(EPOCH_BLOCK).map(move |b| (s, b)))
        .collect();
    let abort_after: Option<usize> = std::env::var("GNNO_FAULT_AFTER_SHARDS")
        .ok()
        .and_then(|v| v.parse().ok());
    let written = std::sync::atomic::AtomicUsize::new(0);
    let draw = Draw {
        ds,
        inst: &inst,
        sampler,
        cfg,
        seed: id.seed,
    };
    let results: Vec<Result<Vec<Outcome>>> = tasks
        .into_par_iter()
        .map(|(s, block)| {
            let first = s * per;
            let last = ((s + 1) * per).min(n);
            let mut outcomes = Vec::with_capacity(block.len());
            let mut todo = Vec::new();
            for &(e, h) in block {
                let meta = shard::ShardMeta::new(cfg, id, e, h, s, first, last - first);
                let path = out.join(shard::epoch_dir(e)).join(shard::shard_file(s));
                if let Some((negs, leaked)) = shard::complete_negatives(&path, &meta) {
                    progress.advance(last - first);
                    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                    outcomes.push(Outcome {
                        epoch: e,
                        rows: last - first,
                        bytes,
                        negatives: negs,
                        leaked,
                        reused: true,
                    });
                } else {
                    todo.push((e, h, meta, path));
                }
            }
            if todo.is_empty() {
                return Ok(outcomes);
            }
            let epochs: Vec<(u32, f64)> = todo.iter().map(|t| (t.0, t.1)).collect();
            let all_rows = draw.shards(&epochs, first, last);
            for ((e, _, meta, path), rows) in todo.into_iter().zip(all_rows) {
                let negs = rows.negatives() as u64;
                let leaked = rows.leaked();
                let bytes = shard::write(&path, rows, &meta, cfg.row_group_rows as usize)?;
                progress.advance(last - first);
                let done = written.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                if abort_after == Some(done) {
                    // Test hook: die like a killed process half-way through the shards.
                    std::process::abort();
                }
                outcomes.push(Outcome {
                    epoch: e,
                    rows: last - first,
                    bytes,
                    negatives: negs,
                    leaked,
                    reused: false,
                });
            }
            Ok(outcomes)
        })
        .collect();
    let mut report = NegativesReport {
        sampler: cfg.sampler,
        instances: n,
        epochs: (0..epochs)
            .map(|e| EpochReport {
                epoch: e,
                hardness: hardness(cfg, e),
                shards: 0,
                rows: 0,
                negatives: 0,
                bytes: 0,
                shards_reused: 0,
                leaked: 0,
            })
            .collect(),
        negatives_total: 0,
        leakage: 0.0,
        shards_written: 0,
        shards_reused: 0,
    };
    for o in results
        .into_iter()
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
    {
        let er = &mut report.epochs[o.epoch as usize];
        er.shards += 1;
        er.rows += o.rows;
        er.bytes += o.bytes;
        er.negatives += o.negatives;
        er.leaked += o.leaked;
        report.negatives_total += o.negatives;
        if o.reused {
            er.shards_reused += 1;
            report.shards_reused += 1;
        } else {
            report.shards_written += 1;
        }
    }
    let leaked: u64 = report.epochs.iter().map(|e| e.leaked).sum();
    #[expect(clippy::cast_precision_loss, reason = "a share")]
    if report.negatives_total > 0 {
        report.leakage = leaked as f64 / report.negatives_total as f64;
    }
    progress.finish();
    Ok(report)
}
