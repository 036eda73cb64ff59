//! Measurements that run the training step on fixed weights or for a few batches,
//! without training a model: how hard an epoch's negatives are for a trained model
//! (`gnno audit negatives --model`) and training throughput (the benchmarks).

use crate::batches::{Batch, EpochNegatives, RandomSampler};
use crate::objectives;
use crate::trainer::{
    batch_loss, batch_order, epoch_negatives, new_model, rows_for, Tensors, Trainer,
};
use crate::{
    alloc, augment, history_tensor, permutation, resolve_device, Job, TAG_BATCH, TAG_RANDOM,
};
use gnno_core::config::{Backbone, TrainSettings};
use gnno_core::error::{Error, Result};
use gnno_core::mix_seed;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use serde::Serialize;
use std::time::Instant;
use tch::{Device, Tensor};

/// One epoch's negatives as a trained model sees them (`gnno audit negatives
/// --model`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelHardness {
    pub epoch: u32,
    /// The model's mean batch loss over the epoch's batches.
    pub loss: f64,
    /// Share of the valid random / hard negatives it scores above the target.
    pub random_above_target: Option<f64>,
    pub hard_above_target: Option<f64>,
}

/// How hard each of `epochs`' negatives is for the exported model `model_file`
/// (a `model.safetensors` for this config's backbone and shape, items matched by
/// raw id; every item of the data must be known to it). Each epoch's batches are
/// drawn exactly as training draws them (same rows, random draws and shard rows)
/// and scored without dropout and without a step.
pub fn hardness(
    job: &Job,
    model_file: &std::path::Path,
    epochs: &[u32],
) -> Result<Vec<ModelHardness>> {
    let device = resolve_device(job.device)?;
    tch::set_num_threads(i32::try_from(job.threads).unwrap_or(1));
    let _no_grad = tch::no_grad_guard();
    let (cfg, ds) = (job.cfg, job.ds);
    let inst = ds.instances();
    let (mut tr, _) = Trainer::new(job, &inst, device);
    let (_, unknown, _) = crate::warm::load(&tr.vs, cfg, &ds.item_raw, model_file)?;
    if unknown > 0 {
        return Err(Error::usage(format!(
            "{}: the model does not know {unknown} of the data's {} items, so it cannot \
             score their negatives",
            model_file.display(),
            ds.n_items
        )));
    }
    epochs
        .iter()
        .map(|&epoch| {
            let hard = epoch_negatives(job, epoch, &inst)?;
            let (loss, _, h) = tr.epoch(epoch, hard.as_ref(), false)?;
            Ok(ModelHardness {
                epoch,
                loss,
                random_above_target: h.random.share(),
                hard_above_target: h.hard.share(),
            })
        })
        .collect()
}

/// Training throughput on synthetic batches (benchmarks): positions per second of
/// forward, backward and Adam step for `cfg` on `rows` of length `history-len`
/// (every row full), with `n_hard` hard negatives per position and random
/// negatives per row whatever `random-scope` says (`dataset_throughput` follows it).
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
    let (_vs, model, mut opt, _) = new_model(cfg, n_items, device);
    let (b, l) = (cfg.batch_size as usize, cfg.history_len as usize);
    let p = if model.is_causal() { l } else { 1 };
    let (k, h) = (cfg.n_random as usize, n_hard as usize);
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
    let mut step = |rng: &mut Xoshiro256PlusPlus| {
        let mut item = |n: usize| -> Vec<i64> {
            (0..n)
                .map(|_| i64::from(rng.random_range(1..=n_items)))
                .collect()
        };
        let batch = Batch {
            rows: b,
            len: l,
            positions: p,
            hist: item(b * l),
            targets: item(b * p),
            random: item(b * k),
            random_log_q: vec![-(f64::from(n_items).ln() as f32); b * k],
            random_rows: b,
            group_rows: 1,
            random_mask: vec![true; b * k],
            interleave: false,
            hard: item(b * p * h),
            hard_log_q: vec![-(f64::from(n_items).ln() as f32); b * p * h],
            trained: b * p,
            head: Vec::new(),
            head_mask: Vec::new(),
        };
        let t = Tensors::new(&batch, k, h, device);
        let mut loss = batch_loss(&model, cfg, &t, n_items, true, None);
        if cfg.backbone == Backbone::Encoder && cfg.gamma > 0.0 {
            let views: Vec<Tensor> = (0..2)
                .map(|_| {
                    let mut hh = batch.hist.clone();
                    for row in hh.chunks_mut(l) {
                        augment(row, model.n_items + 1, rng);
                    }
                    model.encode(&history_tensor(&hh, l, device), true)
                })
                .collect();
            let tt = Tensor::from_slice(&batch.targets).to_device(device);
            loss += objectives::supcon(&views[0], &views[1], &tt, cfg.cl_temperature) * cfg.gamma;
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
    Ok((batches * b * p) as f64 / t0.elapsed().as_secs_f64())
}

/// Training time of one epoch on a real dataset's rows (benchmarks), estimated from
/// `batches` of the first epoch's batches (in their random order, so a uniform
/// sample) as (all batches / timed batches) × their time; with `n_hard` hard
/// negatives per instance drawn uniformly here (the cost, not the values, is
/// measured). Includes building the batches, as an epoch does. Returns (seconds per
/// epoch, trained positions per second over the timed batches).
pub fn dataset_throughput(
    cfg: &TrainSettings,
    ds: &gnno_core::dataset::Dataset,
    n_hard: usize,
    batches: usize,
    device: &str,
    threads: usize,
) -> Result<(f64, f64)> {
    let device = resolve_device(device)?;
    alloc::keep_large_blocks();
    tch::set_num_threads(i32::try_from(threads).unwrap_or(1));
    tch::manual_seed(1);
    let (_vs, model, mut opt, _) = new_model(cfg, ds.n_items, device);
    let inst = ds.instances();
    let rows = rows_for(ds, &inst, &model, cfg);
    let random = RandomSampler::new(cfg, ds);
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(5);
    let hard = (n_hard > 0).then(|| EpochNegatives {
        n_hard,
        items: (0..inst.len() * n_hard)
            .map(|_| rng.random_range(1..=ds.n_items))
            .collect(),
        log_prob: vec![-(f64::from(ds.n_items).ln() as f32); inst.len() * n_hard],
    });
    let ids = rows.ids();
    let order = permutation(ids.len(), 3);
    let all = batch_order(&rows, cfg, &ids, &order, 0, 3);
    let k = cfg.n_random as usize;
    let mut step = |chunk: &[u64]| -> Result<usize> {
        let shared = crate::trainer::share(cfg).map(|share| {
            (
                Xoshiro256PlusPlus::seed_from_u64(mix_seed(&[chunk[0], TAG_BATCH])),
                share,
            )
        });
        let b = rows.batch(
            chunk,
            k,
            &random,
            hard.as_ref(),
            |row| Xoshiro256PlusPlus::seed_from_u64(mix_seed(&[row, TAG_RANDOM])),
            shared,
        );
        let t = Tensors::new(&b, k, n_hard, device);
        let loss = batch_loss(&model, cfg, &t, ds.n_items, true, None);
        opt.zero_grad();
        loss.backward();
        opt.step();
        Ok(b.trained)
    };
    // CUDA runs asynchronously: the clock reads only after the device has finished.
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i64::try_from(i).unwrap_or(0));
        }
    };
    // One warm-up batch (a full one, as the baseline's), then the timed ones.
    step(&all[0])?;
    sync();
    let timed = batches.min(all.len() - 1);
    let t0 = Instant::now();
    let mut n = 0;
    for c in &all[1..=timed] {
        n += step(c)?;
    }
    sync();
    let s = t0.elapsed().as_secs_f64();
    #[expect(clippy::cast_precision_loss, reason = "rates")]
    Ok((s * all.len() as f64 / timed.max(1) as f64, n as f64 / s))
}
