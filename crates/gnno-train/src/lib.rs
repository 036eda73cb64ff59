//! The train and evaluate stages: sequential recommenders in libtorch (tch), trained
//! with BPR, (g)BCE or a sampled or full softmax over random negatives plus the
//! negatives stage's hard negatives, evaluated by full ranking and by the sampled
//! protocol (GNNO.md §5-6).
//!
//! This is the only crate that links libtorch. It reads the ingest tables and the
//! negative shards through `gnno_core`; it never calls another stage crate.
//!
//! Modules: [`objectives`] (the losses), [`batches`] (rows, random and hard
//! negatives), [`checkpoint`] (resume state and tensors), [`trainer`] (the training
//! loop), [`evaluate`] (ranking metrics), [`model`] (the backbones), [`adam`],
//! [`metrics`] (HR, NDCG, MRR), [`probe`] (model hardness for the audit, training
//! throughput for the benchmarks), [`export`] (the export stage: embeddings, the
//! model file, recommendations), [`warm`] (warm start from an exported model),
//! [`dropout`] (seeded CPU dropout masks), [`safetensors`], [`alloc`] (keeps large
//! blocks mapped between batches).

pub mod adam;
pub mod alloc;
pub mod batches;
pub mod checkpoint;
pub mod dropout;
pub mod evaluate;
pub mod export;
pub mod metrics;
pub mod model;
pub mod objectives;
pub mod probe;
pub mod safetensors;
pub mod trainer;
pub mod warm;

use gnno_core::config::{EvaluateSettings, TrainSettings};
use gnno_core::dataset::Dataset;
use gnno_core::error::{Error, Result};
use gnno_core::progress::Progress;
use gnno_core::ItemIdx;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{Device, Tensor};

pub use evaluate::{evaluate, EvalReport};
pub use probe::{hardness, throughput, ModelHardness};
pub use trainer::{train, TrainReport};

pub const BEST_MODEL: &str = "best.ot";
pub const CHECKPOINT_DIR: &str = "checkpoint";
pub const HISTORY_FILE: &str = "history.json";
pub use evaluate::CANDIDATES_FILE;

const TAG_RANDOM: u64 = 0x5241_4E44;
const TAG_BATCH: u64 = 0x4241_5443;
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
    /// Dev value of `train.early-stop-metric` under the headline protocol.
    pub dev_metric: f64,
    pub dev_ndcg10: f64,
    pub dev_hr10: f64,
    /// Training only (forward, backward, step), and the whole epoch with dev ranking.
    pub train_seconds: f64,
    pub seconds: f64,
    /// Trained positions (instances) per second of training.
    pub instances_per_second: f64,
    /// How hard the epoch's negatives were for the model as it trained (dropout on):
    /// the share of valid random (`random_above_target`) and hard
    /// (`hard_above_target`) negatives scored above their position's target. Null
    /// where the epoch had none of that kind (full softmax, epochs before warm-up),
    /// and in rows written before these fields existed.
    #[serde(default)]
    pub random_above_target: Option<f64>,
    #[serde(default)]
    pub hard_above_target: Option<f64>,
}

/// What the train and evaluate stages are given.
pub struct Job<'a> {
    pub ds: &'a Dataset,
    /// Train: the negatives stage's run folder (epoch-NNNN/ shard folders).
    /// Evaluate: the train stage's run folder (best.ot).
    pub input: &'a Path,
    pub cfg: &'a TrainSettings,
    pub eval: &'a EvaluateSettings,
    /// First epoch with hard negatives (`negatives.warmup`) and how many per instance.
    pub hard_from: u32,
    pub n_hard: u32,
    pub seed: u64,
    pub device: &'a str,
    pub threads: usize,
    pub out: &'a Path,
    pub progress: &'a dyn Progress,
    /// Train: the export folder to warm-start from (`train.warm-start`), if any.
    pub warm_from: Option<&'a Path>,
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

/// Width to pad a batch of histories to: `l`, or (`trim`) the longest history in the
/// batch, capped at `l` (left padding, so the dropped columns are padding only).
fn batch_width<'h>(hists: impl Iterator<Item = &'h [ItemIdx]>, l: usize, trim: bool) -> usize {
    if trim {
        hists.map(<[ItemIdx]>::len).max().unwrap_or(1).clamp(1, l)
    } else {
        l
    }
}

/// Flattened rows of length `l` (padded histories, candidate lists) as a `[B, l]` tensor on `device`.
fn history_tensor(rows: &[i64], l: usize, device: Device) -> Tensor {
    let l = i64::try_from(l).unwrap_or(1);
    Tensor::from_slice(rows).view([-1, l]).to_device(device)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The default train settings (unit tests of the modules).
    pub fn settings() -> TrainSettings {
        gnno_core::config::Config::defaults(Path::new("/")).train
    }

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
        let (mut masked, mut shuffled) = (0, 0);
        for s in 0..200 {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(s);
            let mut row = vec![0, 0, 5, 6, 7, 8];
            augment(&mut row, 99, &mut rng);
            assert_eq!(&row[..2], &[0, 0], "padding stays");
            let n_mask = row[2..].iter().filter(|&&x| x == 99).count();
            let mut kept: Vec<i64> = row[2..].iter().copied().filter(|&x| x != 99).collect();
            kept.sort_unstable();
            if n_mask > 0 {
                // Masking replaces k >= 1 items and leaves the others in place.
                masked += 1;
                assert!(n_mask <= 4);
                for (i, &x) in row[2..].iter().enumerate() {
                    assert!(x == 99 || x == [5, 6, 7, 8][i], "{row:?}");
                }
            } else {
                // Shuffling a span keeps the multiset of items.
                shuffled += 1;
                assert_eq!(kept, vec![5, 6, 7, 8], "{row:?}");
            }
        }
        assert!(
            masked > 50 && shuffled > 50,
            "both operators are used: {masked} {shuffled}"
        );
    }
}
