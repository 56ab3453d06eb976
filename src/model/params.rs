//! Where parameters come from. Training builds the model over [`SeededParams`]: every tensor is
//! a `Var` drawn from taper's own RNG, seeded by (run seed, parameter name), so the same seed
//! gives the same weights on every machine, and two models that share a parameter name (say,
//! pre-LN and post-LN variants) start from the same values for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::{Init, VarBuilder};

use crate::rng::{hash_str, Rng};

/// The parameters of a model, by name, in f32 (master weights); all trainable, or those a
/// predicate accepts (LoRA: the adapters), the others frozen.
#[derive(Clone, Default)]
pub struct ParamStore {
    vars: Arc<Mutex<HashMap<String, Var>>>,
    trainable: Option<fn(&str) -> bool>,
    /// The most bytes of parameters the store creates; one more is an error, not an abort.
    limit: Option<u64>,
}

impl ParamStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// A store whose parameters train only where `trainable` accepts their name: a model built
    /// over it sees the others detached (no gradient, no optimizer state); loading and
    /// checkpoints still reach every parameter.
    pub fn with_trainable(trainable: fn(&str) -> bool) -> Self {
        Self { trainable: Some(trainable), ..Self::default() }
    }

    /// This store, creating at most `bytes` of parameters (a model too large for the machine is
    /// then refused while it is built, naming the parameter that did not fit).
    pub fn limited_to(self, bytes: u64) -> Self {
        Self { limit: Some(bytes), ..self }
    }

    fn is_trainable(&self, name: &str) -> bool {
        self.trainable.is_none_or(|accept| accept(name))
    }

    /// The parameters the optimizer updates, sorted by name.
    pub fn trainable_vars(&self) -> Vec<(String, Var)> {
        self.named_vars().into_iter().filter(|(name, _)| self.is_trainable(name)).collect()
    }

    // A poisoned lock means a panic elsewhere while inserting; the map itself is still whole.

    /// All parameters, sorted by name, so optimizer state lines up run after run.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let vars = self.vars.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut all: Vec<_> = vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    pub fn get(&self, name: &str) -> Option<Var> {
        self.vars.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(name).cloned()
    }

    pub fn num_elements(&self) -> usize {
        self.named_vars().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// A builder whose tensors are these parameters, created (seeded) on first use.
    pub fn var_builder(&self, seed: u64, device: &Device) -> VarBuilder<'static> {
        let backend = SeededParams { store: self.clone(), seed };
        VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone())
    }

    /// Detached copies of every parameter (sharing storage): a model built over them computes
    /// without recording a graph, for evaluation and generation.
    pub fn detached(&self) -> HashMap<String, Tensor> {
        self.named_vars().into_iter().map(|(k, v)| (k, v.as_tensor().detach())).collect()
    }
}

struct SeededParams {
    store: ParamStore,
    seed: u64,
}

impl candle_nn::var_builder::SimpleBackend for SeededParams {
    fn get(&self, shape: Shape, name: &str, init: Init, dtype: DType, device: &Device) -> Result<Tensor> {
        let mut vars = self.store.vars.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let as_used = |var: &Var| match self.store.is_trainable(name) {
            true => var.as_tensor().clone(),
            false => var.as_tensor().detach(), // shares the storage: loading still reaches it
        };
        if let Some(var) = vars.get(name) {
            if var.shape() != &shape {
                candle_core::bail!("parameter `{name}` requested as {shape:?} but exists as {:?}", var.shape());
            }
            return Ok(as_used(var));
        }
        if let Some(limit) = self.store.limit {
            let held: u64 = vars.values().map(|v| (v.elem_count() * v.dtype().size_in_bytes()) as u64).sum();
            let more = (shape.elem_count() * dtype.size_in_bytes()) as u64;
            if held.saturating_add(more) > limit {
                candle_core::bail!(
                    "the model does not fit: its parameters reach {} at `{name}` {shape:?}, past the {} of \
                     parameters this machine can hold for the run (a trained weight also needs its gradient and two \
                     AdamW moments); make the model or its vocabulary smaller (`model.d_model`, `model.n_layer`, `model.vocab_size`)",
                    crate::memory::gb((held + more) as u128),
                    crate::memory::gb(limit as u128)
                );
            }
        }
        let values = draw(&shape, &init, &mut Rng::derived(self.seed, &[hash_str(name)]));
        let tensor = Tensor::from_vec(values, shape, device)?.to_dtype(dtype)?;
        let var = Var::from_tensor(&tensor)?;
        vars.insert(name.to_string(), var.clone());
        Ok(as_used(&var))
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _device: &Device) -> Result<Tensor> {
        match self.store.get(name) {
            Some(var) => Ok(var.as_tensor().clone()),
            None => candle_core::bail!("parameter `{name}` has not been created"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.store.get(name).is_some()
    }
}

fn draw(shape: &Shape, init: &Init, rng: &mut Rng) -> Vec<f32> {
    let n = shape.elem_count();
    match *init {
        Init::Const(c) => vec![c as f32; n],
        Init::Randn { mean, stdev } => (0..n).map(|_| (mean + stdev * rng.normal()) as f32).collect(),
        Init::Uniform { lo, up } => (0..n).map(|_| (lo + (up - lo) * rng.uniform()) as f32).collect(),
        Init::Kaiming { .. } => {
            // LoRA's A asks for it: PyTorch's Linear default (kaiming_uniform, a = sqrt(5)), as PEFT.
            let fan_in = shape.dims().last().copied().unwrap_or(1).max(1) as f64;
            let bound = 1.0 / fan_in.sqrt();
            (0..n).map(|_| (-bound + 2.0 * bound * rng.uniform()) as f32).collect()
        }
    }
}
