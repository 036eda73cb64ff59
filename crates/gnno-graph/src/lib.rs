//! The graph stage: the weighted item transition graph (WITG) and the
//! neighbourhood-overlap lists of GNNO.md §2-3, built sparse and in parallel, and
//! materialised in the graph store.
//!
//! No N×N structure exists anywhere: the graph is CSR, and each item's overlap row is
//! accumulated in a per-thread sparse accumulator over its two-hop neighbourhood.

use gnno_core::config::{GraphSettings, OverlapKind};
use gnno_core::error::Result;
use gnno_core::progress::Progress;
use gnno_core::ItemIdx;
use gnno_store::{StoreInfo, StoreWriter};
use rayon::prelude::*;
use serde::Serialize;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// The WITG in CSR form: neighbours of item i are `nbr[off[i]..off[i+1]]`, sorted by id.
#[derive(Debug, Clone, Default)]
pub struct Witg {
    pub n_items: u32,
    pub off: Vec<usize>,
    pub nbr: Vec<ItemIdx>,
    /// Summed 1/k weights w(i,j).
    pub raw: Vec<f64>,
    /// Final weights w'(i,j) = w(i,j)/Σ_j' w(i,j') · (1/d_i + 1/d_j).
    pub weight: Vec<f64>,
}

impl Witg {
    pub fn degree(&self, i: ItemIdx) -> usize {
        self.off[i as usize + 1] - self.off[i as usize]
    }
    pub fn neighbors(&self, i: ItemIdx) -> &[ItemIdx] {
        &self.nbr[self.off[i as usize]..self.off[i as usize + 1]]
    }
    pub fn edges(&self) -> usize {
        self.nbr.len()
    }
}

/// Build the WITG from train sequences (items 1..=n_items), hops 1..=`hops`.
///
/// Each (source, target, hop) occurrence is counted as an integer and the weight is
/// formed once per edge as Σ_k c_k / k, so the result does not depend on the order
/// in which threads visit the sequences.
pub fn build_witg(seqs: &[&[ItemIdx]], n_items: u32, hops: u32) -> Witg {
    let n = n_items as usize + 1;
    let hops = hops as usize;
    let visit = |s: &[ItemIdx], f: &mut dyn FnMut(ItemIdx, ItemIdx, usize)| {
        for j in 0..s.len() {
            for k in 1..=hops {
                let Some(&b) = s.get(j + k) else { break };
                let a = s[j];
                if a != b {
                    f(a, b, k);
                    f(b, a, k);
                }
            }
        }
    };
    // Pass 1: occurrences per source.
    let counts: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
    seqs.par_iter().for_each(|s| {
        visit(s, &mut |a, _, _| {
            counts[a as usize].fetch_add(1, Ordering::Relaxed);
        });
    });
    let mut start = vec![0usize; n + 1];
    for i in 0..n {
        start[i + 1] = start[i] + counts[i].load(Ordering::Relaxed) as usize;
    }
    // Pass 2: scatter (target << 8 | hop) into per-source buckets. u64, so every
    // u32 target and every hop up to 255 fit (4 bits of a u32 held neither
    // hop 16 nor ids from 2^28 on: issue 11).
    let cursor: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
    let slots: Vec<AtomicU64> = (0..start[n]).map(|_| AtomicU64::new(0)).collect();
    seqs.par_iter().for_each(|s| {
        visit(s, &mut |a, b, k| {
            let c = cursor[a as usize].fetch_add(1, Ordering::Relaxed) as usize;
            slots[start[a as usize] + c].store(pack(b, k), Ordering::Relaxed);
        });
    });
    let mut slots: Vec<u64> = slots.into_iter().map(AtomicU64::into_inner).collect();
    // Pass 3: per source, sort and merge into (neighbour, Σ c_k / k).
    let rows: Vec<(Vec<ItemIdx>, Vec<f64>)> = {
        let mut chunks: Vec<&mut [u64]> = Vec::with_capacity(n);
        let mut rest: &mut [u64] = &mut slots;
        for i in 0..n {
            let (head, tail) = rest.split_at_mut(start[i + 1] - start[i]);
            chunks.push(head);
            rest = tail;
        }
        chunks
            .into_par_iter()
            .map(|row| {
                row.sort_unstable();
                let mut ids = Vec::new();
                let mut w = Vec::new();
                let mut r = 0;
                let mut per_hop = vec![0u32; hops + 1];
                while r < row.len() {
                    let (b, _) = unpack(row[r]);
                    per_hop.fill(0);
                    while r < row.len() && unpack(row[r]).0 == b {
                        per_hop[unpack(row[r]).1] += 1;
                        r += 1;
                    }
                    let sum: f64 = per_hop
                        .iter()
                        .enumerate()
                        .skip(1)
                        .map(|(k, &c)| f64::from(c) / k as f64)
                        .sum();
                    ids.push(b);
                    w.push(sum);
                }
                (ids, w)
            })
            .collect()
    };
    let mut g = Witg {
        n_items,
        off: vec![0; n + 1],
        ..Witg::default()
    };
    for (i, (ids, w)) in rows.into_iter().enumerate() {
        g.off[i + 1] = g.off[i] + ids.len();
        g.nbr.extend(ids);
        g.raw.extend(w);
    }
    // Final weights.
    let deg: Vec<f64> = (0..n).map(|i| (g.off[i + 1] - g.off[i]) as f64).collect();
    g.weight = vec![0.0; g.raw.len()];
    for i in 0..n {
        let (a, b) = (g.off[i], g.off[i + 1]);
        let total: f64 = g.raw[a..b].iter().sum();
        for e in a..b {
            let j = g.nbr[e] as usize;
            g.weight[e] = g.raw[e] / total * (1.0 / deg[i] + 1.0 / deg[j]);
        }
    }
    g
}

/// A (target, hop) occurrence as one sortable integer: target in the high bits.
fn pack(target: ItemIdx, hop: usize) -> u64 {
    (u64::from(target) << 8) | (hop as u64 & 0xff)
}

fn unpack(x: u64) -> (ItemIdx, usize) {
    #[expect(clippy::cast_possible_truncation, reason = "the high 32 bits of 40")]
    ((x >> 8) as ItemIdx, (x & 0xff) as usize)
}

/// One item's overlap row: (j, J(i,j)) for every j with J > 0, sorted by J
/// descending then id, after the `min_overlap` / `max_neighbors` cuts.
pub type OverlapRow = (Vec<ItemIdx>, Vec<f32>);

/// Overlap rows of every item 0..=n_items (row 0, padding, is empty).
pub fn overlap_rows(
    g: &Witg,
    kind: OverlapKind,
    min_overlap: f64,
    max_neighbors: u32,
) -> Vec<OverlapRow> {
    let n = g.n_items as usize + 1;
    // For the weighted overlap, w'(j,u) seen from u's list: rev[e] for edge e = (u, j).
    let rev: Vec<f64> = if kind == OverlapKind::Weighted {
        (0..n)
            .into_par_iter()
            .flat_map_iter(|u| {
                g.neighbors(u as u32).iter().map(move |&j| {
                    let nj = g.neighbors(j);
                    let pos = nj.binary_search(&(u as u32)).unwrap_or(0);
                    g.weight[g.off[j as usize] + pos]
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    let sq_norm: Vec<f64> = (0..n)
        .map(|i| g.weight[g.off[i]..g.off[i + 1]].iter().map(|w| w * w).sum())
        .collect();
    (0..n)
        .into_par_iter()
        .map_init(
            || (vec![0.0f64; n], Vec::<u32>::new()),
            |(acc, touched), i| {
                let i32_ = i as u32;
                let ni = g.neighbors(i32_);
                if ni.is_empty() {
                    return (Vec::new(), Vec::new());
                }
                // Sparse accumulation over the two-hop neighbourhood.
                for (ei, &u) in ni.iter().enumerate() {
                    let wiu = if kind == OverlapKind::Weighted {
                        g.weight[g.off[i] + ei]
                    } else {
                        1.0
                    };
                    let (a, b) = (g.off[u as usize], g.off[u as usize + 1]);
                    if kind == OverlapKind::Weighted {
                        for (&j, &r) in g.nbr[a..b].iter().zip(&rev[a..b]) {
                            if acc[j as usize] == 0.0 {
                                touched.push(j);
                            }
                            acc[j as usize] += wiu * r;
                        }
                    } else {
                        for &j in &g.nbr[a..b] {
                            if acc[j as usize] == 0.0 {
                                touched.push(j);
                            }
                            acc[j as usize] += 1.0;
                        }
                    }
                }
                let di = ni.len() as f64;
                let mut row: Vec<(u32, f32)> = Vec::with_capacity(touched.len());
                for &j in touched.iter() {
                    let inter = acc[j as usize];
                    acc[j as usize] = 0.0;
                    let jv = if j == i32_ {
                        1.0
                    } else if kind == OverlapKind::Weighted {
                        inter / (sq_norm[i] + sq_norm[j as usize] - inter)
                    } else {
                        inter / (di + g.degree(j) as f64 - inter)
                    };
                    #[expect(
                        clippy::cast_possible_truncation,
                        reason = "J is stored as f32, as the authors do"
                    )]
                    let jf = jv as f32;
                    if jv > 0.0 && (j == i32_ || jv >= min_overlap) {
                        row.push((j, jf));
                    }
                }
                touched.clear();
                row.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                if max_neighbors > 0 {
                    row.truncate(max_neighbors as usize);
                }
                row.into_iter().unzip()
            },
        )
        .collect()
}

/// Figures of a graph run (`gnno report graph`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GraphReport {
    pub n_items: u32,
    pub items_with_edges: u64,
    pub directed_edges: u64,
    pub mean_degree: f64,
    pub max_degree: u64,
    /// Ordered pairs with J > 0, self pairs included (after any cuts).
    pub overlap_pairs: u64,
    /// Ordered pairs with J > 0.1, self pairs excluded.
    pub overlap_pairs_over_0_1: u64,
    pub max_list_len: u64,
    pub store_bytes: u64,
}

/// Compute statistics of the graph and the overlap rows.
pub fn report(g: &Witg, rows: &[OverlapRow]) -> GraphReport {
    let n = g.n_items as usize + 1;
    let with_edges = (0..n).filter(|&i| g.off[i + 1] > g.off[i]).count() as u64;
    let max_degree = (0..n).map(|i| g.off[i + 1] - g.off[i]).max().unwrap_or(0) as u64;
    let pairs = rows.iter().map(|r| r.0.len() as u64).sum();
    let over = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            r.0.iter()
                .zip(&r.1)
                .filter(|(&j, &v)| j as usize != i && v > 0.1f32)
                .count() as u64
        })
        .sum();
    GraphReport {
        n_items: g.n_items,
        items_with_edges: with_edges,
        directed_edges: g.edges() as u64,
        mean_degree: if with_edges == 0 {
            0.0
        } else {
            g.edges() as f64 / with_edges as f64
        },
        max_degree,
        overlap_pairs: pairs,
        overlap_pairs_over_0_1: over,
        max_list_len: rows.iter().map(|r| r.0.len() as u64).max().unwrap_or(0),
        store_bytes: 0,
    }
}

/// Run the stage: sequences in, store written at `store_path`.
pub fn run(
    seqs: &[&[ItemIdx]],
    n_items: u32,
    cfg: &GraphSettings,
    input_fingerprint: &str,
    store_path: &Path,
    progress: &dyn Progress,
) -> Result<(GraphReport, StoreInfo)> {
    progress.start("graph: transitions", 3);
    let g = build_witg(seqs, n_items, cfg.hops);
    progress.advance(1);
    let rows = overlap_rows(&g, cfg.overlap, cfg.min_overlap, cfg.max_neighbors);
    progress.advance(1);
    let mut rep = report(&g, &rows);
    let mut w = StoreWriter::create(store_path)?;
    for i in 1..=n_items {
        let (a, b) = (g.off[i as usize], g.off[i as usize + 1]);
        if a < b {
            w.put_witg(i, &g.nbr[a..b], &g.weight[a..b])?;
        }
    }
    for (i, (ids, j)) in rows.iter().enumerate().skip(1) {
        if !ids.is_empty() {
            w.put_overlap(u32::try_from(i).unwrap_or(u32::MAX), ids, j)?;
        }
    }
    let info = StoreInfo {
        format_version: 0,
        n_items,
        input_fingerprint: input_fingerprint.to_owned(),
        options: serde_json::to_value(cfg).unwrap_or_default(),
        counts: serde_json::to_value(&rep).unwrap_or_default(),
        content_fingerprint: String::new(),
    };
    let info = w.finish(info)?;
    progress.advance(1);
    progress.finish();
    rep.store_bytes = gnno_core::fsutil::dir_size(store_path)?;
    Ok((rep, info))
}
