//! Exact hard-negative sampling (GNNO.md §4) without per-target work over all items.
//!
//! For target t and hardness h the base distribution over items 1..=N is
//! p(j) ∝ exp(J(t,j)/τ)·1[J(t,j) ≤ h]. Items outside t's overlap list have J = 0 and
//! weight 1, so a draw first picks "neighbour" or "non-neighbour" by mass, then a
//! neighbour by binary search in the suffix sums of the allowed run of the
//! J-descending list, or the r-th item absent from the list by binary search in the
//! id-sorted list. The target and excluded items are removed by rejection, which
//! yields exactly the conditional distribution.

use gnno_core::error::Result;
use gnno_core::ItemIdx;
use gnno_store::GraphRead;
use rand::RngExt;

/// Overlap lists in memory, prepared for one temperature.
#[derive(Debug, Default)]
pub struct OverlapIndex {
    pub n_items: u32,
    /// `off[i]..off[i+1]` indexes `ids` / `j` / `by_id` for item i.
    off: Vec<usize>,
    /// Neighbours in J-descending order and their J.
    ids: Vec<ItemIdx>,
    j: Vec<f32>,
    /// Suffix sums of exp(J/τ) per list; list i uses `suf[off[i] + i ..= off[i+1] + i]`.
    suf: Vec<f64>,
    /// The same neighbours sorted by id (for the non-neighbour draw and lookups).
    by_id: Vec<ItemIdx>,
    /// J of `by_id[k]`.
    j_by_id: Vec<f32>,
}

impl OverlapIndex {
    /// Build from lists given as (item, ids J-desc, J) in increasing item order.
    pub fn from_lists(n_items: u32, lists: impl IntoIterator<Item = (u32, Vec<u32>, Vec<f32>)>, tau: f64) -> Self {
        let n = n_items as usize + 1;
        let mut s = Self { n_items, off: vec![0; n + 1], ..Self::default() };
        let mut next = 0usize;
        for (item, ids, j) in lists {
            let item = item as usize;
            while next < item {
                s.off[next + 1] = s.ids.len();
                s.suf.push(0.0);
                next += 1;
            }
            let base = s.suf.len();
            s.suf.resize(base + ids.len() + 1, 0.0);
            for k in (0..ids.len()).rev() {
                s.suf[base + k] = s.suf[base + k + 1] + (f64::from(j[k]) / tau).exp();
            }
            let mut pairs: Vec<(u32, f32)> = ids.iter().copied().zip(j.iter().copied()).collect();
            pairs.sort_unstable_by_key(|p| p.0);
            s.by_id.extend(pairs.iter().map(|p| p.0));
            s.j_by_id.extend(pairs.iter().map(|p| p.1));
            s.ids.extend(ids);
            s.j.extend(j);
            s.off[item + 1] = s.ids.len();
            next = item + 1;
        }
        while next < n {
            s.off[next + 1] = s.ids.len();
            s.suf.push(0.0);
            next += 1;
        }
        s
    }

    /// Load every overlap list from a graph store.
    pub fn load(store: &dyn GraphRead, tau: f64) -> Result<Self> {
        let mut lists = Vec::new();
        store.for_each_overlap(&mut |i, (ids, j)| {
            lists.push((i, ids, j));
            Ok(())
        })?;
        Ok(Self::from_lists(store.info().n_items, lists, tau))
    }

    fn range(&self, t: ItemIdx) -> (usize, usize) {
        (self.off[t as usize], self.off[t as usize + 1])
    }

    fn suf(&self, t: ItemIdx) -> &[f64] {
        let (a, b) = self.range(t);
        &self.suf[a + t as usize..=b + t as usize]
    }

    /// J(t, j) as stored (0 when j is not in t's list).
    pub fn overlap(&self, t: ItemIdx, j: ItemIdx) -> f32 {
        let (a, b) = self.range(t);
        match self.by_id[a..b].binary_search(&j) {
            Ok(k) => self.j_by_id[a + k],
            Err(_) => 0.0,
        }
    }

    pub fn list_len(&self, t: ItemIdx) -> usize {
        let (a, b) = self.range(t);
        b - a
    }

    /// Start of the allowed run (J ≤ h) in t's J-descending list. The comparison is
    /// made in f32, the precision J is stored in (the authors' tensors are f32 too).
    fn allowed_start(&self, t: ItemIdx, h: f64) -> usize {
        let (a, b) = self.range(t);
        #[expect(clippy::cast_possible_truncation, reason = "J is f32")]
        let h = h as f32;
        self.j[a..b].partition_point(|&v| v > h)
    }

    /// One draw from the base distribution (target and exclusions not yet removed).
    /// Returns the item and its J; None when no item has mass.
    pub fn draw_base<R: rand::Rng>(&self, t: ItemIdx, h: f64, rng: &mut R) -> Option<(ItemIdx, f32)> {
        let (a, b) = self.range(t);
        let len = b - a;
        let suf = self.suf(t);
        let start = self.allowed_start(t, h);
        let w_nb = suf[start];
        let m0 = self.n_items as usize - len;
        #[expect(clippy::cast_precision_loss, reason = "item counts are far below 2^52")]
        let total = w_nb + m0 as f64;
        if total <= 0.0 {
            return None;
        }
        let u = rng.random::<f64>() * total;
        if u < w_nb {
            let v = suf[start] - u;
            // First k >= start with suf[k+1] < v.
            let k = start + suf[start + 1..=len].partition_point(|&s| s >= v);
            let k = k.min(len - 1);
            Some((self.ids[a + k], self.j[a + k]))
        } else {
            #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "u - w_nb is in [0, m0)")]
            let r = ((u - w_nb) as usize).min(m0 - 1);
            let sorted = &self.by_id[a..b];
            // Items absent from the list below sorted[k] number sorted[k] - 1 - k,
            // which grows with k: binary search for how many list items precede the answer.
            let (mut lo, mut hi) = (0usize, sorted.len());
            while lo < hi {
                let mid = (lo + hi) / 2;
                if sorted[mid] as usize - 1 - mid <= r {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            let m = lo;
            Some((u32::try_from(r + 1 + m).unwrap_or(u32::MAX), 0.0))
        }
    }

    /// Exact p(j | t, h) over items 1..=N without t and `exclude`, by enumeration
    /// (tests and audits; O(N)).
    pub fn probabilities(&self, t: ItemIdx, h: f64, tau: f64, exclude: &[ItemIdx]) -> Vec<(ItemIdx, f64)> {
        #[expect(clippy::cast_possible_truncation, reason = "J is f32")]
        let h32 = h as f32;
        let mut w: Vec<(ItemIdx, f64)> = (1..=self.n_items)
            .filter(|&j| j != t && !exclude.contains(&j))
            .filter_map(|j| {
                let v = self.overlap(t, j);
                (v <= h32).then(|| (j, (f64::from(v) / tau).exp()))
            })
            .collect();
        let total: f64 = w.iter().map(|p| p.1).sum();
        for p in &mut w {
            p.1 /= total;
        }
        w
    }
}

/// Draw one negative for target `t`: base draw, rejecting t and excluded items.
/// After `max_tries` rejections it falls back to an exact enumeration, so a
/// pathological case (all mass excluded) cannot loop forever.
pub fn draw_excluding<R: rand::Rng>(
    idx: &OverlapIndex,
    t: ItemIdx,
    h: f64,
    tau: f64,
    exclude: &[ItemIdx],
    rng: &mut R,
) -> Option<(ItemIdx, f32)> {
    for _ in 0..64 {
        let (j, v) = idx.draw_base(t, h, rng)?;
        if j != t && !exclude.contains(&j) {
            return Some((j, v));
        }
    }
    let probs = idx.probabilities(t, h, tau, exclude);
    let mut u = rng.random::<f64>();
    for &(j, p) in &probs {
        if u < p {
            return Some((j, idx.overlap(t, j)));
        }
        u -= p;
    }
    probs.last().map(|&(j, _)| (j, idx.overlap(t, j)))
}

/// Uniform over items 1..=N not excluded (and not t).
pub fn draw_uniform<R: rand::Rng>(n_items: u32, t: ItemIdx, exclude: &[ItemIdx], rng: &mut R) -> Option<ItemIdx> {
    for _ in 0..64 {
        let j = rng.random_range(1..=n_items);
        if j != t && !exclude.contains(&j) {
            return Some(j);
        }
    }
    let allowed: Vec<ItemIdx> = (1..=n_items).filter(|&j| j != t && !exclude.contains(&j)).collect();
    (!allowed.is_empty()).then(|| allowed[rng.random_range(0..allowed.len())])
}

/// Popularity sampler: p(j) ∝ count(j)^α over items with a train count.
#[derive(Debug)]
pub struct Popularity {
    cum: Vec<f64>,
}

impl Popularity {
    pub fn new(counts: &[u64], alpha: f64) -> Self {
        let mut acc = 0.0;
        #[expect(clippy::cast_precision_loss, reason = "counts are small")]
        let cum = counts
            .iter()
            .map(|&c| {
                acc += if c == 0 { 0.0 } else { (c as f64).powf(alpha) };
                acc
            })
            .collect();
        Self { cum }
    }

    pub fn draw<R: rand::Rng>(&self, t: ItemIdx, exclude: &[ItemIdx], rng: &mut R) -> Option<ItemIdx> {
        let total = *self.cum.last()?;
        if total <= 0.0 {
            return None;
        }
        for _ in 0..256 {
            let u = rng.random::<f64>() * total;
            let j = u32::try_from(self.cum.partition_point(|&c| c <= u)).ok()?;
            if j != 0 && j != t && !exclude.contains(&j) {
                return Some(j);
            }
        }
        None
    }
}
