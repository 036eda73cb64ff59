//! `gnno audit negatives`: per-epoch statistics of the drawn negatives, read back
//! from the shards, and an SVG plot of the J quantiles by epoch.

use crate::sampler::OverlapIndex;
use crate::shard;
use gnno_core::dataset::Dataset;
use gnno_core::error::Result;
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EpochAudit {
    pub epoch: u32,
    pub hardness: Option<f64>,
    pub rows: u64,
    pub negatives: u64,
    /// Quantiles of J(target, negative): p0, p25, p50, p75, p90, p99, p100.
    pub overlap_quantiles: [f32; 7],
    pub share_overlap_positive: f64,
    /// False-negative leakage: share of negatives equal to the user's dev / test item.
    pub share_dev_item: f64,
    pub share_test_item: f64,
    pub share_in_train_history: f64,
    pub distinct_items: u64,
    /// Rows whose stored overlap differs from the graph store's J (gnno shards only;
    /// other samplers store 0 and the audit looks J up).
    pub overlap_mismatches: u64,
    /// Most frequent negatives: (raw id, count).
    pub top_negatives: Vec<(String, u64)>,
}

pub const QUANTILES: [f64; 7] = [0.0, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0];

/// Audit one epoch's shard folder. With `index`, J(target, negative) is looked up in
/// the graph store for every sampler, and gnno shards' stored J is checked against it.
pub fn audit_epoch(
    dir: &Path,
    epoch: u32,
    hardness: Option<f64>,
    ds: &Dataset,
    index: Option<&OverlapIndex>,
) -> Result<EpochAudit> {
    let mut mismatches = 0u64;
    let mut ov: Vec<f32> = Vec::new();
    let (mut rows, mut dev, mut test, mut hist) = (0u64, 0u64, 0u64, 0u64);
    let mut freq: HashMap<u32, u64> = HashMap::new();
    for path in shard::list(dir)? {
        let s = shard::read(&path)?;
        let (meta, _) = shard::read_meta(&path)?;
        let stores_j = meta
            .get(&format!("{}sampler", shard::KEY_PREFIX))
            .is_some_and(|v| v == "gnno");
        rows += s.instance.len() as u64;
        for r in 0..s.instance.len() {
            let u = s.user[r];
            if u as usize >= ds.n_users() {
                return Err(gnno_core::Error::artifact(
                    &path,
                    format!("row {r}: user {u} is not in the ingest output"),
                )
                .with_hint(
                    "the shard belongs to another data set; rerun `gnno run --from negatives`",
                ));
            }
            let seq = ds.train_seq(u);
            for k in s.offsets[r]..s.offsets[r + 1] {
                let j = s.negatives[k];
                let jv = match index {
                    Some(idx) => {
                        let looked = idx.overlap(s.target[r], j);
                        if stores_j && looked.to_bits() != s.overlap[k].to_bits() {
                            mismatches += 1;
                        }
                        looked
                    }
                    None => s.overlap[k],
                };
                ov.push(jv);
                *freq.entry(j).or_default() += 1;
                dev += u64::from(j == ds.dev[u as usize]);
                test += u64::from(j == ds.test[u as usize]);
                hist += u64::from(seq.contains(&j));
            }
        }
    }
    let n = ov.len();
    ov.sort_unstable_by(f32::total_cmp);
    let q = |p: f64| -> f32 {
        if n == 0 {
            return 0.0;
        }
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "index"
        )]
        let i = ((n - 1) as f64 * p).round() as usize;
        ov[i]
    };
    #[expect(clippy::cast_precision_loss, reason = "shares")]
    let share = |c: u64| if n == 0 { 0.0 } else { c as f64 / n as f64 };
    let mut top: Vec<(u32, u64)> = freq.iter().map(|(&j, &c)| (j, c)).collect();
    top.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    top.truncate(10);
    Ok(EpochAudit {
        epoch,
        hardness,
        rows,
        negatives: n as u64,
        overlap_quantiles: QUANTILES.map(q),
        share_overlap_positive: share(ov.iter().filter(|&&v| v > 0.0).count() as u64),
        share_dev_item: share(dev),
        share_test_item: share(test),
        share_in_train_history: share(hist),
        distinct_items: freq.len() as u64,
        overlap_mismatches: mismatches,
        top_negatives: top
            .into_iter()
            .map(|(j, c)| {
                (
                    ds.item_raw
                        .get(j as usize)
                        .cloned()
                        .unwrap_or_else(|| format!("#{j}")),
                    c,
                )
            })
            .collect(),
    })
}

/// An SVG line chart of the J quantiles (p50, p90, p99, max) by epoch.
pub fn plot_svg(audits: &[EpochAudit]) -> String {
    let (w, h, m) = (640.0, 360.0, 48.0);
    let pts: Vec<&EpochAudit> = audits.iter().filter(|a| a.negatives > 0).collect();
    let max_e = pts.iter().map(|a| a.epoch).max().unwrap_or(1).max(1);
    let min_e = pts.iter().map(|a| a.epoch).min().unwrap_or(0);
    let span = f64::from((max_e - min_e).max(1));
    let x = |e: u32| m + (f64::from(e - min_e) / span) * (w - 2.0 * m);
    let y = |v: f32| h - m - f64::from(v) * (h - 2.0 * m);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{m}\" y=\"20\">J(target, negative) quantiles by epoch</text>\n<line x1=\"{m}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{m}\" y1=\"{m}\" x2=\"{m}\" y2=\"{}\" stroke=\"black\"/>\n",
        h - m, w - m, h - m, h - m
    );
    for t in [0.0f32, 0.25, 0.5, 0.75, 1.0] {
        s += &format!("<text x=\"8\" y=\"{:.1}\">{t:.2}</text>\n", y(t) + 4.0);
    }
    s += &format!("<text x=\"{m}\" y=\"{}\">epoch {min_e}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">epoch {max_e}</text>\n", h - 16.0, w - m, h - 16.0);
    for (qi, name, color) in [
        (2usize, "p50", "#1f77b4"),
        (4, "p90", "#ff7f0e"),
        (5, "p99", "#2ca02c"),
        (6, "max", "#d62728"),
    ] {
        let path: Vec<String> = pts
            .iter()
            .map(|a| format!("{:.1},{:.1}", x(a.epoch), y(a.overlap_quantiles[qi])))
            .collect();
        s += &format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n",
            path.join(" ")
        );
        let ly = 20.0 + 14.0 * qi as f64;
        s += &format!(
            "<text x=\"{}\" y=\"{ly}\" fill=\"{color}\">{name}</text>\n",
            w - m - 30.0
        );
    }
    s += "</svg>\n";
    s
}
