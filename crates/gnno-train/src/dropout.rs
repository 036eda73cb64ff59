//! Dropout whose masks, on the CPU, come from seeded xoshiro256++ streams of the
//! model's own rather than libtorch's generator. libtorch draws a CPU Bernoulli
//! mask one element at a time (a 64-bit Mersenne-twister draw and a double
//! comparison each), which at SASRec's dropout 0.6 cost about a quarter of a
//! sampled-softmax step on Beauty (RESULTS.md, "dropout"). Here four xoshiro256++
//! generators step together, their state laid out word by word so the update is
//! one vector operation per word; a step gives four 64-bit draws, and each 32-bit
//! half gives one element its keep bit by a threshold (keep probability exact to
//! 2⁻³²): eight elements per step. The same expectation and the same gradient (the
//! mask, scaled by 1 / (1 − p), multiplies the input); on other devices libtorch's
//! own dropout runs, seeded by `tch::manual_seed`.
//!
//! The trainer reseeds the streams with the epoch's seed next to libtorch's, so a
//! resumed run draws the masks an uninterrupted one draws; one set of streams,
//! consumed in the model's op order on one thread, so the masks do not depend on
//! the thread count.

use std::sync::Mutex;

use tch::{Device, Kind, Tensor};

/// Four xoshiro256++ generators (Blackman and Vigna), state word-major
/// (`s[word][lane]`) so each step's arithmetic is four lanes wide.
#[derive(Debug)]
struct Lanes {
    s: [[u64; 4]; 4],
}

impl Lanes {
    /// The 16 state words from SplitMix64 over `seed`, as xoshiro's authors seed it.
    fn seeded(seed: u64) -> Self {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        let mut s = [[0u64; 4]; 4];
        for lane in 0..4 {
            for word in &mut s {
                word[lane] = next();
            }
        }
        Self { s }
    }

    /// One draw from each lane.
    #[inline]
    fn next(&mut self) -> [u64; 4] {
        let [s0, s1, s2, s3] = &mut self.s;
        let mut out = [0u64; 4];
        for l in 0..4 {
            out[l] = s0[l]
                .wrapping_add(s3[l])
                .rotate_left(23)
                .wrapping_add(s0[l]);
            let t = s1[l] << 17;
            s2[l] ^= s0[l];
            s3[l] ^= s1[l];
            s1[l] ^= s2[l];
            s0[l] ^= s3[l];
            s2[l] ^= t;
            s3[l] = s3[l].rotate_left(45);
        }
        out
    }
}

#[derive(Debug)]
pub struct Dropout {
    /// The probability of dropping an element.
    p: f64,
    stream: Mutex<Lanes>,
}

impl Dropout {
    pub fn new(p: f64) -> Self {
        Self {
            p,
            stream: Mutex::new(Lanes::seeded(0)),
        }
    }

    /// Restarts the mask stream (the trainer: once per epoch).
    pub fn reseed(&self, seed: u64) {
        if let Ok(mut s) = self.stream.lock() {
            *s = Lanes::seeded(seed);
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
            #[expect(clippy::cast_possible_truncation, reason = "the 32-bit halves")]
            let fill = |out: &mut [f32], r: [u64; 4]| {
                for (k, o) in out.iter_mut().enumerate() {
                    let w = r[k / 2];
                    *o = bit(if k % 2 == 0 {
                        w as u32
                    } else {
                        (w >> 32) as u32
                    });
                }
            };
            let mut blocks = mask.chunks_exact_mut(8);
            for block in &mut blocks {
                fill(block, s.next());
            }
            let rest = blocks.into_remainder();
            if !rest.is_empty() {
                fill(rest, s.next());
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
