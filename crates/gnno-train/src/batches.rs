//! What one training step sees: rows of left-padded histories with the targets to
//! predict, the row's random negatives (drawn on the fly) and each target's hard
//! negatives (read from the epoch's shards).
//!
//! Two row layouts (GNNO.md §5, docs/ARCHITECTURE.md "Training"):
//! - **sequence rows** (causal backbones, SASRec and GRU4Rec, as the field trains
//!   them): one row per user, its last `history-len + 1` train items; the input is
//!   all but the last, and position p predicts the item after it, so one forward
//!   pass trains every position. Position p's target is one training instance, and
//!   its hard negatives are that instance's shard row.
//! - **prefix rows** (the bidirectional encoder): one row per instance, its history
//!   as input and one target, the last position.
//!
//! Random negatives are shared by the positions of a row (`random-scope = "row"`):
//! `n-random` items drawn with replacement from the row's user's non-history items
//! (uniform, or ∝ count^α), exactly and with their ln-probabilities (the logQ
//! correction needs them). With `random-scope = "batch"` one draw over all items
//! serves every row of the batch (or, with `random-groups = G`, each of G groups of
//! consecutive rows has its own draw), and each row masks the drawn items of its own
//! train history: what survives for a row is a draw over its non-history items, so
//! both scopes estimate the same normaliser. With `random-scope = "interleaved"` the
//! batch's G draws are dealt to its trained positions in turn (position m takes
//! draw m mod G) and each position masks its user's items; `"position"` is the
//! same with a draw per position.

use gnno_core::config::{RandomNegatives, TrainSettings};
use gnno_core::dataset::{Dataset, Instances};
use gnno_core::error::{Error, Result};
use gnno_core::{shards, ItemIdx};
use rand::rngs::Xoshiro256PlusPlus;
use rand::RngExt;
use std::path::Path;

/// Every instance's hard negatives for one epoch, indexed by instance id: loaded
/// from all of the epoch's shards at once, so training can visit instances in any
/// order (a seeded permutation of the whole epoch) whatever the shard size.
#[derive(Debug, Default)]
pub struct EpochNegatives {
    pub n_hard: usize,
    /// `items[i * n_hard + k]`; 0 marks a slot the sampler could not fill.
    pub items: Vec<ItemIdx>,
    pub log_prob: Vec<f32>,
}

impl EpochNegatives {
    /// Read `epoch-NNNN/` under `dir`, checking every id against the dataset.
    pub fn load(
        dir: &Path,
        epoch: u32,
        n_hard: usize,
        inst: &Instances,
        n_items: u32,
    ) -> Result<Self> {
        let folder = dir.join(shards::epoch_dir(epoch));
        if !folder.is_dir() {
            return Err(Error::artifact(
                &folder,
                format!("epoch {epoch} should have hard negatives, but its folder is missing"),
            )
            .with_hint("rerun `gnno stage negatives --force`"));
        }
        let n = inst.len();
        let mut e = Self {
            n_hard,
            items: vec![0; n * n_hard],
            log_prob: vec![0.0; n * n_hard],
        };
        let mut seen = vec![false; n];
        for path in shards::list(&folder)? {
            let s = shards::read(&path)?;
            for r in 0..s.instance.len() {
                let id = usize::try_from(s.instance[r]).unwrap_or(usize::MAX);
                if id >= n || s.target[r] != inst.target[id] || s.user[r] != inst.user[id] {
                    return Err(Error::artifact(
                        &path,
                        format!(
                            "row {r}: instance {} (user {}, target {}) is not an instance of this dataset",
                            s.instance[r], s.user[r], s.target[r]
                        ),
                    )
                    .with_hint("the shards belong to other ingest output; rerun `gnno run --from negatives`"));
                }
                let negs = &s.negatives[s.offsets[r]..s.offsets[r + 1]];
                let lps = &s.log_prob[s.offsets[r]..s.offsets[r + 1]];
                if negs.len() > n_hard {
                    return Err(Error::artifact(
                        &path,
                        format!(
                            "row {r}: {} negatives, the config asks for {n_hard}",
                            negs.len()
                        ),
                    )
                    .with_hint("rerun `gnno stage negatives --force`"));
                }
                for (k, (&j, &lp)) in negs.iter().zip(lps).enumerate() {
                    if j == 0 || j > n_items {
                        return Err(Error::artifact(
                            &path,
                            format!(
                                "row {r}: negative {j} is not an item (items are 1..={n_items})"
                            ),
                        ));
                    }
                    if !lp.is_finite() || lp > 0.0 {
                        return Err(Error::artifact(
                            &path,
                            format!("row {r}: negative {j} has log-probability {lp}"),
                        ));
                    }
                    e.items[id * n_hard + k] = j;
                    e.log_prob[id * n_hard + k] = lp;
                }
                seen[id] = true;
            }
        }
        if let Some(missing) = seen.iter().position(|&s| !s) {
            return Err(Error::artifact(
                &folder,
                format!(
                    "instance {missing} has no row ({} of {n} instances missing)",
                    seen.iter().filter(|&&s| !s).count()
                ),
            )
            .with_hint("rerun `gnno stage negatives --force`"));
        }
        Ok(e)
    }

    fn row(&self, id: usize) -> (&[ItemIdx], &[f32]) {
        let r = id * self.n_hard..(id + 1) * self.n_hard;
        (&self.items[r.clone()], &self.log_prob[r])
    }
}

/// Exact random negatives over the items a user never interacted with in train,
/// and the head stratum (`train.head-negatives`) they leave out.
pub struct RandomSampler {
    n_items: u32,
    /// Cumulative weights over items 0..=N (popularity), or None (uniform).
    cum: Option<Vec<f64>>,
    /// The head stratum: the P most frequent train items, most frequent first
    /// (ties by index), and each item's place in it (`NOT_HEAD` outside).
    head: Vec<i64>,
    head_rank: Vec<u32>,
}

const NOT_HEAD: u32 = u32::MAX;

impl RandomSampler {
    pub fn new(cfg: &TrainSettings, ds: &Dataset) -> Self {
        let mut counts = vec![0u64; ds.n_items as usize + 1];
        for &i in &ds.train_items {
            counts[i as usize] += 1;
        }
        let mut head: Vec<ItemIdx> = Vec::new();
        let mut head_rank = Vec::new();
        if cfg.head_negatives > 0 {
            head = (1..=ds.n_items)
                .filter(|&j| counts[j as usize] > 0)
                .collect();
            head.sort_by_key(|&j| (std::cmp::Reverse(counts[j as usize]), j));
            head.truncate(cfg.head_negatives as usize);
            head_rank = vec![NOT_HEAD; ds.n_items as usize + 1];
            for (r, &j) in (0u32..).zip(&head) {
                head_rank[j as usize] = r;
            }
        }
        let cum = (cfg.random_negatives == RandomNegatives::Popularity).then(|| {
            let mut acc = 0.0;
            #[expect(clippy::cast_precision_loss, reason = "counts")]
            counts
                .iter()
                .enumerate()
                .map(|(j, &c)| {
                    if j > 0 && c > 0 {
                        acc += (c as f64).powf(cfg.random_alpha);
                    }
                    acc
                })
                .collect()
        });
        Self {
            n_items: ds.n_items,
            cum,
            head: head.into_iter().map(i64::from).collect(),
            head_rank,
        }
    }

    /// The head stratum's items (empty without one).
    pub fn head(&self) -> &[i64] {
        &self.head
    }

    /// Item j's place in the head stratum; None outside it (and without one).
    fn head_place(&self, j: i64) -> Option<usize> {
        let r = *self.head_rank.get(usize::try_from(j).ok()?)?;
        (r != NOT_HEAD).then_some(r as usize)
    }

    fn weight(cum: &[f64], j: ItemIdx) -> f64 {
        cum[j as usize] - cum[j as usize - 1]
    }

    /// Draw `k` items not in `sorted_hist` (sorted, distinct) into `out`, with their
    /// ln-probabilities into `log_q`. Nothing is drawn when no item is left.
    pub fn draw(
        &self,
        sorted_hist: &[ItemIdx],
        k: usize,
        rng: &mut Xoshiro256PlusPlus,
        out: &mut Vec<i64>,
        log_q: &mut Vec<f32>,
    ) {
        let start = out.len();
        match &self.cum {
            None => {
                let left = self.n_items as usize - sorted_hist.len();
                if left == 0 {
                    return;
                }
                #[expect(
                    clippy::cast_precision_loss,
                    clippy::cast_possible_truncation,
                    reason = "counts"
                )]
                let lq = -(left as f64).ln() as f32;
                for _ in 0..k {
                    // The r-th item (0-based) outside the history, exactly.
                    let mut j = rng.random_range(1..=left as u32);
                    for &h in sorted_hist {
                        if h <= j {
                            j += 1;
                        } else {
                            break;
                        }
                    }
                    out.push(i64::from(j));
                    log_q.push(lq);
                }
            }
            Some(cum) => {
                let total = cum.last().copied().unwrap_or(0.0);
                let removed: f64 = sorted_hist.iter().map(|&h| Self::weight(cum, h)).sum();
                let left = total - removed;
                if left <= total * 1e-12 {
                    return;
                }
                let log_left = left.ln();
                for _ in 0..k {
                    let mut got = None;
                    for _ in 0..64 {
                        let u = rng.random::<f64>() * total;
                        let j = cum.partition_point(|&c| c <= u).min(cum.len() - 1);
                        let j = u32::try_from(j).unwrap_or(0);
                        if j > 0 && sorted_hist.binary_search(&j).is_err() {
                            got = Some(j);
                            break;
                        }
                    }
                    // The history holds most of the mass: draw exactly over the rest.
                    let j = got.unwrap_or_else(|| {
                        let mut u = rng.random::<f64>() * left;
                        let mut last = 0;
                        for j in 1..=self.n_items {
                            if sorted_hist.binary_search(&j).is_ok() {
                                continue;
                            }
                            let w = Self::weight(cum, j);
                            if w <= 0.0 {
                                continue;
                            }
                            last = j;
                            if u < w {
                                return j;
                            }
                            u -= w;
                        }
                        last
                    });
                    #[expect(clippy::cast_possible_truncation, reason = "stored as f32")]
                    log_q.push((Self::weight(cum, j).ln() - log_left) as f32);
                    out.push(i64::from(j));
                }
            }
        }
        debug_assert!(out.len() == start || out.len() == start + k);
    }
}

/// A batch in host memory, ready to become tensors.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    pub rows: usize,
    /// Input length L and target positions per row P (L for sequence rows, 1 for prefix rows).
    pub len: usize,
    pub positions: usize,
    /// `[rows, len]` left-padded inputs.
    pub hist: Vec<i64>,
    /// `[rows, positions]` targets, 0 where a position has none.
    pub targets: Vec<i64>,
    /// `[random_rows, k_random]` random negatives and their ln q: one draw per
    /// row (`random_rows` = `rows`), per batch (1), per group of rows, or G draws
    /// dealt to the positions (`interleave`; G = M with a draw per position).
    pub random: Vec<i64>,
    pub random_log_q: Vec<f32>,
    pub random_rows: usize,
    /// Rows served by each draw: row r uses draw r / `group_rows` (1 when the
    /// draws are dealt to positions).
    pub group_rows: usize,
    /// `[rows, k_random]`: whether row r may use candidate c; with `interleave`,
    /// `[trained, k_random]`: whether trained position m may.
    pub random_mask: Vec<bool>,
    /// `random-scope = "interleaved"` or `"position"`: trained position m (in
    /// row-major order) uses draw m mod `random_rows`, and masks its own user's
    /// history.
    pub interleave: bool,
    /// `[rows, positions, n_hard]` hard negatives (0 = none) and their ln q.
    pub hard: Vec<i64>,
    pub hard_log_q: Vec<f32>,
    /// Trained positions (targets ≠ 0).
    pub trained: usize,
    /// The head stratum (`train.head-negatives`) and `[trained, P]`: whether
    /// trained position m counts head item c (not its target, not one of its
    /// user's train items, not one of its hard negatives). Empty without one.
    pub head: Vec<i64>,
    pub head_mask: Vec<bool>,
}

impl Batch {
    /// The random draws that are also one of their position's hard negatives
    /// (`logq = "stratified"` masks them): flat indices m·k + c into the
    /// `[trained, k]` random columns, trained positions in row-major order. Each
    /// draw is sorted once and each hard negative looked up in its position's draw,
    /// so this costs O(M·H·log k), not the O(M·k·H) of comparing every pair.
    pub fn stratum_hits(&self, k: usize, n_hard: usize) -> Vec<i64> {
        if n_hard == 0 || self.hard.is_empty() || k == 0 {
            return Vec::new();
        }
        let sorted: Vec<Vec<(i64, usize)>> = self
            .random
            .chunks(k)
            .map(|d| {
                let mut d: Vec<(i64, usize)> = d.iter().copied().zip(0..).collect();
                d.sort_unstable();
                d
            })
            .collect();
        let mut hits = Vec::new();
        let mut m = 0usize;
        for (slot, &target) in self.targets.iter().enumerate() {
            if target == 0 {
                continue;
            }
            let draw = if self.interleave {
                m % self.random_rows.max(1)
            } else {
                (slot / self.positions.max(1) / self.group_rows.max(1))
                    .min(self.random_rows.saturating_sub(1))
            };
            let hard = &self.hard[slot * n_hard..(slot + 1) * n_hard];
            let d = &sorted[draw];
            for (h, &x) in hard.iter().enumerate() {
                if x == 0 || hard[..h].contains(&x) {
                    continue;
                }
                let from = d.partition_point(|&(j, _)| j < x);
                for &(_, c) in d[from..].iter().take_while(|&&(j, _)| j == x) {
                    hits.push((m * k + c) as i64);
                }
            }
            m += 1;
        }
        hits
    }
}

/// Where each row's user and instances come from.
pub struct Rows<'a> {
    pub ds: &'a Dataset,
    pub inst: &'a Instances,
    /// First instance id of each user (instances are numbered user, then position).
    pub first_instance: Vec<usize>,
    /// Sequence rows (one per user with an instance) or prefix rows (one per instance).
    pub sequence: bool,
    pub len: usize,
    /// Pad each batch to its longest row rather than to `len` (exact for models
    /// whose outputs at real items ignore padding; see `Model::trims_padding`).
    pub trim: bool,
}

impl<'a> Rows<'a> {
    pub fn new(ds: &'a Dataset, inst: &'a Instances, sequence: bool, len: usize) -> Self {
        let mut first_instance = Vec::with_capacity(ds.n_users() + 1);
        let mut acc = 0;
        for u in 0..ds.n_users() {
            first_instance.push(acc);
            acc += ds
                .train_seq(u32::try_from(u).unwrap_or(0))
                .len()
                .saturating_sub(1);
        }
        first_instance.push(acc);
        Self {
            ds,
            inst,
            first_instance,
            sequence,
            len,
            trim: false,
        }
    }

    /// Input length of a row: its trained positions (sequence rows) or its
    /// history (prefix rows), at most `len`.
    pub fn row_len(&self, row: u64) -> usize {
        let n = if self.sequence {
            self.ds.train_seq(self.user(row)).len().saturating_sub(1)
        } else {
            self.inst.pos[usize::try_from(row).unwrap_or(usize::MAX)] as usize
        };
        n.min(self.len)
    }

    /// Row ids: users with at least one instance, or instance ids.
    pub fn ids(&self) -> Vec<u64> {
        if self.sequence {
            (0..self.ds.n_users())
                .filter(|&u| self.first_instance[u + 1] > self.first_instance[u])
                .map(|u| u as u64)
                .collect()
        } else {
            (0..self.inst.len() as u64).collect()
        }
    }

    /// Positions one epoch trains (instances within the window of each sequence row).
    pub fn positions_per_epoch(&self) -> u64 {
        if self.sequence {
            (0..self.ds.n_users())
                .map(|u| (self.first_instance[u + 1] - self.first_instance[u]).min(self.len) as u64)
                .sum()
        } else {
            self.inst.len() as u64
        }
    }

    fn user(&self, row: u64) -> u32 {
        if self.sequence {
            u32::try_from(row).unwrap_or(u32::MAX)
        } else {
            self.inst.user[usize::try_from(row).unwrap_or(usize::MAX)]
        }
    }

    /// Build one batch of `rows`; `rng_for(row)` gives each row's random stream, or
    /// `shared` = (the batch's one stream, how it is shared) when the random
    /// negatives are drawn for the batch: with `Share::Groups(g)` the rows are cut
    /// into at most g groups of ⌈rows / g⌉ consecutive rows, and the groups' draws
    /// are taken from the stream one after the other (so one group is the whole
    /// batch's one draw); with `Share::Interleaved(g)` at most g draws (no more
    /// than the trained positions) are taken from the stream, and trained position
    /// m, in row-major order, uses draw m mod g (g ≥ M: a draw per position).
    pub fn batch(
        &self,
        rows: &[u64],
        k_random: usize,
        random: &RandomSampler,
        hard: Option<&EpochNegatives>,
        mut rng_for: impl FnMut(u64) -> Xoshiro256PlusPlus,
        shared: Option<(Xoshiro256PlusPlus, Share)>,
    ) -> Batch {
        let l = if self.trim {
            rows.iter()
                .map(|&r| self.row_len(r))
                .max()
                .unwrap_or(1)
                .max(1)
        } else {
            self.len
        };
        let p = if self.sequence { l } else { 1 };
        let n_hard = hard.map_or(0, |h| h.n_hard);
        let mut b = Batch {
            rows: rows.len(),
            len: l,
            positions: p,
            hist: Vec::with_capacity(rows.len() * l),
            targets: Vec::with_capacity(rows.len() * p),
            hard: Vec::with_capacity(rows.len() * p * n_hard),
            hard_log_q: Vec::with_capacity(rows.len() * p * n_hard),
            head: random.head.clone(),
            ..Batch::default()
        };
        let share = shared.is_some();
        match shared {
            Some((mut rng, Share::Interleaved(groups))) => {
                let trained: usize = if self.sequence {
                    rows.iter().map(|&r| self.row_len(r)).sum()
                } else {
                    rows.len()
                };
                b.interleave = true;
                b.group_rows = 1;
                b.random_rows = groups.clamp(1, trained.max(1));
                for _ in 0..b.random_rows {
                    draw_padded(random, k_random, &mut rng, &mut b);
                }
            }
            Some((mut rng, Share::Groups(groups))) => {
                b.group_rows = rows.len().div_ceil(groups.max(1)).max(1);
                b.random_rows = rows.len().div_ceil(b.group_rows).max(1);
                for _ in 0..b.random_rows {
                    draw_padded(random, k_random, &mut rng, &mut b);
                }
            }
            None => {
                b.random_rows = rows.len();
                b.group_rows = 1;
            }
        }
        // Shared draws: each draw's candidates that no row may use, and where
        // each item was drawn, so a row masks its own items without a search
        // per candidate.
        let index = share.then(|| DrawIndex::new(&b.random, random));
        let mut hits = Vec::new();
        let mut sorted = Vec::new();
        let push_hard = |b: &mut Batch, id: Option<usize>| {
            if let Some(h) = hard {
                match id {
                    Some(id) => {
                        let (items, lq) = h.row(id);
                        b.hard.extend(items.iter().map(|&j| i64::from(j)));
                        b.hard_log_q.extend_from_slice(lq);
                    }
                    None => {
                        b.hard.extend(std::iter::repeat_n(0, n_hard));
                        b.hard_log_q.extend(std::iter::repeat_n(0.0, n_hard));
                    }
                }
            }
        };
        for (r, &row) in rows.iter().enumerate() {
            let trained_before = b.trained;
            let u = self.user(row);
            let seq = self.ds.train_seq(u);
            if self.sequence {
                // The last l + 1 items: inputs w[..m-1], targets w[1..].
                let from = seq.len().saturating_sub(l + 1);
                let w = &seq[from..];
                let m = w.len() - 1;
                b.hist.extend(std::iter::repeat_n(0, l - m));
                b.hist.extend(w[..m].iter().map(|&i| i64::from(i)));
                b.targets.extend(std::iter::repeat_n(0, l - m));
                b.targets.extend(w[1..].iter().map(|&i| i64::from(i)));
                for _ in 0..l - m {
                    push_hard(&mut b, None);
                }
                // Target w[q + 1] is train position from + q + 1, instance
                // first_instance[u] + from + q.
                let base = self.first_instance[u as usize] + from;
                for q in 0..m {
                    push_hard(&mut b, Some(base + q));
                }
                b.trained += m;
            } else {
                let id = usize::try_from(row).unwrap_or(usize::MAX);
                let h = self.ds.history(u, self.inst.pos[id], l);
                b.hist.extend(std::iter::repeat_n(0, l - h.len()));
                b.hist.extend(h.iter().map(|&i| i64::from(i)));
                b.targets.push(i64::from(self.inst.target[id]));
                push_hard(&mut b, Some(id));
                b.trained += 1;
            }
            sorted.clear();
            sorted.extend_from_slice(seq);
            sorted.sort_unstable();
            sorted.dedup();
            if !random.head.is_empty() {
                head_masks(random, &mut b, r, &sorted, n_hard, trained_before);
            }
            if let Some(index) = &index {
                // Padding (0), the row's own train items and the head are masked:
                // with `interleave` for each of the row's trained positions,
                // m = trained_before.., against its draw m mod G; else once for
                // the row, against its group's draw.
                index.hits(&sorted, &mut hits);
                if b.interleave {
                    for m in trained_before..b.trained {
                        index.mask(m % b.random_rows, k_random, &hits, &mut b.random_mask);
                    }
                } else {
                    index.mask(r / b.group_rows, k_random, &hits, &mut b.random_mask);
                }
                continue;
            }
            let mut rng = rng_for(row);
            let before = b.random.len();
            random.draw(
                &sorted,
                k_random,
                &mut rng,
                &mut b.random,
                &mut b.random_log_q,
            );
            let got = b.random.len() - before;
            let drawn = &b.random[before..];
            b.random_mask
                .extend(drawn.iter().map(|&j| random.head_place(j).is_none()));
            // A user who interacted with every item has no random negative: pad.
            b.random.extend(std::iter::repeat_n(0, k_random - got));
            b.random_log_q
                .extend(std::iter::repeat_n(0.0, k_random - got));
            b.random_mask
                .extend(std::iter::repeat_n(false, k_random - got));
        }
        b
    }
}

/// One draw of `k` over all items from `rng` appended to `b.random` (and its
/// ln q), padded with 0 where the sampler found fewer.
fn draw_padded(random: &RandomSampler, k: usize, rng: &mut Xoshiro256PlusPlus, b: &mut Batch) {
    let before = b.random.len();
    random.draw(&[], k, rng, &mut b.random, &mut b.random_log_q);
    let got = b.random.len() - before;
    b.random.extend(std::iter::repeat_n(0, k - got));
    b.random_log_q.extend(std::iter::repeat_n(0.0, k - got));
}

/// A batch's shared draws (`Batch::random`, `k` a draw), indexed for masking:
/// a candidate may be used by a row whose train items are `sorted` when it is
/// not padding (0), not in the head stratum (`open`, the same for every row)
/// and not one of those items (the row's `hits`, found through `first`/`next`).
struct DrawIndex {
    open: Vec<bool>,
    /// Per item, the first of its slots in the draws (`NONE`: not drawn), and
    /// per slot the next slot of the same item.
    first: Vec<u32>,
    next: Vec<u32>,
}

const NONE: u32 = u32::MAX;

impl DrawIndex {
    fn new(drawn: &[i64], random: &RandomSampler) -> Self {
        let mut first = vec![NONE; random.n_items as usize + 1];
        let mut next = vec![NONE; drawn.len()];
        let mut open = Vec::with_capacity(drawn.len());
        for (slot, &j) in (0u32..).zip(drawn) {
            let item = usize::try_from(j).ok().filter(|&j| j > 0);
            open.push(item.is_some() && random.head_place(j).is_none());
            if let Some(j) = item {
                next[slot as usize] = first[j];
                first[j] = slot;
            }
        }
        Self { open, first, next }
    }

    /// Every slot of the draws that holds one of `sorted`, into `hits`, in slot
    /// order (so each draw's are a contiguous run).
    fn hits(&self, sorted: &[ItemIdx], hits: &mut Vec<u32>) {
        hits.clear();
        for &j in sorted {
            let mut slot = self.first.get(j as usize).copied().unwrap_or(NONE);
            while slot != NONE {
                hits.push(slot);
                slot = self.next[slot as usize];
            }
        }
        hits.sort_unstable();
    }

    /// Draw d's mask for a row with these `hits` (slot order), appended to `mask`:
    /// only draw d's own hits are visited, so a row's positions cost their draws'
    /// hits, not every draw's each.
    fn mask(&self, d: usize, k: usize, hits: &[u32], mask: &mut Vec<bool>) {
        let at = mask.len();
        mask.extend_from_slice(&self.open[d * k..(d + 1) * k]);
        let from = hits.partition_point(|&s| (s as usize) < d * k);
        let to = hits.partition_point(|&s| (s as usize) < (d + 1) * k);
        for &slot in &hits[from..to] {
            mask[at + slot as usize - d * k] = false;
        }
    }
}

/// Appends row r's head masks (`Batch::head_mask`), one per trained position
/// from `trained_before` on: the head items that are not one of the user's train
/// items `sorted` (the target among them) nor one of the position's hard negatives.
fn head_masks(
    random: &RandomSampler,
    b: &mut Batch,
    r: usize,
    sorted: &[ItemIdx],
    n_hard: usize,
    trained_before: usize,
) {
    let mut row = vec![true; random.head.len()];
    for &j in sorted {
        if let Some(c) = random.head_place(i64::from(j)) {
            row[c] = false;
        }
    }
    // The row's trained positions are its last ones.
    let m = b.trained - trained_before;
    let end = (r + 1) * b.positions;
    for slot in end - m..end {
        let at = b.head_mask.len();
        b.head_mask.extend_from_slice(&row);
        for &h in &b.hard[slot * n_hard..(slot + 1) * n_hard] {
            if let Some(c) = random.head_place(h) {
                b.head_mask[at + c] = false;
            }
        }
    }
}

/// How a batch's random negatives are shared ([`Rows::batch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Share {
    /// At most this many groups of consecutive rows, a draw each.
    Groups(usize),
    /// At most this many draws, dealt to the trained positions in turn
    /// (`usize::MAX`: a draw per position).
    Interleaved(usize),
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn ds() -> Dataset {
        // User 0: 1 2 3 4 5 (4 instances), user 1: 6 (none), user 2: 7 8 (1).
        Dataset {
            n_items: 10,
            train_offsets: vec![0, 5, 6, 8],
            train_items: vec![1, 2, 3, 4, 5, 6, 7, 8],
            dev: vec![9, 9, 9],
            test: vec![10, 10, 10],
            item_raw: vec![],
            user_raw: vec!["a".into(), "b".into(), "c".into()],
            ..Dataset::default()
        }
    }

    fn hard_for(inst: &Instances) -> EpochNegatives {
        // Instance i's hard negative is item 9 or 10 with ln q = -(i + 1).
        let n = inst.len();
        EpochNegatives {
            n_hard: 1,
            items: (0..n).map(|i| 9 + (i % 2) as u32).collect(),
            #[expect(clippy::cast_precision_loss, reason = "test")]
            log_prob: (0..n).map(|i| -((i + 1) as f32)).collect(),
        }
    }

    #[test]
    fn sequence_rows_align_targets_and_instances() {
        let d = ds();
        let inst = d.instances();
        let rows = Rows::new(&d, &inst, true, 3);
        assert_eq!(rows.ids(), vec![0, 2], "user 1 has no instance");
        assert_eq!(rows.positions_per_epoch(), 3 + 1, "window of 3 on user 0");
        let hard = hard_for(&inst);
        let s = RandomSampler::new(&crate::tests::settings(), &d);
        let b = rows.batch(
            &[0, 2],
            2,
            &s,
            Some(&hard),
            Xoshiro256PlusPlus::seed_from_u64,
            None,
        );
        // User 0: window 2 3 4 5 -> inputs 2 3 4, targets 3 4 5 (instances 1, 2, 3).
        assert_eq!(&b.hist[..3], &[2, 3, 4]);
        assert_eq!(&b.targets[..3], &[3, 4, 5]);
        assert_eq!(&b.hard_log_q[..3], &[-2.0, -3.0, -4.0]);
        // User 2: 7 8 -> input 0 0 7, target 0 0 8 (instance 4).
        assert_eq!(&b.hist[3..], &[0, 0, 7]);
        assert_eq!(&b.targets[3..], &[0, 0, 8]);
        assert_eq!(&b.hard[3..], &[0, 0, 9]);
        assert_eq!(b.trained, 4);
        for (r, row) in b.random.chunks(2).enumerate() {
            let seq = d.train_seq(if r == 0 { 0 } else { 2 });
            assert!(row
                .iter()
                .all(|&j| (1..=10).contains(&j) && !seq.contains(&(j as u32))));
        }
    }

    /// A batch of `ids` whose rows share `groups` draws of `k` from seed 9.
    fn shared_draws(rows: &Rows, s: &RandomSampler, ids: &[u64], k: usize, groups: usize) -> Batch {
        rows.batch(
            ids,
            k,
            s,
            None,
            |_| panic!("no per-row stream when rows share draws"),
            Some((Xoshiro256PlusPlus::seed_from_u64(9), Share::Groups(groups))),
        )
    }

    /// A batch of `ids` whose trained positions are dealt `groups` draws of `k`
    /// from seed 9.
    fn dealt_draws(rows: &Rows, s: &RandomSampler, ids: &[u64], k: usize, groups: usize) -> Batch {
        rows.batch(
            ids,
            k,
            s,
            None,
            |_| panic!("no per-row stream when draws are dealt"),
            Some((
                Xoshiro256PlusPlus::seed_from_u64(9),
                Share::Interleaved(groups),
            )),
        )
    }

    /// Each trained position m of `users` (their users, in order) may use
    /// candidate c of draw m mod `random_rows` exactly when it is outside that
    /// user's train items.
    fn assert_position_masks(b: &Batch, d: &Dataset, users: &[u32], k: usize) {
        assert_eq!(b.random_mask.len(), users.len() * k);
        for (m, &user) in users.iter().enumerate() {
            let seq = d.train_seq(user);
            let g = m % b.random_rows;
            for c in 0..k {
                let j = b.random[g * k + c];
                let own = seq.contains(&u32::try_from(j).expect("item"));
                assert_eq!(b.random_mask[m * k + c], !own, "position {m}, item {j}");
            }
        }
    }

    #[test]
    fn a_head_stratum_is_left_out_of_the_draws_and_out_of_a_positions_own_and_hard_items() {
        // User 2 trains 7 8 7: item 7 is the most frequent, the rest tie at one.
        let mut d = ds();
        d.train_items = vec![1, 2, 3, 4, 5, 6, 7, 8, 7];
        d.train_offsets = vec![0, 5, 6, 9];
        let inst = d.instances();
        let mut cfg = crate::tests::settings();
        cfg.head_negatives = 3;
        let s = RandomSampler::new(&cfg, &d);
        assert_eq!(s.head(), &[7, 1, 2], "by count, ties by index");
        cfg.head_negatives = 20;
        assert_eq!(
            RandomSampler::new(&cfg, &d).head(),
            &[7, 1, 2, 3, 4, 5, 6, 8],
            "items never trained (9, 10) are not in it"
        );
        cfg.head_negatives = 0;
        assert!(RandomSampler::new(&cfg, &d).head().is_empty());
        // Instance i's hard negative: item 2 for even i, 9 for odd i.
        let hard = EpochNegatives {
            n_hard: 1,
            items: (0..inst.len())
                .map(|i| if i % 2 == 0 { 2 } else { 9 })
                .collect(),
            log_prob: vec![-1.0; inst.len()],
        };
        let rows = Rows::new(&d, &inst, true, 3);
        let head = [7i64, 1, 2];
        for shared in [false, true] {
            let b = rows.batch(
                &[0, 2],
                40,
                &s,
                Some(&hard),
                Xoshiro256PlusPlus::seed_from_u64,
                shared.then(|| (Xoshiro256PlusPlus::seed_from_u64(9), Share::Interleaved(2))),
            );
            assert_eq!(b.head, head);
            assert_eq!(b.trained, 3 + 2);
            assert_eq!(b.head_mask.len(), b.trained * 3);
            let mut m = 0;
            let mut counted = 0;
            for (slot, &t) in b.targets.iter().enumerate() {
                if t == 0 {
                    continue;
                }
                let user = if slot < 3 { 0 } else { 2 };
                let seq = d.train_seq(user);
                for (c, &j) in head.iter().enumerate() {
                    let own = seq.contains(&u32::try_from(j).expect("item"));
                    let want = !own && b.hard[slot] != j;
                    assert_eq!(b.head_mask[m * 3 + c], want, "slot {slot}, item {j}");
                    counted += usize::from(want);
                }
                m += 1;
            }
            // User 0 (1..5) owns 1 and 2 and keeps 7; user 2 (7 8 7) owns 7, keeps
            // 1 and 2 but for a hard negative 2 at one of its two positions.
            assert_eq!(counted, 3 + 3, "shared {shared}");
            // No random draw of a head item is used.
            let width = 40;
            for (i, &ok) in b.random_mask.iter().enumerate() {
                let row = if b.interleave {
                    i / width % b.random_rows
                } else {
                    i / width
                };
                let j = b.random[row * width + i % width];
                if head.contains(&j) {
                    assert!(!ok, "draw of head item {j} is masked");
                }
            }
            assert!(b.random_mask.iter().any(|&x| x));
        }
    }

    #[test]
    fn the_draw_index_masks_padding_and_each_of_a_rows_items_in_its_own_draw_only() {
        let d = ds();
        let s = RandomSampler::new(&crate::tests::settings(), &d);
        // Two draws of 3: item 3 twice in draw 1 and once in draw 0, padding (0)
        // in draw 0.
        let index = DrawIndex::new(&[3, 0, 5, 3, 7, 3], &s);
        let mut hits = Vec::new();
        index.hits(&[3, 9], &mut hits);
        assert_eq!(
            hits,
            [0, 3, 5],
            "every slot of 3, in slot order; 9 not drawn"
        );
        let mut mask = Vec::new();
        index.mask(1, 3, &hits, &mut mask);
        index.mask(0, 3, &hits, &mut mask);
        assert_eq!(mask, [false, true, false, false, false, true]);
        // A row with no drawn item keeps every candidate but the padding.
        index.hits(&[1, 2], &mut hits);
        assert!(hits.is_empty());
        mask.clear();
        index.mask(0, 3, &hits, &mut mask);
        assert_eq!(mask, [true, false, true]);
    }

    #[test]
    fn a_shared_draw_serves_every_row_and_each_row_masks_its_history() {
        let d = ds();
        let inst = d.instances();
        let rows = Rows::new(&d, &inst, true, 3);
        let s = RandomSampler::new(&crate::tests::settings(), &d);
        let build = || shared_draws(&rows, &s, &[0, 2], 400, 1);
        let b = build();
        assert_eq!(
            (
                b.random_rows,
                b.group_rows,
                b.random.len(),
                b.random_mask.len()
            ),
            (1, 2, 400, 800)
        );
        assert_eq!(b.random, build().random, "seeded");
        // Uniform over all 10 items, ln q = -ln 10; every item drawn at 400 draws.
        assert!(b.random.iter().all(|&j| (1..=10).contains(&j)));
        assert!((1..=10).all(|j| b.random.contains(&j)));
        assert!(b
            .random_log_q
            .iter()
            .all(|&q| (f64::from(q) + 10f64.ln()).abs() < 1e-6));
        // Row r may use candidate c exactly when c is outside its user's train items.
        for (r, user) in [(0usize, 0u32), (1, 2)] {
            let seq = d.train_seq(user);
            for (c, &j) in b.random.iter().enumerate() {
                let own = seq.contains(&u32::try_from(j).expect("item"));
                assert_eq!(b.random_mask[r * 400 + c], !own, "row {r}, item {j}");
            }
        }
    }

    #[test]
    fn each_trained_position_draws_its_own_and_masks_its_users_history() {
        let d = ds();
        let inst = d.instances();
        let rows = Rows::new(&d, &inst, true, 3);
        let s = RandomSampler::new(&crate::tests::settings(), &d);
        let build = || dealt_draws(&rows, &s, &[0, 2], 50, usize::MAX);
        let b = build();
        // User 0 trains 3 positions (L = 3), user 2 one: four draws of 50.
        assert_eq!(b.trained, 4);
        assert!(b.interleave);
        assert_eq!(
            (b.random_rows, b.random.len(), b.random_log_q.len()),
            (4, 200, 200)
        );
        assert_eq!(b.random, build().random, "seeded");
        // The first position's draw is the batch stream's first draw, as one shared
        // draw of the same stream would be; the others are new ones.
        let shared = shared_draws(&rows, &s, &[0, 2], 50, 1);
        assert_eq!(&b.random[..50], &shared.random[..]);
        for m in 1..4 {
            assert_ne!(&b.random[..50], &b.random[m * 50..(m + 1) * 50], "draw {m}");
        }
        // Uniform over all items; position m masks its own user's train items.
        assert!(b.random.iter().all(|j| (1..=10).contains(j)));
        assert!(b
            .random_log_q
            .iter()
            .all(|&q| (f64::from(q) + 10f64.ln()).abs() < 1e-6));
        assert_position_masks(&b, &d, &[0, 0, 0, 2], 50);
    }

    #[test]
    fn interleaved_draws_are_dealt_to_positions_in_turn_and_masked_by_each() {
        let d = ds();
        let inst = d.instances();
        let rows = Rows::new(&d, &inst, true, 3);
        let s = RandomSampler::new(&crate::tests::settings(), &d);
        // Four trained positions (user 0's three, user 2's one), two draws.
        let b = dealt_draws(&rows, &s, &[0, 2], 50, 2);
        assert!(b.interleave);
        assert_eq!((b.random_rows, b.random.len()), (2, 100));
        // The draws are the batch stream's, as two groups of rows would take them.
        let grouped = shared_draws(&rows, &s, &[0, 2], 50, 2);
        assert_eq!(b.random, grouped.random);
        // Position m uses draw m mod 2 and masks its own user's train items.
        assert_position_masks(&b, &d, &[0, 0, 0, 2], 50);
        // No more draws than positions.
        assert_eq!(dealt_draws(&rows, &s, &[0, 2], 50, 9).random_rows, 4);
    }

    #[test]
    fn groups_of_rows_each_draw_their_own_and_mask_against_it() {
        let d = ds();
        let inst = d.instances();
        let rows = Rows::new(&d, &inst, true, 3);
        let s = RandomSampler::new(&crate::tests::settings(), &d);
        let build = |ids: &[u64], groups: usize| shared_draws(&rows, &s, ids, 50, groups);
        let one = build(&[0, 2, 0], 1);
        let two = build(&[0, 2, 0], 2);
        // Three rows in two groups: rows 0 and 1 share draw 0, row 2 has draw 1.
        assert_eq!((two.random_rows, two.group_rows), (2, 2));
        assert_eq!((two.random.len(), two.random_mask.len()), (100, 150));
        assert_eq!(
            &two.random[..50],
            &one.random[..],
            "draw 0 is the one-group draw"
        );
        assert_ne!(&two.random[..50], &two.random[50..], "draw 1 is a new one");
        for (r, user, g) in [(0usize, 0u32, 0usize), (1, 2, 0), (2, 0, 1)] {
            let seq = d.train_seq(user);
            for c in 0..50 {
                let j = two.random[g * 50 + c];
                let own = seq.contains(&u32::try_from(j).expect("item"));
                assert_eq!(two.random_mask[r * 50 + c], !own, "row {r}, item {j}");
            }
        }
        // More groups than rows: one row per group.
        let many = build(&[0, 2], 5);
        assert_eq!(
            (many.random_rows, many.group_rows, many.random.len()),
            (2, 1, 100)
        );
    }

    #[test]
    fn prefix_rows_are_instances() {
        let d = ds();
        let inst = d.instances();
        let rows = Rows::new(&d, &inst, false, 2);
        assert_eq!(rows.ids().len(), 5);
        let s = RandomSampler::new(&crate::tests::settings(), &d);
        let b = rows.batch(
            &[3, 4],
            1,
            &s,
            None,
            Xoshiro256PlusPlus::seed_from_u64,
            None,
        );
        assert_eq!(b.hist, vec![3, 4, 0, 7]);
        assert_eq!(b.targets, vec![5, 8]);
        assert!(b.hard.is_empty());
    }

    #[test]
    fn random_negatives_are_exact_and_avoid_the_history() {
        let mut d = ds();
        let mut cfg = crate::tests::settings();
        let s = RandomSampler::new(&cfg, &d);
        let hist = [1u32, 2, 3, 4, 5, 6, 7, 8, 9];
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        let (mut out, mut lq) = (Vec::new(), Vec::new());
        s.draw(&hist, 50, &mut rng, &mut out, &mut lq);
        assert!(out.iter().all(|&j| j == 10), "the only item left");
        assert!(lq.iter().all(|&q| q.abs() < 1e-6), "probability 1");
        // Uniform over 1..=10 minus {2, 5}: every other item, ln q = -ln 8.
        let (mut out, mut lq) = (Vec::new(), Vec::new());
        s.draw(&[2, 5], 8000, &mut rng, &mut out, &mut lq);
        let mut counts = [0u32; 11];
        for &j in &out {
            counts[j as usize] += 1;
        }
        assert_eq!((counts[0], counts[2], counts[5]), (0, 0, 0));
        assert!(
            counts[1..]
                .iter()
                .enumerate()
                .all(|(i, &c)| [1, 4].contains(&i) || (850..1150).contains(&c)),
            "{counts:?}"
        );
        assert!((f64::from(lq[0]) + 8f64.ln()).abs() < 1e-6);
        // Popularity with alpha 1: item 7 has count 2, the rest of 1..=8 count 1.
        d.train_items.push(7);
        d.train_offsets[3] += 1;
        cfg.random_negatives = RandomNegatives::Popularity;
        let s = RandomSampler::new(&cfg, &d);
        let (mut out, mut lq) = (Vec::new(), Vec::new());
        // Excluding everything but 7 and 8 (mass 2 and 1): q(7) = 2/3.
        s.draw(&[1, 2, 3, 4, 5, 6], 3000, &mut rng, &mut out, &mut lq);
        let sevens = out.iter().filter(|&&j| j == 7).count();
        assert!(out.iter().all(|&j| j == 7 || j == 8));
        assert!((1850..2150).contains(&sevens), "{sevens}");
        let q7 = lq[out.iter().position(|&j| j == 7).expect("a 7")];
        assert!((f64::from(q7) - (2f64 / 3.0).ln()).abs() < 1e-6);
    }
}
