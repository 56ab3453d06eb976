//! Process set-up done once in `main`, before any thread starts.

/// Tunes the process for training:
/// - glibc malloc: by default it hands large freed blocks straight back to the OS, so every
///   step faults in fresh pages for its activations (tens of thousands of minor faults a step).
///   Raising the mmap and trim thresholds keeps those pages in the process. Since freed memory
///   then stays in each malloc arena, the arenas are capped at 2 (the default is 8 per core,
///   one per thread here): each arena would hold its own high-water mark of activations
///   (peak RSS of the default run 240 -> 184 MB, same step time).
/// - thread count: candle's CPU matmul asks for the thread count on every call, and unless
///   `RAYON_NUM_THREADS` is set that parses /proc/cpuinfo each time (16 % of generation time
///   here). Setting it once, to the same value candle would pick, makes that a lookup. Ranks
///   that mpirun started on this machine share its cores (Open MPI says how many there are).
pub fn tune_process() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; no other thread exists yet.
    unsafe {
        const LARGE: libc::c_int = 1 << 30;
        libc::mallopt(libc::M_MMAP_THRESHOLD, LARGE);
        libc::mallopt(libc::M_TRIM_THRESHOLD, LARGE);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let local_ranks = std::env::var("OMPI_COMM_WORLD_LOCAL_SIZE").ok().and_then(|n| n.parse::<usize>().ok());
        let threads = (candle_core::utils::get_num_threads() / local_ranks.unwrap_or(1).max(1)).max(1);
        // Called first thing in main, before any thread is spawned.
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
}

/// Makes a write to a closed pipe end the process quietly, as it ends `cat` or `head`'s
/// writer (Rust ignores SIGPIPE, and a write then fails, which `println!` turns into a panic):
/// for the commands that only print (`generate ... | head`). A training run keeps SIGPIPE
/// ignored and drops what it cannot print (`console`), so a closed pipe never costs it its run.
pub fn quiet_on_closed_pipe() {
    // SAFETY: sets a signal's disposition to the default; no handler is involved.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Runs `work` on a thread of rayon's pool and waits for it. The kernels' parallel loops then
/// run as nested jobs that the calling thread shares in; called from outside the pool, each
/// loop would be handed over and waited for, two thread switches per kernel.
///
/// The pool's threads get the main thread's 8 MiB stack (rayon's default is 2 MiB), since the
/// whole command, candle's recursive graph walk included, now runs on one of them.
///
/// Every pool thread flushes subnormal floats to zero ([`flush_subnormals`]).
pub fn on_pool<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    // Fails only if the pool already exists (a test harness, say); then it runs as it is.
    let _ = pool().build_global();
    // `rayon::scope` runs its body on a pool thread when called from outside the pool.
    rayon::scope(|_| work())
}

/// The pool's settings: 8 MiB stacks, subnormals flushed.
fn pool() -> rayon::ThreadPoolBuilder {
    rayon::ThreadPoolBuilder::new().stack_size(8 << 20).start_handler(|_| flush_subnormals())
}

/// Sets this thread's SSE/AVX control register to flush subnormal results to zero and read
/// subnormal operands as zero (MXCSR's FTZ and DAZ bits), as TensorFlow does on the CPU and
/// PyTorch's `torch.set_flush_denormal(True)`. A product with subnormal operands takes a
/// microcode assist per element on Intel CPUs: a pretrained MiniLM's GELU tails (pre-activations
/// below about -13) made its fine-tune 12x slower (docs/performance.md). Values under
/// 1.2e-38 become 0; nothing else changes.
pub fn flush_subnormals() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: reads and writes this thread's MXCSR, setting two mode bits and nothing else.
    unsafe {
        let mut csr: u32 = 0;
        std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack, preserves_flags));
        csr |= 0x8040; // FTZ (bit 15) | DAZ (bit 6)
        std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack, readonly, preserves_flags));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pool_threads_flush_subnormals_to_zero() {
        // A pool of its own: the test harness may have started rayon's global pool already.
        let (halved, product) = super::pool().num_threads(1).build().unwrap().install(|| {
            let tiny = std::hint::black_box(f32::MIN_POSITIVE);
            (tiny / 2.0, std::hint::black_box(f32::from_bits(1)) * 1e30)
        });
        #[cfg(target_arch = "x86_64")]
        assert_eq!((halved, product), (0.0, 0.0));
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (halved, product);
    }
}
