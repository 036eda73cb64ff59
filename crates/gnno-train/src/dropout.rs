//! Dropout whose masks, on the CPU, come from a seeded Xoshiro256++ stream rather
//! than libtorch's generator. libtorch draws a CPU Bernoulli mask one element at a
//! time (a 64-bit Mersenne-twister draw and a double comparison each), which at
//! SASRec's dropout 0.6 cost about a quarter of a sampled-softmax step on Beauty
//! (RESULTS.md, "dropout"); here one 64-bit draw gives two elements their keep bit
//! by 32-bit thresholds (keep probability exact to 2⁻³²). The same expectation
//! and the same gradient (the mask, scaled by 1 / (1 − p), multiplies the input);
//! on other devices libtorch's own dropout runs, seeded by `tch::manual_seed`.
//!
//! The trainer reseeds the stream with the epoch's seed next to libtorch's, so a
//! resumed run draws the masks an uninterrupted one draws; one stream, consumed in
//! the model's op order on one thread, so the masks do not depend on the thread
//! count.

use std::sync::Mutex;

use rand::rngs::Xoshiro256PlusPlus;
use rand::{Rng, SeedableRng};
use tch::{Device, Kind, Tensor};

#[derive(Debug)]
pub struct Dropout {
    /// The probability of dropping an element.
    p: f64,
    stream: Mutex<Xoshiro256PlusPlus>,
}

impl Dropout {
    pub fn new(p: f64) -> Self {
        Self {
            p,
            stream: Mutex::new(Xoshiro256PlusPlus::seed_from_u64(0)),
        }
    }

    /// Restarts the mask stream (the trainer: once per epoch).
    pub fn reseed(&self, seed: u64) {
        if let Ok(mut s) = self.stream.lock() {
            *s = Xoshiro256PlusPlus::seed_from_u64(seed);
        }
    }

    /// `x` with each element zeroed with probability p and the rest scaled by
    /// 1 / (1 − p) when training; `x` itself otherwise.
    pub fn apply(&self, x: Tensor, train: bool) -> Tensor {
        if !train || self.p <= 0.0 {
            return x;
        }
        if x.device() != Device::Cpu || x.kind() != Kind::Float || self.p >= 1.0 {
            return x.dropout(self.p, train);
        }
        let keep = 1.0 - self.p;
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "keep ∈ (0, 1): a threshold below 2^32"
        )]
        let threshold = (keep * 4_294_967_296.0).round().min(4_294_967_295.0) as u32;
        #[expect(clippy::cast_possible_truncation, reason = "an f32 scale")]
        let scale = (1.0 / keep) as f32;
        let n = x.numel();
        let mut mask = vec![0f32; n];
        {
            let Ok(mut s) = self.stream.lock() else {
                return x.dropout(self.p, train);
            };
            let bit = |r: u32| if r < threshold { scale } else { 0.0 };
            let mut pairs = mask.chunks_exact_mut(2);
            for pair in &mut pairs {
                let r = s.next_u64();
                #[expect(clippy::cast_possible_truncation, reason = "the low half")]
                let lo = r as u32;
                pair[0] = bit(lo);
                pair[1] = bit((r >> 32) as u32);
            }
            if let [last] = pairs.into_remainder() {
                #[expect(clippy::cast_possible_truncation, reason = "the low half")]
                let lo = s.next_u64() as u32;
                *last = bit(lo);
            }
        }
        let mask = Tensor::from_slice(&mask).view(x.size().as_slice());
        x * mask
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t.reshape([-1])).unwrap_or_default()
    }

    #[test]
    fn masks_keep_the_share_and_scale_and_repeat_by_seed() {
        let d = Dropout::new(0.6);
        d.reseed(7);
        let n = 200_001; // odd: the last element from a draw of its own
        let y = values(&d.apply(Tensor::ones([n], (Kind::Float, Device::Cpu)), true));
        assert_eq!(y.len(), 200_001);
        let scale = (1.0 / 0.4f64) as f32;
        assert!(
            y.iter().all(|&v| v == 0.0 || v == scale),
            "0 or 1 / (1 − p)"
        );
        let kept = y.iter().filter(|&&v| v > 0.0).count();
        // Binomial(n, 0.4): sd ≈ 219; 5 sd either side.
        #[expect(clippy::cast_precision_loss, reason = "a count")]
        let share = kept as f64 / n as f64;
        assert!(
            (share - 0.4).abs() < 5.0 * (0.24f64 / 200_001.0).sqrt(),
            "{share}"
        );
        // The same seed, the same mask; the stream moves on between calls.
        d.reseed(7);
        let again = values(&d.apply(Tensor::ones([n], (Kind::Float, Device::Cpu)), true));
        assert_eq!(again, y);
        let next = values(&d.apply(Tensor::ones([n], (Kind::Float, Device::Cpu)), true));
        assert_ne!(next, y);
        // Not training, or p = 0: the input itself.
        let x = Tensor::from_slice(&[1.5f32, -2.0, 3.0]);
        assert_eq!(
            values(&d.apply(x.shallow_clone(), false)),
            vec![1.5, -2.0, 3.0]
        );
        let none = Dropout::new(0.0);
        assert_eq!(values(&none.apply(x, true)), vec![1.5, -2.0, 3.0]);
    }

    #[test]
    fn the_gradient_is_the_mask() {
        let d = Dropout::new(0.5);
        d.reseed(3);
        let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
            .view([2, 4])
            .set_requires_grad(true);
        let y = d.apply(x.shallow_clone(), true);
        assert_eq!(y.size(), vec![2, 4]);
        y.sum(Kind::Float).backward();
        let g = values(&x.grad());
        let ys = values(&y.detach());
        let xs = values(&x.detach());
        for ((&g, &y), &x) in g.iter().zip(&ys).zip(&xs) {
            assert!(g == 0.0 || g == 2.0, "{g}");
            assert_eq!(y, g * x);
        }
        assert!(g.contains(&0.0) && g.contains(&2.0), "{g:?}");
    }
}
