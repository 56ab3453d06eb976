//! Optimizer, learning-rate schedule, and gradient utilities.

pub mod adamw;
pub mod schedule;

pub use adamw::AdamW;
pub use schedule::Schedule;

use candle_core::{Result, Tensor};

/// Global L2 norm of all gradients, as a scalar tensor (it stays on the device).
pub fn global_norm(grads: &[Option<Tensor>]) -> Result<Tensor> {
    let mut total: Option<Tensor> = None;
    for g in grads.iter().flatten() {
        let sq = g.to_dtype(candle_core::DType::F32)?.sqr()?.sum_all()?;
        total = Some(match total {
            Some(t) => (t + sq)?,
            None => sq,
        });
    }
    match total {
        Some(t) => t.sqrt(),
        None => candle_core::bail!("no gradients to measure"),
    }
}

/// The factor that scales gradients to a global norm of at most `max_norm`, as PyTorch's
/// `clip_grad_norm_` computes it, as a scalar tensor on the device (no host round trip).
pub fn clip_factor(norm: &Tensor, max_norm: f64) -> Result<Tensor> {
    (norm.affine(1.0, 1e-6)?.recip()? * max_norm)?.clamp(0f32, 1f32)
}
