//! AdamW's update on the CPU: two in-place passes over memory per parameter (moments, then
//! weights), with the gradients' multiplier folded in, split over threads for large tensors
//! (elementwise, so the result does not depend on the thread count). The composed form is
//! `kernels::adamw`.

use candle_core::{CpuStorage, InplaceOp2, InplaceOp3, Layout, Result};
use rayon::prelude::*;

use super::{contiguous, PARALLEL_MIN};
use crate::kernels::adamw::{AdamParam, AdamStep};

/// m = b1 m + (1 - b1) g s; v = b2 v + (1 - b2) (g s)^2, with s the gradients' multiplier.
struct UpdateMoments {
    beta1: f32,
    beta2: f32,
}

/// p = p (1 - lr wd) - lr (m / c1) / (sqrt(v / c2) + eps)
struct UpdateWeights {
    lr: f32,
    decay_factor: f32,
    correction1: f32,
    correction2: f32,
    eps: f32,
}

/// One parameter's update in place (a contiguous f32 CPU parameter), at step count `t`.
pub fn adamw_in_place(p: &AdamParam, step: &AdamStep, t: f64) -> Result<()> {
    let (beta1, beta2) = (step.beta1 as f32, step.beta2 as f32);
    p.moments.inplace_op3(&p.grad, step.scale, &UpdateMoments { beta1, beta2 })?;
    p.var.as_tensor().inplace_op2(
        p.moments,
        &UpdateWeights {
            lr: step.lr as f32,
            decay_factor: p.decay_factor as f32,
            correction1: (1.0 - step.beta1.powi(t as i32)) as f32,
            correction2: (1.0 - step.beta2.powi(t as i32)) as f32,
            eps: step.eps as f32,
        },
    )
}

fn mutable_slice<'a>(storage: &'a mut CpuStorage, layout: &Layout) -> Result<&'a mut [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(data), Some((start, end))) => Ok(&mut data[start..end]),
        _ => candle_core::bail!("in-place AdamW needs contiguous f32 storage"),
    }
}

impl InplaceOp3 for UpdateMoments {
    fn name(&self) -> &'static str {
        "taper-adamw-moments"
    }
    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        let moments = mutable_slice(s1, l1)?;
        let grad = contiguous::<f32>(s2, l2)?;
        let scale = contiguous::<f32>(s3, l3)?[0];
        let (m, v) = moments.split_at_mut(grad.len());
        let (b1, b2) = (self.beta1, self.beta2);
        let chunks =
            m.par_chunks_mut(PARALLEL_MIN).zip(v.par_chunks_mut(PARALLEL_MIN)).zip(grad.par_chunks(PARALLEL_MIN));
        chunks.for_each(|((m, v), grad)| {
            for ((m, v), &g) in m.iter_mut().zip(v.iter_mut()).zip(grad) {
                let g = g * scale;
                *m = b1 * *m + (1.0 - b1) * g;
                *v = b2 * *v + (1.0 - b2) * g * g;
            }
        });
        Ok(())
    }
}

impl InplaceOp2 for UpdateWeights {
    fn name(&self) -> &'static str {
        "taper-adamw-weights"
    }
    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let weights = mutable_slice(s1, l1)?;
        let moments = contiguous::<f32>(s2, l2)?;
        let (m, v) = moments.split_at(weights.len());
        let (inv_c1, inv_c2) = (1.0 / self.correction1, 1.0 / self.correction2);
        let chunks =
            weights.par_chunks_mut(PARALLEL_MIN).zip(m.par_chunks(PARALLEL_MIN)).zip(v.par_chunks(PARALLEL_MIN));
        chunks.for_each(|((weights, m), v)| {
            for ((w, &m), &v) in weights.iter_mut().zip(m).zip(v) {
                *w = *w * self.decay_factor - self.lr * (m * inv_c1) / ((v * inv_c2).sqrt() + self.eps);
            }
        });
        Ok(())
    }
}
