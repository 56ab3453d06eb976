//! Ctrl-C and SIGTERM: the first one is a request that the training loop honours after the
//! current step (checkpoint, summary "interrupted", exit 130 / 143); a second one of either
//! ends the process at once with that exit code.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, OnceLock};

use anyhow::Result;
use signal_hook::consts::{SIGINT, SIGTERM};

static REQUESTED: OnceLock<(Arc<AtomicBool>, Arc<AtomicI32>)> = OnceLock::new();

/// Installs the handlers (once per process; later calls do nothing).
pub fn install() -> Result<()> {
    if REQUESTED.get().is_some() {
        return Ok(());
    }
    let (flag, which) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicI32::new(0)));
    for signal in [SIGINT, SIGTERM] {
        // Registered first, so it sees the flag as it was before this signal: set = second signal.
        signal_hook::flag::register_conditional_shutdown(signal, 128 + signal, flag.clone())?;
        let which = which.clone();
        // SAFETY: the action only stores to an atomic, which is async-signal-safe.
        unsafe { signal_hook::low_level::register(signal, move || which.store(signal, Ordering::SeqCst))? };
        signal_hook::flag::register(signal, flag.clone())?;
    }
    let _ = REQUESTED.set((flag, which));
    Ok(())
}

/// The signal asked for (SIGINT 2, SIGTERM 15), if one has arrived since [`install`].
pub fn requested() -> Option<i32> {
    let (flag, which) = REQUESTED.get()?;
    flag.load(Ordering::SeqCst).then(|| which.load(Ordering::SeqCst))
}

/// The error a run interrupted by a signal ends with, after its checkpoint and summary.
#[derive(Debug, Clone)]
pub struct Interrupted {
    pub signal: i32,
    pub step: usize,
    pub run_dir: std::path::PathBuf,
}

impl Interrupted {
    /// 130 for SIGINT, 143 for SIGTERM (the shell's 128 + signal).
    pub fn exit_code(&self) -> i32 {
        128 + self.signal
    }
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = if self.signal == SIGTERM { "SIGTERM" } else { "SIGINT" };
        write!(
            f,
            "interrupted by {name} after step {}; checkpoint saved; continue with `taper train --resume {}`",
            self.step,
            self.run_dir.display()
        )
    }
}

impl std::error::Error for Interrupted {}
