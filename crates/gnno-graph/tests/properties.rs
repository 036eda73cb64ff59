//! The graph against a naive reference, on random sequences (issue 11, item 14):
//! the WITG's summed weights and the Jaccard overlap, for every hop count the
//! config accepts (1..=16).

use gnno_core::config::OverlapKind;
use gnno_graph::{build_witg, overlap_rows};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

/// w(i, j) = Σ over occurrences of j k steps after or before i (k ≤ hops, i ≠ j) of 1/k.
fn naive_witg(seqs: &[Vec<u32>], hops: usize) -> BTreeMap<(u32, u32), f64> {
    let mut w = BTreeMap::new();
    for s in seqs {
        for a in 0..s.len() {
            for b in a + 1..s.len().min(a + hops + 1) {
                if s[a] != s[b] {
                    #[expect(clippy::cast_precision_loss, reason = "small")]
                    let x = 1.0 / (b - a) as f64;
                    *w.entry((s[a], s[b])).or_insert(0.0) += x;
                    *w.entry((s[b], s[a])).or_insert(0.0) += x;
                }
            }
        }
    }
    w
}

fn sequences() -> impl Strategy<Value = (u32, Vec<Vec<u32>>)> {
    (2u32..30).prop_flat_map(|n| {
        (
            Just(n),
            prop::collection::vec(prop::collection::vec(1..=n, 0..12), 0..12),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn witg_and_jaccard_equal_the_naive_reference((n, seqs) in sequences(), hops in 1u32..=16) {
        let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let g = build_witg(&refs, n, hops);
        let want = naive_witg(&seqs, hops as usize);
        let mut got = BTreeMap::new();
        for i in 0..=n {
            let (a, b) = (g.off[i as usize], g.off[i as usize + 1]);
            for e in a..b {
                got.insert((i, g.nbr[e]), g.raw[e]);
            }
        }
        prop_assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
        for (k, v) in &want {
            prop_assert!((got[k] - v).abs() < 1e-9, "{:?}: {} vs {}", k, got[k], v);
        }
        // Jaccard of neighbour sets, J(i, i) = 1 for items with neighbours.
        let nbrs = |i: u32| -> BTreeSet<u32> {
            want.keys().filter(|(a, _)| *a == i).map(|(_, b)| *b).collect()
        };
        let rows = overlap_rows(&g, OverlapKind::Jaccard, 0.0, 0);
        for i in 1..=n {
            let ni = nbrs(i);
            let mut expect: Vec<(u32, f32)> = Vec::new();
            for j in 1..=n {
                let nj = nbrs(j);
                if ni.is_empty() || nj.is_empty() {
                    continue;
                }
                let inter = ni.intersection(&nj).count();
                let union = ni.union(&nj).count();
                #[expect(clippy::cast_precision_loss, clippy::cast_possible_truncation, reason = "small")]
                let jv = if i == j { 1.0 } else { (inter as f64 / union as f64) as f32 };
                if jv > 0.0 {
                    expect.push((j, jv));
                }
            }
            expect.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let (ids, js) = &rows[i as usize];
            let got: Vec<(u32, f32)> = ids.iter().copied().zip(js.iter().copied()).collect();
            prop_assert_eq!(got.len(), expect.len(), "item {}", i);
            for (g, e) in got.iter().zip(&expect) {
                prop_assert_eq!(g.0, e.0, "item {}", i);
                prop_assert!((g.1 - e.1).abs() < 1e-6, "item {}: {:?} vs {:?}", i, g, e);
            }
        }
    }
}
