//! The training loop: epochs of shuffled rows, one optimiser step per batch, dev
//! ranking after every epoch, early stopping on `train.early-stop-metric`, the best
//! model saved as it appears, and a checkpoint after every epoch so a killed run
//! resumes exactly where it stopped.

use crate::adam::Adam;
use crate::batches::{Batch, EpochNegatives, RandomSampler, Rows, Share};
use crate::checkpoint::{self, CheckpointState};
use crate::evaluate::{self, Split};
use crate::model::{rows, Model, Packing};
use crate::objectives;
use crate::{
    alloc, augment, history_tensor, permutation, resolve_device, EpochRow, Job, BEST_MODEL,
    CHECKPOINT_DIR, HISTORY_FILE, TAG_BATCH, TAG_ORDER, TAG_RANDOM, TAG_VIEW,
};
use gnno_core::config::{Backbone, Batching, LogQ, Loss, RandomScope, TrainSettings};
use gnno_core::dataset::{Dataset, Instances};
use gnno_core::error::{Error, Result};
use gnno_core::{fsutil, mix_seed};
use rand::rngs::Xoshiro256PlusPlus;
use rand::SeedableRng;
use serde::Serialize;
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TrainReport {
    pub backbone: Backbone,
    pub loss: Loss,
    /// `sequence` (every position of a user's sequence per forward pass) or `prefix`.
    pub rows: &'static str,
    pub device: String,
    pub epochs_run: u32,
    pub best_epoch: Option<u32>,
    pub early_stop_metric: String,
    pub best_dev_metric: f64,
    pub stopped_early: bool,
    pub resumed_at_epoch: Option<u32>,
    /// Positions trained per epoch.
    pub instances: u64,
    pub parameters: i64,
    pub mean_instances_per_second: f64,
    pub mean_train_seconds_per_epoch: f64,
    /// Where a warm-started run started from; null for a cold start (also when
    /// warm start is on but no export has been accepted yet).
    pub warm_start: Option<crate::warm::WarmStartInfo>,
    pub epochs: Vec<EpochRow>,
}

/// A batch's tensors on the device.
pub(crate) struct Tensors {
    hist: Tensor,
    /// `[rows, positions]`
    targets: Tensor,
    /// `[M]` flat indices into `rows × positions` of the trained positions (a target
    /// above 0), in row-major order: computed on the host, so a step on a GPU does
    /// not wait on a `nonzero` for its size.
    idx: Tensor,
    random: Tensor,
    random_log_q: Tensor,
    /// `[rows, K]`, or `[M, K]` with `interleave`.
    random_mask: Tensor,
    /// Draws dealt to the trained positions: the mask is `[M, K]`.
    interleave: bool,
    /// When groups of several rows share a draw, or draws are dealt to the
    /// positions: each trained position's draw `[M]`, its row in the draws'
    /// padded `[G × M_max]` layout, and M_max.
    groups: Option<(Tensor, Tensor, i64)>,
    /// `[rows, positions, n_hard]`, empty when the epoch has none.
    hard: Option<(Tensor, Tensor)>,
    /// Each row's trained positions (on the host).
    row_len: Vec<usize>,
    /// The random columns that are one of their position's hard negatives, flat
    /// into `[M, K]` (`Batch::stratum_hits`); empty without hard negatives.
    stratum_hits: Tensor,
    /// The head stratum `[P]` and `[M, P]`, whether each position counts each
    /// item (`train.head-negatives`); None without one.
    head: Option<(Tensor, Tensor)>,
}

impl Tensors {
    pub(crate) fn new(b: &Batch, k: usize, n_hard: usize, device: Device) -> Self {
        let (rows, p) = (b.rows as i64, b.positions as i64);
        let hard = (n_hard > 0 && !b.hard.is_empty()).then(|| {
            let h = i64::try_from(n_hard).unwrap_or(0);
            (
                Tensor::from_slice(&b.hard)
                    .view([rows, p, h])
                    .to_device(device),
                Tensor::from_slice(&b.hard_log_q)
                    .view([rows, p, h])
                    .to_device(device),
            )
        });
        let k = i64::try_from(k).unwrap_or(0);
        // Each trained position's draw and its slot in the draws' padded
        // [G, M_max] layout, when draws serve groups of rows or are dealt out.
        let layout = if b.interleave {
            // Position m uses draw m mod G: laid out draw-major.
            let (m, g) = (b.trained as i64, b.random_rows as i64);
            let m_max = (m + g - 1) / g;
            let group: Vec<i64> = (0..m).map(|i| i % g).collect();
            let slot: Vec<i64> = (0..m).map(|i| (i % g) * m_max + i / g).collect();
            Some((group, slot, m_max))
        } else {
            (b.random_rows > 1 && b.group_rows > 1).then(|| {
                // Trained positions per group.
                let group_positions: Vec<i64> = b
                    .targets
                    .chunks(b.positions * b.group_rows)
                    .map(|g| g.iter().filter(|&&t| t > 0).count() as i64)
                    .collect();
                let m_max = group_positions.iter().copied().max().unwrap_or(0);
                let (mut group, mut slot) = (Vec::new(), Vec::new());
                for (g, &m) in group_positions.iter().enumerate() {
                    let g = g as i64;
                    group.extend(std::iter::repeat_n(g, m as usize));
                    slot.extend((0..m).map(|o| g * m_max + o));
                }
                (group, slot, m_max)
            })
        };
        let groups = layout.map(|(group, slot, m_max)| {
            (
                Tensor::from_slice(&group).to_device(device),
                Tensor::from_slice(&slot).to_device(device),
                m_max,
            )
        });
        let idx: Vec<i64> = (0i64..)
            .zip(&b.targets)
            .filter_map(|(i, &t)| (t > 0).then_some(i))
            .collect();
        Self {
            hist: history_tensor(&b.hist, b.len, device),
            idx: Tensor::from_slice(&idx).to_device(device),
            targets: Tensor::from_slice(&b.targets)
                .view([rows, p])
                .to_device(device),
            random: Tensor::from_slice(&b.random)
                .view([b.random_rows as i64, k])
                .to_device(device),
            random_log_q: Tensor::from_slice(&b.random_log_q)
                .view([b.random_rows as i64, k])
                .to_device(device),
            random_mask: Tensor::from_slice(&b.random_mask)
                .view([if b.interleave { b.trained } else { b.rows } as i64, k])
                .to_device(device),
            interleave: b.interleave,
            groups,
            hard,
            row_len: b
                .targets
                .chunks(b.positions.max(1))
                .map(|r| r.iter().filter(|&&t| t > 0).count())
                .collect(),
            stratum_hits: Tensor::from_slice(&if n_hard > 0 {
                b.stratum_hits(usize::try_from(k).unwrap_or(0), n_hard)
            } else {
                Vec::new()
            })
            .to_device(device),
            head: (!b.head.is_empty()).then(|| {
                let p = i64::try_from(b.head.len()).unwrap_or(0);
                (
                    Tensor::from_slice(&b.head).to_device(device),
                    Tensor::from_slice(&b.head_mask)
                        .view([-1, p])
                        .to_device(device),
                )
            }),
        }
    }
}

/// Of one kind of negative, summed over an epoch's batches: how many valid ones the
/// model scored above their position's target, and how many valid ones there were
/// (`[2]` Int64, on the device: the counts are read once, at the epoch's end, so
/// the tally adds no synchronisation to a batch).
#[derive(Debug, Default)]
pub(crate) struct AboveTarget(Option<Tensor>);

impl AboveTarget {
    /// Adds a batch: `scores` `[M, K]`, `pos` `[M]`, `mask` `[M, K]` (valid negatives).
    fn add(&mut self, scores: &Tensor, pos: &Tensor, mask: &Tensor) {
        let above = scores.gt_tensor(&pos.unsqueeze(1)).logical_and(mask);
        // count_nonzero, not a sum into Int64: on a Bool [4600, 384] at one
        // thread the sum took 2.5 ms, count_nonzero 0.34 ms, and the tally so
        // summed about 4% of a K = 384 training epoch.
        let c = Tensor::stack(&[above.count_nonzero(None), mask.count_nonzero(None)], 0);
        self.0 = Some(match self.0.take() {
            Some(sum) => sum + c,
            None => c,
        });
    }

    /// (above, valid); (0, 0) before any batch.
    fn counts(&self) -> (i64, i64) {
        let v: Vec<i64> = self
            .0
            .as_ref()
            .and_then(|c| Vec::try_from(c.to_device(Device::Cpu)).ok())
            .unwrap_or_default();
        (
            v.first().copied().unwrap_or(0),
            v.get(1).copied().unwrap_or(0),
        )
    }

    pub(crate) fn share(&self) -> Option<f64> {
        let (above, valid) = self.counts();
        #[expect(clippy::cast_precision_loss, reason = "a share")]
        (valid > 0).then(|| above as f64 / valid as f64)
    }
}

/// An epoch's tally of how hard its random and hard negatives were.
#[derive(Debug, Default)]
pub(crate) struct Hardness {
    pub(crate) random: AboveTarget,
    pub(crate) hard: AboveTarget,
}

/// Spreads a tensor over a batch's random draws (`[G, K]`) to the trained
/// positions that use them (`[M, K]`).
type Spread<'a> = Box<dyn Fn(&Tensor) -> Tensor + 'a>;

/// The loss of one batch: representations at the trained positions scored against
/// their candidates. With `tally`, the negatives scored above their target are
/// counted into it (no effect on the loss).
pub(crate) fn batch_loss(
    model: &Model,
    cfg: &TrainSettings,
    t: &Tensors,
    n_items: u32,
    train: bool,
    mut tally: Option<&mut Hardness>,
) -> Tensor {
    let p = t.targets.size()[1];
    // [M] flat positions. Sequence rows pad inputs and targets alike (P = L), so
    // the trained positions are the real inputs: SASRec encodes only those.
    let idx = &t.idx;
    debug_assert!(
        !model.is_causal() || t.hist.ne(0).equal(&t.targets.gt(0)),
        "sequence rows: inputs and targets padded alike"
    );
    let (rep, rep_all) = match model.encode_real(&t.hist, idx, train) {
        Some(rep) => (rep, None), // [M, D]
        None => {
            let r = if model.is_causal() {
                model.encode_all(&t.hist, train)
            } else {
                // Prefix rows: the one target is the last position.
                model.encode(&t.hist, train).unsqueeze(1)
            };
            let r = r.narrow(1, r.size()[1] - p, p); // [B, P, D]
            let d = r.size()[2];
            (r.reshape([-1, d]).index_select(0, idx), Some(r))
        }
    };
    let tgt = t.targets.view([-1]).index_select(0, idx); // [M]
    if cfg.loss == Loss::FullSoftmax {
        return objectives::full_softmax(&rep, &model.out_items().ws, &tgt);
    }
    // Targets and negatives are scored with the output table (`items` when tied).
    let out = model.out_items();
    let pos = (&rep * rows(out, &tgt)).sum_dim_intlist(1i64, false, Kind::Float);
    let k = t.random.size()[1];
    let flat = |x: Tensor, w: i64| x.reshape([-1, w]).index_select(0, idx);
    // The random scores [M, K], and how a tensor over the draws ([G, K], as ln q)
    // is spread to the positions that use them ([M, K]).
    let (rand_scores, spread): (Tensor, Spread) = if t.random.size()[0] == 1 {
        // One draw for the batch: [M, K] by one matrix product.
        let e_rand = rows(out, &t.random.squeeze_dim(0)); // [K, D]
        let m = rep.size()[0];
        (
            rep.matmul(&e_rand.transpose(0, 1)),
            Box::new(move |x: &Tensor| x.expand([m, k], false)),
        )
    } else if let Some((group, slot, m_max)) = &t.groups {
        // A draw per group of consecutive rows: the trained positions are in row
        // order, so each group's are a contiguous run. They are laid out as
        // [G, M_max, D] (a constant number of ops whatever G), scored by one
        // batched product with the groups' draws, and gathered back.
        let e_rand = rows(out, &t.random); // [G, K, D]
        let g = e_rand.size()[0];
        let padded = Packing {
            idx: slot,
            b: g,
            l: *m_max,
        }
        .pad(&rep);
        (
            padded
                .bmm(&e_rand.transpose(1, 2))
                .view([g * m_max, k])
                .index_select(0, slot),
            Box::new(|x: &Tensor| x.index_select(0, group)),
        )
    } else {
        // A draw per row: [B, P, K] by one batched product, then the trained
        // positions.
        let e_rand = rows(out, &t.random); // [B, K, D]
        let rep_all = rep_all.unwrap_or_else(|| {
            let b = t.targets.size()[0];
            Packing { idx, b, l: p }.pad(&rep)
        });
        (
            flat(rep_all.matmul(&e_rand.transpose(1, 2)), k),
            Box::new(move |x: &Tensor| flat(x.unsqueeze(1).expand([-1, p, k], false), k)),
        )
    };
    let mut rand_mask = if t.interleave {
        t.random_mask.shallow_clone()
    } else {
        flat(t.random_mask.unsqueeze(1).expand([-1, p, k], false), k)
    };
    let stratified = cfg.loss == Loss::SampledSoftmax && cfg.logq == LogQ::Stratified;
    if let Some(tally) = tally.as_deref_mut() {
        tally.random.add(&rand_scores, &pos, &rand_mask);
    }
    // The hard part: scores, which exist, ln q.
    let hard = t.hard.as_ref().map(|(hard, hard_lq)| {
        let h = hard.size()[2];
        let hard = flat(hard.shallow_clone(), h); // [M, H]
        let hs = (rows(out, &hard) * rep.unsqueeze(1)).sum_dim_intlist(-1i64, false, Kind::Float);
        let mut hard_mask = hard.gt(0);
        if stratified {
            // An exact stratum counts each item once: a hard negative drawn again
            // is masked, and so is a random draw of one (the random part
            // estimates the items outside the stratum).
            let earlier = Tensor::ones([h, h], (Kind::Bool, hard.device())).tril(-1);
            let repeat = hard
                .unsqueeze(2)
                .eq_tensor(&hard.unsqueeze(1))
                .logical_and(&earlier)
                .any_dim(2, false);
            hard_mask = hard_mask.logical_and(&repeat.logical_not());
            let shape = rand_mask.size();
            rand_mask = rand_mask
                .reshape([-1])
                .index_fill(0, &t.stratum_hits, 0)
                .view(shape.as_slice());
        }
        if let Some(tally) = tally {
            tally.hard.add(&hs, &pos, &hard_mask);
        }
        (hs, hard_mask, flat(hard_lq.shallow_clone(), h))
    });
    let k_hard = hard.as_ref().map_or(0, |(hs, _, _)| hs.size()[1]);
    if cfg.loss == Loss::SampledSoftmax {
        // Each part's logQ correction and mask folded into one additive bias.
        let bias = |lq: &Tensor, mask: &Tensor, is_hard: bool| {
            objectives::part_bias(
                cfg.logq,
                lq,
                mask,
                (k, k_hard),
                is_hard,
                cfg.negative_weight,
            )
        };
        // The random part's offset is taken on the draws, then spread: the same
        // values as on [M, K], at the draws' size.
        let offset = objectives::part_offset(
            cfg.logq,
            &t.random_log_q,
            (k, k_hard),
            false,
            cfg.negative_weight,
        );
        let rand_bias = objectives::masked_bias(&spread(&offset), &rand_mask);
        let mut parts = vec![(rand_scores, rand_bias)];
        if let Some((hs, hard_mask, hard_lq)) = hard {
            let b = bias(&hard_lq, &hard_mask, true);
            parts.push((hs, b));
        }
        if cfg.history_negatives {
            let overhead = model.chunk_overhead(rep.device());
            parts.push(history_part(t, &rep, out, &tgt, overhead));
        }
        if let Some((head, mask)) = &t.head {
            // The head stratum: exact, weight 1, no correction.
            let scores = rep.matmul(&rows(out, head).transpose(0, 1)); // [M, P]
            let bias = objectives::masked_bias(&scores.zeros_like(), mask);
            parts.push((scores, bias));
        }
        return objectives::sampled_softmax_parts(&pos, &parts);
    }
    let rand_lq = spread(&t.random_log_q);
    let (neg, mask, log_q) = match hard {
        Some((hs, hard_mask, hard_lq)) => (
            Tensor::cat(&[rand_scores, hs], 1),
            Tensor::cat(&[rand_mask, hard_mask], 1),
            Tensor::cat(&[rand_lq, hard_lq], 1),
        ),
        None => (rand_scores, rand_mask, rand_lq),
    };
    let correction = objectives::logq_correction(cfg.logq, &log_q, k, k_hard);
    let negatives = usize::try_from(k + k_hard).unwrap_or(0);
    let beta = objectives::gbce_beta(negatives, n_items, cfg.gbce_t);
    let offset = objectives::bce_offset(cfg.bce_offset, negatives);
    objectives::sampled(
        cfg.loss,
        &pos,
        &neg,
        &mask,
        correction.as_ref(),
        beta,
        offset,
    )
}

/// `history-negatives`: each trained position's scores `[M, C]` against its row's
/// own window, the row's inputs and last target (the last m + 1 columns of
/// `[hist | last target]` for a row of m trained positions), and their bias: 0
/// where the item counts, −∞ for padding, for a repeat of an item earlier in the
/// window (the full softmax counts each item once) and for the position's own
/// target. These are the items the random negatives mask; here they enter the
/// normaliser exactly, as in the full softmax, with no correction or weight.
///
/// A random batch is mostly padding (one long row sets its width) and this part
/// costs rows × w × (w + 1) scores at width w, so rows are scored in chunks of
/// similar length (`chunk_plan`, at `overhead` scores a chunk; None: one chunk),
/// each chunk by one batched product over its rows' last w columns; the chunks'
/// columns are padded to the widest (bias −∞) and put back in row-major order.
fn history_part(
    t: &Tensors,
    rep: &Tensor,
    out: &nn::Embedding,
    tgt: &Tensor,
    overhead: Option<usize>,
) -> (Tensor, Tensor) {
    let p = t.targets.size()[1];
    let dev = rep.device();
    let cands = Tensor::cat(&[&t.hist, &t.targets.narrow(1, p - 1, 1)], 1); // [B, P + 1]
    let widest = t.row_len.iter().copied().max().unwrap_or(0);
    let plan = match overhead {
        Some(o) => crate::model::chunk_plan(&t.row_len, 1, o),
        None => vec![(
            widest,
            (0..t.row_len.len()).filter(|&r| t.row_len[r] > 0).collect(),
        )],
    };
    // Row r's first trained position in the row-major order of `rep`.
    let first: Vec<i64> = t
        .row_len
        .iter()
        .scan(0i64, |at, &m| {
            let f = *at;
            *at += m as i64;
            Some(f)
        })
        .collect();
    let c_max = i64::try_from(widest).unwrap_or(0) + 1;
    if plan.is_empty() {
        let none = Tensor::zeros([0, c_max], (Kind::Float, dev));
        return (none.shallow_clone(), none);
    }
    let (mut scores, mut biases, mut order) = (Vec::new(), Vec::new(), Vec::new());
    for (w, chunk) in &plan {
        let (n, w) = (chunk.len() as i64, *w as i64);
        // Each trained position of the chunk: its index in `rep` and its slot in
        // the chunk's left-padded [n, w] layout.
        let (mut pidx, mut slot, mut row_of) = (Vec::new(), Vec::new(), Vec::new());
        for (i, &r) in chunk.iter().enumerate() {
            let m = t.row_len[r] as i64;
            pidx.extend((0..m).map(|j| first[r] + j));
            slot.extend((0..m).map(|j| i as i64 * w + w - m + j));
            row_of.extend(std::iter::repeat_n(i as i64, t.row_len[r]));
        }
        let row_of = Tensor::from_slice(&row_of).to_device(dev);
        let pidx_t = Tensor::from_slice(&pidx).to_device(dev);
        let slot_t = Tensor::from_slice(&slot).to_device(dev);
        let rows_t =
            Tensor::from_slice(&chunk.iter().map(|&r| r as i64).collect::<Vec<_>>()).to_device(dev);
        let cand = cands.index_select(0, &rows_t).narrow(1, p - w, w + 1); // [n, w + 1]
        let earlier = Tensor::ones([w + 1, w + 1], (Kind::Bool, dev)).tril(-1);
        let repeat = cand
            .unsqueeze(2)
            .eq_tensor(&cand.unsqueeze(1))
            .logical_and(&earlier)
            .any_dim(2, false); // [n, w + 1]: also at an earlier column
        let counts = cand.gt(0).logical_and(&repeat.logical_not());
        let keep = counts.index_select(0, &row_of).logical_and(
            &cand
                .index_select(0, &row_of)
                .ne_tensor(&tgt.index_select(0, &pidx_t).unsqueeze(1)),
        );
        let padded = Packing {
            idx: &slot_t,
            b: n,
            l: w,
        }
        .pad(&rep.index_select(0, &pidx_t)); // [n, w, D]
        let s = padded
            .bmm(&rows(out, &cand).transpose(1, 2)) // [n, w, w + 1]
            .view([n * w, w + 1])
            .index_select(0, &slot_t);
        let bias = s
            .zeros_like()
            .masked_fill(&keep.logical_not(), f64::NEG_INFINITY);
        // Pad to the widest chunk's columns: no candidate there.
        let extra = c_max - (w + 1);
        scores.push(s.constant_pad_nd([0, extra]));
        biases.push(bias.pad([0, extra], "constant", f64::NEG_INFINITY));
        order.extend(pidx);
    }
    // Back to row-major order: the position at `order[i]` is chunk row i.
    let mut back = vec![0i64; order.len()];
    for (i, &o) in order.iter().enumerate() {
        back[usize::try_from(o).unwrap_or(0)] = i as i64;
    }
    let back = Tensor::from_slice(&back).to_device(dev);
    (
        Tensor::cat(&scores, 0).index_select(0, &back),
        Tensor::cat(&biases, 0).index_select(0, &back),
    )
}

pub(crate) struct Trainer<'a> {
    job: &'a Job<'a>,
    rows: Rows<'a>,
    random: RandomSampler,
    device: Device,
    model: Model,
    pub(crate) vs: nn::VarStore,
    opt: Adam,
}

impl<'a> Trainer<'a> {
    /// A fresh model for `job` (libtorch's seed set by the caller) over the rows of
    /// `inst`; also returns the model's trainable parameter count.
    pub(crate) fn new(job: &'a Job<'a>, inst: &'a Instances, device: Device) -> (Self, i64) {
        let (cfg, ds) = (job.cfg, job.ds);
        let (vs, model, opt, n_params) = new_model(cfg, ds.n_items, device);
        let tr = Trainer {
            job,
            rows: rows_for(ds, inst, &model, cfg),
            random: RandomSampler::new(cfg, ds),
            device,
            model,
            vs,
            opt,
        };
        (tr, n_params)
    }

    /// One epoch over every row in a seeded order; returns (mean loss, trained
    /// positions, how hard the negatives were). With `learn` false the same batches
    /// are only scored (no dropout, no step): `hardness` audits a trained model.
    pub(crate) fn epoch(
        &mut self,
        epoch: u32,
        hard: Option<&EpochNegatives>,
        learn: bool,
    ) -> Result<(f64, u64, Hardness)> {
        let (job, cfg) = (self.job, self.job.cfg);
        let ids = self.rows.ids();
        let order = permutation(
            ids.len(),
            mix_seed(&[job.seed, u64::from(epoch), TAG_ORDER]),
        );
        let k = cfg.n_random as usize;
        let n_hard = hard.map_or(0, |h| h.n_hard);
        let mut loss_sum = 0.0;
        let mut batches = 0u64;
        let mut trained = 0u64;
        let mut hardness = Hardness::default();
        for (bi, chunk_ids) in batch_order(&self.rows, cfg, &ids, &order, epoch, job.seed)
            .into_iter()
            .enumerate()
        {
            let shared = share(cfg).map(|share| {
                let rng = Xoshiro256PlusPlus::seed_from_u64(mix_seed(&[
                    job.seed,
                    u64::from(epoch),
                    bi as u64,
                    TAG_RANDOM,
                    TAG_BATCH,
                ]));
                (rng, share)
            });
            let b = self.rows.batch(
                &chunk_ids,
                k,
                &self.random,
                hard,
                |row| {
                    Xoshiro256PlusPlus::seed_from_u64(mix_seed(&[
                        job.seed,
                        u64::from(epoch),
                        row,
                        TAG_RANDOM,
                    ]))
                },
                shared,
            );
            let t = Tensors::new(&b, k, n_hard, self.device);
            let mut loss = batch_loss(
                &self.model,
                cfg,
                &t,
                job.ds.n_items,
                learn,
                Some(&mut hardness),
            );
            if learn {
                if cfg.backbone == Backbone::Encoder && cfg.gamma > 0.0 {
                    loss += self.contrastive(epoch, &b, &chunk_ids) * cfg.gamma;
                }
                if fault_nan(epoch) {
                    // Test hook: a diverged model.
                    loss *= f64::NAN;
                }
            }
            let value = loss.double_value(&[]);
            if learn {
                if !value.is_finite() {
                    return Err(Error::usage(format!(
                        "training diverged: epoch {epoch}, batch {bi}: the loss is {value}"
                    ))
                    .with_hint(
                        "nothing of this epoch was kept; lower train.lr (or check the data)",
                    ));
                }
                self.opt.zero_grad();
                loss.backward();
                self.opt.step();
            }
            loss_sum += value;
            batches += 1;
            trained += b.trained as u64;
            job.progress.advance(b.trained as u64);
        }
        #[expect(clippy::cast_precision_loss, reason = "batch counts")]
        Ok((loss_sum / batches.max(1) as f64, trained, hardness))
    }

    /// ContraRec's context-context term over two augmented views of each history.
    fn contrastive(&self, epoch: u32, b: &Batch, ids: &[u64]) -> Tensor {
        let (job, l) = (self.job, b.len);
        let mask_token = self.model.n_items + 1;
        let views: Vec<Tensor> = (0..2u64)
            .map(|v| {
                let mut h = b.hist.clone();
                for (row, &id) in h.chunks_mut(l).zip(ids) {
                    let mut rng = Xoshiro256PlusPlus::seed_from_u64(mix_seed(&[
                        job.seed,
                        u64::from(epoch),
                        id,
                        TAG_VIEW,
                        v,
                    ]));
                    augment(row, mask_token, &mut rng);
                }
                self.model.encode(&history_tensor(&h, l, self.device), true)
            })
            .collect();
        let tt = Tensor::from_slice(&b.targets).to_device(self.device);
        objectives::supcon(&views[0], &views[1], &tt, job.cfg.cl_temperature)
    }
}

/// The epoch's batches of row ids: the seeded permutation cut into batches, or
/// (`batching = "length"`) the permutation sorted by row length (stable, so rows of
/// equal length stay in random order), cut, and the batches shuffled.
pub(crate) fn batch_order(
    rows: &Rows,
    cfg: &TrainSettings,
    ids: &[u64],
    order: &[usize],
    epoch: u32,
    seed: u64,
) -> Vec<Vec<u64>> {
    let mut ordered: Vec<u64> = order.iter().map(|&r| ids[r]).collect();
    let bs = cfg.batch_size as usize;
    if cfg.batching == Batching::Random {
        return ordered.chunks(bs).map(<[u64]>::to_vec).collect();
    }
    ordered.sort_by_key(|&r| rows.row_len(r));
    let batches: Vec<Vec<u64>> = ordered.chunks(bs).map(<[u64]>::to_vec).collect();
    permutation(
        batches.len(),
        mix_seed(&[seed, u64::from(epoch), TAG_ORDER, 2]),
    )
    .into_iter()
    .map(|i| batches[i].clone())
    .collect()
}

fn fault_nan(epoch: u32) -> bool {
    std::env::var("GNNO_FAULT_NAN_LOSS_EPOCH")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        == Some(epoch)
}

pub(crate) fn new_model(
    cfg: &TrainSettings,
    n_items: u32,
    device: Device,
) -> (nn::VarStore, Model, Adam, i64) {
    let vs = nn::VarStore::new(device);
    let model = Model::new(&vs.root(), cfg, n_items);
    let params: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    let n_params: i64 = params.iter().map(|(_, t)| t.numel() as i64).sum();
    let opt = Adam::new(params, cfg.lr, cfg.weight_decay);
    (vs, model, opt, n_params)
}

/// The epoch's hard negatives from the shards, where it has any (from the
/// warm-up on; never for the full softmax, which scores every item).
pub(crate) fn epoch_negatives(
    job: &Job,
    epoch: u32,
    inst: &Instances,
) -> Result<Option<EpochNegatives>> {
    (epoch >= job.hard_from && job.cfg.loss != Loss::FullSoftmax)
        .then(|| EpochNegatives::load(job.input, epoch, job.n_hard as usize, inst, job.ds.n_items))
        .transpose()
}

/// How `cfg`'s random negatives are shared within a batch; None when each row
/// draws from its own stream (`random-scope = "row"`).
pub(crate) fn share(cfg: &TrainSettings) -> Option<Share> {
    match cfg.random_scope {
        RandomScope::Row => None,
        RandomScope::Batch => Some(Share::Groups(cfg.random_groups as usize)),
        RandomScope::Position => Some(Share::Interleaved(usize::MAX)),
        RandomScope::Interleaved => Some(Share::Interleaved(cfg.random_groups as usize)),
    }
}

/// The training rows of `inst` as `model` takes them (one per user for a causal
/// model, one per instance otherwise; padding trimmed where the model allows).
pub(crate) fn rows_for<'a>(
    ds: &'a Dataset,
    inst: &'a Instances,
    model: &Model,
    cfg: &TrainSettings,
) -> Rows<'a> {
    let mut r = Rows::new(ds, inst, model.is_causal(), cfg.history_len as usize);
    r.trim = model.trims_padding();
    r
}

/// Start from the exported model in `from`: load it into the fresh model by raw
/// item id, rank dev with it, and save it as the best model so far, so the best
/// checkpoint is never worse on dev than the starting point.
fn warm_start(tr: &Trainer, from: &std::path::Path) -> Result<crate::warm::WarmStartInfo> {
    let (job, cfg) = (tr.job, tr.job.cfg);
    let file = from.join(crate::export::MODEL_FILE);
    let (carried, fresh, dropped) = crate::warm::load(&tr.vs, cfg, &job.ds.item_raw, &file)?;
    let dev = evaluate::rank_users(
        &tr.model,
        job.ds,
        tr.device,
        Split::Dev,
        job.eval.batch_size as usize,
        cfg.history_len as usize,
        &evaluate::dev_ks(&cfg.early_stop_metric),
        "the warm-started model",
    )?;
    let score = evaluate::metric_value(
        dev.protocol(job.eval.exclude_history),
        &cfg.early_stop_metric,
    );
    checkpoint::save_named(
        &job.out.join(BEST_MODEL),
        &checkpoint::model_tensors(&tr.vs),
    )?;
    tracing::info!(
        from = %from.display(),
        carried,
        new = fresh,
        dropped,
        dev = format!("{}={score:.5}", cfg.early_stop_metric),
        "warm start"
    );
    Ok(crate::warm::WarmStartInfo {
        from: from.display().to_string(),
        items_carried: carried,
        items_new: fresh,
        items_dropped: dropped,
        dev_metric: score,
    })
}

/// Train a model; writes `best.ot`, `history.json` and checkpoints into `out`.
pub fn train(job: &Job) -> Result<TrainReport> {
    let device = resolve_device(job.device)?;
    alloc::keep_large_blocks();
    tch::set_num_threads(i32::try_from(job.threads).unwrap_or(1));
    #[expect(clippy::cast_possible_wrap, reason = "seed bits")]
    tch::manual_seed(mix_seed(&[job.seed, 0x494E_4954]) as i64);
    let (cfg, ds) = (job.cfg, job.ds);
    let inst = ds.instances();
    if inst.is_empty() {
        return Err(Error::usage(
            "no training instances: every user has fewer than two train items",
        ));
    }
    let (mut tr, n_params) = Trainer::new(job, &inst, device);
    let sequence = tr.model.is_causal();

    // Resume from the last checkpoint of a killed run with the same settings.
    let ckpt_dir = job.out.join(CHECKPOINT_DIR);
    fsutil::create_dir_all(&ckpt_dir)?;
    let state_path = ckpt_dir.join("state.json");
    let mut st = CheckpointState::fresh();
    let mut resumed = None;
    if let Some(saved) = CheckpointState::read(&state_path)? {
        let tpath = ckpt_dir.join(&saved.tensors);
        let named = checkpoint::load_named(&tpath)?;
        checkpoint::load_model_tensors(&mut tr.vs, &named, &tpath)?;
        tr.opt
            .restore(&named)
            .map_err(|e| Error::artifact(&tpath, format!("damaged checkpoint: {e}")))?;
        tracing::info!(epoch = saved.next_epoch, "resuming from checkpoint");
        resumed = Some(saved.next_epoch);
        st = saved;
    } else if let Some(from) = job.warm_from {
        // A run's own checkpoint takes precedence (above): a killed warm-started
        // run resumes exactly rather than starting over.
        let w = warm_start(&tr, from)?;
        st.best_score = w.dev_metric;
        st.warm_start = Some(w);
    }
    let per_epoch = tr.rows.positions_per_epoch();
    let total_epochs = match st.warm_start {
        Some(_) if cfg.warm_start_epochs > 0 => cfg.warm_start_epochs,
        _ => cfg.epochs,
    };
    job.progress.start(
        "train",
        u64::from(total_epochs.saturating_sub(st.next_epoch)) * per_epoch,
    );
    let dev_ks = evaluate::dev_ks(&cfg.early_stop_metric);
    let mut stopped_early = false;
    let mut epoch = st.next_epoch;
    while epoch < total_epochs {
        if st.bad_epochs >= cfg.patience {
            stopped_early = true;
            break;
        }
        #[expect(clippy::cast_possible_wrap, reason = "seed bits")]
        tch::manual_seed(mix_seed(&[job.seed, u64::from(epoch), 0x4452_4F50]) as i64);
        tr.model
            .reseed_dropout(mix_seed(&[job.seed, u64::from(epoch), 0x4D41_534B]));
        let t0 = Instant::now();
        let hard = epoch_negatives(job, epoch, &inst)?;
        let (loss, trained, hardness) = tr.epoch(epoch, hard.as_ref(), true)?;
        let train_s = t0.elapsed().as_secs_f64();
        let dev = evaluate::rank_users(
            &tr.model,
            ds,
            device,
            Split::Dev,
            job.eval.batch_size as usize,
            cfg.history_len as usize,
            &dev_ks,
            &format!("epoch {epoch}"),
        )?;
        let m = dev.protocol(job.eval.exclude_history);
        let score = evaluate::metric_value(m, &cfg.early_stop_metric);
        #[expect(clippy::cast_precision_loss, reason = "rates")]
        let row = EpochRow {
            epoch,
            loss,
            hard_negatives: hard.is_some(),
            dev_metric: score,
            dev_ndcg10: evaluate::metric_value(m, "NDCG@10"),
            dev_hr10: evaluate::metric_value(m, "HR@10"),
            train_seconds: train_s,
            seconds: t0.elapsed().as_secs_f64(),
            instances_per_second: trained as f64 / train_s.max(1e-9),
            random_above_target: hardness.random.share(),
            hard_above_target: hardness.hard.share(),
        };
        tracing::info!(
            epoch,
            loss = format!("{:.5}", row.loss),
            dev = format!("{}={score:.5}", cfg.early_stop_metric),
            seconds = format!("{:.1}", row.seconds),
            "epoch done"
        );
        st.history.push(row);
        if score > st.best_score {
            st.best_score = score;
            st.best_epoch = Some(epoch);
            st.bad_epochs = 0;
            checkpoint::save_named(
                &job.out.join(BEST_MODEL),
                &checkpoint::model_tensors(&tr.vs),
            )?;
        } else {
            st.bad_epochs += 1;
        }
        // Checkpoint: tensors first, then the state that names them.
        epoch += 1;
        st.next_epoch = epoch;
        let name = format!("epoch-{epoch:04}.ot");
        let mut named = checkpoint::model_tensors(&tr.vs);
        named.extend(tr.opt.state());
        checkpoint::save_named(&ckpt_dir.join(&name), &named)?;
        let old = std::mem::replace(&mut st.tensors, name);
        st.write(&state_path)?;
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
    if st.best_epoch.is_none() && st.warm_start.is_none() {
        return Err(Error::usage("training ended without a usable epoch"));
    }
    fsutil::write_atomic(
        &job.out.join(HISTORY_FILE),
        &serde_json::to_vec_pretty(&st.history).map_err(|e| Error::internal(e.to_string()))?,
    )?;
    #[expect(clippy::cast_precision_loss, reason = "rates")]
    let n_rows = st.history.len().max(1) as f64;
    Ok(TrainReport {
        backbone: cfg.backbone,
        loss: cfg.loss,
        rows: if sequence { "sequence" } else { "prefix" },
        device: format!("{device:?}"),
        epochs_run: u32::try_from(st.history.len()).unwrap_or(0),
        best_epoch: st.best_epoch,
        early_stop_metric: cfg.early_stop_metric.clone(),
        best_dev_metric: st.best_score,
        stopped_early,
        resumed_at_epoch: resumed,
        instances: per_epoch,
        parameters: n_params,
        mean_instances_per_second: st
            .history
            .iter()
            .map(|r| r.instances_per_second)
            .sum::<f64>()
            / n_rows,
        mean_train_seconds_per_epoch: st.history.iter().map(|r| r.train_seconds).sum::<f64>()
            / n_rows,
        warm_start: st.warm_start,
        epochs: st.history,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gnno_core::config::{LogQ, OutputEmbedding};
    use tch::nn::Module;

    /// Three sequence rows of length 3 (1, 1 and 3 trained positions) with K = 4
    /// random negatives.
    fn batch(random: Vec<i64>, random_rows: usize, group_rows: usize) -> Batch {
        let k = 4;
        Batch {
            rows: 3,
            len: 3,
            positions: 3,
            hist: vec![0, 0, 1, 0, 0, 4, 6, 7, 8],
            targets: vec![0, 0, 2, 0, 0, 5, 7, 8, 11],
            // ln q follows the item, so a draw carries its own.
            random_log_q: random.iter().map(|&j| -2.0 - j as f32 * 0.1).collect(),
            random,
            random_rows,
            group_rows,
            random_mask: (0..3 * k).map(|c| c % 5 != 3).collect(),
            interleave: false,
            hard: vec![],
            hard_log_q: vec![],
            trained: 5,
            head: vec![],
            head_mask: vec![],
        }
    }

    #[test]
    fn above_target_counts_valid_negatives_scored_over_the_target() {
        let scores = Tensor::from_slice(&[1.0f32, 3.0, 4.0, 0.0, 5.0, 0.0]).view([2, 3]);
        let pos = Tensor::from_slice(&[2.0f32, 0.0]);
        let mask = Tensor::from_slice(&[true, true, false, true, true, true]).view([2, 3]);
        // Row 0: 3 > 2; the 4 is above too but masked. Row 1: 5 > 0; the 0s tie.
        let mut c = AboveTarget::default();
        assert_eq!((c.counts(), c.share()), ((0, 0), None));
        c.add(&scores, &pos, &mask);
        assert_eq!(c.counts(), (2, 5));
        c.add(&scores, &pos, &mask);
        assert_eq!(c.share(), Some(0.4));
    }

    /// A small SASRec over 12 items (L 3, 8-d, no dropout) for sampled softmax with
    /// logQ on every negative, initialised from `seed`.
    fn sampled_sasrec(seed: i64) -> (TrainSettings, nn::VarStore, Model) {
        let mut cfg = crate::tests::settings();
        cfg.backbone = Backbone::Sasrec;
        cfg.history_len = 3;
        cfg.dim = 8;
        cfg.heads = 1;
        cfg.dropout = 0.0;
        cfg.loss = Loss::SampledSoftmax;
        cfg.logq = LogQ::All;
        tch::manual_seed(seed);
        let (vs, model, _, _) = new_model(&cfg, 12, Device::Cpu);
        (cfg, vs, model)
    }

    #[test]
    fn each_position_scores_its_own_hard_negatives_with_their_log_q() {
        let (cfg, _vs, model) = sampled_sasrec(5);
        let (k, h) = (4usize, 2usize);
        // A draw per row, and two hard negatives per position (0 = none), each
        // with its own ln q; positions without a target carry hard ones too
        // (ignored).
        let mut b = batch(vec![3, 7, 11, 12, 1, 4, 6, 9, 2, 5, 10, 12], 3, 1);
        b.hard = vec![9, 10, 3, 1, 6, 0, 1, 2, 3, 4, 8, 5, 9, 0, 12, 10, 3, 6];
        b.hard_log_q = (0..18u8).map(|i| -1.0 - f32::from(i) * 0.25).collect();
        let t = Tensors::new(&b, k, h, Device::Cpu);
        let got = batch_loss(&model, &cfg, &t, 12, false, None).double_value(&[]);
        // By hand: each trained position (row, column) in row order, its
        // candidates the row's K random ones then its own H hard ones.
        let rep = model.encode_all(&Tensor::from_slice(&b.hist).view([3, 3]), false);
        let out = model.out_items();
        let score = |r: usize, c: usize, item: i64| {
            let e = out.forward(&Tensor::from(item));
            (rep.get(r as i64).get(c as i64) * e)
                .sum(Kind::Float)
                .double_value(&[])
        };
        let (mut pos, mut neg, mut mask, mut lq) = (vec![], vec![], vec![], vec![]);
        for r in 0..3 {
            for c in 0..3 {
                let target = b.targets[r * 3 + c];
                if target == 0 {
                    continue;
                }
                pos.push(score(r, c, target) as f32);
                for j in 0..k {
                    neg.push(score(r, c, b.random[r * k + j]) as f32);
                    mask.push(b.random_mask[r * k + j]);
                    lq.push(b.random_log_q[r * k + j]);
                }
                for j in 0..h {
                    let x = b.hard[(r * 3 + c) * h + j];
                    neg.push(if x > 0 { score(r, c, x) as f32 } else { 0.0 });
                    mask.push(x > 0);
                    lq.push(b.hard_log_q[(r * 3 + c) * h + j]);
                }
            }
        }
        assert_eq!(pos.len(), 5);
        let w = (k + h) as i64;
        let lq = Tensor::from_slice(&lq).view([-1, w]);
        let corr = objectives::logq_correction(cfg.logq, &lq, 4, 2);
        let want = objectives::sampled(
            cfg.loss,
            &Tensor::from_slice(&pos),
            &Tensor::from_slice(&neg).view([-1, w]),
            &Tensor::from_slice(&mask).view([-1, w]),
            corr.as_ref(),
            1.0,
            0.0,
        )
        .double_value(&[]);
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        // The hard negatives count: without them the loss is another.
        let plain = batch_loss(
            &model,
            &cfg,
            &Tensors::new(&b, k, 0, Device::Cpu),
            12,
            false,
            None,
        );
        assert!((plain.double_value(&[]) - got).abs() > 1e-3);
    }

    #[test]
    fn padded_hard_negatives_send_no_gradient_to_the_padding_row() {
        // Candidates are gathered by index_select on the CPU (`model::rows`), which
        // unlike libtorch's embedding does not drop the padding index: the
        // masked candidates must send row 0 an exactly zero gradient, under every
        // sampled loss, while the items they sit beside get one.
        // With a separate output table too: the candidates are its rows, the
        // inputs the item table's.
        let losses = [Loss::SampledSoftmax, Loss::Bce, Loss::Gbce, Loss::Bpr];
        for (loss, separate) in losses.iter().flat_map(|&l| [(l, false), (l, true)]) {
            let (mut cfg, _, _) = sampled_sasrec(5);
            cfg.loss = loss;
            if separate {
                cfg.output_embedding = OutputEmbedding::Separate;
            }
            let (vs, model, _, _) = new_model(&cfg, 12, Device::Cpu);
            let mut b = batch(vec![3, 7, 11, 12, 1, 4, 6, 9, 2, 5, 10, 12], 3, 1);
            // Two trained positions (2 and 6) with a padded hard slot.
            b.hard = vec![9, 10, 3, 1, 6, 0, 1, 2, 3, 4, 8, 5, 9, 0, 12, 10, 3, 6];
            b.hard_log_q = vec![-2.0; 18];
            let t = Tensors::new(&b, 4, 2, Device::Cpu);
            let loss_value = batch_loss(&model, &cfg, &t, 12, true, None);
            assert!(loss_value.double_value(&[]).is_finite(), "{loss:?}");
            loss_value.backward();
            let table = if separate { "out_items" } else { "items" };
            let g = vs.variables()[&format!("{table}.weight")].grad();
            let row = |i: i64| g.get(i).abs().max().to_kind(Kind::Double).double_value(&[]);
            assert_eq!(row(0), 0.0, "{loss:?} {table}");
            assert!(row(6) > 0.0 && row(9) > 0.0, "{loss:?} {table}");
        }
    }

    /// `b`'s loss under `cfg` (4 random negatives per draw, no hard ones).
    fn loss_of(model: &Model, cfg: &TrainSettings, b: &Batch) -> f64 {
        let t = Tensors::new(b, 4, 0, Device::Cpu);
        batch_loss(model, cfg, &t, 12, true, None).double_value(&[])
    }

    /// `base` with `random` as `random_rows` draws of 4 dealt to its trained
    /// positions, each position masking by `mask` (`[M, 4]`); ln q as [`batch`].
    fn dealt(base: &Batch, random: Vec<i64>, random_rows: usize, mask: Vec<bool>) -> Batch {
        Batch {
            random_log_q: random.iter().map(|&j| -2.0 - j as f32 * 0.1).collect(),
            random,
            random_rows,
            random_mask: mask,
            interleave: true,
            ..base.clone()
        }
    }

    /// Three rows over 12 items, row 0 repeating item 6 (w = 6 7 6 11), row 0 the
    /// longest; each row draws every item of 1..=12 outside its window, padded to
    /// `k` (at least 10), with ln q = `log_q`. The draws are rotated by row, so no
    /// item sits in the same column in two rows' draws.
    fn every_other_item_drawn(k: usize, log_q: f32) -> Batch {
        let mut b = batch(vec![], 3, 1);
        b.hist = vec![6, 7, 6, 0, 0, 1, 0, 0, 4];
        b.targets = vec![7, 6, 11, 0, 0, 2, 0, 0, 5];
        (b.random, b.random_mask) = (vec![], vec![]);
        for (r, w) in [[6i64, 7, 11], [1, 2, 0], [4, 5, 0]].iter().enumerate() {
            let mut others: Vec<i64> = (1..=12).filter(|j| !w.contains(j)).collect();
            others.rotate_left(3 * r);
            b.random_mask.extend((0..k).map(|i| i < others.len()));
            b.random
                .extend(others.iter().copied().chain(std::iter::repeat(0)).take(k));
        }
        b.random_log_q = vec![log_q; 3 * k];
        b
    }

    #[test]
    fn history_negatives_with_every_other_item_drawn_give_the_full_softmax() {
        // Row 0 repeats item 6 (w = 6 7 6 11): the full softmax counts it once, and
        // at position 1, whose target it is, not as a negative at all. Row 0 is the
        // longest, so cut into chunks by length its positions come last.
        let k = 10;
        let b = every_other_item_drawn(k, -1.0);
        let t = Tensors::new(&b, k, 0, Device::Cpu);
        // One chunk, a chunk per length, and the default cut.
        for overhead in [None, Some(0), Some(1 << 20)] {
            let (mut cfg, vs, model) = sampled_sasrec(7);
            let model = model.with_chunk_overhead(overhead);
            cfg.logq = LogQ::Off;
            cfg.history_negatives = true;
            let loss = batch_loss(&model, &cfg, &t, 12, false, None);
            let got = loss.double_value(&[]);
            let mut full = cfg.clone();
            full.loss = Loss::FullSoftmax;
            let want = batch_loss(&model, &full, &t, 12, false, None).double_value(&[]);
            assert!((got - want).abs() < 1e-5, "{overhead:?}: {got} vs {want}");
            // The padding in the windows sends no gradient; the window's items do.
            loss.backward();
            let g = vs.variables()["items.weight"].grad();
            let row = |i: i64| g.get(i).abs().max().to_kind(Kind::Double).double_value(&[]);
            assert_eq!(row(0), 0.0);
            assert!(row(6) > 0.0 && row(11) > 0.0);
            // Without them the normaliser misses the rows' own items: a smaller loss.
            cfg.history_negatives = false;
            let without = batch_loss(&model, &cfg, &t, 12, false, None).double_value(&[]);
            assert!(without < got - 1e-3, "{without} vs {got}");
        }
    }

    #[test]
    fn a_stratified_hard_part_with_every_other_item_drawn_gives_the_full_softmax() {
        // As above (history negatives, every item outside a row's window drawn,
        // here with K·q = 1 so the random part's correction is 0), and each
        // position draws 3 hard negatives, repeats and padding among them: counted
        // once each, the random draws of them masked, the loss is the full softmax's.
        let k = 10;
        let lq = -(k as f32).ln();
        let mut b = every_other_item_drawn(k, lq);
        b.hard = vec![
            1, 1, 2, 3, 0, 3, 12, 9, 12, // row 0
            0, 0, 0, 0, 0, 0, 9, 9, 9, // row 1: its one trained position
            0, 0, 0, 0, 0, 0, 3, 0, 8, // row 2
        ];
        b.hard_log_q = vec![-0.5; 27];
        let (mut cfg, _vs, model) = sampled_sasrec(7);
        cfg.history_negatives = true;
        let loss = |cfg: &TrainSettings, h: usize| {
            let t = Tensors::new(&b, k, h, Device::Cpu);
            batch_loss(&model, cfg, &t, 12, false, None).double_value(&[])
        };
        let mut full = cfg.clone();
        full.loss = Loss::FullSoftmax;
        let want = loss(&full, 3);
        cfg.logq = LogQ::Stratified;
        let got = loss(&cfg, 3);
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        // Counting the repeats and the random draws of the hard items again (the
        // hard part at full weight, `random`) gives another, larger loss.
        cfg.logq = LogQ::Random;
        let again = loss(&cfg, 3);
        assert!(again > got + 1e-3, "{again} vs {got}");
        // Without hard negatives the random part alone is the full softmax.
        cfg.logq = LogQ::Stratified;
        assert!((loss(&cfg, 0) - want).abs() < 1e-5);
        // The same draws dealt to the five trained positions (the interleaved
        // path, each position's draw found through its group): the same loss.
        let rows_of = [0usize, 0, 0, 1, 2];
        let dealt = Batch {
            random: rows_of
                .iter()
                .flat_map(|&r| b.random[r * k..(r + 1) * k].to_vec())
                .collect(),
            random_mask: rows_of
                .iter()
                .flat_map(|&r| b.random_mask[r * k..(r + 1) * k].to_vec())
                .collect(),
            random_log_q: vec![lq; 5 * k],
            random_rows: 5,
            interleave: true,
            ..b.clone()
        };
        let t = Tensors::new(&dealt, k, 3, Device::Cpu);
        let dealt_loss = batch_loss(&model, &cfg, &t, 12, false, None).double_value(&[]);
        assert!((dealt_loss - want).abs() < 1e-5, "{dealt_loss} vs {want}");
        // A head stratum of items 3, 9, 6 and 1, counted in the head part and
        // masked in the random draws; masked in the head where it is one of the
        // position's user's items or hard negatives (2, 2, 2, 2 and 3 of the four
        // left at the five positions): the full softmax again, on both paths.
        let head = [3i64, 9, 6, 1];
        let windows = [[6i64, 7, 11], [1, 2, 0], [4, 5, 0]];
        let slots = [0usize, 1, 2, 5, 8];
        let with_head = |b: &Batch, draw_of: &dyn Fn(usize) -> usize| {
            let mut h = Batch {
                head: head.to_vec(),
                ..b.clone()
            };
            for (m, (&r, &slot)) in rows_of.iter().zip(&slots).enumerate() {
                let hard = &b.hard[slot * 3..(slot + 1) * 3];
                h.head_mask.extend(
                    head.iter()
                        .map(|j| !windows[r].contains(j) && !hard.contains(j)),
                );
                let d = draw_of(m);
                for c in 0..k {
                    if head.contains(&b.random[d * k + c]) {
                        h.random_mask[d * k + c] = false;
                    }
                }
            }
            h
        };
        let by_row = with_head(&b, &|m| rows_of[m]);
        assert_eq!(
            by_row.head_mask.iter().filter(|&&x| x).count(),
            2 + 2 + 2 + 2 + 3,
            "{:?}",
            by_row.head_mask
        );
        let by_position = with_head(&dealt, &|m| m);
        for b in [&by_row, &by_position] {
            let t = Tensors::new(b, k, 3, Device::Cpu);
            let got = batch_loss(&model, &cfg, &t, 12, false, None).double_value(&[]);
            assert!((got - want).abs() < 1e-5, "head stratum: {got} vs {want}");
        }
        // Counting the head in the random draws as well: another, larger loss.
        let twice = Batch {
            random_mask: b.random_mask.clone(),
            ..by_row.clone()
        };
        let t = Tensors::new(&twice, k, 3, Device::Cpu);
        let again = batch_loss(&model, &cfg, &t, 12, false, None).double_value(&[]);
        assert!(again > want + 1e-3, "{again} vs {want}");
    }

    #[test]
    fn a_draw_per_position_scores_as_rows_when_a_rows_positions_draw_alike() {
        let (cfg, _vs, model) = sampled_sasrec(3);
        let d = [vec![3i64, 7, 11, 12], vec![1, 4, 6, 9], vec![2, 5, 10, 12]];
        let per_row = batch(d.concat(), 3, 1);
        // Trained positions: row 0's one, row 1's one, row 2's three; each takes
        // its row's draw and mask.
        let of_row = [0usize, 1, 2, 2, 2];
        let mask: Vec<bool> = of_row
            .iter()
            .flat_map(|&r| per_row.random_mask[r * 4..(r + 1) * 4].to_vec())
            .collect();
        let per_position = |random: Vec<i64>| dealt(&per_row, random, 5, mask.clone());
        let alike = per_position(of_row.iter().flat_map(|&r| d[r].clone()).collect());
        let loss = |b: &Batch| loss_of(&model, &cfg, b);
        let (a, b) = (loss(&alike), loss(&per_row));
        assert!(a.is_finite() && a > 0.0, "{a}");
        assert!((a - b).abs() < 1e-6, "per position {a} vs per row {b}");
        let tally = |b: &Batch| {
            let mut h = Hardness::default();
            let t = Tensors::new(b, 4, 0, Device::Cpu);
            let _loss = batch_loss(&model, &cfg, &t, 12, true, Some(&mut h));
            h.random.counts()
        };
        assert_eq!(tally(&alike), tally(&per_row));
        // Row 2's last position drawing other items changes the loss.
        let mut other: Vec<i64> = of_row.iter().flat_map(|&r| d[r].clone()).collect();
        other[16..].copy_from_slice(&[1, 2, 3, 4]);
        assert!((loss(&per_position(other)) - b).abs() > 1e-6);
    }

    #[test]
    fn interleaved_draws_score_as_a_draw_per_position_dealt_alike() {
        let (cfg, _vs, model) = sampled_sasrec(3);
        let d = [vec![3i64, 7, 11, 12], vec![1, 4, 6, 9]];
        let base = batch(d.concat(), 2, 1);
        // Five trained positions, each with its own mask; two draws dealt in turn.
        let masks: Vec<bool> = (0..5 * 4).map(|c| c % 7 != 2).collect();
        let with =
            |random: Vec<i64>, random_rows: usize| dealt(&base, random, random_rows, masks.clone());
        let two = with(d.concat(), 2);
        // A draw per position (G = M), each position's equal to its dealt one.
        let own = with((0..5).flat_map(|m| d[m % 2].clone()).collect(), 5);
        let t = Tensors::new(&two, 4, 0, Device::Cpu);
        let (group, slot, m_max) = t.groups.as_ref().expect("groups");
        assert_eq!(Vec::<i64>::try_from(group).expect("ids"), [0, 1, 0, 1, 0]);
        assert_eq!(Vec::<i64>::try_from(slot).expect("ids"), [0, 3, 1, 4, 2]);
        assert_eq!(*m_max, 3);
        let loss = |b: &Batch| loss_of(&model, &cfg, b);
        let (a, b) = (loss(&two), loss(&own));
        assert!(a.is_finite() && a > 0.0, "{a}");
        assert!((a - b).abs() < 1e-6, "interleaved {a} vs per position {b}");
        // So with every logQ mode and a negative weight: the offsets are taken on
        // the draws and spread.
        for (logq, w) in [(LogQ::Off, 2.0), (LogQ::Random, 0.5), (LogQ::All, 3.0)] {
            let c = TrainSettings {
                logq,
                negative_weight: w,
                ..cfg.clone()
            };
            let (a2, b2) = (loss_of(&model, &c, &two), loss_of(&model, &c, &own));
            assert!((a2 - b2).abs() < 1e-6, "{logq:?}, w {w}: {a2} vs {b2}");
            assert!((a2 - a).abs() > 1e-6, "{logq:?}, w {w} changes the loss");
        }
        // Dealt the other way round, the positions see other candidates.
        let swapped = with([d[1].clone(), d[0].clone()].concat(), 2);
        assert!((loss(&swapped) - a).abs() > 1e-6);
    }

    #[test]
    fn no_random_negatives_make_empty_masks_of_the_right_shape() {
        // Full softmax (and hard-only sampled softmax) run with n-random = 0: the
        // empty mask must still take its [rows, 0] or [M, 0] shape.
        let (mut cfg, _vs, model) = sampled_sasrec(3);
        cfg.loss = Loss::FullSoftmax;
        cfg.n_random = 0;
        for interleave in [false, true] {
            let b = Batch {
                random: vec![],
                random_log_q: vec![],
                random_mask: vec![],
                random_rows: if interleave { 5 } else { 3 },
                interleave,
                ..batch(vec![], 3, 1)
            };
            let t = Tensors::new(&b, 0, 0, Device::Cpu);
            assert_eq!(
                t.random_mask.size(),
                vec![if interleave { 5 } else { 3 }, 0]
            );
            let loss = batch_loss(&model, &cfg, &t, 12, true, None).double_value(&[]);
            assert!(loss.is_finite() && loss > 0.0, "{loss}");
        }
    }

    #[test]
    fn groups_sharing_a_draw_score_as_rows_with_that_draw() {
        let (cfg, _vs, model) = sampled_sasrec(3);
        let (d0, d1) = (vec![3i64, 7, 11, 12], vec![1i64, 4, 6, 9]);
        // Rows 0 and 1 share draw 0, row 2 has draw 1 ...
        let grouped = batch([d0.clone(), d1.clone()].concat(), 2, 2);
        // ... which is what three rows with their own draws equal to those give.
        let per_row = batch([d0.clone(), d0, d1].concat(), 3, 1);
        let loss = |b: &Batch| loss_of(&model, &cfg, b);
        let t = Tensors::new(&grouped, 4, 0, Device::Cpu);
        let (group, slot, m_max) = t.groups.as_ref().expect("groups");
        // 2 trained positions in group 0 (rows 0 and 1), 3 in group 1, laid out
        // in rows of M_max = 3.
        assert_eq!(Vec::<i64>::try_from(group).expect("ids"), [0, 0, 1, 1, 1]);
        assert_eq!(Vec::<i64>::try_from(slot).expect("ids"), [0, 1, 3, 4, 5]);
        assert_eq!(*m_max, 3);
        // The hardness tally counts each trained position's valid negatives
        // (3 + 4 + 3 x 3 here), and the same draws give the same counts.
        let tally = |b: &Batch| {
            let mut h = Hardness::default();
            let _loss = batch_loss(
                &model,
                &cfg,
                &Tensors::new(b, 4, 0, Device::Cpu),
                12,
                true,
                Some(&mut h),
            );
            h
        };
        let (tg, tr) = (tally(&grouped), tally(&per_row));
        let (above, valid) = tg.random.counts();
        assert_eq!(valid, 16);
        assert!((0..=16).contains(&above));
        assert_eq!(tg.random.counts(), tr.random.counts());
        assert_eq!((tg.hard.counts(), tg.hard.share()), ((0, 0), None));
        let (a, b) = (loss(&grouped), loss(&per_row));
        assert!(a.is_finite() && a > 0.0, "{a}");
        assert!((a - b).abs() < 1e-6, "grouped {a} vs per row {b}");
        for (logq, w) in [(LogQ::Off, 2.0), (LogQ::Random, 0.5), (LogQ::All, 3.0)] {
            let c = TrainSettings {
                logq,
                negative_weight: w,
                ..cfg.clone()
            };
            let (a2, b2) = (loss_of(&model, &c, &grouped), loss_of(&model, &c, &per_row));
            assert!((a2 - b2).abs() < 1e-6, "{logq:?}, w {w}: {a2} vs {b2}");
            assert!((a2 - a).abs() > 1e-6, "{logq:?}, w {w} changes the loss");
        }
        // Both groups drawing the same items is the one-draw batch.
        let same = batch([vec![3i64, 7, 11, 12], vec![3, 7, 11, 12]].concat(), 2, 2);
        let one = batch(vec![3i64, 7, 11, 12], 1, 3);
        assert!((loss(&same) - loss(&one)).abs() < 1e-6);
    }
}
