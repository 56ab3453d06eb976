//! The per-forward context every layer receives: training or not, the dropout RNG, the
//! optional LayerNorm-input probe (diagnostics), and the [`Backend`] the seam chose for this
//! forward.

use candle_core::{DType, Device, Result, Tensor};

use super::Kernels;
use crate::rng::Rng;

/// Which implementation runs the ops of one forward pass, chosen once by [`Mode::choose_backend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// taper's CPU kernels with hand-written backward passes (`kernels::cpu`): CPU, f32/f64.
    Cpu,
    /// candle's composed tensor ops (`kernels::composed`): any device, any dtype.
    Composed,
}

impl Backend {
    /// The backend for `kernels` on `device` computing in `dtype`: taper's CPU kernels where
    /// they apply (CPU, f32 or f64), candle's composed ops elsewhere.
    pub fn choose(kernels: Kernels, device: &Device, dtype: DType) -> Self {
        let cpu_applies = device.is_cpu() && matches!(dtype, DType::F32 | DType::F64);
        match kernels {
            Kernels::Fused if cpu_applies => Self::Cpu,
            Kernels::Fused | Kernels::Composed => Self::Composed,
        }
    }
}

/// Per-forward state: training or not, the dropout RNG, the probe, and the backend.
pub struct Mode {
    pub train: bool,
    rng: Rng,
    /// When set, the RMS of every LayerNorm's input, in forward order (diagnostics).
    probe: Option<Vec<Tensor>>,
    backend: Backend,
}

impl Mode {
    pub fn eval() -> Self {
        Self { train: false, rng: Rng::new(0), probe: None, backend: Backend::Composed }
    }
    /// Training mode; dropout masks come from `rng`, so a step's masks are a function of it.
    pub fn train(rng: Rng) -> Self {
        Self { train: true, rng, probe: None, backend: Backend::Composed }
    }
    /// Evaluation mode that records the RMS of each LayerNorm's input.
    pub fn probing() -> Self {
        Self { train: false, rng: Rng::new(0), probe: Some(Vec::new()), backend: Backend::Composed }
    }

    /// Chooses the backend for the forward that starts now (a model calls this on entry).
    pub fn choose_backend(&mut self, kernels: Kernels, device: &Device, dtype: DType) {
        self.backend = Backend::choose(kernels, device, dtype);
    }
    /// The backend chosen for this forward.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// `len` inverted-dropout multipliers from the run's RNG: 0 with probability `p`, else 1/(1-p).
    pub fn dropout_mask(&mut self, len: usize, p: f64) -> Vec<f32> {
        let keep = 1.0 - p;
        let scale = (1.0 / keep) as f32;
        (0..len).map(|_| if self.rng.uniform() < keep { scale } else { 0.0 }).collect()
    }
    /// Multipliers for dropout `p` over `len` elements, when this forward applies dropout.
    pub fn dropout_multipliers(&mut self, len: usize, p: f64) -> Option<Vec<f32>> {
        (self.train && p > 0.0).then(|| self.dropout_mask(len, p))
    }
    /// Whether LayerNorm inputs are being recorded.
    pub fn is_probing(&self) -> bool {
        self.probe.is_some()
    }
    /// Records `x` as a LayerNorm input, if probing (costs nothing otherwise).
    pub fn record_norm_input(&mut self, x: &Tensor) -> Result<()> {
        if let Some(probe) = &mut self.probe {
            probe.push(x.detach().to_dtype(DType::F32)?.sqr()?.mean_all()?.sqrt()?);
        }
        Ok(())
    }
    /// The recorded RMS values.
    pub fn take_probe(&mut self) -> Result<Vec<f64>> {
        let probe = self.probe.take().unwrap_or_default();
        probe.iter().map(crate::host::scalar).collect()
    }
}
