//! Optimizer, learning-rate schedule, and gradient utilities.

pub mod adamw;
pub mod config;
pub mod loss_scale;
pub mod schedule;

pub use adamw::AdamW;
pub use loss_scale::{Gate, LossScaler};
pub use schedule::Schedule;

use candle_core::{DType, Device, Result, Storage, Tensor};
use rayon::prelude::*;

use crate::kernels::cpu::{contiguous, lane_sum, PARALLEL_MIN};
use crate::kernels::Kernels;

/// Global L2 norm of all gradients, as a scalar tensor (it stays on the device). With
/// `Kernels::Fused` and CPU f32 gradients, one pass per gradient on the host; otherwise
/// composed ops (what accelerators run).
pub fn global_norm(grads: &[Option<Tensor>], kernels: Kernels) -> Result<Tensor> {
    if kernels == Kernels::Fused {
        if let Some(sum_of_squares) = cpu_sum_of_squares(grads)? {
            return Tensor::new(sum_of_squares.sqrt() as f32, &Device::Cpu);
        }
    }
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

/// The sum of squares of all gradients when they are contiguous f32 CPU tensors (None
/// otherwise): one pass over each, no temporary. Chunks of a fixed size summed in order, so the
/// result does not depend on the thread count.
fn cpu_sum_of_squares(grads: &[Option<Tensor>]) -> Result<Option<f64>> {
    let mut total = 0f64;
    for g in grads.iter().flatten() {
        if !g.device().is_cpu() || g.dtype() != DType::F32 || !g.is_contiguous() {
            return Ok(None);
        }
        let (storage, layout) = g.storage_and_layout();
        let Storage::Cpu(storage) = &*storage else { return Ok(None) };
        let values = contiguous::<f32>(storage, layout)?;
        let partials: Vec<f64> =
            values.par_chunks(PARALLEL_MIN).map(|chunk| lane_sum(chunk, |v| v * v) as f64).collect();
        total += partials.iter().sum::<f64>();
    }
    Ok(Some(total))
}
