//! The sampler against the exact probabilities of ../shared/spec/vectors.json.

use gnno_negatives::sampler::{draw_excluding, OverlapIndex};
use gnno_negatives::{Drawn, Sampler};
use rand::rngs::Xoshiro256PlusPlus;
use rand::SeedableRng;
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

/// Overlap lists straight from the expected Jaccard values (J-descending, ties by id).
fn index(case: &Value, tau: f64) -> OverlapIndex {
    let n = u32::try_from(case["n_items"].as_u64().expect("n")).expect("u32");
    let mut rows: BTreeMap<u32, Vec<(u32, f32)>> = BTreeMap::new();
    for t in case["jaccard"].as_array().expect("jaccard") {
        let id = |k: usize| u32::try_from(t[k].as_u64().expect("id")).expect("u32");
        #[expect(clippy::cast_possible_truncation, reason = "J is stored as f32")]
        rows.entry(id(0))
            .or_default()
            .push((id(1), t[2].as_f64().expect("J") as f32));
    }
    let lists = rows.into_iter().map(|(i, mut r)| {
        r.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        (
            i,
            r.iter().map(|p| p.0).collect(),
            r.iter().map(|p| p.1).collect(),
        )
    });
    OverlapIndex::from_lists(n, lists, tau)
}

fn expected(s: &Value) -> BTreeMap<u32, f64> {
    s["probabilities"]
        .as_object()
        .expect("probs")
        .iter()
        .map(|(k, v)| (k.parse().expect("id"), v.as_f64().expect("p")))
        .collect()
}

#[test]
fn exact_probabilities_match_the_vectors() {
    for case in vectors()["cases"].as_array().expect("cases") {
        for s in case["sampling"].as_array().expect("sampling") {
            let tau = s["temperature"].as_f64().expect("tau");
            let idx = index(case, tau);
            let t = u32::try_from(s["target"].as_u64().expect("t")).expect("u32");
            let h = s["hardness"].as_f64().expect("h");
            let got: BTreeMap<u32, f64> = idx
                .probabilities(t, h, tau, &[])
                .into_iter()
                .filter(|p| p.1 > 0.0)
                .collect();
            let want = expected(s);
            assert_eq!(
                got.keys().collect::<Vec<_>>(),
                want.keys().collect::<Vec<_>>(),
                "{} t={t} h={h}",
                case["name"]
            );
            for (j, p) in &want {
                assert!(
                    (got[j] - p).abs() < 1e-7,
                    "{} t={t} h={h} j={j}: {} want {p}",
                    case["name"],
                    got[j]
                );
            }
        }
    }
}

#[test]
fn a_million_draws_per_case_stay_close_to_the_exact_distribution() {
    const DRAWS: u32 = 1_000_000;
    let mut worst: f64 = 0.0;
    for (ci, case) in vectors()["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .enumerate()
    {
        for (si, s) in case["sampling"]
            .as_array()
            .expect("sampling")
            .iter()
            .enumerate()
        {
            let tau = s["temperature"].as_f64().expect("tau");
            let idx = index(case, tau);
            let t = u32::try_from(s["target"].as_u64().expect("t")).expect("u32");
            let h = s["hardness"].as_f64().expect("h");
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(1000 + (ci * 10 + si) as u64);
            let mut counts: BTreeMap<u32, u32> = BTreeMap::new();
            for _ in 0..DRAWS {
                let (j, jv) = draw_excluding(&idx, t, h, &[], &mut rng).expect("a draw");
                assert_ne!(j, t, "the target is never its own negative");
                assert!(j >= 1, "padding is never drawn");
                assert_eq!(jv, idx.overlap(t, j));
                *counts.entry(j).or_default() += 1;
            }
            let want = expected(s);
            for (j, c) in &counts {
                assert!(
                    want.contains_key(j),
                    "{} t={t} h={h}: drew {j}, which has probability 0",
                    case["name"]
                );
                let _ = c;
            }
            for (j, p) in &want {
                let f = f64::from(counts.get(j).copied().unwrap_or(0)) / f64::from(DRAWS);
                // 5 standard deviations of a frequency estimate at n = 10^6.
                let bound = 5.0 * (p * (1.0 - p) / f64::from(DRAWS)).sqrt() + 1e-9;
                assert!(
                    (f - p).abs() <= bound,
                    "{} t={t} h={h} j={j}: frequency {f} vs {p} (bound {bound})",
                    case["name"]
                );
                worst = worst.max((f - p).abs());
            }
        }
    }
    assert!(worst < 0.003, "largest gap {worst}");
}

#[test]
fn history_exclusion_conditions_the_distribution() {
    let case = &vectors()["cases"][1];
    let idx = index(case, 1.0);
    // Target 2 at h = 0.6 excluding items 1 and 3: the rest renormalised.
    let base: BTreeMap<u32, f64> = idx.probabilities(2, 0.6, 1.0, &[]).into_iter().collect();
    let cond: BTreeMap<u32, f64> = idx
        .probabilities(2, 0.6, 1.0, &[1, 3])
        .into_iter()
        .collect();
    let rest: f64 = base
        .iter()
        .filter(|(j, _)| ![1, 3].contains(*j))
        .map(|p| p.1)
        .sum();
    for (j, p) in &cond {
        assert!((p - base[j] / rest).abs() < 1e-12);
    }
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(5);
    let mut c = BTreeMap::<u32, u32>::new();
    for _ in 0..200_000 {
        let (j, _) = draw_excluding(&idx, 2, 0.6, &[1, 3], &mut rng).expect("draw");
        assert!(![1, 2, 3].contains(&j));
        *c.entry(j).or_default() += 1;
    }
    for (j, p) in &cond {
        let f = f64::from(c.get(j).copied().unwrap_or(0)) / 200_000.0;
        assert!((f - p).abs() < 0.006, "j={j}: {f} vs {p}");
    }
}

#[test]
fn sharper_temperature_moves_mass_to_overlapping_items() {
    let case = &vectors()["cases"][0];
    let warm = index(case, 1.0).probabilities(3, 1.0, 1.0, &[]);
    let sharp = index(case, 0.1).probabilities(3, 1.0, 0.1, &[]);
    let p6 = |v: &[(u32, f64)]| v.iter().find(|p| p.0 == 6).map_or(0.0, |p| p.1);
    assert!(
        p6(&sharp) < p6(&warm) / 10.0,
        "zero-overlap item 6: {} vs {}",
        p6(&sharp),
        p6(&warm)
    );
}

/// Draws through the stage's sampler, with their stored log-probabilities.
fn draws(idx: OverlapIndex, tau: f64, t: u32, h: f64, exclude: &[u32], n: u32) -> Vec<Drawn> {
    let s = Sampler::Gnno { index: idx, tau };
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(11);
    let mut out = Vec::new();
    s.draw(t, h, n, exclude, &mut rng, &mut out);
    out
}

#[test]
fn every_draw_carries_its_exact_probability() {
    for case in vectors()["cases"].as_array().expect("cases") {
        for s in case["sampling"].as_array().expect("sampling") {
            let tau = s["temperature"].as_f64().expect("tau");
            let t = u32::try_from(s["target"].as_u64().expect("t")).expect("u32");
            let h = s["hardness"].as_f64().expect("h");
            for exclude in [&[][..], &[1, 2, 2, 5][..]] {
                let want: BTreeMap<u32, f64> = index(case, tau)
                    .probabilities(t, h, tau, exclude)
                    .into_iter()
                    .collect();
                let got = draws(index(case, tau), tau, t, h, exclude, 300);
                // Nothing left to draw (every allowed item excluded): no draw at all.
                assert_eq!(got.len(), if want.is_empty() { 0 } else { 300 });
                for d in &got {
                    let p = want[&d.item];
                    assert!(
                        (f64::from(d.log_prob) - p.ln()).abs() < 1e-5,
                        "t={t} h={h} tau={tau} j={}: {} vs ln {p}",
                        d.item,
                        d.log_prob
                    );
                }
            }
        }
    }
}

#[test]
fn tiny_temperature_draws_the_largest_allowed_overlap_without_overflow() {
    // Case 0, target 3 at h = 1: the items of largest J (f32 ties included) share
    // all the mass as tau -> 0; the config accepts tau = 1e-6, where exp(J/tau)
    // overflows f64.
    let case = &vectors()["cases"][0];
    let tau = 1e-6;
    let base = index(case, 1.0);
    let n = u32::try_from(case["n_items"].as_u64().expect("n")).expect("u32");
    let js: Vec<(u32, f32)> = (1..=n)
        .filter(|&j| j != 3)
        .map(|j| (j, base.overlap(3, j)))
        .collect();
    let top = js.iter().map(|p| p.1).fold(f32::MIN, f32::max);
    assert!(top > 0.0);
    let argmax: Vec<u32> = js.iter().filter(|p| p.1 == top).map(|p| p.0).collect();
    let probs = index(case, tau).probabilities(3, 1.0, tau, &[]);
    for &(j, p) in &probs {
        let want = if argmax.contains(&j) {
            1.0 / argmax.len() as f64
        } else {
            0.0
        };
        assert!((p - want).abs() < 1e-9, "j={j}: {p} vs {want}");
    }
    let got = draws(index(case, tau), tau, 3, 1.0, &[], 500);
    assert_eq!(got.len(), 500);
    for d in &got {
        assert!(
            argmax.contains(&d.item),
            "drew {} (J={})",
            d.item,
            d.overlap
        );
        assert!((f64::from(d.log_prob) + (argmax.len() as f64).ln()).abs() < 1e-5);
    }
    // With every argmax item excluded, the next largest J takes the mass.
    let rest: Vec<(u32, f32)> = js.iter().copied().filter(|p| p.1 < top).collect();
    let second = rest.iter().map(|p| p.1).fold(f32::MIN, f32::max);
    let got = draws(index(case, tau), tau, 3, 1.0, &argmax, 200);
    assert_eq!(got.len(), 200);
    for d in &got {
        assert_eq!(base.overlap(3, d.item), second, "drew {}", d.item);
        assert!(d.log_prob.is_finite() && d.log_prob <= 0.0);
    }
}

/// The items other than `t`, largest J(t, ·) first.
fn heaviest_first(case: &Value, t: u32) -> Vec<u32> {
    let base = index(case, 1.0);
    let n = u32::try_from(case["n_items"].as_u64().expect("n")).expect("u32");
    let mut by_j: Vec<(u32, f32)> = (1..=n)
        .filter(|&j| j != t)
        .map(|j| (j, base.overlap(t, j)))
        .collect();
    by_j.sort_by(|a, b| b.1.total_cmp(&a.1));
    by_j.into_iter().map(|p| p.0).collect()
}

#[test]
fn no_draw_is_more_likely_than_certain() {
    // Where one item holds (nearly) all the remaining mass its ln q is 0 up to
    // rounding, and rounding must not make it positive: the train stage refuses a
    // shard with ln q > 0. Every target, cap and sharp τ of the vectors, with the
    // heaviest items excluded one by one (the user's history often holds them).
    for case in vectors()["cases"].as_array().expect("cases") {
        let n = u32::try_from(case["n_items"].as_u64().expect("n")).expect("u32");
        for tau in [0.1, 0.01, 1e-3, 1e-6] {
            for t in 1..=n {
                let by_j = heaviest_first(case, t);
                for h in [0.3, 0.5, 1.0] {
                    for k in 0..by_j.len() {
                        let exclude = &by_j[..k];
                        for d in draws(index(case, tau), tau, t, h, exclude, 20) {
                            assert!(
                                d.log_prob <= 0.0,
                                "t={t} h={h} tau={tau} excluded {k}: ln q {} for {}",
                                d.log_prob,
                                d.item
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn an_instances_draws_are_what_single_draws_give() {
    // Sharp τ with the target's heaviest items excluded (the case the conditioned
    // draw exists for): the stage's sampler conditions once for an instance's
    // draws; the same seed gives the same items as conditioning for each draw.
    let case = &vectors()["cases"][0];
    let n = u32::try_from(case["n_items"].as_u64().expect("n")).expect("u32");
    let mut spread = 0;
    for t in 1..=n {
        let by_j = heaviest_first(case, t);
        for (tau, k) in [(0.01, 1), (0.01, 3), (0.03, 2), (0.05, 3)] {
            let exclude = by_j[..k].to_vec();
            let kept: Vec<u32> = draws(index(case, tau), tau, t, 0.5, &exclude, 200)
                .iter()
                .map(|d| d.item)
                .collect();
            let idx = index(case, tau);
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(11);
            let fresh: Vec<u32> = (0..kept.len())
                .map(|_| {
                    draw_excluding(&idx, t, 0.5, &exclude, &mut rng)
                        .expect("draw")
                        .0
                })
                .collect();
            assert_eq!(kept, fresh, "t={t} tau={tau} excluded {k}");
            assert!(kept.iter().all(|j| !exclude.contains(j) && *j != t));
            let distinct: std::collections::BTreeSet<_> = kept.iter().collect();
            spread += usize::from(distinct.len() > 1);
        }
    }
    // Some of these cases have more than one item left to draw.
    assert!(spread > 0);
}

#[test]
fn exclusions_located_at_one_hardness_condition_any_other_exactly() {
    // The stage locates an instance's exclusions once for a block of epochs,
    // with the first epoch's preparation, and conditions every epoch's hardness
    // on them: each epoch's draws (items and ln q) must be those of conditioning
    // afresh at its own hardness, including caps that leave some of the excluded
    // neighbours above h (no mass to remove) and some below.
    let case = &vectors()["cases"][0];
    let n = u32::try_from(case["n_items"].as_u64().expect("n")).expect("u32");
    let tau = 0.05;
    let idx = index(case, tau);
    let s = Sampler::Gnno {
        index: index(case, tau),
        tau,
    };
    let mut compared = 0;
    for t in 1..=n {
        let by_j = heaviest_first(case, t);
        for k in [0, 1, 3] {
            let exclude = by_j[..k.min(by_j.len())].to_vec();
            for (h_at, h) in [(0.1, 0.5), (0.5, 0.1), (1.0, 0.3), (0.3, 1.0)] {
                let loc = s
                    .locate(&idx.prepare(t, h_at), t, &exclude)
                    .expect("GNNO locates");
                let (mut a, mut b) = (Vec::new(), Vec::new());
                let mut rng = Xoshiro256PlusPlus::seed_from_u64(5);
                s.draw_prepared(
                    Some(&idx.prepare(t, h)),
                    Some(&loc),
                    t,
                    20,
                    false,
                    &exclude,
                    &mut rng,
                    &mut a,
                );
                let mut rng = Xoshiro256PlusPlus::seed_from_u64(5);
                s.draw(t, h, 20, &exclude, &mut rng, &mut b);
                let key = |d: &[Drawn]| -> Vec<(u32, u32)> {
                    d.iter().map(|x| (x.item, x.log_prob.to_bits())).collect()
                };
                assert_eq!(
                    key(&a),
                    key(&b),
                    "t={t} k={k} located at {h_at}, drawn at {h}"
                );
                compared += a.len();
            }
        }
    }
    assert!(compared > 1000, "{compared}");
}

#[test]
fn sharp_draws_with_the_heaviest_items_excluded_follow_the_exact_distribution() {
    // The instances small τ makes common: the history holds the target's heaviest
    // neighbours, so nearly all of the base mass is excluded. Frequencies of
    // 100,000 draws against the enumerated conditional probabilities, for every
    // target of every case, 1-3 heaviest items excluded, caps 0.5 and 1.
    const DRAWS: u32 = 100_000;
    let mut checked = 0;
    for case in vectors()["cases"].as_array().expect("cases") {
        let n = u32::try_from(case["n_items"].as_u64().expect("n")).expect("u32");
        for t in 1..=n {
            let by_j = heaviest_first(case, t);
            for (tau, k, h) in [(0.01, 1, 1.0), (0.01, 3, 0.5), (0.05, 2, 1.0)] {
                let exclude = &by_j[..k.min(by_j.len())];
                let idx = index(case, tau);
                let want: BTreeMap<u32, f64> =
                    idx.probabilities(t, h, tau, exclude).into_iter().collect();
                let mut rng = Xoshiro256PlusPlus::seed_from_u64(u64::from(t) * 31 + k as u64);
                let mut counts: BTreeMap<u32, u32> = BTreeMap::new();
                for _ in 0..DRAWS {
                    let Some((j, _)) = draw_excluding(&idx, t, h, exclude, &mut rng) else {
                        break;
                    };
                    *counts.entry(j).or_default() += 1;
                }
                if want.is_empty() {
                    assert!(counts.is_empty(), "t={t}: drew from an empty distribution");
                    continue;
                }
                for j in counts.keys() {
                    assert!(
                        want.get(j).is_some_and(|&p| p > 0.0),
                        "t={t} tau={tau}: drew {j}"
                    );
                }
                for (j, p) in &want {
                    let f = f64::from(counts.get(j).copied().unwrap_or(0)) / f64::from(DRAWS);
                    // 5 standard deviations, plus 3 draws for items whose p is
                    // so small that one stray draw (a Poisson event) is 5 sd.
                    let bound =
                        5.0 * (p * (1.0 - p) / f64::from(DRAWS)).sqrt() + 3.0 / f64::from(DRAWS);
                    assert!(
                        (f - p).abs() <= bound,
                        "t={t} tau={tau} h={h} excluded {k}, j={j}: {f} vs {p}"
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 10, "only {checked} distributions checked");
}

/// A row of `n` draws through the stage's sampler with `distinct`.
fn distinct_row<R: rand::Rng>(
    s: &Sampler,
    t: u32,
    h: f64,
    n: u32,
    exclude: &[u32],
    rng: &mut R,
) -> Vec<Drawn> {
    let prep = s.prepare(t, h);
    let mut out = Vec::new();
    s.draw_prepared(prep.as_ref(), None, t, n, true, exclude, rng, &mut out);
    out
}

#[test]
fn distinct_rows_are_successive_draws_without_replacement() {
    // Every target of every case, sharp and flat τ, with and without exclusions:
    // a distinct row holds no item twice and no excluded one; each draw's ln q is
    // exactly that of the distribution with the row's earlier draws removed; a row
    // asking for more than is left gets every allowed item once; and the first
    // two draws' pair frequencies follow p(a)·p(b | a removed).
    const ROWS: u32 = 40_000;
    let mut pairs_checked = 0;
    for case in vectors()["cases"].as_array().expect("cases") {
        let n = u32::try_from(case["n_items"].as_u64().expect("n")).expect("u32");
        for t in 1..=n {
            let by_j = heaviest_first(case, t);
            for (tau, k, h) in [(1.0, 0, 1.0), (0.05, 1, 0.5), (0.01, 0, 1.0)] {
                let exclude = &by_j[..k.min(by_j.len())];
                let idx = index(case, tau);
                let s = Sampler::Gnno {
                    index: index(case, tau),
                    tau,
                };
                let allowed = idx.probabilities(t, h, tau, exclude);
                let mut rng = Xoshiro256PlusPlus::seed_from_u64(u64::from(t) * 7 + k as u64);
                // More than is left: each allowed item once, in some order.
                let all = distinct_row(&s, t, h, n + 3, exclude, &mut rng);
                let mut got: Vec<u32> = all.iter().map(|d| d.item).collect();
                got.sort_unstable();
                let mut want: Vec<u32> = allowed.iter().map(|p| p.0).collect();
                want.sort_unstable();
                assert_eq!(got, want, "t={t} tau={tau} h={h} excluded {k}");
                // Each ln q against enumeration with the earlier draws removed.
                let mut before = exclude.to_vec();
                for d in &all {
                    let p: BTreeMap<u32, f64> =
                        idx.probabilities(t, h, tau, &before).into_iter().collect();
                    assert!(
                        (f64::from(d.log_prob) - p[&d.item].ln()).abs() < 1e-5,
                        "t={t} tau={tau} j={}: {} vs ln {}",
                        d.item,
                        d.log_prob,
                        p[&d.item]
                    );
                    before.push(d.item);
                }
                if allowed.len() < 2 {
                    continue;
                }
                // Pair frequencies of the first two draws.
                let mut counts: BTreeMap<(u32, u32), u32> = BTreeMap::new();
                for _ in 0..ROWS {
                    let row = distinct_row(&s, t, h, 2, exclude, &mut rng);
                    assert_eq!(row.len(), 2);
                    assert_ne!(row[0].item, row[1].item);
                    *counts.entry((row[0].item, row[1].item)).or_default() += 1;
                }
                let p1: BTreeMap<u32, f64> = allowed.iter().copied().collect();
                for (&a, &pa) in &p1 {
                    let mut without = exclude.to_vec();
                    without.push(a);
                    for (b, pb) in idx.probabilities(t, h, tau, &without) {
                        let p = pa * pb;
                        let f =
                            f64::from(counts.get(&(a, b)).copied().unwrap_or(0)) / f64::from(ROWS);
                        let bound =
                            5.0 * (p * (1.0 - p) / f64::from(ROWS)).sqrt() + 3.0 / f64::from(ROWS);
                        assert!(
                            (f - p).abs() <= bound,
                            "t={t} tau={tau} h={h} pair ({a}, {b}): {f} vs {p}"
                        );
                        pairs_checked += 1;
                    }
                }
            }
        }
    }
    assert!(pairs_checked > 100, "only {pairs_checked} pairs checked");
}

#[test]
fn distinct_rows_of_the_other_samplers_hold_no_repeats() {
    // Uniform over 6 items, 2 excluded besides the target: a row of 10 asks for
    // more than the 3 left, gets each once, each with ln q = −ln(items left).
    let s = Sampler::Uniform { n_items: 6 };
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
    for _ in 0..100 {
        let row = distinct_row(&s, 1, 0.0, 10, &[2, 5], &mut rng);
        let mut items: Vec<u32> = row.iter().map(|d| d.item).collect();
        let lq: Vec<f32> = row.iter().map(|d| d.log_prob).collect();
        #[expect(clippy::cast_possible_truncation, reason = "stored as f32")]
        let want: Vec<f32> = [3.0f64, 2.0, 1.0].iter().map(|m| -m.ln() as f32).collect();
        assert_eq!(lq, want);
        items.sort_unstable();
        assert_eq!(items, vec![3, 4, 6]);
    }
}

#[test]
fn distinct_rows_are_what_conditioning_afresh_for_each_draw_gives_to_the_bit() {
    // The stage updates a row's distribution in place after each draw; the
    // reference conditions afresh on the exclusions plus the row's earlier draws
    // before every draw. Same seed: the same items and the same ln q bits, for
    // sharp and flat τ, caps that leave heavy items out, and exclusions.
    let mut compared = 0;
    for case in vectors()["cases"].as_array().expect("cases") {
        let n = u32::try_from(case["n_items"].as_u64().expect("n")).expect("u32");
        for t in 1..=n {
            let by_j = heaviest_first(case, t);
            for (tau, k, h) in [
                (1.0, 0, 1.0),
                (0.05, 2, 0.5),
                (0.01, 0, 1.0),
                (0.01, 1, 0.3),
            ] {
                let exclude = &by_j[..k.min(by_j.len())];
                let idx = index(case, tau);
                let s = Sampler::Gnno {
                    index: index(case, tau),
                    tau,
                };
                for seed in 0..20 {
                    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
                    let row = distinct_row(&s, t, h, n, exclude, &mut rng);
                    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
                    let mut before = exclude.to_vec();
                    let mut fresh = Vec::new();
                    for _ in 0..n {
                        let Some((j, _, lq)) =
                            idx.condition(&idx.prepare(t, h), t, &before).draw(&mut rng)
                        else {
                            break;
                        };
                        #[expect(clippy::cast_possible_truncation, reason = "stored as f32")]
                        fresh.push((j, (lq.min(0.0) as f32).to_bits()));
                        before.push(j);
                    }
                    let got: Vec<(u32, u32)> =
                        row.iter().map(|d| (d.item, d.log_prob.to_bits())).collect();
                    assert_eq!(got, fresh, "t={t} tau={tau} h={h} excluded {k} seed {seed}");
                    // As the stage draws: the exclusions located once, at another
                    // hardness, and handed in.
                    let loc = s
                        .locate(&idx.prepare(t, 1.0 - h / 2.0), t, exclude)
                        .expect("GNNO locates");
                    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
                    let mut staged = Vec::new();
                    let prep = idx.prepare(t, h);
                    s.draw_prepared(
                        Some(&prep),
                        Some(&loc),
                        t,
                        n,
                        true,
                        exclude,
                        &mut rng,
                        &mut staged,
                    );
                    let staged: Vec<(u32, u32)> = staged
                        .iter()
                        .map(|d| (d.item, d.log_prob.to_bits()))
                        .collect();
                    assert_eq!(staged, fresh, "located: t={t} tau={tau} h={h} excluded {k}");
                    compared += got.len();
                }
            }
        }
    }
    assert!(compared > 1000, "{compared}");
}

#[test]
fn distinct_popularity_rows_carry_the_probability_given_the_earlier_draws() {
    // Counts 0, 1, 2, 3, 4 for items 0..=4 (α 1), target 1, item 2 excluded: the
    // allowed items are 3 and 4 (weights 3, 4). A distinct row of 5 gets both,
    // the first with ln(w / 7), the second with ln 1 = 0.
    let s = Sampler::Popularity(gnno_negatives::sampler::Popularity::new(
        &[0, 1, 2, 3, 4],
        1.0,
    ));
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(9);
    let mut firsts = BTreeMap::new();
    for _ in 0..2000 {
        let row = distinct_row(&s, 1, 0.0, 5, &[2], &mut rng);
        assert_eq!(row.len(), 2);
        let w = f64::from(row[0].item);
        assert!((f64::from(row[0].log_prob) - (w / 7.0).ln()).abs() < 1e-6);
        assert!(row[1].log_prob.abs() < 1e-6);
        assert_eq!(row[0].item + row[1].item, 7);
        *firsts.entry(row[0].item).or_insert(0u32) += 1;
    }
    // 4 first with p 4/7 (sd of the share 0.011 over 2000 rows).
    let share = f64::from(firsts[&4]) / 2000.0;
    assert!((share - 4.0 / 7.0).abs() < 0.05, "{share}");
}

#[test]
fn an_instances_epochs_drawn_together_are_its_epochs_drawn_one_by_one() {
    // The stage draws an instance's block of epochs with `draw_epochs`, which
    // conditions once for consecutive epochs prepared alike (the cap) and copies
    // it; each epoch's row (items and ln q, to the bit) must be what
    // `draw_prepared` gives for that epoch alone, with and without `distinct`,
    // through a ramp whose hardnesses repeat, for a history that holds some of
    // the target's heaviest neighbours.
    let case = &vectors()["cases"][0];
    let n = u32::try_from(case["n_items"].as_u64().expect("n")).expect("u32");
    let tau = 0.05;
    let s = Sampler::Gnno {
        index: index(case, tau),
        tau,
    };
    let hs = [0.0, 0.1, 0.1, 0.3, 0.5, 0.5, 0.5, 1.0];
    let (mut compared, mut shared) = (0, 0);
    for t in 1..=n {
        let by_j = heaviest_first(case, t);
        for k in [0, 1, 2, 4] {
            let exclude = by_j[..k.min(by_j.len())].to_vec();
            let preps: Vec<_> = hs.iter().map(|&h| s.prepare(t, h)).collect();
            shared += preps.windows(2).filter(|w| w[0] == w[1]).count();
            for distinct in [false, true] {
                let rng = |x: usize| gnno_negatives::instance_rng(9, x as u32, u64::from(t));
                let mut together = vec![Vec::new(); hs.len()];
                s.draw_epochs(&preps, t, 6, distinct, &exclude, rng, |x, row| {
                    together[x] = row.to_vec();
                });
                for (x, p) in preps.iter().enumerate() {
                    let mut alone = Vec::new();
                    s.draw_prepared(
                        p.as_ref(),
                        None,
                        t,
                        6,
                        distinct,
                        &exclude,
                        &mut rng(x),
                        &mut alone,
                    );
                    let key = |d: &[Drawn]| -> Vec<(u32, u32)> {
                        d.iter().map(|x| (x.item, x.log_prob.to_bits())).collect()
                    };
                    assert_eq!(
                        key(&together[x]),
                        key(&alone),
                        "t={t} k={k} epoch {x} distinct {distinct}"
                    );
                    compared += alone.len();
                }
            }
        }
    }
    assert!(compared > 1000, "{compared}");
    assert!(shared >= 12 * n as usize, "epochs prepared alike: {shared}");
}
