//! Evaluation (GNNO.md §6): full ranking over every item under both protocols, the
//! user's own history excluded from the candidates (the headline, as in the
//! published references) and included, and the sampled protocol with stored
//! candidates. Ties count against the model (every other item with the same score
//! ranks ahead); a non-finite score is an error, never a good rank.

use crate::metrics::RankMetrics;
use crate::model::Model;
use crate::{batch_width, history_tensor, pad_histories, torch, Job, TAG_SAMPLED};
use gnno_core::config::parse_metric;
use gnno_core::dataset::Dataset;
use gnno_core::error::{parquet_write, Error, Result};
use gnno_core::{fsutil, mix_seed, ItemIdx};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

pub const CANDIDATES_FILE: &str = "sampled_candidates.parquet";
pub const METRICS_FILE: &str = "metrics.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Dev,
    Test,
}

/// Full-ranking metrics of one split under both protocols.
#[derive(Debug, Clone)]
pub struct Ranked {
    pub history_excluded: RankMetrics,
    pub history_included: RankMetrics,
    /// Users with a held-out item of the split but no history to rank from.
    pub users_without_history: u64,
}

impl Ranked {
    /// The metrics of the protocol `exclude_history` selects.
    pub fn protocol(&self, exclude_history: bool) -> &RankMetrics {
        if exclude_history {
            &self.history_excluded
        } else {
            &self.history_included
        }
    }
}

/// A user's evaluation history (`Dataset::eval_history`: train items, plus the dev
/// items for test); empty when the user has nothing to rank from.
fn eval_history(ds: &Dataset, u: usize, split: Split) -> Vec<ItemIdx> {
    let s = match split {
        Split::Dev => gnno_core::Split::Dev,
        Split::Test => gnno_core::Split::Test,
    };
    ds.eval_history(u32::try_from(u).unwrap_or(u32::MAX), s)
        .unwrap_or_default()
}

/// The users with a held-out item of `split` and a history to rank from, each with
/// that history, and how many held-out users have none. Users of similar history
/// length come together when the model trims padding, so a batch pads only to its
/// longest history (the metrics do not depend on the order users are ranked in).
fn users_to_rank(
    model: &Model,
    ds: &Dataset,
    split: Split,
    l: usize,
) -> (Vec<(usize, Vec<ItemIdx>)>, u64) {
    let mut users = Vec::new();
    let mut without = 0;
    for u in (0..ds.n_users()).filter(|&u| target(ds, u, split) != 0) {
        let h = eval_history(ds, u, split);
        if h.is_empty() {
            without += 1;
        } else {
            users.push((u, h));
        }
    }
    if model.trims_padding() {
        users.sort_by_key(|(_, h)| h.len().min(l));
    }
    (users, without)
}

/// Scores of every item `[B, N + 2]` for a batch of histories, padded to the
/// batch's longest (or to `l` when the model does not trim padding).
fn score_histories(model: &Model, hists: &[Vec<ItemIdx>], l: usize, device: Device) -> Tensor {
    let w = batch_width(hists.iter().map(Vec::as_slice), l, model.trims_padding());
    let ht = history_tensor(
        &pad_histories(hists.iter().map(Vec::as_slice), w),
        w,
        device,
    );
    model.score_all(&model.encode(&ht, false))
}

fn target(ds: &Dataset, u: usize, split: Split) -> ItemIdx {
    match split {
        Split::Dev => ds.dev[u],
        Split::Test => ds.test[u],
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call site per use, all plain values"
)]
/// Rank every user's held-out item of `split` against all items. `what` names the
/// model in errors (e.g. "epoch 12").
pub fn rank_users(
    model: &Model,
    ds: &Dataset,
    device: Device,
    split: Split,
    batch: usize,
    l: usize,
    ks: &[u32],
    what: &str,
) -> Result<Ranked> {
    let mut out = Ranked {
        history_excluded: RankMetrics::new(ks),
        history_included: RankMetrics::new(ks),
        users_without_history: 0,
    };
    let (users, without) = users_to_rank(model, ds, split, l);
    out.users_without_history = without;
    tch::no_grad(|| -> Result<()> {
        for chunk in users.chunks(batch.max(1)) {
            let hists: Vec<Vec<ItemIdx>> = chunk.iter().map(|(_, h)| h.clone()).collect();
            let tgt: Vec<i64> = chunk
                .iter()
                .map(|&(u, _)| i64::from(target(ds, u, split)))
                .collect();
            let scores = score_histories(model, &hists, l, device);
            for (incl, excl) in ranks(&scores, &tgt, &hists, what)? {
                out.history_included.add(incl);
                out.history_excluded.add(excl);
            }
        }
        Ok(())
    })?;
    Ok(out)
}

/// 1-based ranks of each row's target among items 1..=N of `scores [B, N + 2]`
/// (columns 0 and N + 1 are not items): (history included, history excluded).
/// Pessimistic ties; a non-finite score is an error naming `what`.
pub fn ranks(
    scores: &Tensor,
    tgt: &[i64],
    hists: &[Vec<ItemIdx>],
    what: &str,
) -> Result<Vec<(u64, u64)>> {
    let device = scores.device();
    let n_all = scores.size()[1];
    if !all_finite(scores) {
        return Err(Error::usage(format!(
            "{what}: the model gives non-finite scores (NaN or infinity)"
        ))
        .with_hint("training diverged: lower train.lr or check the data"));
    }
    // Padding and the mask token are never candidates: the items are columns
    // 1..=N (a view, not a copy).
    let items = scores.narrow(1, 1, n_all - 2);
    let tt = Tensor::from_slice(tgt).to_device(device).unsqueeze(1);
    let ts = scores.gather(1, &tt, false);
    // Every other item scoring at least the target's score ranks ahead. Compared
    // into floats and counted in floats (exact below 2^24 items): a Bool result is
    // written element by element and cast to Int64 whole before a sum.
    let ahead = Tensor::empty(items.size(), (Kind::Float, device));
    let ahead_all = items
        .ge_tensor_out(&ahead, &ts)
        .sum_dim_intlist(1i64, false, Kind::Float)
        .to_kind(Kind::Int64)
        - 1;
    // History items (distinct, not the target) ahead are removed under the
    // history-excluded protocol.
    let width = hists.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let mut hist_cols = Vec::with_capacity(tgt.len() * width);
    for (h, &t) in hists.iter().zip(tgt) {
        let mut d: Vec<i64> = h
            .iter()
            .map(|&i| i64::from(i))
            .filter(|&i| i != t)
            .collect();
        d.sort_unstable();
        d.dedup();
        let k = d.len();
        hist_cols.extend(d);
        // Padding column 0 (not an item: never ahead).
        hist_cols.extend(std::iter::repeat_n(0, width - k));
    }
    let hc = history_tensor(&hist_cols, width, device);
    let ahead_hist = scores
        .gather(1, &hc, false)
        .ge_tensor(&ts)
        .logical_and(&hc.gt(0))
        .sum_dim_intlist(1i64, false, Kind::Int64);
    let all: Vec<i64> =
        Vec::<i64>::try_from(ahead_all.to_device(Device::Cpu)).map_err(|e| torch(&e, "ranks"))?;
    let hist: Vec<i64> =
        Vec::<i64>::try_from(ahead_hist.to_device(Device::Cpu)).map_err(|e| torch(&e, "ranks"))?;
    Ok(all
        .iter()
        .zip(&hist)
        .map(|(&a, &h)| {
            let a = u64::try_from(a.max(0)).unwrap_or(0);
            let h = u64::try_from(h.max(0)).unwrap_or(0);
            (a + 1, a.saturating_sub(h) + 1)
        })
        .collect())
}

/// Whether every value of `t` is finite, by one pass (its least and greatest
/// value: a NaN makes both NaN, an infinity one of them), where `isfinite().all()`
/// takes five.
pub(crate) fn all_finite(t: &Tensor) -> bool {
    if t.numel() == 0 {
        return true;
    }
    let (lo, hi) = t.aminmax(None, false);
    // One read back from the device for both.
    let both = Tensor::stack(&[lo, hi], 0)
        .to_kind(Kind::Double)
        .to_device(Device::Cpu);
    let both = Vec::<f64>::try_from(both).unwrap_or_default();
    both.len() == 2 && both.iter().all(|v| v.is_finite())
}

/// The early-stopping metric of a ranking: `HR@K` or `NDCG@K`.
pub fn metric_value(m: &RankMetrics, name: &str) -> f64 {
    m.finish().get(name).copied().unwrap_or(0.0)
}

/// The cut-offs dev needs during training: 5, 10, 20 and the early-stop metric's.
pub fn dev_ks(early_stop_metric: &str) -> Vec<u32> {
    let mut ks = vec![5, 10, 20];
    if let Some((_, k)) = parse_metric(early_stop_metric) {
        ks.push(k);
    }
    ks.sort_unstable();
    ks.dedup();
    ks
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EvalReport {
    pub device: String,
    /// The headline protocol (`evaluate.exclude-history`): `dev_full` and `test_full`
    /// use it; the `*_other_protocol` maps hold the other one.
    pub exclude_history: bool,
    pub dev_users: u64,
    pub test_users: u64,
    /// Users with a held-out item but no history, left out of the metrics.
    pub users_without_history: u64,
    /// Users with held-out rows but no train row (time-cutoff split), not evaluated.
    pub users_without_train: u64,
    pub dev_full: BTreeMap<String, f64>,
    pub test_full: BTreeMap<String, f64>,
    pub dev_full_other_protocol: BTreeMap<String, f64>,
    pub test_full_other_protocol: BTreeMap<String, f64>,
    /// Candidates per user in the sampled protocol (0 = off).
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
    fsutil::write_with(path, |f, tmp| {
        let mut w = parquet::arrow::ArrowWriter::try_new(f, schema, None)
            .map_err(|e| parquet_write(tmp, e))?;
        w.write(&batch).map_err(|e| parquet_write(tmp, e))?;
        w.close().map_err(|e| parquet_write(tmp, e))?;
        Ok(())
    })
}

/// Test target against its stored candidates (pessimistic ties), scored on the device.
fn sampled_metrics(
    model: &Model,
    ds: &Dataset,
    device: Device,
    cands: &[Vec<ItemIdx>],
    batch: usize,
    l: usize,
    ks: &[u32],
) -> Result<RankMetrics> {
    let (users, _) = users_to_rank(model, ds, Split::Test, l);
    let mut m = RankMetrics::new(ks);
    tch::no_grad(|| -> Result<()> {
        for users in users.chunks(batch.max(1)) {
            let hists: Vec<Vec<ItemIdx>> = users.iter().map(|(_, h)| h.clone()).collect();
            let chunk: Vec<usize> = users.iter().map(|&(u, _)| u).collect();
            let scores = score_histories(model, &hists, l, device);
            let width = chunk
                .iter()
                .map(|&u| cands[u].len())
                .max()
                .unwrap_or(0)
                .max(1);
            let mut cols = Vec::with_capacity(chunk.len() * (width + 1));
            for &u in &chunk {
                cols.push(i64::from(ds.test[u]));
                cols.extend(cands[u].iter().map(|&j| i64::from(j)));
                // Short candidate lists are padded with column 0, set to -inf below.
                cols.extend(std::iter::repeat_n(0, width - cands[u].len()));
            }
            let s = scores
                .index_fill(
                    1,
                    &Tensor::from_slice(&[0i64]).to_device(device),
                    f64::NEG_INFINITY,
                )
                .gather(1, &history_tensor(&cols, width + 1, device), false);
            let pos = s.narrow(1, 0, 1);
            let ahead = s
                .narrow(1, 1, i64::try_from(width).unwrap_or(1))
                .ge_tensor(&pos)
                .sum_dim_intlist(1i64, false, Kind::Int64);
            for a in Vec::<i64>::try_from(ahead.to_device(Device::Cpu))
                .map_err(|e| torch(&e, "ranks"))?
            {
                m.add(u64::try_from(a.max(0)).unwrap_or(0) + 1);
            }
        }
        Ok(())
    })?;
    Ok(m)
}

/// Evaluate the best checkpoint: full ranking on dev and test under both protocols,
/// and the sampled protocol on test.
pub fn evaluate(job: &Job) -> Result<EvalReport> {
    let device = crate::resolve_device(job.device)?;
    tch::set_num_threads(i32::try_from(job.threads).unwrap_or(1));
    let ds = job.ds;
    let mut vs = nn::VarStore::new(device);
    let model = Model::new(&vs.root(), job.cfg, ds.n_items);
    let path = job.input.join(crate::BEST_MODEL);
    let named = crate::checkpoint::load_named(&path)?;
    crate::checkpoint::load_model_tensors(&mut vs, &named, &path)?;
    let l = job.cfg.history_len as usize;
    let bs = job.eval.batch_size as usize;
    let ks = &job.eval.ks;
    job.progress.start("evaluate", 3);
    let dev = rank_users(
        &model,
        ds,
        device,
        Split::Dev,
        bs,
        l,
        ks,
        "the best model on dev",
    )?;
    job.progress.advance(1);
    let test = rank_users(
        &model,
        ds,
        device,
        Split::Test,
        bs,
        l,
        ks,
        "the best model on test",
    )?;
    job.progress.advance(1);
    let test_sampled = if job.eval.sampled_negatives > 0 {
        let cands = sampled_candidates(ds, job.eval.sampled_negatives, job.seed);
        write_candidates(&job.out.join(CANDIDATES_FILE), &cands)?;
        Some(sampled_metrics(&model, ds, device, &cands, bs, l, ks)?.finish())
    } else {
        None
    };
    job.progress.advance(1);
    job.progress.finish();
    let ex = job.eval.exclude_history;
    let rep = EvalReport {
        device: format!("{device:?}"),
        exclude_history: ex,
        dev_users: dev.history_excluded.users,
        test_users: test.history_excluded.users,
        users_without_history: test.users_without_history,
        users_without_train: ds.users_without_train,
        dev_full: dev.protocol(ex).finish(),
        test_full: test.protocol(ex).finish(),
        dev_full_other_protocol: dev.protocol(!ex).finish(),
        test_full_other_protocol: test.protocol(!ex).finish(),
        sampled_negatives: job.eval.sampled_negatives,
        test_sampled,
    };
    fsutil::write_atomic(
        &job.out.join(METRICS_FILE),
        &serde_json::to_vec_pretty(&rep).map_err(|e| Error::internal(e.to_string()))?,
    )?;
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_under_both_protocols_with_pessimistic_ties() {
        // 4 items (columns 1..=4), padding column 0 and mask column 5 score high.
        let scores = Tensor::from_slice(&[
            9.0f32, 0.5, 0.9, 0.5, 0.1, 9.0, // target 1 ties item 3; item 2 (history) above
            9.0, 0.2, 0.3, 0.4, 0.5, 9.0, // target 4 is top
        ])
        .view([2, 6]);
        let r = ranks(&scores, &[1, 4], &[vec![2, 2, 1], vec![4, 3]], "test").expect("ranks");
        // Row 1: items 2 and 3 score >= 0.5: rank 3; without history item 2: rank 2.
        // Row 2: nothing ahead: rank 1 either way (history item 4 is the target).
        assert_eq!(r, vec![(3, 2), (1, 1)]);
        let bad = Tensor::from_slice(&[0.0f32, f32::NAN, 0.1, 0.2, 0.3, 0.0]).view([1, 6]);
        let err = ranks(&bad, &[1], &[vec![]], "epoch 7").expect_err("NaN");
        assert!(err.to_string().contains("epoch 7"), "{err}");
        // An infinity either way is an error too, wherever it is.
        for (at, v) in [(0, f32::INFINITY), (5, f32::NEG_INFINITY), (3, f32::NAN)] {
            let mut row = [0.0f32, 0.1, 0.2, 0.3, 0.4, 0.0];
            row[at] = v;
            let t = Tensor::from_slice(&row).view([1, 6]);
            assert!(!all_finite(&t), "{v} at {at}");
            assert!(ranks(&t, &[1], &[vec![]], "e").is_err());
        }
        assert!(all_finite(&scores));
        assert!(all_finite(&Tensor::zeros(
            [0, 6],
            (Kind::Float, Device::Cpu)
        )));
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
            ..Dataset::default()
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
