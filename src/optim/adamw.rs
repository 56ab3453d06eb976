//! AdamW with decoupled weight decay. taper's own because candle-nn's AdamW keeps its moments
//! private, and a run must checkpoint them to resume exactly. The optimizer holds the moments
//! and each parameter's role (weight decay or not); the update itself is an op of the kernel
//! seam (`Backend::adamw_step`): two in-place passes over memory per parameter on the CPU, the
//! same arithmetic in composed tensor ops elsewhere.

use std::collections::HashMap;

use anyhow::{bail, Result};
use candle_core::{DType, Tensor, Var};

use super::loss_scale::{Gate, LossScaler};
use crate::config::OptimConfig;
use crate::kernels::{parameter_backend, AdamParam, AdamStep, Backend, Kernels};

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
    /// Runs the update: `model.kernels`' backend for the parameters' device.
    backend: &'static dyn Backend,
    /// Loss scaling (f16), checkpointed with the moments as `loss_scale`.
    pub scaler: Option<LossScaler>,
}

/// The optimizer checkpoint's entry for the loss scaler's state.
const LOSS_SCALE: &str = "loss_scale";

/// Weight decay goes to matrices; biases and norm gains are exempt, and embedding tables too
/// unless `decay_embeddings` (the convention of GPT-2/nanoGPT vs. BERT differs here).
pub fn decays(rank: usize, is_embedding: bool, decay_embeddings: bool) -> bool {
    rank >= 2 && (decay_embeddings || !is_embedding)
}

impl AdamW {
    /// `params`: (name, var) in a fixed order (the param store sorts by name). `embeddings`:
    /// the model's embedding tables (their role decides their weight decay, not their names).
    pub fn new(params: Vec<(String, Var)>, cfg: &OptimConfig, embeddings: &[Tensor]) -> Result<Self> {
        let device = params.first().map_or(candle_core::Device::Cpu, |(_, var)| var.device().clone());
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
            backend: parameter_backend(Kernels::Fused, &device),
            scaler: None,
        })
    }

    /// Follows `model.kernels`: with `composed`, the update runs as composed tensor ops on the
    /// CPU too (the path accelerators take; the in-place CPU passes are otherwise used).
    pub fn use_kernels(&mut self, kernels: Kernels) {
        let device = self.params.first().map_or(candle_core::Device::Cpu, |p| p.var.device().clone());
        self.backend = parameter_backend(kernels, &device);
    }

    /// The backend that runs the parameters' work of a step (the update, the gradient norm).
    pub fn backend(&self) -> &'static dyn Backend {
        self.backend
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
        let scale = match grad_scale {
            Some(s) => s.to_dtype(DType::F32)?.reshape(1)?,
            None => Tensor::ones(1, DType::F32, first.var.device())?,
        };
        let (beta1, beta2, eps, steps) = (self.beta1, self.beta2, self.eps, self.steps);
        let gate = gate.map(|g| (&g.apply, &g.count));
        let step = AdamStep { beta1, beta2, eps, lr, steps, scale: &scale, gate };
        let mut updates = Vec::with_capacity(self.params.len());
        for (p, grad) in self.params.iter_mut().zip(grads) {
            let Some(grad) = grad else { continue };
            let decay_factor = if p.decay { 1.0 - lr * self.weight_decay } else { 1.0 };
            let grad = grad.to_dtype(DType::F32)?.flatten_all()?.contiguous()?;
            updates.push(AdamParam { var: &p.var, moments: &mut p.moments, grad, decay_factor });
        }
        Ok(self.backend.adamw_step(&step, &mut updates)?)
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
