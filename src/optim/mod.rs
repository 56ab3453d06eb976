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

/// Scales gradients so their global norm is at most `max_norm`, without reading the norm back
/// to the host (the factor is computed on the device).
pub fn clip_by_global_norm(grads: &mut [Option<Tensor>], norm: &Tensor, max_norm: f64) -> Result<()> {
    let factor = (norm.affine(1.0, 1e-6)?.recip()? * max_norm)?.clamp(0f32, 1f32)?;
    for g in grads.iter_mut().flatten() {
        *g = g.broadcast_mul(&factor.to_dtype(g.dtype())?)?;
    }
    Ok(())
}
