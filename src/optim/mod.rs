//! Optimizer, learning-rate schedule, and gradient utilities.

pub mod adamw;
pub mod config;
pub mod loss_scale;
pub mod schedule;

pub use adamw::AdamW;
pub use loss_scale::{Gate, LossScaler};
pub use schedule::Schedule;

use candle_core::{Result, Tensor};

/// The factor that scales gradients to a global norm of at most `max_norm`, as PyTorch's
/// `clip_grad_norm_` computes it, as a scalar tensor on the device (no host round trip).
pub fn clip_factor(norm: &Tensor, max_norm: f64) -> Result<Tensor> {
    (norm.affine(1.0, 1e-6)?.recip()? * max_norm)?.clamp(0f32, 1f32)
}
