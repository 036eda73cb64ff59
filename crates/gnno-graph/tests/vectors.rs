//! Every value of ../shared/spec/vectors.json for the graph and the overlap.

use gnno_core::config::OverlapKind;
use gnno_graph::{build_witg, overlap_rows};
use serde_json::Value;
use std::collections::BTreeMap;

fn vectors() -> Value {
    // The manifest folder as cargo gives it when running the test (not baked in
    // at compile time: one target folder serves several checkouts).
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR");
    let p = format!("{dir}/../../../shared/spec/vectors.json");
    let text = std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{p}: {e} (tests need ../shared/spec)"));
    serde_json::from_str(&text).expect("vectors.json parses")
}

fn seqs(case: &Value) -> Vec<Vec<u32>> {
    case["sequences"]
        .as_array()
        .expect("sequences")
        .iter()
        .map(|s| {
            s.as_array()
                .expect("seq")
                .iter()
                .map(|x| u32::try_from(x.as_u64().expect("id")).expect("u32"))
                .collect()
        })
        .collect()
}

fn triples(v: &Value) -> BTreeMap<(u32, u32), f64> {
    v.as_array()
        .expect("triples")
        .iter()
        .map(|t| {
            let id = |k: usize| u32::try_from(t[k].as_u64().expect("id")).expect("u32");
            ((id(0), id(1)), t[2].as_f64().expect("value"))
        })
        .collect()
}

#[test]
fn witg_weights_degrees_and_jaccard_match_the_vectors() {
    let v = vectors();
    let cases = v["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 3);
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let s = seqs(case);
        let refs: Vec<&[u32]> = s.iter().map(Vec::as_slice).collect();
        // n_items in the vectors counts one unused item beyond the sequences' ids.
        let n_items = u32::try_from(case["n_items"].as_u64().expect("n")).expect("u32");
        let g = build_witg(&refs, n_items, 3);

        let mut raw = BTreeMap::new();
        let mut fin = BTreeMap::new();
        for i in 0..=n_items {
            for (k, &j) in g.neighbors(i).iter().enumerate() {
                let e = g.off[i as usize] + k;
                raw.insert((i, j), g.raw[e]);
                fin.insert((i, j), g.weight[e]);
            }
        }
        let want_raw = triples(&case["witg_raw"]);
        assert_eq!(
            raw.keys().collect::<Vec<_>>(),
            want_raw.keys().collect::<Vec<_>>(),
            "{name}: edges"
        );
        for (k, w) in &want_raw {
            assert!(
                (raw[k] - w).abs() < 1e-12,
                "{name}: w{k:?} = {} want {w}",
                raw[k]
            );
        }
        for (k, w) in &triples(&case["witg"]) {
            assert!(
                (fin[k] - w).abs() < 1e-11,
                "{name}: w'{k:?} = {} want {w}",
                fin[k]
            );
        }
        for (item, d) in case["degree"].as_object().expect("degree") {
            let i: u32 = item.parse().expect("id");
            assert_eq!(
                g.degree(i) as u64,
                d.as_u64().expect("d"),
                "{name}: degree of {i}"
            );
        }

        let rows = overlap_rows(&g, OverlapKind::Jaccard, 0.0, 0);
        let mut got = BTreeMap::new();
        for (i, (ids, js)) in rows.iter().enumerate() {
            // Sorted by J descending, ties by id.
            assert!(
                ids.iter()
                    .zip(js)
                    .collect::<Vec<_>>()
                    .windows(2)
                    .all(|w| w[0].1 > w[1].1 || (w[0].1 == w[1].1 && w[0].0 < w[1].0)),
                "{name}: row {i} order"
            );
            for (&j, &x) in ids.iter().zip(js) {
                got.insert((u32::try_from(i).expect("u32"), j), f64::from(x));
            }
        }
        let want_j = triples(&case["jaccard"]);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want_j.keys().collect::<Vec<_>>(),
            "{name}: overlap pairs"
        );
        for (k, x) in &want_j {
            assert!(
                (got[k] - x).abs() < 1e-6,
                "{name}: J{k:?} = {} want {x}",
                got[k]
            );
        }
    }
}

#[test]
fn weighted_overlap_is_tanimoto_on_final_weights() {
    let s = [vec![1u32, 2, 3, 4], vec![2, 3, 5], vec![6, 1, 2]];
    let refs: Vec<&[u32]> = s.iter().map(Vec::as_slice).collect();
    let g = build_witg(&refs, 7, 3);
    let rows = overlap_rows(&g, OverlapKind::Weighted, 0.0, 0);
    // Brute force from dense weight vectors.
    let dense = |i: u32| {
        let mut v = vec![0.0f64; 8];
        for (k, &j) in g.neighbors(i).iter().enumerate() {
            v[j as usize] = g.weight[g.off[i as usize] + k];
        }
        v
    };
    for i in 1..=6u32 {
        let (ids, js) = &rows[i as usize];
        for j in 1..=7u32 {
            let (a, b) = (dense(i), dense(j));
            let dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            let na: f64 = a.iter().map(|x| x * x).sum();
            let nb: f64 = b.iter().map(|x| x * x).sum();
            let want = if i == j {
                1.0
            } else if dot > 0.0 {
                dot / (na + nb - dot)
            } else {
                0.0
            };
            let got = ids
                .iter()
                .position(|&x| x == j)
                .map_or(0.0, |k| f64::from(js[k]));
            assert!((got - want).abs() < 1e-6, "T({i},{j}) = {got}, want {want}");
        }
    }
}

#[test]
fn cuts_bound_the_lists() {
    let s = [vec![1u32, 2, 3, 4, 5]];
    let refs: Vec<&[u32]> = s.iter().map(Vec::as_slice).collect();
    let g = build_witg(&refs, 6, 3);
    let rows = overlap_rows(&g, OverlapKind::Jaccard, 0.5, 0);
    // Item 3: J = 1 (self), 0.6 (2, 4); 0.4 pairs are cut.
    assert_eq!(rows[3].0, vec![3, 2, 4]);
    let rows = overlap_rows(&g, OverlapKind::Jaccard, 0.0, 2);
    assert!(rows.iter().all(|r| r.0.len() <= 2));
    assert_eq!(rows[1].0, vec![1, 5], "top-2 by J: self and item 5 (J = 1)");
}
