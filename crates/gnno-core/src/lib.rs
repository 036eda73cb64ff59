//! Shared foundation of the gnno pipeline: ids, configuration, artifact schemas,
//! the stage manifest, checksums and the error type every stage reports through.
//!
//! This crate holds no engine: no polars, no sled, no libtorch. Stages meet only
//! through the on-disk artifacts whose layout is described here and in docs/FORMATS.md.

pub mod config;
pub mod dataset;
pub mod error;
pub mod fsutil;
pub mod manifest;
pub mod progress;
pub mod shards;

pub use error::{Error, Result};

/// Version of the on-disk formats written by this build. Bumped whenever any
/// artifact layout changes; a manifest or store of another version is refused.
pub const FORMAT_VERSION: u32 = 1;

/// Item index: 1..=N; 0 is padding and never a candidate.
pub type ItemIdx = u32;
/// User index: 0..U.
pub type UserIdx = u32;

/// The split an interaction belongs to, stored as a `UInt8` code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Split {
    Train = 0,
    Dev = 1,
    Test = 2,
}

impl Split {
    pub fn from_code(c: u8) -> Option<Self> {
        match c {
            0 => Some(Self::Train),
            1 => Some(Self::Dev),
            2 => Some(Self::Test),
            _ => None,
        }
    }
}

/// SplitMix64 finaliser: mixes several integers into one well-spread seed, so that
/// every (seed, epoch, instance) gets an independent random stream.
pub fn mix_seed(parts: &[u64]) -> u64 {
    let mut h: u64 = 0x9E37_79B9_7F4A_7C15;
    for &p in parts {
        h ^= p
            .wrapping_add(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(h << 6)
            .wrapping_add(h >> 2);
        let mut z = h;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        h = z ^ (z >> 31);
    }
    h
}
