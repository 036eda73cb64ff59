//! Exact hard-negative sampling (GNNO.md §4) without per-target work over all items.
//!
//! For target t and hardness h the base distribution over items 1..=N is
//! p(j) ∝ exp(J(t,j)/τ)·1[J(t,j) ≤ h]. Items outside t's overlap list have J = 0 and
//! weight 1, so a draw first picks "neighbour" or "non-neighbour" by mass. Overlap
//! values are ratios of small integers, so a J-descending list is a few hundred runs
//! of equal J: a neighbour is drawn by binary search over the suffix masses of the
//! allowed runs (those with J ≤ h, a contiguous tail), then uniformly inside the run.
//! A non-neighbour is the r-th item absent from the list, found by binary search in
//! the id-sorted list. The target and excluded items are removed exactly, not by
//! rejection: their masses come off the runs' suffix masses and a draw skips their
//! places ([`OverlapIndex::condition`]).
//!
//! Masses are kept in log space relative to the largest allowed weight, so any τ the
//! config accepts (down to 1e-6, where exp(J/τ) overflows f64) draws exactly; as τ → 0
//! the distribution tends to the uniform one over the allowed items of largest J.
//! Every draw also yields its exact log-probability under the conditional
//! distribution (training's logQ correction reads it from the shards).

use gnno_core::error::Result;
use gnno_core::ItemIdx;
use gnno_store::GraphRead;
use rand::RngExt;

/// Overlap lists in memory, prepared for one temperature.
#[derive(Debug, Default)]
pub struct OverlapIndex {
    pub n_items: u32,
    /// `off[i]..off[i+1]` indexes `ids` / `by_id` / `j_by_id` for item i.
    off: Vec<usize>,
    /// Neighbours in J-descending order (ties by id).
    ids: Vec<ItemIdx>,
    /// `run_off[i]..run_off[i+1]` indexes the runs of equal J of item i's list.
    run_off: Vec<usize>,
    run_j: Vec<f32>,
    /// Start of each run inside its list.
    run_start: Vec<u32>,
    /// Log suffix masses ln Σ len·exp(J/τ) over runs; item i uses
    /// `run_lsuf[run_off[i] + i ..= run_off[i+1] + i]` (one sentinel −∞ per item).
    run_lsuf: Vec<f64>,
    tau: f64,
    /// The same neighbours sorted by id (non-neighbour draws and lookups), with J.
    by_id: Vec<ItemIdx>,
    j_by_id: Vec<f32>,
    /// Where each of them sits in the J-descending list: (run, place in run).
    place_by_id: Vec<(u32, u32)>,
}

impl OverlapIndex {
    /// Build from lists given as (item, ids J-desc, J) in increasing item order.
    pub fn from_lists(
        n_items: u32,
        lists: impl IntoIterator<Item = (u32, Vec<u32>, Vec<f32>)>,
        tau: f64,
    ) -> Self {
        let n = n_items as usize + 1;
        let mut s = Self {
            n_items,
            off: vec![0; n + 1],
            run_off: vec![0; n + 1],
            tau,
            ..Self::default()
        };
        let mut next = 0usize;
        let close = |s: &mut Self, i: usize| {
            s.off[i + 1] = s.ids.len();
            s.run_off[i + 1] = s.run_j.len();
            s.run_lsuf.push(f64::NEG_INFINITY);
        };
        for (item, mut ids, j) in lists {
            let item = item as usize;
            while next < item {
                close(&mut s, next);
                next += 1;
            }
            let first_run = s.run_j.len();
            // Each neighbour's (run, place in run), in list order, for `place`
            // to read once it has found the item by id.
            let mut places: Vec<(u32, u32)> = Vec::with_capacity(ids.len());
            let mut k = 0;
            while k < j.len() {
                let mut e = k;
                while e < j.len() && j[e] == j[k] {
                    e += 1;
                }
                // Inside a run ids ascend (the order `places` counts in).
                ids[k..e].sort_unstable();
                let r = u32::try_from(s.run_j.len() - first_run).unwrap_or(u32::MAX);
                places.extend((0..e - k).map(|pos| (r, u32::try_from(pos).unwrap_or(u32::MAX))));
                s.run_j.push(j[k]);
                s.run_start.push(u32::try_from(k).unwrap_or(u32::MAX));
                #[expect(clippy::cast_precision_loss, reason = "run lengths are small")]
                s.run_lsuf
                    .push(((e - k) as f64).ln() + f64::from(j[k]) / tau);
                k = e;
            }
            // Turn log run masses into log suffix sums (the sentinel is pushed by
            // `close`): ln(a + b) with a the larger, so nothing overflows.
            let base = first_run + item;
            let runs = s.run_j.len() - first_run;
            for r in (0..runs.saturating_sub(1)).rev() {
                let (a, b) = (s.run_lsuf[base + r], s.run_lsuf[base + r + 1]);
                let (hi, lo) = if a >= b { (a, b) } else { (b, a) };
                s.run_lsuf[base + r] = hi + (lo - hi).exp().ln_1p();
            }
            let mut pairs: Vec<(u32, f32, (u32, u32))> = ids
                .iter()
                .zip(&j)
                .zip(places)
                .map(|((&id, &v), at)| (id, v, at))
                .collect();
            pairs.sort_unstable_by_key(|p| p.0);
            s.by_id.extend(pairs.iter().map(|p| p.0));
            s.j_by_id.extend(pairs.iter().map(|p| p.1));
            s.place_by_id.extend(pairs.iter().map(|p| p.2));
            s.ids.extend(ids);
            close(&mut s, item);
            next = item + 1;
        }
        while next < n {
            close(&mut s, next);
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

    /// The parts of a draw that depend only on (t, h): computed once per instance.
    /// The allowed runs (J ≤ h) are found by comparing in f32, the precision J is
    /// stored in (the authors' tensors are f32 too).
    pub fn prepare(&self, t: ItemIdx, h: f64) -> Prepared {
        let (a, b) = self.range(t);
        let (ra, rb) = (self.run_off[t as usize], self.run_off[t as usize + 1]);
        #[expect(clippy::cast_possible_truncation, reason = "J is f32")]
        let h32 = h as f32;
        let start = self.run_j[ra..rb].partition_point(|&v| v > h32);
        Prepared {
            a,
            len: b - a,
            ra,
            runs: rb - ra,
            sufa: ra + t as usize,
            start,
            m0: self.n_items as usize - (b - a),
        }
    }

    /// Where t and the `exclude` items sit in t's list: what [`Self::condition`]
    /// needs of them whatever h (`p` prepared for t at any h), so an instance
    /// drawn for several epochs looks them up once. A binary search or three per
    /// distinct item.
    pub fn locate(&self, p: &Prepared, t: ItemIdx, exclude: &[ItemIdx]) -> Located {
        let ks = distinct_with(t, exclude);
        let mut loc = Located {
            nb: Vec::with_capacity(ks.len() + ROOM),
            nn: Vec::with_capacity(ks.len() + ROOM),
        };
        for k in ks {
            match self.place(p, k) {
                Some(Place::Neighbour(r, pos)) => loc.nb.push((r, pos)),
                Some(Place::Other(rank)) => loc.nn.push(rank),
                None => {}
            }
        }
        loc.nb.sort_unstable();
        loc.nn.sort_unstable();
        loc
    }

    /// Where item k sits for the prepared target: its (run, place in run) when it
    /// is in the list, else its rank among the items absent from the list; None
    /// for ids outside 1..=N.
    fn place(&self, p: &Prepared, k: ItemIdx) -> Option<Place> {
        if k < 1 || k > self.n_items {
            return None;
        }
        let list = &self.by_id[p.a..p.a + p.len];
        match list.binary_search(&k) {
            Ok(x) => {
                let (r, pos) = self.place_by_id[p.a + x];
                Some(Place::Neighbour(r as usize, pos))
            }
            Err(x) => Some(Place::Other(k as usize - 1 - x)),
        }
    }

    /// p(· | t, h) with t and the `exclude` items removed, ready for exact draws.
    /// The excluded items' places are found once (a binary search each); a draw
    /// then skips them instead of rejecting them, so a history that holds the
    /// target's heaviest neighbours (most instances at small τ) costs no more
    /// than one that holds none.
    pub fn condition(&self, p: &Prepared, t: ItemIdx, exclude: &[ItemIdx]) -> Conditioned<'_> {
        self.condition_located(p, &self.locate(p, t, exclude))
    }

    /// [`Self::condition`] with the exclusions located by [`Self::locate`] for the
    /// same t.
    pub fn condition_located(&self, p: &Prepared, loc: &Located) -> Conditioned<'_> {
        // Excluded neighbours with J > h (runs before `p.start`) have no mass to
        // remove; the scan for r0 below starts past them.
        let ex_nb = &loc.nb;
        // The first allowed run with an item left sets the scale: every remaining
        // weight is exp(J/τ − J(r0)/τ) ≤ 1 and run r0's are exactly 1, so the
        // excluded weights subtracted below never cancel more than a few digits.
        let mut r0 = p.start;
        while r0 < p.runs {
            let (from, to) = self.run_bounds(p, r0);
            if excluded_in(ex_nb, r0).len() < to - from {
                break;
            }
            r0 += 1;
        }
        let ex_nb = with_room(&ex_nb[ex_nb.partition_point(|x| x.0 < r0)..]);
        let ex_nn = with_room(&loc.nn);
        let log_max = if r0 < p.runs {
            f64::from(self.run_j[p.ra + r0]) / self.tau
        } else {
            0.0
        };
        let ex_w = Vec::with_capacity(ex_nb.capacity());
        let ex_suf = Vec::with_capacity(ex_nb.capacity() + 1);
        let head = if r0 < p.runs {
            (self.run_lsuf[p.sufa + r0] - log_max).exp()
        } else {
            0.0
        };
        let mut c = Conditioned {
            idx: self,
            p: *p,
            r0,
            log_max,
            ex_nb,
            ex_w,
            ex_suf,
            ex_nn,
            head,
            w_nb: 0.0,
            m0: 0,
            w0: (-log_max).exp(),
            log_total: 0.0,
            total: 0.0,
        };
        for i in 0..c.ex_nb.len() {
            let w = c.weight(c.ex_nb[i].0);
            c.ex_w.push(w);
        }
        c.masses();
        c
    }

    /// Positions `from..to` of run r inside the prepared target's list.
    fn run_bounds(&self, p: &Prepared, r: usize) -> (usize, usize) {
        let from = self.run_start[p.ra + r] as usize;
        let to = if r + 1 < p.runs {
            self.run_start[p.ra + r + 1] as usize
        } else {
            p.len
        };
        (from, to)
    }

    /// Exact p(j | t, h) over items 1..=N without t and `exclude`, by enumeration
    /// (tests and audits; O(N)).
    pub fn probabilities(
        &self,
        t: ItemIdx,
        h: f64,
        tau: f64,
        exclude: &[ItemIdx],
    ) -> Vec<(ItemIdx, f64)> {
        #[expect(clippy::cast_possible_truncation, reason = "J is f32")]
        let h32 = h as f32;
        let mut w: Vec<(ItemIdx, f64)> = (1..=self.n_items)
            .filter(|&j| j != t && !exclude.contains(&j))
            .filter_map(|j| {
                let v = self.overlap(t, j);
                (v <= h32).then(|| (j, f64::from(v) / tau))
            })
            .collect();
        // Log weights relative to the largest, so no τ overflows.
        let top = w.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
        for p in &mut w {
            p.1 = (p.1 - top).exp();
        }
        let total: f64 = w.iter().map(|p| p.1).sum();
        for p in &mut w {
            p.1 /= total;
        }
        w
    }
}

/// Spare capacity of the exclusion lists, so a row's distinct draws (9 in the
/// experiments) join them without reallocating; more just grow them.
const ROOM: usize = 16;

/// A copy of `v` with [`ROOM`] to spare.
fn with_room<T: Copy>(v: &[T]) -> Vec<T> {
    let mut out = Vec::with_capacity(v.len() + ROOM);
    out.extend_from_slice(v);
    out
}

/// An instance's exclusions in its target's list (see [`OverlapIndex::locate`]).
#[derive(Debug, Default)]
pub struct Located {
    /// Excluded neighbours as (run, place in run), ascending.
    nb: Vec<(usize, u32)>,
    /// Ranks of the excluded non-neighbours among the items absent from the list,
    /// ascending.
    nn: Vec<usize>,
}

impl Clone for Located {
    /// A copy with room for a row's distinct draws ([`Conditioned::remove`]
    /// inserts them).
    fn clone(&self) -> Self {
        Self {
            nb: with_room(&self.nb),
            nn: with_room(&self.nn),
        }
    }
}

/// Where an item sits in a target's list: (run, place in run) for a neighbour, else
/// its rank among the items absent from the list (as [`OverlapIndex::locate`] finds them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Neighbour(usize, u32),
    Other(usize),
}

/// What a draw for one (target, hardness) needs, computed once. Two hardnesses
/// that allow the same runs prepare equal values (the curriculum's epochs at its
/// cap, most of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prepared {
    a: usize,
    len: usize,
    ra: usize,
    runs: usize,
    sufa: usize,
    /// First allowed run (J ≤ h).
    start: usize,
    /// Items absent from the list (J = 0, always allowed).
    m0: usize,
}

/// p(· | t, h) with t and the excluded items removed (see [`OverlapIndex::condition`]).
/// Weights are scaled by exp(−J(r0)/τ), r0 the first allowed run with an item left.
#[derive(Debug)]
pub struct Conditioned<'a> {
    idx: &'a OverlapIndex,
    p: Prepared,
    r0: usize,
    log_max: f64,
    /// Excluded neighbours in runs ≥ r0 as (run, place in run), ascending.
    ex_nb: Vec<(usize, u32)>,
    /// Their scaled weights, and ex_suf[i] = Σ ex_w[i..].
    ex_w: Vec<f64>,
    ex_suf: Vec<f64>,
    /// Ranks of the excluded non-neighbours among the items absent from the list.
    ex_nn: Vec<usize>,
    /// Scaled mass of every item of the runs r0.. (excluded ones included).
    head: f64,
    w_nb: f64,
    /// Non-neighbours left, each of scaled weight w0.
    m0: usize,
    w0: f64,
    total: f64,
    log_total: f64,
}

impl Clone for Conditioned<'_> {
    /// A copy with room for a row's distinct draws, as
    /// [`OverlapIndex::condition_located`] makes it: the same state to the bit.
    fn clone(&self) -> Self {
        Self {
            ex_nb: with_room(&self.ex_nb),
            ex_w: with_room(&self.ex_w),
            ex_suf: with_room(&self.ex_suf),
            ex_nn: with_room(&self.ex_nn),
            ..*self
        }
    }
}

impl Conditioned<'_> {
    /// The masses left from `head`, `ex_w` and `ex_nn`: ex_suf[i] = Σ ex_w[i..]
    /// (summed from the last), w_nb, m0, total.
    fn masses(&mut self) {
        self.ex_suf.clear();
        self.ex_suf.resize(self.ex_w.len() + 1, 0.0);
        for i in (0..self.ex_w.len()).rev() {
            self.ex_suf[i] = self.ex_suf[i + 1] + self.ex_w[i];
        }
        self.totals();
    }

    /// w_nb, m0 and the total from `head`, `ex_suf` and `ex_nn`.
    fn totals(&mut self) {
        self.w_nb = if self.r0 < self.p.runs {
            (self.head - self.ex_suf[0]).max(0.0)
        } else {
            0.0
        };
        self.m0 = self.p.m0 - self.ex_nn.len();
        #[expect(clippy::cast_precision_loss, reason = "item counts are far below 2^52")]
        let total = self.w_nb + self.m0 as f64 * self.w0;
        self.total = total;
        self.log_total = total.ln();
    }

    /// Removes a drawn item (`at`, as [`Self::draw_placed`] gives it) from this
    /// distribution and from `loc`, the exclusions it was conditioned on: the
    /// state [`OverlapIndex::condition_located`] gives for `loc` with the item
    /// added, to the bit. Only when the item was the last of run r0 (the scale)
    /// is it conditioned afresh.
    pub fn remove(&mut self, loc: &mut Located, at: Place) {
        let idx = self.idx;
        match at {
            Place::Neighbour(r, pos) => {
                let Err(i) = loc.nb.binary_search(&(r, pos)) else {
                    return;
                };
                loc.nb.insert(i, (r, pos));
                let (from, to) = idx.run_bounds(&self.p, r);
                if r == self.r0 && excluded_in(&self.ex_nb, r).len() + 1 == to - from {
                    *self = idx.condition_located(&self.p, loc);
                    return;
                }
                let i = self.ex_nb.partition_point(|x| *x < (r, pos));
                self.ex_nb.insert(i, (r, pos));
                let w = self.weight(r);
                self.ex_w.insert(i, w);
                // The suffix sums past i are the old ones from i on, the same
                // additions in the same order; only those up to i change.
                let s = self.ex_suf[i] + w;
                self.ex_suf.insert(i, s);
                for j in (0..i).rev() {
                    self.ex_suf[j] = self.ex_suf[j + 1] + self.ex_w[j];
                }
            }
            Place::Other(rank) => {
                let Err(i) = loc.nn.binary_search(&rank) else {
                    return;
                };
                loc.nn.insert(i, rank);
                self.ex_nn
                    .insert(self.ex_nn.partition_point(|&x| x < rank), rank);
            }
        }
        self.totals();
    }

    /// The scaled weight of one item of run r: exp(J(r)/τ − J(r0)/τ), exactly 1
    /// for run r0 (the same quotient subtracted from itself), where most draws at
    /// small τ land.
    fn weight(&self, r: usize) -> f64 {
        if r == self.r0 {
            return 1.0;
        }
        (f64::from(self.idx.run_j[self.p.ra + r]) / self.idx.tau - self.log_max).exp()
    }

    /// One draw: the item, its J and its exact ln q under this distribution; None
    /// when no item has mass.
    pub fn draw<R: rand::Rng>(&self, rng: &mut R) -> Option<(ItemIdx, f32, f64)> {
        self.draw_placed(rng).map(|(d, _)| d)
    }

    /// [`Self::draw`], with where the item sits in the target's list.
    pub fn draw_placed<R: rand::Rng>(&self, rng: &mut R) -> Option<((ItemIdx, f32, f64), Place)> {
        if self.total <= 0.0 || self.total.is_nan() {
            return None;
        }
        let (idx, p) = (self.idx, &self.p);
        let u = rng.random::<f64>() * self.total;
        if u < self.w_nb {
            let v = self.w_nb - u;
            // The last run r >= r0 whose remaining tail mass is >= v.
            let tail = |r: usize| {
                let ex = self.ex_suf[self.ex_nb.partition_point(|x| x.0 < r)];
                (idx.run_lsuf[p.sufa + r] - self.log_max).exp() - ex
            };
            // Galloping from r0 (probes r0 + 1, + 3, + 7, ...), then a binary
            // search inside the bracket: most of the mass sits in the first
            // allowed runs (all the more at small τ), so a draw usually needs a
            // probe or two where a search over every run needs log2(runs). The
            // same predicate, non-increasing in r, so the same run is found.
            let (mut lo, mut hi) = (self.r0 + 1, p.runs);
            let mut step = 1;
            while lo < hi {
                let probe = lo + step - 1;
                if probe >= hi {
                    break;
                }
                if tail(probe) >= v {
                    lo = probe + 1;
                    step *= 2;
                } else {
                    hi = probe;
                    break;
                }
            }
            while lo < hi {
                let mid = (lo + hi) / 2;
                if tail(mid) >= v {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            let mut r = lo - 1;
            // Rounding at a boundary can land on a run with nothing left: step back.
            loop {
                let (from, to) = idx.run_bounds(p, r);
                let ex = excluded_in(&self.ex_nb, r);
                if ex.len() < to - from {
                    let mut k = rng.random_range(0..to - from - ex.len());
                    for x in ex {
                        if x.1 as usize <= k {
                            k += 1;
                        }
                    }
                    let v = idx.run_j[p.ra + r];
                    let lw = f64::from(v) / idx.tau - self.log_max;
                    return Some((
                        (idx.ids[p.a + from + k], v, lw - self.log_total),
                        Place::Neighbour(r, u32::try_from(k).unwrap_or(u32::MAX)),
                    ));
                }
                if r == self.r0 {
                    return None;
                }
                r -= 1;
            }
        } else {
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "(u - w_nb) / w0 is in [0, m0)"
            )]
            let mut r = (((u - self.w_nb) / self.w0) as usize).min(self.m0.saturating_sub(1));
            for &x in &self.ex_nn {
                if x <= r {
                    r += 1;
                }
            }
            let sorted = &idx.by_id[p.a..p.a + p.len];
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
            let j = u32::try_from(r + 1 + lo).unwrap_or(u32::MAX);
            Some(((j, 0.0, -self.log_max - self.log_total), Place::Other(r)))
        }
    }
}

/// The excluded places of run r in `ex_nb` ((run, place) pairs, ascending).
fn excluded_in(ex_nb: &[(usize, u32)], r: usize) -> &[(usize, u32)] {
    let a = ex_nb.partition_point(|x| x.0 < r);
    let b = a + ex_nb[a..].partition_point(|x| x.0 == r);
    &ex_nb[a..b]
}

/// `exclude` plus `t`, sorted and deduplicated.
fn distinct_with(t: ItemIdx, exclude: &[ItemIdx]) -> Vec<ItemIdx> {
    let mut v: Vec<ItemIdx> = exclude.iter().copied().chain([t]).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Draw one negative for target `t` at hardness `h`, t and the excluded items
/// removed: the item and its J.
pub fn draw_excluding<R: rand::Rng>(
    idx: &OverlapIndex,
    t: ItemIdx,
    h: f64,
    exclude: &[ItemIdx],
    rng: &mut R,
) -> Option<(ItemIdx, f32)> {
    idx.condition(&idx.prepare(t, h), t, exclude)
        .draw(rng)
        .map(|(j, v, _)| (j, v))
}

/// Uniform over items 1..=N not excluded (and not t).
pub fn draw_uniform<R: rand::Rng>(
    n_items: u32,
    t: ItemIdx,
    exclude: &[ItemIdx],
    rng: &mut R,
) -> Option<ItemIdx> {
    for _ in 0..64 {
        let j = rng.random_range(1..=n_items);
        if j != t && !exclude.contains(&j) {
            return Some(j);
        }
    }
    let allowed: Vec<ItemIdx> = (1..=n_items)
        .filter(|&j| j != t && !exclude.contains(&j))
        .collect();
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

    /// Weight of item j (0 for padding and unseen items).
    pub fn weight(&self, j: ItemIdx) -> f64 {
        let j = j as usize;
        if j == 0 || j >= self.cum.len() {
            return 0.0;
        }
        self.cum[j] - self.cum[j - 1]
    }

    /// ln of the normaliser once t and the `exclude` items are removed.
    pub fn log_norm(&self, t: ItemIdx, exclude: &[ItemIdx]) -> f64 {
        let total = self.cum.last().copied().unwrap_or(0.0);
        let removed: f64 = distinct_with(t, exclude)
            .iter()
            .map(|&k| self.weight(k))
            .sum();
        let left = total - removed;
        if left > total * 1e-9 {
            return left.ln();
        }
        let skip = distinct_with(t, exclude);
        (1..self.cum.len())
            .filter_map(|j| u32::try_from(j).ok())
            .filter(|j| skip.binary_search(j).is_err())
            .map(|j| self.weight(j))
            .sum::<f64>()
            .ln()
    }

    /// One draw, t and `exclude` removed: rejection, then (after 256 rejections,
    /// when the excluded items hold most of the mass) an exact draw over the
    /// remaining items. None only when no item is left with a count.
    pub fn draw<R: rand::Rng>(
        &self,
        t: ItemIdx,
        exclude: &[ItemIdx],
        rng: &mut R,
    ) -> Option<ItemIdx> {
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
        let skip = distinct_with(t, exclude);
        let allowed: Vec<(ItemIdx, f64)> = (1..self.cum.len())
            .filter_map(|j| u32::try_from(j).ok())
            .filter(|j| skip.binary_search(j).is_err())
            .map(|j| (j, self.weight(j)))
            .filter(|p| p.1 > 0.0)
            .collect();
        let sum: f64 = allowed.iter().map(|p| p.1).sum();
        let mut u = rng.random::<f64>() * sum;
        for &(j, w) in &allowed {
            if u < w {
                return Some(j);
            }
            u -= w;
        }
        allowed.last().map(|p| p.0)
    }
}

/// Uniform over items 1..=N other than t and `exclude`: ln of how many there are.
pub fn uniform_log_norm(n_items: u32, t: ItemIdx, exclude: &[ItemIdx]) -> f64 {
    let removed = distinct_with(t, exclude)
        .iter()
        .filter(|&&k| k >= 1 && k <= n_items)
        .count();
    #[expect(clippy::cast_precision_loss, reason = "item counts")]
    ((n_items as usize).saturating_sub(removed) as f64).ln()
}
