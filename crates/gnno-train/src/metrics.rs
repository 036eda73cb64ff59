//! Ranking metrics (GNNO.md §6): HR@K and NDCG@K from 1-based ranks.

use std::collections::BTreeMap;

/// Accumulates HR@K and NDCG@K over users.
#[derive(Debug, Clone)]
pub struct RankMetrics {
    ks: Vec<u32>,
    hr: Vec<f64>,
    ndcg: Vec<f64>,
    pub users: u64,
}

impl RankMetrics {
    pub fn new(ks: &[u32]) -> Self {
        Self {
            ks: ks.to_vec(),
            hr: vec![0.0; ks.len()],
            ndcg: vec![0.0; ks.len()],
            users: 0,
        }
    }

    /// Add one user's rank of the target (1 = best).
    pub fn add(&mut self, rank: u64) {
        self.users += 1;
        for (k, &cut) in self.ks.iter().enumerate() {
            if rank <= u64::from(cut) {
                self.hr[k] += 1.0;
                #[expect(clippy::cast_precision_loss, reason = "ranks are small")]
                let r = rank as f64;
                self.ndcg[k] += 1.0 / (r + 1.0).log2();
            }
        }
    }

    /// Means, keyed `HR@K` / `NDCG@K`.
    pub fn finish(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        #[expect(clippy::cast_precision_loss, reason = "user counts")]
        let n = self.users.max(1) as f64;
        for (k, &cut) in self.ks.iter().enumerate() {
            out.insert(format!("HR@{cut}"), self.hr[k] / n);
            out.insert(format!("NDCG@{cut}"), self.ndcg[k] / n);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hr_and_ndcg_follow_the_definitions() {
        let mut m = RankMetrics::new(&[1, 5]);
        m.add(1);
        m.add(3);
        m.add(10);
        let r = m.finish();
        assert!((r["HR@1"] - 1.0 / 3.0).abs() < 1e-12);
        assert!((r["HR@5"] - 2.0 / 3.0).abs() < 1e-12);
        let ndcg5 = (1.0 + 1.0 / 4f64.log2()) / 3.0;
        assert!((r["NDCG@5"] - ndcg5).abs() < 1e-12);
        assert!((r["NDCG@1"] - 1.0 / 3.0).abs() < 1e-12);
    }
}
