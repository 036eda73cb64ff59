//! Keep glibc from returning large blocks to the OS after every batch.
//!
//! libtorch on CPU allocates through malloc; blocks above the mmap threshold (at
//! most 32 MiB) are mmapped and unmapped on every free, so each batch's large
//! temporaries (the contrastive term's `[2B, 2B]` matrices are 256 MiB at batch
//! 4096) page-fault in again, zeroed by the kernel: most of an epoch went to system
//! time. Serving them from the heap and not trimming it lets them be reused.

/// Apply once per process, before training starts. Linux/glibc only; a no-op elsewhere.
pub fn keep_large_blocks() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[expect(
        unsafe_code,
        reason = "mallopt is a plain FFI call with integer arguments and no memory effects on Rust objects"
    )]
    // SAFETY: mallopt only changes allocator tuning parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
