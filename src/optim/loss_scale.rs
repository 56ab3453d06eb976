//! Loss scaling for f16 training, as PyTorch's `GradScaler`: the loss is multiplied by a scale
//! before the backward so small gradients survive f16's range; the gradients are divided by it
//! before the update, and a step whose gradients overflowed (a non-finite norm) is skipped. The
//! dynamic scale halves on such a step and doubles after `growth_interval` steps without one.
//! Everything stays on the device: the decision to skip is a mask the optimizer applies
//! ([`Gate`]), not a host read, so a step never waits for the device.

use candle_core::{DType, Device, Result, Tensor};

use super::clip_factor;

/// Whether a step's update applies, decided on the device (loss scaling skips a step whose
/// gradients overflowed): a skipped step leaves weights and moments exactly as they were.
pub struct Gate {
    /// u8 scalar: 1 applies the step, 0 skips it.
    pub apply: Tensor,
    /// f32 scalar: the optimizer steps applied so far, this one included if it applies (the
    /// bias correction's t).
    pub count: Tensor,
}

/// The scaler's state, on the device.
pub struct LossScaler {
    /// (3,) f32: the scale, the steps since it last changed without an overflow, and the steps
    /// skipped so far.
    state: Tensor,
    dynamic: bool,
    growth_interval: usize,
}

/// What a step's update needs from the scaler, all on the device.
pub struct Unscaled {
    /// The gradients' true global norm (non-finite on an overflowed step).
    pub norm: Tensor,
    /// What the gradients are multiplied by: 1 / scale, times the clipping factor; 0 on an
    /// overflowed step.
    pub multiplier: Tensor,
    /// Whether the optimizer applies this step, and its step count if it does.
    pub gate: Gate,
}

impl LossScaler {
    /// `dynamic`: the scale adapts from `init`; otherwise it stays `init`.
    pub fn new(init: f64, dynamic: bool, growth_interval: usize, device: &Device) -> Result<Self> {
        let state = Tensor::new(&[init as f32, 0.0, 0.0], device)?;
        Ok(Self { state, dynamic, growth_interval })
    }

    /// The scale the loss is multiplied by (a scalar tensor).
    pub fn scale(&self) -> Result<Tensor> {
        self.state.get(0)
    }

    /// (3,): the scale, the steps without an overflow since it changed, the steps skipped (the
    /// checkpointed state; the logger reads the first and last).
    pub fn state(&self) -> &Tensor {
        &self.state
    }

    /// Restores a state saved from [`Self::state`].
    pub fn load_state(&mut self, state: &Tensor) -> Result<()> {
        if state.dims() != [3] {
            candle_core::bail!("the loss scaler's state has shape {:?}, expected [3]", state.dims());
        }
        self.state = state.to_dtype(DType::F32)?.to_device(self.state.device())?;
        Ok(())
    }

    /// From the scaled gradients' global norm: their true norm, their multiplier (with
    /// clipping to `max_norm`), the optimizer's gate, where `attempted` counts the optimizer
    /// steps tried so far, this one included. Advances the scale.
    pub fn unscale(&mut self, scaled_norm: &Tensor, max_norm: Option<f64>, attempted: usize) -> Result<Unscaled> {
        let scaled_norm = scaled_norm.to_dtype(DType::F32)?;
        // |x| < inf exactly when x is finite (a NaN compares false).
        let finite = scaled_norm.abs()?.lt(f64::INFINITY)?;
        let ok = finite.to_dtype(DType::F32)?;
        let inverse = self.scale()?.recip()?;
        let norm = (&scaled_norm * &inverse)?;
        let multiplier = match max_norm {
            Some(max_norm) => (&inverse * clip_factor(&norm, max_norm)?)?,
            None => inverse,
        };
        let multiplier = finite.where_cond(&multiplier, &multiplier.zeros_like()?)?;
        let skipped = (self.state.get(2)? + (1.0 - &ok)?)?;
        let count = skipped.affine(-1.0, attempted as f64)?;
        let (scale, good) = match self.dynamic {
            true => self.next_scale(&ok)?,
            false => (self.state.get(0)?, self.state.get(1)?),
        };
        self.state = Tensor::stack(&[scale, good, skipped], 0)?;
        Ok(Unscaled { norm, multiplier, gate: Gate { apply: finite, count } })
    }

    /// The dynamic scale after a step that did (`ok` = 1) or did not (0) stay finite, and the
    /// run of good steps: halved and reset on an overflow, doubled when the run reaches the
    /// growth interval.
    fn next_scale(&self, ok: &Tensor) -> Result<(Tensor, Tensor)> {
        let good = ((self.state.get(1)? + 1.0)? * ok)?;
        let grow = good.ge(self.growth_interval as f64)?.to_dtype(DType::F32)?;
        // 2 when growing, 1 on an ordinary good step, 0.5 after an overflow.
        let factor = ((ok * (&grow + 1.0)?)? + ((1.0 - ok)? * 0.5)?)?;
        let scale = (self.state.get(0)? * factor)?;
        let good = (good * (1.0 - grow)?)?;
        Ok((scale, good))
    }
}
