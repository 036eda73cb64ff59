//! Progress reporting from library crates; only the binary draws bars.

/// A sink for progress of a long step. Library code calls it; the binary decides
/// whether to draw a bar (terminal) or nothing (piped, `--quiet`).
pub trait Progress: Send + Sync {
    /// A new step with a known number of units.
    fn start(&self, step: &str, total: u64);
    /// Units done since the last call.
    fn advance(&self, n: u64);
    /// The step is done.
    fn finish(&self);
}

/// Progress that goes nowhere (tests, benches).
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}
