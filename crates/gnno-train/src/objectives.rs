//! The training objectives (docs/CONFIG.md, `train.loss`) over a batch of scored
//! positions: every trained position has its target's score `pos [M]` and the scores
//! of its negatives `neg [M, C]`, with `mask [M, C]` marking the negatives that exist
//! (a shard row may hold fewer hard negatives than asked for).

use gnno_core::config::{BceOffset, LogQ, Loss};
use tch::{Kind, Tensor};

/// BPR averaged over every (position, negative) pair: −mean log σ(s⁺ − s⁻) (GNNO.md §5).
pub fn bpr(pos: &Tensor, neg: &Tensor, mask: &Tensor) -> Tensor {
    let m = mask.to_kind(Kind::Float);
    let per = (pos.unsqueeze(1) - neg).log_sigmoid() * &m;
    -per.sum(Kind::Float) / m.sum(Kind::Float).clamp_min(1.0)
}

/// Binary cross-entropy with the positive's log-likelihood weighted by `beta` (1 =
/// BCE; gBCE otherwise) over the logits s + `offset`: per position
/// −[β·log σ(s⁺ + b) + Σ log σ(−s⁻ − b)] / (1 + n⁻), the mean over the positive and
/// negative terms as gSASRec's BCEWithLogitsLoss takes it, then the mean over
/// positions. The offset b leaves the ranking as it is (`train.bce-offset`; 0 is
/// gSASRec's form).
pub fn bce(pos: &Tensor, neg: &Tensor, mask: &Tensor, beta: f64, offset: f64) -> Tensor {
    let m = mask.to_kind(Kind::Float);
    let negs = ((-neg - offset).log_sigmoid() * &m).sum_dim_intlist(1i64, false, Kind::Float);
    let n = m.sum_dim_intlist(1i64, false, Kind::Float) + 1.0;
    (-((pos + offset).log_sigmoid() * beta + negs) / n).mean(Kind::Float)
}

/// The logit offset of `train.bce-offset` for `negatives` negatives per position:
/// `prior` is −ln n⁻, the log prior odds that one of 1 + n⁻ candidates is the
/// positive (an untrained model's σ = 1 / (1 + n⁻) for every candidate, the prior
/// initialisation of an output bias for rare positives, Lin et al. 2017).
pub fn bce_offset(mode: BceOffset, negatives: usize) -> f64 {
    match mode {
        BceOffset::None => 0.0,
        #[expect(clippy::cast_precision_loss, reason = "counts")]
        BceOffset::Prior => -(negatives.max(1) as f64).ln(),
    }
}

/// gSASRec's β = α·(t·(1 − 1/α) + 1/α) with α = k / (N − 1) the negative sampling
/// rate (Petrov and Macdonald 2023); t = 0 gives β = 1 (BCE), t = 1 the fully
/// calibrated β = α.
pub fn gbce_beta(k: usize, n_items: u32, t: f64) -> f64 {
    #[expect(clippy::cast_precision_loss, reason = "counts")]
    let alpha = k as f64 / (f64::from(n_items) - 1.0).max(1.0);
    alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)
}

/// Cross-entropy over the target and its sampled negatives. `correction [M, C]` is
/// subtracted from the negatives' logits (the logQ correction: ln of each negative's
/// expected count in the candidate set); the target's logit is left as it is, so the
/// normaliser is an importance-sampling estimate of the full softmax's.
pub fn sampled_softmax(
    pos: &Tensor,
    neg: &Tensor,
    mask: &Tensor,
    correction: Option<&Tensor>,
) -> Tensor {
    let neg = match correction {
        Some(c) => neg - c,
        None => neg.shallow_clone(),
    };
    let neg = neg.masked_fill(&mask.logical_not(), f64::NEG_INFINITY);
    let logits = Tensor::cat(&[pos.unsqueeze(1), neg], 1);
    (logits.logsumexp([1i64].as_slice(), false) - pos).mean(Kind::Float)
}

/// [`sampled_softmax`] over candidates given in parts, without building its
/// graph: each part is its scores `[M, k]` and an additive bias (minus the logQ
/// correction, −∞ where a candidate does not exist), so the parts need no
/// concatenation, mask or correction in the graph. The log-softmax over
/// `[target | parts]` and its gradient with respect to those logits (softmax −
/// one-hot of the target, over M) are computed without autograd; the result is a
/// surrogate, Σ logit · gradient, whose value is replaced by the loss, so its
/// gradient reaches `pos` and each part's scores as the loss's own would. One
/// log-softmax, its exp and a dot product per part, where the graph
/// (concatenations, subtraction, masked fill, log-sum-exp and each one's backward)
/// passed over the `[M, C]` scores about twice as often. The biased logits are
/// written straight into one `[M, 1 + C]` buffer, not summed per part and then
/// concatenated; each part's Σ logit · gradient is a dot product with a contiguous
/// copy of its gradient columns, whose backward is those columns times 1, as an
/// elementwise product's and sum's was.
pub fn sampled_softmax_parts(pos: &Tensor, parts: &[(Tensor, Tensor)]) -> Tensor {
    let rows = pos.size()[0];
    #[expect(clippy::cast_precision_loss, reason = "a count of positions")]
    let m = rows.max(1) as f64;
    // Each part's columns (first, count) in the logits; the target's is column 0.
    let mut spans = Vec::with_capacity(parts.len());
    let mut width = 1;
    for (s, _) in parts {
        // An out= view of the wrong shape would be resized with a warning, not
        // refused as a concatenation refuses it.
        assert_eq!(s.size()[0], rows, "a part's rows are the positions'");
        let k = s.size()[1];
        spans.push((width, k));
        width += k;
    }
    let (loss, grad) = tch::no_grad(|| {
        let logits = Tensor::empty([rows, width], (pos.kind(), pos.device()));
        logits.narrow(1, 0, 1).copy_(&pos.detach().unsqueeze(1));
        for ((s, b), &(at, k)) in parts.iter().zip(&spans) {
            let _ = s.detach().add_out(&logits.narrow(1, at, k), b);
        }
        let lsm = logits.log_softmax(1, Kind::Float);
        let loss = -lsm.select(1, 0).mean(Kind::Float);
        let mut grad = lsm.exp();
        let _ = grad.g_div_scalar_(m);
        let _ = grad.select(1, 0).g_sub_scalar_(1.0 / m);
        (loss, grad)
    });
    let dot = |x: &Tensor, g: Tensor| x.reshape([-1]).dot(&g.contiguous().view([-1]));
    let terms: Vec<Tensor> = std::iter::once(dot(pos, grad.select(1, 0)))
        .chain(
            parts
                .iter()
                .zip(&spans)
                .map(|((s, _), &(at, k))| dot(s, grad.narrow(1, at, k))),
        )
        .collect();
    let surrogate = Tensor::stack(&terms, 0).sum(Kind::Float);
    &surrogate - surrogate.detach() + loss
}

/// Cross-entropy over every item: representations `rep [M, D]` scored against the
/// item rows 1..=N of `table [N + 2, D]` (rows 0 and N + 1, padding and the mask
/// token, are never candidates, so they are not scored at all), `targets [M]` in
/// 1..=N. One fused log-softmax and its gather, as `F.cross_entropy` computes it,
/// where a masked copy and a log-sum-exp written out (max, subtract, exp, sum) each
/// passed over the `[M, N]` logits, the step's largest tensor (timed in
/// docs/RESULTS.md, "Stage performance").
pub fn full_softmax(rep: &Tensor, table: &Tensor, targets: &Tensor) -> Tensor {
    let n = table.size()[0] - 2;
    rep.matmul(&table.narrow(0, 1, n).transpose(0, 1))
        .cross_entropy_for_logits(&(targets - 1))
}

/// The logQ correction of the sampled softmax for `k_random` random and `k_hard`
/// hard negatives per position, given ln q of each draw under the distribution that
/// drew it (`log_q [M, k_random + k_hard]`, random columns first).
///
/// The candidate set mixes two proposals; each negative's correction is ln of its
/// expected count under the proposal that drew it: ln(K·q) where K is the number of
/// draws the correction counts (`random`: only the random draws are corrected, with
/// K = k_random, and hard negatives keep their raw logits; `all`: both, with K =
/// k_random + k_hard, which averages the two importance-sampling estimates of the
/// normaliser with weights proportional to their draw counts; `stratified`: as
/// `random`, the masks of the sampled softmax doing the rest, see `trainer`).
pub fn logq_correction(mode: LogQ, log_q: &Tensor, k_random: i64, k_hard: i64) -> Option<Tensor> {
    if mode == LogQ::Off {
        return None;
    }
    let part = |at: i64, n: i64, hard: bool| {
        let lq = log_q.narrow(1, at, n);
        match logq_shift(mode, k_random, k_hard, hard) {
            Some(c) => lq + c,
            None => lq.zeros_like(),
        }
    };
    Some(Tensor::cat(
        &[part(0, k_random, false), part(k_random, k_hard, true)],
        1,
    ))
}

/// ln K, the draw count the correction of a part's columns counts (the random
/// or the hard ones, [`logq_correction`]); None where that part is not corrected.
fn logq_shift(mode: LogQ, k_random: i64, k_hard: i64, hard: bool) -> Option<f64> {
    #[expect(clippy::cast_precision_loss, reason = "counts")]
    match (mode, hard) {
        (LogQ::Off, _) | (LogQ::Random | LogQ::Stratified, true) => None,
        (LogQ::Random | LogQ::Stratified, false) => Some((k_random as f64).ln()),
        (LogQ::All, _) => Some(((k_random + k_hard) as f64).ln()),
    }
}

/// A part's additive bias for [`sampled_softmax_parts`]: minus its logQ
/// correction (as [`logq_correction`] gives it for those columns), plus ln of the
/// negatives' weight (`negative-weight`, 1 = none), −∞ where a candidate does not
/// exist (`mask` false).
pub fn part_bias(
    mode: LogQ,
    log_q: &Tensor,
    mask: &Tensor,
    ks: (i64, i64),
    hard: bool,
    weight: f64,
) -> Tensor {
    masked_bias(&part_offset(mode, log_q, ks, hard, weight), mask)
}

/// `bias` where a candidate exists (`mask` true), −∞ where it does not.
pub fn masked_bias(bias: &Tensor, mask: &Tensor) -> Tensor {
    bias.masked_fill(&mask.logical_not(), f64::NEG_INFINITY)
}

/// [`part_bias`] before its mask: elementwise in `log_q`, so it may be taken
/// on the draws (`[G, K]`) before they are spread to the positions (`[M, K]`).
pub fn part_offset(
    mode: LogQ,
    log_q: &Tensor,
    (k_random, k_hard): (i64, i64),
    hard: bool,
    weight: f64,
) -> Tensor {
    // ln w = 0 at the default: no pass over the scores for it.
    let shift = logq_shift(mode, k_random, k_hard, hard);
    let lw = weight.ln();
    match (shift, lw == 0.0) {
        (Some(c), true) => -(log_q + c),
        (Some(c), false) => -(log_q + (c - lw)),
        (None, true) => log_q.zeros_like(),
        (None, false) => log_q.full_like(lw),
    }
}

/// The loss of `kind` over sampled candidates (all but the full softmax); `gbce_beta`
/// and `bce_offset` are used by BCE and gBCE only.
pub fn sampled(
    kind: Loss,
    pos: &Tensor,
    neg: &Tensor,
    mask: &Tensor,
    correction: Option<&Tensor>,
    gbce_beta: f64,
    bce_offset: f64,
) -> Tensor {
    match kind {
        Loss::Bpr => bpr(pos, neg, mask),
        Loss::Bce => bce(pos, neg, mask, 1.0, bce_offset),
        Loss::Gbce => bce(pos, neg, mask, gbce_beta, bce_offset),
        Loss::SampledSoftmax | Loss::FullSoftmax => sampled_softmax(pos, neg, mask, correction),
    }
}

/// Supervised contrastive loss over two views: rows with the same target are
/// positives (ContraRec's context-context term).
///
/// Only the log-sum-exp needs the full `[2B, 2B]` similarity matrix; the positive
/// part uses per-target sums of the features, Σ_{j∈P(i)} f_i·f_j = f_i·(S_{y_i} − f_i),
/// so no `[2B, 2B]` mask or product is ever built.
pub fn supcon(z1: &Tensor, z2: &Tensor, targets: &Tensor, temperature: f64) -> Tensor {
    let f = Tensor::cat(&[z1, z2], 0);
    let f = &f
        / f.norm_scalaropt_dim(2, [1i64].as_slice(), true)
            .clamp_min(1e-12);
    let n = f.size()[0];
    let dev = f.device();
    let mut sim = f.matmul(&f.transpose(0, 1)) / temperature;
    let eye = Tensor::eye(n, (Kind::Bool, dev));
    let _ = sim.masked_fill_(&eye, -1e9);
    let lse = sim.logsumexp([1i64].as_slice(), false);
    let labels = Tensor::cat(&[targets, targets], 0);
    // Dense ids of the targets in this batch, per-target feature sums and counts.
    let (uniq, inverse, counts) = labels.unique_dim(0, false, true, true);
    let _ = uniq;
    let d = f.size()[1];
    let sums = Tensor::zeros([counts.size()[0], d], (f.kind(), dev)).index_add(0, &inverse, &f);
    let pos_dot =
        ((sums.index_select(0, &inverse) - &f) * &f).sum_dim_intlist(1i64, false, Kind::Float)
            / temperature;
    let n_pos = (counts.index_select(0, &inverse) - 1).to_kind(Kind::Float);
    // mean over positives of (sim_ij − lse_i) = pos_dot_i / n_pos_i − lse_i.
    let per = -(pos_dot / &n_pos - lse);
    per.mean(Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32], shape: &[i64]) -> Tensor {
        Tensor::from_slice(v).view(shape)
    }
    fn val(x: &Tensor) -> f64 {
        x.double_value(&[])
    }
    fn sig(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }
    const TOL: f64 = 1e-5;

    // Two positions; the second has only one of its two negatives.
    fn case() -> (Tensor, Tensor, Tensor) {
        let pos = t(&[2.0, 0.5], &[2]);
        let neg = t(&[1.0, -1.0, 0.0, 3.0], &[2, 2]);
        let mask = Tensor::from_slice(&[true, true, true, false]).view([2, 2]);
        (pos, neg, mask)
    }

    #[test]
    fn part_biases_are_minus_the_correction_of_their_columns() {
        // Two positions, 3 random and 2 hard columns, the second hard one missing.
        let lq = t(
            &[
                -1.0, -2.0, -3.0, -0.5, -0.25, -1.5, -2.5, -3.5, -0.75, -0.125,
            ],
            &[2, 5],
        );
        let mask =
            Tensor::from_slice(&[true, true, true, true, false, true, true, true, true, false])
                .view([2, 5]);
        for mode in [LogQ::Off, LogQ::Random, LogQ::All] {
            let whole = logq_correction(mode, &lq, 3, 2).unwrap_or_else(|| lq.zeros_like());
            for (at, n, hard) in [(0, 3, false), (3, 2, true)] {
                let b = part_bias(
                    mode,
                    &lq.narrow(1, at, n),
                    &mask.narrow(1, at, n),
                    (3, 2),
                    hard,
                    1.0,
                );
                let want = (-whole.narrow(1, at, n))
                    .masked_fill(&mask.narrow(1, at, n).logical_not(), f64::NEG_INFINITY);
                assert_eq!(b.size(), vec![2, n]);
                for i in 0..2 {
                    for j in 0..n {
                        assert_eq!(
                            b.double_value(&[i, j]),
                            want.double_value(&[i, j]),
                            "{mode:?}"
                        );
                    }
                }
            }
        }
        // The hard columns are corrected under `all` only, by ln 5.
        let b = part_bias(
            LogQ::All,
            &lq.narrow(1, 3, 2),
            &mask.narrow(1, 3, 2),
            (3, 2),
            true,
            1.0,
        );
        assert!((b.double_value(&[0, 0]) - (0.5 - 5f64.ln())).abs() < 1e-6);
        let b = part_bias(
            LogQ::Random,
            &lq.narrow(1, 3, 2),
            &mask.narrow(1, 3, 2),
            (3, 2),
            true,
            1.0,
        );
        assert_eq!(b.double_value(&[0, 0]), 0.0);
        assert_eq!(b.double_value(&[0, 1]), f64::NEG_INFINITY);
    }

    #[test]
    fn negative_weight_scales_every_negative_in_the_normaliser() {
        // One position, target score 1, negatives 0 and 2 (the second missing
        // in one case), logQ off, weight 4: loss = ln(e^1 + 4(e^0 + e^2)) − 1, by
        // hand; with logQ `all` over 1 + 1 draws of ln q = −3 and −1, each weighted
        // term is also divided by K·q: 4(e^0/(2e^-3) + e^2/(2e^-1)).
        let pos = t(&[1.0], &[1]);
        let (r, h) = (t(&[0.0], &[1, 1]), t(&[2.0], &[1, 1]));
        let (rq, hq) = (t(&[-3.0], &[1, 1]), t(&[-1.0], &[1, 1]));
        let yes = Tensor::from_slice(&[true]).view([1, 1]);
        let no = Tensor::from_slice(&[false]).view([1, 1]);
        let loss = |mode: LogQ, w: f64, hard_mask: &Tensor| {
            let parts = [
                (
                    r.shallow_clone(),
                    part_bias(mode, &rq, &yes, (1, 1), false, w),
                ),
                (
                    h.shallow_clone(),
                    part_bias(mode, &hq, hard_mask, (1, 1), true, w),
                ),
            ];
            val(&sampled_softmax_parts(&pos, &parts))
        };
        let e = f64::exp;
        let want = (e(1.0) + 4.0 * (e(0.0) + e(2.0))).ln() - 1.0;
        assert!((loss(LogQ::Off, 4.0, &yes) - want).abs() < TOL);
        let want = (e(1.0) + 4.0 * e(0.0)).ln() - 1.0;
        assert!((loss(LogQ::Off, 4.0, &no) - want).abs() < TOL);
        let want =
            (e(1.0) + 4.0 * (e(0.0) / (2.0 * e(-3.0)) + e(2.0) / (2.0 * e(-1.0)))).ln() - 1.0;
        assert!((loss(LogQ::All, 4.0, &yes) - want).abs() < TOL);
        // Weight 1 is the plain sampled softmax.
        let want = (e(1.0) + e(0.0) + e(2.0)).ln() - 1.0;
        assert!((loss(LogQ::Off, 1.0, &yes) - want).abs() < TOL);
    }

    #[test]
    fn sampled_softmax_in_parts_equals_the_graph_in_value_and_gradient() {
        // Three positions, 3 + 2 candidates in two parts, some missing, with a
        // logQ correction: the surrogate's value and its gradients with respect
        // to the target scores and both parts are the graph form's.
        let pos0 = t(&[2.0, 0.5, -1.0], &[3]);
        let r0 = t(&[1.0, -1.0, 0.3, 0.0, 3.0, 2.5, -0.5, 0.2, 4.0], &[3, 3]);
        let h0 = t(&[0.7, 1.5, -2.0, 0.1, 1.0, 9.0], &[3, 2]);
        let rm = Tensor::from_slice(&[true, true, true, true, false, true, true, true, true])
            .view([3, 3]);
        let hm = Tensor::from_slice(&[true, false, true, true, true, false]).view([3, 2]);
        let corr = t(
            &[
                -0.5, 0.2, 0.1, -0.3, 0.4, 0.0, 0.9, -1.0, 0.25, 0.6, -0.2, 0.3, 0.1, -0.4, 0.5,
            ],
            &[3, 5],
        );
        let leaf = |x: &Tensor| x.copy().set_requires_grad(true);
        let grads = |f: &dyn Fn(&Tensor, &Tensor, &Tensor) -> Tensor| {
            let (p, r, h) = (leaf(&pos0), leaf(&r0), leaf(&h0));
            let loss = f(&p, &r, &h);
            loss.backward();
            (val(&loss), p.grad(), r.grad(), h.grad())
        };
        let graph = grads(&|p, r, h| {
            sampled_softmax(
                p,
                &Tensor::cat(&[r, h], 1),
                &Tensor::cat(&[&rm, &hm], 1),
                Some(&corr),
            )
        });
        let parts = grads(&|p, r, h| {
            let bias =
                |c: Tensor, m: &Tensor| (-c).masked_fill(&m.logical_not(), f64::NEG_INFINITY);
            sampled_softmax_parts(
                p,
                &[
                    (r.shallow_clone(), bias(corr.narrow(1, 0, 3), &rm)),
                    (h.shallow_clone(), bias(corr.narrow(1, 3, 2), &hm)),
                ],
            )
        });
        assert!(
            (graph.0 - parts.0).abs() < TOL,
            "{} vs {}",
            graph.0,
            parts.0
        );
        for (a, b) in [
            (&graph.1, &parts.1),
            (&graph.2, &parts.2),
            (&graph.3, &parts.3),
        ] {
            assert_eq!(a.size(), b.size());
            let diff = (a - b).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "gradient off by {diff}");
        }
        // Missing candidates get no gradient; present ones do.
        assert_eq!(parts.2.double_value(&[1, 1]), 0.0);
        assert_eq!(parts.3.double_value(&[2, 1]), 0.0);
        assert!(parts.3.double_value(&[2, 0]) > 0.0);
        assert!(
            parts.1.double_value(&[0]) < 0.0,
            "the target's score is pushed up"
        );
    }

    #[test]
    fn bpr_matches_a_hand_computed_case() {
        let (pos, neg, mask) = case();
        let want = -(sig(1.0).ln() + sig(3.0).ln() + sig(0.5).ln()) / 3.0;
        assert!((val(&bpr(&pos, &neg, &mask)) - want).abs() < TOL);
    }

    #[test]
    fn bce_and_gbce_match_hand_computed_cases() {
        let (pos, neg, mask) = case();
        let row1 = |b: f64| -(b * sig(2.0).ln() + sig(-1.0).ln() + sig(1.0).ln()) / 3.0;
        let row2 = |b: f64| -(b * sig(0.5).ln() + sig(0.0).ln()) / 2.0;
        let want = (row1(1.0) + row2(1.0)) / 2.0;
        assert!((val(&bce(&pos, &neg, &mask, 1.0, 0.0)) - want).abs() < TOL);
        let want = (row1(0.3) + row2(0.3)) / 2.0;
        assert!((val(&bce(&pos, &neg, &mask, 0.3, 0.0)) - want).abs() < TOL);
        // Every logit shifted by b = −ln 2.
        let b = -(2.0f64).ln();
        let row1 = -(0.3 * sig(2.0 + b).ln() + sig(-1.0 - b).ln() + sig(1.0 - b).ln()) / 3.0;
        let row2 = -(0.3 * sig(0.5 + b).ln() + sig(0.0 - b).ln()) / 2.0;
        let got = val(&bce(&pos, &neg, &mask, 0.3, b));
        assert!((got - (row1 + row2) / 2.0).abs() < TOL, "{got}");
        // `sampled` passes β and the offset through in that order.
        let via = val(&sampled(Loss::Gbce, &pos, &neg, &mask, None, 0.3, b));
        assert!((via - got).abs() < 1e-9, "{via} against {got}");
    }

    #[test]
    fn the_prior_offset_gives_every_candidate_the_prior() {
        assert_eq!(bce_offset(BceOffset::None, 256), 0.0);
        for k in [1usize, 16, 256, 265] {
            let b = bce_offset(BceOffset::Prior, k);
            #[expect(clippy::cast_precision_loss, reason = "small counts")]
            let prior = 1.0 / (1.0 + k as f64);
            assert!((sig(b) - prior).abs() < 1e-12, "k = {k}: σ(b) = {}", sig(b));
        }
    }

    #[test]
    fn gbce_beta_follows_gsasrec() {
        // k = 256 negatives of N = 12,101 items, t = 0.75 (gSASRec's setting).
        let alpha = 256.0 / 12_100.0;
        let want = alpha * (0.75 * (1.0 - 1.0 / alpha) + 1.0 / alpha);
        assert!((gbce_beta(256, 12_101, 0.75) - want).abs() < 1e-12);
        assert!(
            (gbce_beta(256, 12_101, 0.0) - 1.0).abs() < 1e-12,
            "t = 0 is BCE"
        );
        assert!(
            (gbce_beta(256, 12_101, 1.0) - alpha).abs() < 1e-12,
            "t = 1: beta = alpha"
        );
    }

    #[test]
    fn sampled_softmax_with_and_without_logq() {
        let (pos, neg, mask) = case();
        let ce = |p: f64, ns: &[f64]| {
            let z: f64 = ns.iter().map(|x| x.exp()).sum::<f64>() + p.exp();
            z.ln() - p
        };
        let want = (ce(2.0, &[1.0, -1.0]) + ce(0.5, &[0.0])) / 2.0;
        assert!((val(&sampled_softmax(&pos, &neg, &mask, None)) - want).abs() < TOL);
        // One random and one hard negative per position: q_random = 0.1 for every
        // draw, q_hard = 0.5 and 0.25 (the second row's hard slot is empty).
        let lq = t(
            &[0.1f32.ln(), 0.5f32.ln(), 0.1f32.ln(), 0.25f32.ln()],
            &[2, 2],
        );
        // `all`: subtract ln(2·q) from every negative.
        let c = logq_correction(LogQ::All, &lq, 1, 1).expect("correction");
        let want =
            (ce(2.0, &[1.0 - (0.2f64).ln(), -1.0 - 1f64.ln()]) + ce(0.5, &[-(0.2f64).ln()])) / 2.0;
        assert!((val(&sampled_softmax(&pos, &neg, &mask, Some(&c))) - want).abs() < TOL);
        // `random`: ln(1·q) on the random column only.
        let c = logq_correction(LogQ::Random, &lq, 1, 1).expect("correction");
        let want = (ce(2.0, &[1.0 - (0.1f64).ln(), -1.0]) + ce(0.5, &[-(0.1f64).ln()])) / 2.0;
        assert!((val(&sampled_softmax(&pos, &neg, &mask, Some(&c))) - want).abs() < TOL);
        assert!(logq_correction(LogQ::Off, &lq, 1, 1).is_none());
    }

    #[test]
    fn sampled_softmax_with_logq_estimates_the_full_softmax() {
        // With every item drawn exactly by its expected count under a uniform q, the
        // corrected normaliser is the full one: 3 negatives, q = 1/3, K = 3.
        let pos = t(&[1.0], &[1]);
        let neg = t(&[0.5, -0.2, 2.0], &[1, 3]);
        let mask = Tensor::from_slice(&[true, true, true]).view([1, 3]);
        let lq = t(&[(1.0f32 / 3.0).ln(); 3], &[1, 3]);
        let c = logq_correction(LogQ::All, &lq, 3, 0).expect("correction");
        let full = sampled_softmax(&pos, &neg, &mask, None);
        assert!((val(&sampled_softmax(&pos, &neg, &mask, Some(&c))) - val(&full)).abs() < TOL);
    }

    #[test]
    fn full_softmax_ignores_padding_and_mask_token() {
        // 3 items, 1-d: rep 1 and rows 9 (padding), 1, 2, 0, 9 (mask token) give
        // logits 9, 1, 2, 0, 9; the two 9s must not count. Two positions, targets
        // items 2 and 3.
        let rep = t(&[1.0, 2.0], &[2, 1]);
        let table = t(&[9.0, 1.0, 2.0, 0.0, 9.0], &[5, 1]);
        let targets = Tensor::from_slice(&[2i64, 3]);
        let ce = |r: f64, target: f64| {
            let z: f64 = [1.0f64, 2.0, 0.0].iter().map(|x| (r * x).exp()).sum();
            z.ln() - r * target
        };
        let want = (ce(1.0, 2.0) + ce(2.0, 0.0)) / 2.0;
        assert!((val(&full_softmax(&rep, &table, &targets)) - want).abs() < TOL);
    }

    #[test]
    fn supcon_matches_the_mask_form_by_hand() {
        // Four features (two views of two rows), normalised: (0.6, 0.8), (1, 0),
        // (0, 1), (1, 1)/√2. The mask form: for each i, the mean over positives
        // j ≠ i (same target) of s_ij/τ − ln Σ_{k≠i} exp(s_ik/τ), negated and
        // averaged over i.
        let z1 = t(&[3.0, 4.0, 1.0, 0.0], &[2, 2]);
        let z2 = t(&[0.0, 2.0, 1.0, 1.0], &[2, 2]);
        let r = 0.5f64.sqrt();
        let f = [[0.6, 0.8], [1.0, 0.0], [0.0, 1.0], [r, r]];
        let tau = 0.5;
        let by_hand = |labels: [i64; 4]| {
            let s = |i: usize, j: usize| (f[i][0] * f[j][0] + f[i][1] * f[j][1]) / tau;
            let mut total = 0.0;
            for i in 0..4 {
                let lse = (0..4)
                    .filter(|&k| k != i)
                    .map(|k| s(i, k).exp())
                    .sum::<f64>()
                    .ln();
                let pos: Vec<f64> = (0..4)
                    .filter(|&j| j != i && labels[j] == labels[i])
                    .map(|j| s(i, j) - lse)
                    .collect();
                #[expect(clippy::cast_precision_loss, reason = "small")]
                let mean = pos.iter().sum::<f64>() / pos.len() as f64;
                total -= mean;
            }
            total / 4.0
        };
        // Two targets: each feature's one positive is its other view.
        let two = supcon(&z1, &z2, &Tensor::from_slice(&[5i64, 6]), tau);
        assert!(
            (val(&two) - by_hand([5, 6, 5, 6])).abs() < TOL,
            "{}",
            val(&two)
        );
        // One target: every other feature is a positive.
        let one = supcon(&z1, &z2, &Tensor::from_slice(&[5i64, 5]), tau);
        assert!(
            (val(&one) - by_hand([5, 5, 5, 5])).abs() < TOL,
            "{}",
            val(&one)
        );
        assert!((val(&one) - val(&two)).abs() > 1e-3);
    }
}
