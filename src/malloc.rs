//! Keep freed memory for reuse instead of handing it back to the OS after every step.
//!
//! A training step on the CPU allocates and frees the same large buffers every time
//! (activations, gradients, logits chunks). glibc's malloc serves blocks above its mmap threshold
//! (128 KiB, growing only slowly) with fresh `mmap`s and trims the heap top on every large free,
//! so each step pays page faults and page zeroing for memory it just released: on mpt-small-cpu
//! that kernel work was over a third of the step, and keeping the memory doubled tokens/s
//! (BENCHMARKS.md, "The allocator"). The price is that the process keeps its peak footprint, as
//! PyTorch's caching allocators do.

/// Serve blocks up to 32 MiB (glibc's largest mmap threshold) from the heap and never trim it.
/// Call once at start-up, before other threads exist; a no-op off glibc.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before any other thread runs.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
