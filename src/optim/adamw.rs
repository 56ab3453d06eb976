//! AdamW with decoupled weight decay. taper's own because candle-nn's AdamW keeps its moments
//! private, and a run must checkpoint them to resume exactly.

use std::collections::HashMap;

use anyhow::{bail, Result};
use candle_core::{DType, Tensor, Var};

use crate::config::OptimConfig;

struct ParamState {
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
    decay: bool,
}

pub struct AdamW {
    params: Vec<ParamState>,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    /// Optimizer steps taken (for bias correction).
    pub steps: usize,
}

/// Weight decay goes to matrices; biases and norm gains are exempt, and embeddings too unless
/// `decay_embeddings` (the convention of GPT-2/nanoGPT vs. BERT differs here).
pub fn decays(name: &str, rank: usize, decay_embeddings: bool) -> bool {
    let is_embedding = name.split('.').any(|part| part.contains("emb"));
    rank >= 2 && (decay_embeddings || !is_embedding)
}

impl AdamW {
    /// `params`: (name, var) in a fixed order (the param store sorts by name).
    pub fn new(params: Vec<(String, Var)>, cfg: &OptimConfig) -> Result<Self> {
        let params = params
            .into_iter()
            .map(|(name, var)| {
                let m = var.zeros_like()?.to_dtype(DType::F32)?;
                let v = m.clone();
                let decay = decays(&name, var.rank(), cfg.decay_embeddings);
                Ok(ParamState { name, var, m, v, decay })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            params,
            beta1: cfg.betas[0],
            beta2: cfg.betas[1],
            eps: cfg.eps,
            weight_decay: cfg.weight_decay,
            steps: 0,
        })
    }

    pub fn vars(&self) -> impl Iterator<Item = &Var> {
        self.params.iter().map(|p| &p.var)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.params.iter().map(|p| p.name.as_str())
    }

    /// Applies one update. `grads[i]` belongs to the i-th parameter (None: no gradient, no move).
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64) -> Result<()> {
        if grads.len() != self.params.len() {
            bail!("optimizer got {} gradients for {} parameters", grads.len(), self.params.len());
        }
        self.steps += 1;
        let t = self.steps as i32;
        let correction1 = 1.0 - self.beta1.powi(t);
        let correction2 = 1.0 - self.beta2.powi(t);
        for (p, grad) in self.params.iter_mut().zip(grads) {
            let Some(grad) = grad else { continue };
            let grad = grad.to_dtype(DType::F32)?;
            p.m = ((&p.m * self.beta1)? + (&grad * (1.0 - self.beta1))?)?;
            p.v = ((&p.v * self.beta2)? + (grad.sqr()? * (1.0 - self.beta2))?)?;
            let m_hat = (&p.m / correction1)?;
            let v_hat = (&p.v / correction2)?;
            let update = (m_hat / (v_hat.sqrt()? + self.eps)?)?;
            let mut weight = p.var.as_tensor().to_dtype(DType::F32)?;
            if p.decay && self.weight_decay > 0.0 {
                weight = (weight * (1.0 - lr * self.weight_decay))?;
            }
            let next = (weight - (update * lr)?)?;
            p.var.set(&next.to_dtype(p.var.dtype())?)?;
        }
        Ok(())
    }

    /// Moments as named tensors (`m.<param>`, `v.<param>`), for the checkpoint.
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for p in &self.params {
            out.insert(format!("m.{}", p.name), p.m.clone());
            out.insert(format!("v.{}", p.name), p.v.clone());
        }
        out
    }

    /// Restores moments saved by [`Self::state_tensors`]; every parameter must be present with
    /// its own shape.
    pub fn load_state(&mut self, mut tensors: HashMap<String, Tensor>, steps: usize) -> Result<()> {
        for p in &mut self.params {
            for (kind, slot) in [("m", &mut p.m), ("v", &mut p.v)] {
                let key = format!("{kind}.{}", p.name);
                let Some(t) = tensors.remove(&key) else {
                    bail!("optimizer checkpoint has no `{key}`");
                };
                if t.shape() != slot.shape() {
                    bail!(
                        "optimizer checkpoint tensor `{key}` has shape {:?}, the model needs {:?}",
                        t.dims(),
                        slot.dims()
                    );
                }
                *slot = t.to_dtype(DType::F32)?.to_device(slot.device())?;
            }
        }
        if let Some(extra) = tensors.keys().next() {
            bail!("optimizer checkpoint has `{extra}`, which matches no parameter of this model");
        }
        self.steps = steps;
        Ok(())
    }
}
