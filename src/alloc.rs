//! glibc malloc tuning. By default glibc hands large freed blocks straight back to the OS, so
//! every training step faults in fresh pages for its activations (tens of thousands of minor
//! faults a step). Raising the mmap and trim thresholds keeps those pages in the process.

/// Call once at start-up, before the first large allocation.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before any threads start.
    unsafe {
        const LARGE: libc::c_int = 1 << 30;
        libc::mallopt(libc::M_MMAP_THRESHOLD, LARGE);
        libc::mallopt(libc::M_TRIM_THRESHOLD, LARGE);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}
