//! The per-forward context every layer receives: training or not, the dropout RNG, the
//! optional LayerNorm-input probe (diagnostics), and the [`Backend`] the seam picked for this
//! forward.

use candle_core::{DType, Device, Result, Tensor};

use super::{backend_for, Backend, Composed, Kernels};
use crate::rng::Rng;

/// Per-forward state: training or not, the dropout RNG, the probe, and the backend.
pub struct Mode {
    pub train: bool,
    rng: Rng,
    /// When set, the RMS of every LayerNorm's input, in forward order (diagnostics).
    probe: Option<Vec<Tensor>>,
    backend: &'static dyn Backend,
}

impl Mode {
    pub fn eval() -> Self {
        Self { train: false, rng: Rng::new(0), probe: None, backend: &Composed }
    }
    /// Training mode; dropout masks come from `rng`, so a step's masks are a function of it.
    pub fn train(rng: Rng) -> Self {
        Self { train: true, rng, probe: None, backend: &Composed }
    }
    /// Evaluation mode that records the RMS of each LayerNorm's input.
    pub fn probing() -> Self {
        Self { train: false, rng: Rng::new(0), probe: Some(Vec::new()), backend: &Composed }
    }

    /// Picks the backend for the forward that starts now (a model calls this on entry), by
    /// [`backend_for`]; until then a mode runs the composed ops.
    pub fn choose_backend(&mut self, kernels: Kernels, device: &Device, dtype: DType) {
        self.backend = backend_for(kernels, device, dtype);
    }
    /// The backend of this forward: every layer runs its ops through it.
    pub fn backend(&self) -> &'static dyn Backend {
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
