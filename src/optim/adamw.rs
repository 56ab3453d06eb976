//! AdamW with decoupled weight decay. taper's own because candle-nn's AdamW keeps its moments
//! private, and a run must checkpoint them to resume exactly. On the CPU (f32) an update is two
//! in-place passes over memory (moments, then weights), with the gradient-clipping factor
//! folded in, split over threads for large tensors (elementwise, so the result does not depend
//! on the thread count); elsewhere it is the same arithmetic in composed tensor ops.

use std::collections::HashMap;

use anyhow::{bail, Result};
use candle_core::{CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Tensor, Var};

use super::loss_scale::{Gate, LossScaler};
use crate::config::OptimConfig;
use crate::kernels::cpu::{contiguous, PARALLEL_MIN};
use crate::kernels::Kernels;
use rayon::prelude::*;

struct ParamState {
    name: String,
    var: Var,
    /// (2, numel): first moment, then second moment, in f32.
    moments: Tensor,
    decay: bool,
}

pub struct AdamW {
    params: Vec<ParamState>,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    /// Optimizer steps attempted (for bias correction when no [`Gate`] counts them).
    pub steps: usize,
    /// False: the composed update on every device (what accelerators run), for `kernels =
    /// "composed"`.
    in_place: bool,
    /// Loss scaling (f16), checkpointed with the moments as `loss_scale`.
    pub scaler: Option<LossScaler>,
}

/// The optimizer checkpoint's entry for the loss scaler's state.
const LOSS_SCALE: &str = "loss_scale";

/// The gate's values where the update runs on the CPU (no device is involved).
fn cpu_gate(gate: &Gate) -> Result<(bool, f64)> {
    let apply = crate::host::cpu_vec1(&gate.apply)?[0] != 0.0;
    Ok((apply, crate::host::cpu_vec1(&gate.count)?[0] as f64))
}

/// Weight decay goes to matrices; biases and norm gains are exempt, and embedding tables too
/// unless `decay_embeddings` (the convention of GPT-2/nanoGPT vs. BERT differs here).
pub fn decays(rank: usize, is_embedding: bool, decay_embeddings: bool) -> bool {
    rank >= 2 && (decay_embeddings || !is_embedding)
}

/// m = b1 m + (1 - b1) g s; v = b2 v + (1 - b2) (g s)^2, with s the clipping factor.
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

/// The bias correction's step count: known on the host, or on the device with the gate that
/// decides whether the step applies and the corrections 1 - beta^t made from its count (once
/// per step, (1,) each).
enum Count<'a> {
    Host(f64),
    Gated(&'a Gate, [Tensor; 2]),
}

/// One step's hyper-parameters.
struct Hyper {
    beta1: f64,
    beta2: f64,
    eps: f64,
    lr: f64,
}

impl Hyper {
    /// The CPU update: two in-place passes (moments, then weights), at step count `t`.
    fn in_place(&self, p: &ParamState, grad: &Tensor, scale: &Tensor, decay_factor: f64, t: f64) -> Result<()> {
        let (beta1, beta2) = (self.beta1 as f32, self.beta2 as f32);
        p.moments.inplace_op3(grad, scale, &UpdateMoments { beta1, beta2 })?;
        p.var.as_tensor().inplace_op2(
            &p.moments,
            &UpdateWeights {
                lr: self.lr as f32,
                decay_factor: decay_factor as f32,
                correction1: (1.0 - self.beta1.powi(t as i32)) as f32,
                correction2: (1.0 - self.beta2.powi(t as i32)) as f32,
                eps: self.eps as f32,
            },
        )?;
        Ok(())
    }

    /// The same update in tensor ops (any device). Gated, the bias corrections come from the
    /// gate's count and a skipped step keeps the old weights and moments.
    fn composed(
        &self,
        p: &mut ParamState,
        grad: &Tensor,
        scale: &Tensor,
        decay_factor: f64,
        count: &Count,
    ) -> Result<()> {
        let grad = grad.broadcast_mul(scale)?;
        let m = ((p.moments.get(0)? * self.beta1)? + (&grad * (1.0 - self.beta1))?)?;
        let v = ((p.moments.get(1)? * self.beta2)? + (grad.sqr()? * (1.0 - self.beta2))?)?;
        let update = match count {
            Count::Host(t) => {
                let (correction1, correction2) = (1.0 - self.beta1.powi(*t as i32), 1.0 - self.beta2.powi(*t as i32));
                ((&m / correction1)? / ((&v / correction2)?.sqrt()? + self.eps)?)?
            }
            Count::Gated(_, [c1, c2]) => (m.broadcast_div(c1)? / (v.broadcast_div(c2)?.sqrt()? + self.eps)?)?,
        };
        let weight = (p.var.as_tensor().to_dtype(DType::F32)?.flatten_all()? * decay_factor)?;
        let next = (weight - (update * self.lr)?)?.reshape(p.var.shape())?.to_dtype(p.var.dtype())?;
        let moments = Tensor::stack(&[m, v], 0)?;
        let (next, moments) = match count {
            Count::Host(_) => (next, moments),
            Count::Gated(gate, _) => {
                let keep = |new: &Tensor, old: &Tensor| gate.apply.broadcast_as(new.shape())?.where_cond(new, old);
                (keep(&next, p.var.as_tensor())?, keep(&moments, &p.moments)?)
            }
        };
        p.var.set(&next)?;
        p.moments = moments;
        Ok(())
    }
}

fn mutable_slice<'a>(storage: &'a mut CpuStorage, layout: &Layout) -> candle_core::Result<&'a mut [f32]> {
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
    ) -> candle_core::Result<()> {
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
    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<()> {
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

impl AdamW {
    /// `params`: (name, var) in a fixed order (the param store sorts by name). `embeddings`:
    /// the model's embedding tables (their role decides their weight decay, not their names).
    pub fn new(params: Vec<(String, Var)>, cfg: &OptimConfig, embeddings: &[Tensor]) -> Result<Self> {
        let params = params
            .into_iter()
            .map(|(name, var)| {
                let moments = Tensor::zeros((2, var.elem_count()), DType::F32, var.device())?;
                let is_embedding = embeddings.iter().any(|table| table.id() == var.as_tensor().id());
                let decay = decays(var.rank(), is_embedding, cfg.decay_embeddings);
                Ok(ParamState { name, var, moments, decay })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            params,
            beta1: cfg.betas[0],
            beta2: cfg.betas[1],
            eps: cfg.eps,
            weight_decay: cfg.weight_decay,
            steps: 0,
            in_place: true,
            scaler: None,
        })
    }

    /// Follows `model.kernels`: with `composed`, the update runs as composed tensor ops on the
    /// CPU too (the path accelerators take; the in-place CPU passes are otherwise used).
    pub fn use_kernels(&mut self, kernels: Kernels) {
        self.in_place = kernels == Kernels::Fused;
    }

    pub fn vars(&self) -> impl Iterator<Item = &Var> {
        self.params.iter().map(|p| &p.var)
    }

    /// The names of the parameters that weight decay applies to.
    pub fn decayed(&self) -> impl Iterator<Item = &str> {
        self.params.iter().filter(|p| p.decay).map(|p| p.name.as_str())
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.params.iter().map(|p| p.name.as_str())
    }

    /// Applies one update. `grads[i]` belongs to the i-th parameter (None: no gradient, no
    /// move). `grad_scale`: a scalar tensor the gradients are multiplied by (clipping, loss
    /// scaling), kept on the device. `gate`: whether the step applies (loss scaling).
    pub fn step(
        &mut self,
        grads: &[Option<Tensor>],
        lr: f64,
        grad_scale: Option<&Tensor>,
        gate: Option<&Gate>,
    ) -> Result<()> {
        if grads.len() != self.params.len() {
            bail!("optimizer got {} gradients for {} parameters", grads.len(), self.params.len());
        }
        self.steps += 1;
        // The clipping factor (1 without clipping), once per step, on the parameters' device.
        let Some(first) = self.params.first() else { return Ok(()) };
        let in_place = self.in_place && first.var.device().is_cpu();
        let scale = match grad_scale {
            Some(s) => s.to_dtype(DType::F32)?.reshape(1)?,
            None => Tensor::ones(1, DType::F32, first.var.device())?,
        };
        let count = match gate {
            None => Count::Host(self.steps as f64),
            Some(gate) if in_place => match cpu_gate(gate)? {
                (true, t) => Count::Host(t),
                (false, _) => return Ok(()),
            },
            Some(gate) => {
                // 1 - beta^t with t on the device.
                let correction = |beta: f64| (1.0 - (&gate.count * beta.ln())?.exp()?)?.reshape(1);
                Count::Gated(gate, [correction(self.beta1)?, correction(self.beta2)?])
            }
        };
        let hyper = Hyper { beta1: self.beta1, beta2: self.beta2, eps: self.eps, lr };
        for (p, grad) in self.params.iter_mut().zip(grads) {
            let Some(grad) = grad else { continue };
            let decay_factor = if p.decay { 1.0 - lr * self.weight_decay } else { 1.0 };
            let grad = grad.to_dtype(DType::F32)?.flatten_all()?.contiguous()?;
            match &count {
                Count::Host(t) if in_place && p.var.dtype() == DType::F32 && p.var.is_contiguous() => {
                    hyper.in_place(p, &grad, &scale, decay_factor, *t)?
                }
                count => hyper.composed(p, &grad, &scale, decay_factor, count)?,
            }
        }
        Ok(())
    }

    /// Moments as named tensors (`m.<param>`, `v.<param>`, shaped like the parameter).
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for p in &self.params {
            out.insert(format!("m.{}", p.name), p.moments.get(0)?.reshape(p.var.shape())?);
            out.insert(format!("v.{}", p.name), p.moments.get(1)?.reshape(p.var.shape())?);
        }
        if let Some(scaler) = &self.scaler {
            out.insert(LOSS_SCALE.into(), scaler.state().clone());
        }
        Ok(out)
    }

    /// Restores moments saved by [`Self::state_tensors`]; every parameter must be present with
    /// its own shape.
    pub fn load_state(&mut self, mut tensors: HashMap<String, Tensor>, steps: usize) -> Result<()> {
        match (&mut self.scaler, tensors.remove(LOSS_SCALE)) {
            (Some(scaler), Some(state)) => scaler.load_state(&state)?,
            (Some(_), None) => bail!(
                "the optimizer checkpoint has no `{LOSS_SCALE}`: it was saved without loss scaling; \
                 resume with the run's own `train.dtype` and `train.loss_scale`"
            ),
            (None, Some(_)) => bail!(
                "the optimizer checkpoint holds a loss scaler's state (`{LOSS_SCALE}`) but this run scales no loss; \
                 resume with the run's own `train.dtype` and `train.loss_scale`"
            ),
            (None, None) => {}
        }
        for p in &mut self.params {
            let mut halves = Vec::with_capacity(2);
            for kind in ["m", "v"] {
                let key = format!("{kind}.{}", p.name);
                let Some(t) = tensors.remove(&key) else {
                    bail!("optimizer checkpoint has no `{key}`");
                };
                if t.dims() != p.var.dims() {
                    bail!(
                        "optimizer checkpoint tensor `{key}` has shape {:?}, the model needs {:?}",
                        t.dims(),
                        p.var.dims()
                    );
                }
                halves.push(t.to_dtype(DType::F32)?.to_device(p.var.device())?.flatten_all()?);
            }
            p.moments = Tensor::stack(&halves, 0)?.contiguous()?;
        }
        if let Some(extra) = tensors.keys().next() {
            bail!("optimizer checkpoint has `{extra}`, which matches no parameter of this model");
        }
        self.steps = steps;
        Ok(())
    }
}
