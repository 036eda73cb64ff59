//! The train and evaluate stages: sequential recommenders in libtorch (tch), trained
//! with BPR over random plus the negatives stage's hard negatives, evaluated by full
//! ranking and by the sampled protocol (GNNO.md §5-6).
//!
//! This is the only crate that links libtorch. It reads the ingest tables and the
//! negative shards through `gnno_core`; it never calls another stage crate.

pub mod adam;
pub mod alloc;
pub mod metrics;
pub mod model;

use adam::Adam;
use gnno_core::config::{Backbone, EvaluateSettings, TrainSettings};
use gnno_core::dataset::{Dataset, Instances};
use gnno_core::error::{Error, IoContext, Result};
use gnno_core::progress::Progress;
use gnno_core::{fsutil, mix_seed, shards, ItemIdx};
use metrics::RankMetrics;
use model::Model;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

pub const BEST_MODEL: &str = "best.ot";
pub const CHECKPOINT_DIR: &str = "checkpoint";
pub const HISTORY_FILE: &str = "history.json";
pub const CANDIDATES_FILE: &str = "sampled_candidates.parquet";

const TAG_RANDOM: u64 = 0x5241_4E44;
const TAG_VIEW: u64 = 0x5649_4557;
const TAG_ORDER: u64 = 0x4F52_4452;
const TAG_SAMPLED: u64 = 0x5341_4D50;

/// Resolve `auto | cpu | cuda | cuda:N`; asking for CUDA without one is a user error.
pub fn resolve_device(spec: &str) -> Result<Device> {
    let cuda_n = || tch::Cuda::device_count();
    match spec {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(if tch::Cuda::is_available() {
            Device::Cuda(0)
        } else {
            Device::Cpu
        }),
        s => {
            let idx: usize = s
                .strip_prefix("cuda:")
                .map_or(Ok(0), str::parse)
                .map_err(|_| Error::usage(format!("run.device: bad device {s:?}")))?;
            if !tch::Cuda::is_available() {
                return Err(Error::usage(format!(
                    "run.device = {s:?}, but CUDA is not available on this machine"
                ))
                .with_hint("set run.device = \"auto\" or \"cpu\""));
            }
            if i64::try_from(idx).unwrap_or(i64::MAX) >= cuda_n() {
                return Err(Error::usage(format!(
                    "run.device = {s:?}, but only {} CUDA device(s) exist",
                    cuda_n()
                )));
            }
            Ok(Device::Cuda(idx))
        }
    }
}

fn torch(e: &tch::TchError, what: &str) -> Error {
    Error::internal(format!("libtorch, {what}: {e}"))
}

/// One row of the per-epoch table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochRow {
    pub epoch: u32,
    pub loss: f64,
    pub hard_negatives: bool,
    pub dev_ndcg5: f64,
    pub dev_hr10: f64,
    pub seconds: f64,
    pub instances_per_second: f64,
}

/// Resume state written after every epoch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct CheckpointState {
    next_epoch: u32,
    best_score: f64,
    best_epoch: Option<u32>,
    bad_epochs: u32,
    history: Vec<EpochRow>,
    tensors: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TrainReport {
    pub backbone: Backbone,
    pub device: String,
    pub epochs_run: u32,
    pub best_epoch: Option<u32>,
    pub best_dev_ndcg5: f64,
    pub stopped_early: bool,
    pub resumed_at_epoch: Option<u32>,
    pub instances: u64,
    pub parameters: i64,
    pub mean_instances_per_second: f64,
    pub epochs: Vec<EpochRow>,
}

/// What the train and evaluate stages are given.
pub struct Job<'a> {
    pub ds: &'a Dataset,
    /// Train: the negatives stage's run folder (epoch-NNNN/ shard folders).
    /// Evaluate: the train stage's run folder (best.ot).
    pub input: &'a Path,
    pub cfg: &'a TrainSettings,
    pub eval: &'a EvaluateSettings,
    pub seed: u64,
    pub device: &'a str,
    pub threads: usize,
    pub out: &'a Path,
    pub progress: &'a dyn Progress,
}

/// Left-padded histories `[B, L]` as i64.
fn pad_histories<'h>(hists: impl Iterator<Item = &'h [ItemIdx]>, l: usize) -> Vec<i64> {
    let mut out = Vec::new();
    for h in hists {
        let h = &h[h.len().saturating_sub(l)..];
        out.extend(std::iter::repeat_n(0i64, l - h.len()));
        out.extend(h.iter().map(|&i| i64::from(i)));
    }
    out
}

/// Flattened rows of length `l` (padded histories, candidate lists) as a `[B, l]` tensor on `device`.
fn history_tensor(rows: &[i64], l: usize, device: Device) -> Tensor {
    let l = i64::try_from(l).unwrap_or(1);
    Tensor::from_slice(rows).view([-1, l]).to_device(device)
}

/// Uniform negatives not in the user's train history.
fn random_negatives(
    rng: &mut Xoshiro256PlusPlus,
    n_items: u32,
    history: &[ItemIdx],
    n: u32,
    out: &mut Vec<i64>,
) {
    for _ in 0..n {
        let mut j = rng.random_range(1..=n_items);
        for _ in 0..64 {
            if !history.contains(&j) {
                break;
            }
            j = rng.random_range(1..=n_items);
        }
        out.push(i64::from(j));
    }
}

/// Beta(3, 3) as the 3rd smallest of 5 uniforms.
fn beta33(rng: &mut Xoshiro256PlusPlus) -> f64 {
    let mut u: [f64; 5] = std::array::from_fn(|_| rng.random::<f64>());
    u.sort_by(f64::total_cmp);
    u[2]
}

/// One augmented view of a left-padded history row: mask a share of its items with
/// the mask token, or shuffle a contiguous span of it (ContraRec's augmentations).
fn augment(row: &mut [i64], mask_token: i64, rng: &mut Xoshiro256PlusPlus) {
    let start = row.iter().position(|&x| x != 0).unwrap_or(row.len());
    let n = row.len() - start;
    if n == 0 {
        return;
    }
    let share = beta33(rng);
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "small lengths"
    )]
    let k = ((share * n as f64).round() as usize).clamp(1, n);
    let items = &mut row[start..];
    if rng.random::<bool>() {
        // Mask k distinct positions.
        let mut idx: Vec<usize> = (0..n).collect();
        for i in 0..k {
            let j = rng.random_range(i..n);
            idx.swap(i, j);
            items[idx[i]] = mask_token;
        }
    } else {
        let s = rng.random_range(0..=n - k);
        let span = &mut items[s..s + k];
        for i in (1..span.len()).rev() {
            let j = rng.random_range(0..=i);
            span.swap(i, j);
        }
    }
}

fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.random_range(0..=i);
        p.swap(i, j);
    }
    p
}

/// A block of instances to train on, with hard negatives when the epoch has them.
struct Block {
    ids: Vec<u64>,
    /// Per row, its hard negatives (empty in warm-up epochs).
    hard: Vec<Vec<ItemIdx>>,
}

/// The epoch's blocks: its shards in a seeded order, or (warm-up) all instances.
fn epoch_blocks(
    shards_dir: &Path,
    epoch: u32,
    n: usize,
    seed: u64,
) -> Result<(Vec<std::path::PathBuf>, bool)> {
    let dir = shards_dir.join(shards::epoch_dir(epoch));
    if !dir.is_dir() {
        return Ok((Vec::new(), false));
    }
    let mut files = shards::list(&dir)?;
    if files.is_empty() && n > 0 {
        return Err(Error::artifact(&dir, "epoch folder without shards")
            .with_hint("rerun `gnno run --from negatives`"));
    }
    let order = permutation(
        files.len(),
        mix_seed(&[seed, u64::from(epoch), TAG_ORDER, 1]),
    );
    files = order.into_iter().map(|i| files[i].clone()).collect();
    Ok((files, true))
}

fn load_block(path: &Path, n_instances: usize) -> Result<Block> {
    let s = shards::read(path)?;
    let mut b = Block {
        ids: Vec::with_capacity(s.instance.len()),
        hard: Vec::with_capacity(s.instance.len()),
    };
    for r in 0..s.instance.len() {
        if s.instance[r] as usize >= n_instances {
            return Err(Error::artifact(
                path,
                format!("row {r}: instance {} does not exist", s.instance[r]),
            )
            .with_hint(
                "the shards belong to other ingest output; rerun `gnno run --from negatives`",
            ));
        }
        b.ids.push(s.instance[r]);
        b.hard
            .push(s.negatives[s.offsets[r]..s.offsets[r + 1]].to_vec());
    }
    Ok(b)
}

struct Trainer<'a> {
    job: &'a Job<'a>,
    inst: Instances,
    device: Device,
    model: Model,
    vs: nn::VarStore,
    opt: Adam,
}

impl Trainer<'_> {
    /// Train on one block of instances; returns (loss sum, batches).
    fn train_block(&mut self, epoch: u32, block: &Block, hard_epoch: bool) -> Result<(f64, u64)> {
        let (job, cfg, ds) = (self.job, self.job.cfg, self.job.ds);
        let l = cfg.history_len as usize;
        let order = permutation(
            block.ids.len(),
            mix_seed(&[
                job.seed,
                u64::from(epoch),
                TAG_ORDER,
                block.ids.first().copied().unwrap_or(0),
            ]),
        );
        let bs = cfg.batch_size as usize;
        let mut loss_sum = 0.0;
        let mut batches = 0;
        for chunk in order.chunks(bs) {
            let b = chunk.len();
            let n_hard = if hard_epoch { job_n_hard(block) } else { 0 };
            let c = 1 + cfg.n_random as usize + n_hard;
            let mut cands = Vec::with_capacity(b * c);
            let mut targets = Vec::with_capacity(b);
            let hists: Vec<&[ItemIdx]> = chunk
                .iter()
                .map(|&r| {
                    let i = block.ids[r] as usize;
                    ds.history(self.inst.user[i], self.inst.pos[i], l)
                })
                .collect();
            let hist = pad_histories(hists.iter().copied(), l);
            for &r in chunk {
                let id = block.ids[r];
                let i = id as usize;
                let (u, t) = (self.inst.user[i], self.inst.target[i]);
                let seq = ds.train_seq(u);
                let mut rng = Xoshiro256PlusPlus::seed_from_u64(mix_seed(&[
                    job.seed,
                    u64::from(epoch),
                    id,
                    TAG_RANDOM,
                ]));
                cands.push(i64::from(t));
                targets.push(i64::from(t));
                random_negatives(&mut rng, ds.n_items, seq, cfg.n_random, &mut cands);
                if n_hard > 0 {
                    let hard = &block.hard[r];
                    cands.extend(hard.iter().take(n_hard).map(|&j| i64::from(j)));
                    // A row with fewer drawn negatives is topped up with random ones.
                    let missing = u32::try_from(n_hard.saturating_sub(hard.len())).unwrap_or(0);
                    random_negatives(&mut rng, ds.n_items, seq, missing, &mut cands);
                }
            }
            let hist_t = history_tensor(&hist, l, self.device);
            // Candidates are rows of `c` items: the same [B, c] layout.
            let cand_t = history_tensor(&cands, c, self.device);
            let rep = self.model.encode(&hist_t, true);
            let mut loss = model::bpr(&self.model.score(&rep, &cand_t));
            if cfg.backbone == Backbone::Encoder && cfg.gamma > 0.0 {
                let mask_token = self.model.n_items + 1;
                let mut views = Vec::with_capacity(2);
                for v in 0..2u64 {
                    let mut h = hist.clone();
                    for (row, &r) in h.chunks_mut(l).zip(chunk) {
                        let mut rng = Xoshiro256PlusPlus::seed_from_u64(mix_seed(&[
                            job.seed,
                            u64::from(epoch),
                            block.ids[r],
                            TAG_VIEW,
                            v,
                        ]));
                        augment(row, mask_token, &mut rng);
                    }
                    let ht = history_tensor(&h, l, self.device);
                    views.push(self.model.encode(&ht, true));
                }
                let tt = Tensor::from_slice(&targets).to_device(self.device);
                loss += model::supcon(&views[0], &views[1], &tt, cfg.cl_temperature) * cfg.gamma;
            }
            self.opt.zero_grad();
            loss.backward();
            self.opt.step();
            loss_sum += loss.double_value(&[]);
            batches += 1;
            job.progress.advance(b as u64);
        }
        Ok((loss_sum, batches))
    }
}

fn job_n_hard(block: &Block) -> usize {
    block.hard.iter().map(Vec::len).max().unwrap_or(0)
}

fn save_named(path: &Path, named: &[(String, Tensor)]) -> Result<()> {
    let tmp = fsutil::tmp_path(path);
    Tensor::save_multi(named, &tmp).map_err(|e| torch(&e, &format!("saving {}", tmp.display())))?;
    fsutil::sync_file(&tmp)?;
    fsutil::publish(&tmp, path)
}

fn model_tensors(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(k, t)| (format!("model.{k}"), t))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn load_model_tensors(
    vs: &mut nn::VarStore,
    named: &[(String, Tensor)],
    path: &Path,
) -> Result<()> {
    let vars = vs.variables();
    tch::no_grad(|| {
        for (k, t) in &vars {
            let want = format!("model.{k}");
            let Some((_, src)) = named.iter().find(|(n, _)| *n == want) else {
                return Err(
                    Error::artifact(path, format!("checkpoint lacks tensor {want}"))
                        .with_hint("the checkpoint was written for another model configuration"),
                );
            };
            if src.size() != t.size() {
                return Err(Error::artifact(
                    path,
                    format!(
                        "tensor {want} has shape {:?}, the model needs {:?}",
                        src.size(),
                        t.size()
                    ),
                ));
            }
            let mut t = t.shallow_clone();
            t.copy_(&src.to_device(t.device()));
        }
        Ok(())
    })
}

/// Train a model; writes `best.ot`, `history.json` and checkpoints into `out`.
pub fn train(job: &Job) -> Result<TrainReport> {
    let device = resolve_device(job.device)?;
    alloc::keep_large_blocks();
    tch::set_num_threads(i32::try_from(job.threads).unwrap_or(1));
    #[expect(clippy::cast_possible_wrap, reason = "seed bits")]
    tch::manual_seed(mix_seed(&[job.seed, 0x494E_4954]) as i64);
    let cfg = job.cfg;
    let ds = job.ds;
    let inst = ds.instances();
    if inst.is_empty() {
        return Err(Error::usage(
            "no training instances: every user has fewer than two train items",
        ));
    }
    let vs = nn::VarStore::new(device);
    let model = Model::new(&vs.root(), cfg, ds.n_items);
    let params: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    let n_params: i64 = params.iter().map(|(_, t)| t.numel() as i64).sum();
    let opt = Adam::new(params, cfg.lr, cfg.weight_decay);
    let mut tr = Trainer {
        job,
        inst,
        device,
        model,
        vs,
        opt,
    };

    // Resume from the last checkpoint of a killed run with the same settings.
    let ckpt_dir = job.out.join(CHECKPOINT_DIR);
    fsutil::create_dir_all(&ckpt_dir)?;
    let state_path = ckpt_dir.join("state.json");
    let mut st = CheckpointState {
        next_epoch: 0,
        best_score: f64::NEG_INFINITY,
        best_epoch: None,
        bad_epochs: 0,
        history: Vec::new(),
        tensors: String::new(),
    };
    let mut resumed = None;
    if let Ok(text) = std::fs::read_to_string(&state_path) {
        let saved: CheckpointState = serde_json::from_str(&text)
            .map_err(|e| Error::artifact(&state_path, format!("damaged checkpoint state: {e}")))?;
        let tpath = ckpt_dir.join(&saved.tensors);
        let named = Tensor::load_multi(&tpath)
            .map_err(|e| torch(&e, &format!("loading {}", tpath.display())))?;
        load_model_tensors(&mut tr.vs, &named, &tpath)?;
        tr.opt.restore(&named);
        tracing::info!(epoch = saved.next_epoch, "resuming from checkpoint");
        resumed = Some(saved.next_epoch);
        st = saved;
    }
    let n = tr.inst.len();
    let total_epochs = cfg.epochs;
    job.progress.start(
        "train",
        u64::from(total_epochs.saturating_sub(st.next_epoch)) * n as u64,
    );
    let mut stopped_early = false;
    let mut epoch = st.next_epoch;
    while epoch < total_epochs {
        if st.bad_epochs >= cfg.patience {
            stopped_early = true;
            break;
        }
        #[expect(clippy::cast_possible_wrap, reason = "seed bits")]
        tch::manual_seed(mix_seed(&[job.seed, u64::from(epoch), 0x4452_4F50]) as i64);
        let t0 = Instant::now();
        let (files, hard_epoch) = epoch_blocks(job.input, epoch, n, job.seed)?;
        let (mut loss_sum, mut batches) = (0.0, 0u64);
        if hard_epoch {
            for f in &files {
                let block = load_block(f, n)?;
                let (l, b) = tr.train_block(epoch, &block, true)?;
                loss_sum += l;
                batches += b;
            }
        } else {
            let block = Block {
                ids: (0..n as u64).collect(),
                hard: vec![Vec::new(); n],
            };
            let (l, b) = tr.train_block(epoch, &block, false)?;
            loss_sum += l;
            batches += b;
        }
        let train_s = t0.elapsed().as_secs_f64();
        let dev = rank_users(
            &tr.model,
            ds,
            device,
            Split::Dev,
            job.eval,
            cfg.history_len as usize,
            &[5, 10],
        )?;
        let score = dev.finish();
        let ndcg5 = score.get("NDCG@5").copied().unwrap_or(0.0);
        #[expect(clippy::cast_precision_loss, reason = "rates")]
        let row = EpochRow {
            epoch,
            loss: loss_sum / batches.max(1) as f64,
            hard_negatives: hard_epoch,
            dev_ndcg5: ndcg5,
            dev_hr10: score.get("HR@10").copied().unwrap_or(0.0),
            seconds: t0.elapsed().as_secs_f64(),
            instances_per_second: n as f64 / train_s.max(1e-9),
        };
        tracing::info!(
            epoch,
            loss = format!("{:.5}", row.loss),
            dev_ndcg5 = format!("{ndcg5:.5}"),
            seconds = format!("{:.1}", row.seconds),
            "epoch done"
        );
        st.history.push(row);
        if ndcg5 > st.best_score {
            st.best_score = ndcg5;
            st.best_epoch = Some(epoch);
            st.bad_epochs = 0;
            save_named(&job.out.join(BEST_MODEL), &model_tensors(&tr.vs))?;
        } else {
            st.bad_epochs += 1;
        }
        // Checkpoint: tensors first, then the state that names them.
        epoch += 1;
        st.next_epoch = epoch;
        let name = format!("epoch-{epoch:04}.ot");
        let mut named = model_tensors(&tr.vs);
        named.extend(tr.opt.state());
        save_named(&ckpt_dir.join(&name), &named)?;
        let old = std::mem::replace(&mut st.tensors, name);
        fsutil::write_atomic(
            &state_path,
            &serde_json::to_vec_pretty(&st).map_err(|e| Error::internal(e.to_string()))?,
        )?;
        if !old.is_empty() && old != st.tensors {
            let _ = std::fs::remove_file(ckpt_dir.join(old));
        }
        if std::env::var("GNNO_FAULT_AFTER_EPOCH")
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
            == Some(epoch)
        {
            // Test hook: die like a killed process right after a checkpoint.
            std::process::abort();
        }
    }
    job.progress.finish();
    if st.bad_epochs >= cfg.patience && epoch < total_epochs {
        stopped_early = true;
    }
    let hist_path = job.out.join(HISTORY_FILE);
    fsutil::write_atomic(
        &hist_path,
        &serde_json::to_vec_pretty(&st.history).map_err(|e| Error::internal(e.to_string()))?,
    )?;
    #[expect(clippy::cast_precision_loss, reason = "rates")]
    let mean_ips = st
        .history
        .iter()
        .map(|r| r.instances_per_second)
        .sum::<f64>()
        / st.history.len().max(1) as f64;
    Ok(TrainReport {
        backbone: cfg.backbone,
        device: format!("{device:?}"),
        epochs_run: u32::try_from(st.history.len()).unwrap_or(0),
        best_epoch: st.best_epoch,
        best_dev_ndcg5: st.best_score,
        stopped_early,
        resumed_at_epoch: resumed,
        instances: n as u64,
        parameters: n_params,
        mean_instances_per_second: mean_ips,
        epochs: st.history,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Split {
    Dev,
    Test,
}

/// Full-ranking ranks of every user with a held-out item of `split`; also returns
/// the sampled-protocol ranks when `sampled` candidates are given.
fn rank_users(
    model: &Model,
    ds: &Dataset,
    device: Device,
    split: Split,
    eval: &EvaluateSettings,
    l: usize,
    ks: &[u32],
) -> Result<RankMetrics> {
    let users: Vec<u32> = (0..ds.n_users())
        .filter_map(|u| u32::try_from(u).ok())
        .filter(|&u| match split {
            Split::Dev => ds.dev[u as usize] != 0,
            Split::Test => ds.test[u as usize] != 0,
        })
        .collect();
    let mut m = RankMetrics::new(ks);
    let n_all = i64::from(ds.n_items) + 2;
    tch::no_grad(|| -> Result<()> {
        for chunk in users.chunks(eval.batch_size as usize) {
            let mut hists: Vec<Vec<ItemIdx>> = Vec::with_capacity(chunk.len());
            let mut targets = Vec::with_capacity(chunk.len());
            for &u in chunk {
                let mut h = ds.train_seq(u).to_vec();
                if split == Split::Test {
                    h.push(ds.dev[u as usize]);
                }
                targets.push(match split {
                    Split::Dev => ds.dev[u as usize],
                    Split::Test => ds.test[u as usize],
                });
                hists.push(h);
            }
            let hist = pad_histories(hists.iter().map(Vec::as_slice), l);
            let ht = history_tensor(&hist, l, device);
            let rep = model.encode(&ht, false);
            let mut scores = model.score_all(&rep);
            // Padding and the mask token are never candidates.
            let mut rows = Vec::new();
            let mut cols = Vec::new();
            for (r, h) in hists.iter().enumerate() {
                let r = i64::try_from(r).unwrap_or(0);
                rows.extend([r, r]);
                cols.extend([0, n_all - 1]);
                if eval.exclude_history {
                    for &i in h {
                        if i != targets[usize::try_from(r).unwrap_or(0)] {
                            rows.push(r);
                            cols.push(i64::from(i));
                        }
                    }
                }
            }
            let rt = Tensor::from_slice(&rows).to_device(device);
            let ct = Tensor::from_slice(&cols).to_device(device);
            let _ = scores.index_put_(
                &[Some(rt), Some(ct)],
                &Tensor::from(f32::NEG_INFINITY).to_device(device),
                false,
            );
            let tgt: Vec<i64> = targets.iter().map(|&t| i64::from(t)).collect();
            let tt = Tensor::from_slice(&tgt).to_device(device).unsqueeze(1);
            let ts = scores.gather(1, &tt, false);
            // Pessimistic ties: every other item scoring the same ranks ahead.
            let ahead = scores
                .ge_tensor(&ts)
                .sum_dim_intlist(1i64, false, Kind::Int64)
                - 1;
            let ahead: Vec<i64> = Vec::<i64>::try_from(ahead.to_device(Device::Cpu))
                .map_err(|e| torch(&e, "ranks"))?;
            for &a in &ahead {
                m.add(u64::try_from(a.max(0)).unwrap_or(0) + 1);
            }
        }
        Ok(())
    })?;
    Ok(m)
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EvalReport {
    pub device: String,
    pub exclude_history: bool,
    pub dev_users: u64,
    pub test_users: u64,
    pub dev_full: BTreeMap<String, f64>,
    pub test_full: BTreeMap<String, f64>,
    /// None when `evaluate.sampled-negatives` is 0.
    pub sampled_negatives: u32,
    pub test_sampled: Option<BTreeMap<String, f64>>,
}

/// Candidates of the sampled protocol: per user, M items the user never interacted
/// with, drawn without replacement from a stream seeded by (seed, user).
pub fn sampled_candidates(ds: &Dataset, m: u32, seed: u64) -> Vec<Vec<ItemIdx>> {
    (0..ds.n_users())
        .map(|u| {
            let uu = u32::try_from(u).unwrap_or(0);
            let mut seen: std::collections::HashSet<ItemIdx> =
                ds.train_seq(uu).iter().copied().collect();
            seen.insert(ds.dev[u]);
            seen.insert(ds.test[u]);
            seen.insert(0);
            let avail = (ds.n_items as usize + 1).saturating_sub(seen.len());
            let want = (m as usize).min(avail);
            let mut rng =
                Xoshiro256PlusPlus::seed_from_u64(mix_seed(&[seed, TAG_SAMPLED, u as u64]));
            let mut out = Vec::with_capacity(want);
            while out.len() < want {
                let j = rng.random_range(1..=ds.n_items);
                if seen.insert(j) {
                    out.push(j);
                }
            }
            out
        })
        .collect()
}

fn write_candidates(path: &Path, cands: &[Vec<ItemIdx>]) -> Result<()> {
    use arrow::array::{ArrayRef, ListArray, RecordBatch, UInt32Array};
    use arrow::buffer::OffsetBuffer;
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;
    let users: Vec<u32> = (0..cands.len())
        .filter_map(|u| u32::try_from(u).ok())
        .collect();
    let lens: Vec<usize> = cands.iter().map(Vec::len).collect();
    let values: Vec<u32> = cands.iter().flatten().copied().collect();
    let item = Arc::new(Field::new("item", DataType::UInt32, false));
    let list = ListArray::try_new(
        item.clone(),
        OffsetBuffer::from_lengths(lens),
        Arc::new(UInt32Array::from(values)),
        None,
    )
    .map_err(|e| Error::internal(e.to_string()))?;
    let schema = Arc::new(Schema::new(vec![
        Field::new("user", DataType::UInt32, false),
        Field::new("candidates", DataType::List(item), false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(UInt32Array::from(users)) as ArrayRef,
            Arc::new(list),
        ],
    )
    .map_err(|e| Error::internal(e.to_string()))?;
    let tmp = fsutil::tmp_path(path);
    let f = std::fs::File::create(&tmp).at(&tmp)?;
    let mut w = parquet::arrow::ArrowWriter::try_new(f, schema, None)
        .map_err(|e| Error::internal(e.to_string()))?;
    w.write(&batch)
        .map_err(|e| Error::internal(e.to_string()))?;
    let f = w.into_inner().map_err(|e| Error::internal(e.to_string()))?;
    f.sync_all().at(&tmp)?;
    fsutil::publish(&tmp, path)
}

/// Evaluate the best checkpoint: full ranking on dev and test, and the sampled protocol on test.
pub fn evaluate(job: &Job) -> Result<EvalReport> {
    let device = resolve_device(job.device)?;
    tch::set_num_threads(i32::try_from(job.threads).unwrap_or(1));
    let ds = job.ds;
    let mut vs = nn::VarStore::new(device);
    let model = Model::new(&vs.root(), job.cfg, ds.n_items);
    let path = job.input.join(BEST_MODEL);
    let named = Tensor::load_multi(&path)
        .map_err(|e| Error::artifact(&path, format!("cannot load the model: {e}")))?;
    load_model_tensors(&mut vs, &named, &path)?;
    let l = job.cfg.history_len as usize;
    job.progress.start("evaluate", 3);
    let dev = rank_users(&model, ds, device, Split::Dev, job.eval, l, &job.eval.ks)?;
    job.progress.advance(1);
    let test = rank_users(&model, ds, device, Split::Test, job.eval, l, &job.eval.ks)?;
    job.progress.advance(1);
    let test_sampled = if job.eval.sampled_negatives > 0 {
        let cands = sampled_candidates(ds, job.eval.sampled_negatives, job.seed);
        write_candidates(&job.out.join(CANDIDATES_FILE), &cands)?;
        Some(sampled_metrics(&model, ds, device, &cands, job.eval, l)?.finish())
    } else {
        None
    };
    job.progress.advance(1);
    job.progress.finish();
    let rep = EvalReport {
        device: format!("{device:?}"),
        exclude_history: job.eval.exclude_history,
        dev_users: dev.users,
        test_users: test.users,
        dev_full: dev.finish(),
        test_full: test.finish(),
        sampled_negatives: job.eval.sampled_negatives,
        test_sampled,
    };
    let p = job.out.join("metrics.json");
    fsutil::write_atomic(
        &p,
        &serde_json::to_vec_pretty(&rep).map_err(|e| Error::internal(e.to_string()))?,
    )?;
    Ok(rep)
}

/// Test target against its stored candidates (pessimistic ties).
fn sampled_metrics(
    model: &Model,
    ds: &Dataset,
    device: Device,
    cands: &[Vec<ItemIdx>],
    eval: &EvaluateSettings,
    l: usize,
) -> Result<RankMetrics> {
    let users: Vec<usize> = (0..ds.n_users()).filter(|&u| ds.test[u] != 0).collect();
    let mut m = RankMetrics::new(&eval.ks);
    tch::no_grad(|| -> Result<()> {
        for chunk in users.chunks(eval.batch_size as usize) {
            let hists: Vec<Vec<ItemIdx>> = chunk
                .iter()
                .map(|&u| {
                    let mut h = ds.train_seq(u32::try_from(u).unwrap_or(0)).to_vec();
                    h.push(ds.dev[u]);
                    h
                })
                .collect();
            let hist = pad_histories(hists.iter().map(Vec::as_slice), l);
            let ht = history_tensor(&hist, l, device);
            let rep = model.encode(&ht, false);
            let scores = model.score_all(&rep).to_device(Device::Cpu);
            let scores: Vec<Vec<f32>> =
                Vec::<Vec<f32>>::try_from(scores).map_err(|e| torch(&e, "scores"))?;
            for (row, &u) in scores.iter().zip(chunk) {
                let pos = row[ds.test[u] as usize];
                let ahead = cands[u].iter().filter(|&&j| row[j as usize] >= pos).count() as u64;
                m.add(ahead + 1);
            }
        }
        Ok(())
    })?;
    Ok(m)
}

/// Training throughput on synthetic batches (benchmarks): instances per second of
/// forward, backward and Adam step for `cfg`, with `n_hard` hard negatives per row.
/// Histories are full-length random items; the augmentations run as in training.
pub fn throughput(
    cfg: &TrainSettings,
    n_items: u32,
    n_hard: u32,
    batches: usize,
    device: &str,
    threads: usize,
) -> Result<f64> {
    let device = resolve_device(device)?;
    alloc::keep_large_blocks();
    tch::set_num_threads(i32::try_from(threads).unwrap_or(1));
    tch::manual_seed(1);
    let vs = nn::VarStore::new(device);
    let model = Model::new(&vs.root(), cfg, n_items);
    let params: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    let mut opt = Adam::new(params, cfg.lr, cfg.weight_decay);
    let (b, l) = (cfg.batch_size as usize, cfg.history_len as usize);
    let c = 1 + cfg.n_random as usize + n_hard as usize;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
    let mut step = |rng: &mut Xoshiro256PlusPlus| {
        let hist: Vec<i64> = (0..b * l)
            .map(|_| i64::from(rng.random_range(1..=n_items)))
            .collect();
        let cands: Vec<i64> = (0..b * c)
            .map(|_| i64::from(rng.random_range(1..=n_items)))
            .collect();
        let ht = history_tensor(&hist, l, device);
        let ct = history_tensor(&cands, c, device);
        let rep = model.encode(&ht, true);
        let mut loss = model::bpr(&model.score(&rep, &ct));
        if cfg.backbone == Backbone::Encoder && cfg.gamma > 0.0 {
            let mut views = Vec::new();
            for _ in 0..2 {
                let mut h = hist.clone();
                for row in h.chunks_mut(l) {
                    augment(row, model.n_items + 1, rng);
                }
                views.push(model.encode(&history_tensor(&h, l, device), true));
            }
            let targets = ct.select(1, 0).contiguous();
            loss += model::supcon(&views[0], &views[1], &targets, cfg.cl_temperature) * cfg.gamma;
        }
        opt.zero_grad();
        loss.backward();
        opt.step();
        loss.double_value(&[])
    };
    step(&mut rng);
    let t0 = Instant::now();
    for _ in 0..batches {
        step(&mut rng);
    }
    #[expect(clippy::cast_precision_loss, reason = "rates")]
    Ok((batches * b) as f64 / t0.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histories_are_left_padded_and_truncated() {
        let a = [1u32, 2, 3];
        let b = [4u32];
        assert_eq!(
            pad_histories([&a[..], &b[..]].into_iter(), 2),
            vec![2, 3, 0, 4]
        );
    }

    #[test]
    fn augmentations_keep_padding_and_items() {
        for s in 0..50 {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(s);
            let mut row = vec![0, 0, 5, 6, 7, 8];
            augment(&mut row, 99, &mut rng);
            assert_eq!(&row[..2], &[0, 0]);
            let mut kept: Vec<i64> = row[2..].iter().copied().filter(|&x| x != 99).collect();
            kept.sort_unstable();
            // Either some items were masked (the rest unchanged) or the items were permuted.
            assert!(kept.iter().all(|x| [5, 6, 7, 8].contains(x)), "{row:?}");
            assert!(row[2..].iter().filter(|&&x| x == 99).count() < 5);
        }
    }

    #[test]
    fn sampled_candidates_avoid_the_users_items() {
        let ds = Dataset {
            n_items: 50,
            train_offsets: vec![0, 3],
            train_items: vec![1, 2, 3],
            dev: vec![4],
            test: vec![5],
            item_raw: vec![],
            user_raw: vec!["u".into()],
        };
        let c = sampled_candidates(&ds, 20, 7);
        assert_eq!(c[0].len(), 20);
        assert!(c[0].iter().all(|&j| j > 5 && j <= 50));
        let mut d = c[0].clone();
        d.sort_unstable();
        d.dedup();
        assert_eq!(d.len(), 20, "drawn without replacement");
        assert_eq!(c, sampled_candidates(&ds, 20, 7), "seeded");
        assert_eq!(
            sampled_candidates(&ds, 100, 7)[0].len(),
            45,
            "capped at what is available"
        );
    }
}
