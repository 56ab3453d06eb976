//! AdamW's update as an op of the seam, in composed tensor ops (any device): the default of
//! [`super::Backend::adamw_step`]. The optimizer (`optim::adamw`) owns the moments and the
//! parameters' roles; a step hands each parameter's weight, moments and gradient here.

use candle_core::{DType, Result, Tensor, Var};

/// What every parameter's update in one step shares.
pub struct AdamStep<'a> {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub lr: f64,
    /// Steps attempted, this one included: the bias corrections' t unless a gate counts them.
    pub steps: usize,
    /// The gradients' multiplier (clipping, 1 / the loss scale), (1,) f32 on the parameters' device.
    pub scale: &'a Tensor,
    /// With loss scaling: whether the step applies (1 or 0) and how many steps have applied,
    /// this one included, both (1,) f32 on the device.
    pub gate: Option<(&'a Tensor, &'a Tensor)>,
}

/// One parameter's update: its weight, its moments (2, numel) f32 (first, then second), its
/// gradient (numel) f32 contiguous, and its decay factor 1 - lr wd (1 without weight decay).
pub struct AdamParam<'a> {
    pub var: &'a Var,
    pub moments: &'a mut Tensor,
    pub grad: Tensor,
    pub decay_factor: f64,
}

/// The bias corrections' step count: known on the host, or on the device with the gate that
/// decides whether the step applies and the corrections 1 - beta^t made from its count (once
/// per step, (1,) each).
pub enum Count<'a> {
    Host(f64),
    Gated(&'a Tensor, [Tensor; 2]),
}

/// One step over `params`, composed.
pub fn step(step: &AdamStep, params: &mut [AdamParam]) -> Result<()> {
    let count = match step.gate {
        None => Count::Host(step.steps as f64),
        Some((apply, count)) => {
            // 1 - beta^t with t on the device.
            let correction = |beta: f64| (1.0 - (count * beta.ln())?.exp()?)?.reshape(1);
            Count::Gated(apply, [correction(step.beta1)?, correction(step.beta2)?])
        }
    };
    for p in params.iter_mut() {
        update(p, step, &count)?;
    }
    Ok(())
}

/// m = b1 m + (1 - b1) g s; v = b2 v + (1 - b2) (g s)^2 (s the gradients' multiplier); then
/// p = p (1 - lr wd) - lr (m / c1) / (sqrt(v / c2) + eps). Gated, the bias corrections come
/// from the gate's count and a skipped step keeps the old weights and moments.
pub fn update(p: &mut AdamParam, step: &AdamStep, count: &Count) -> Result<()> {
    let grad = p.grad.broadcast_mul(step.scale)?;
    let m = ((p.moments.get(0)? * step.beta1)? + (&grad * (1.0 - step.beta1))?)?;
    let v = ((p.moments.get(1)? * step.beta2)? + (grad.sqr()? * (1.0 - step.beta2))?)?;
    let update = match count {
        Count::Host(t) => {
            let (correction1, correction2) = (1.0 - step.beta1.powi(*t as i32), 1.0 - step.beta2.powi(*t as i32));
            ((&m / correction1)? / ((&v / correction2)?.sqrt()? + step.eps)?)?
        }
        Count::Gated(_, [c1, c2]) => (m.broadcast_div(c1)? / (v.broadcast_div(c2)?.sqrt()? + step.eps)?)?,
    };
    let weight = (p.var.as_tensor().to_dtype(DType::F32)?.flatten_all()? * p.decay_factor)?;
    let next = (weight - (update * step.lr)?)?.reshape(p.var.shape())?.to_dtype(p.var.dtype())?;
    let moments = Tensor::stack(&[m, v], 0)?;
    let (next, moments) = match count {
        Count::Host(_) => (next, moments),
        Count::Gated(apply, _) => {
            let keep = |new: &Tensor, old: &Tensor| apply.broadcast_as(new.shape())?.where_cond(new, old);
            (keep(&next, p.var.as_tensor())?, keep(&moments, p.moments)?)
        }
    };
    p.var.set(&next)?;
    *p.moments = moments;
    Ok(())
}
