//! The small modules every stack is made of: initialisation policy, linear layer (with its LoRA
//! adapter, if any), embedding table. Each holds only its tensors; `crate::kernels` runs their
//! ops.

use candle_core::{DType, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use super::lora::{Adapter, LoraSpec};
use crate::config::InitScheme;
use crate::kernels::{dropout, Activation, Mode, Product};

/// How a model's layers are made: their weights' initialisation, from `[model]` init
/// settings, and the LoRA adapters of `[lora]`.
#[derive(Debug, Clone, Copy)]
pub struct InitPolicy {
    pub scheme: InitScheme,
    pub std: f64,
    /// Multiplier for the output projection of each residual branch.
    pub residual_scale: f64,
    /// Gain of the branches' value, output and FFN matrices (DeepNorm's beta; 1 otherwise).
    pub branch_gain: f64,
    /// The adapters of a LoRA run.
    pub lora: Option<LoraSpec>,
}

impl InitPolicy {
    pub fn matrix(&self, fan_in: usize, fan_out: usize, residual_output: bool) -> Init {
        self.scaled_matrix(fan_in, fan_out, residual_output, 1.0)
    }

    /// A value, output or FFN matrix of a branch: `matrix` times `branch_gain`.
    pub fn branch_matrix(&self, fan_in: usize, fan_out: usize, residual_output: bool) -> Init {
        self.scaled_matrix(fan_in, fan_out, residual_output, self.branch_gain)
    }

    fn scaled_matrix(&self, fan_in: usize, fan_out: usize, residual_output: bool, gain: f64) -> Init {
        let scale = gain * if residual_output { self.residual_scale } else { 1.0 };
        match self.scheme {
            InitScheme::Normal => Init::Randn { mean: 0.0, stdev: self.std * scale },
            InitScheme::Xavier => {
                let bound = scale * (6.0 / (fan_in + fan_out) as f64).sqrt();
                Init::Uniform { lo: -bound, up: bound }
            }
        }
    }

    /// The adapter spec of the block's layer `name` (`q_proj`, `fc1`, ...), when LoRA targets it.
    pub fn lora_for(&self, name: &str) -> Option<&LoraSpec> {
        self.lora.as_ref().filter(|spec| spec.targets(name))
    }

    pub fn embedding(&self, dim: usize) -> Init {
        match self.scheme {
            InitScheme::Normal => Init::Randn { mean: 0.0, stdev: self.std },
            InitScheme::Xavier => Init::Randn { mean: 0.0, stdev: (dim as f64).powf(-0.5) },
        }
    }
}

/// y = x W^T + b over the last dimension, for input of any rank; with a LoRA adapter, W is
/// frozen and the layer applies W + scale B A. Holds only its tensors; the forward's backend
/// runs the product.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub adapter: Option<Adapter>,
}

impl Linear {
    pub fn new(fan_in: usize, fan_out: usize, bias: bool, init: Init, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints((fan_out, fan_in), "weight", init)?;
        let bias = if bias { Some(vb.get_with_hints(fan_out, "bias", Init::Const(0.0))?) } else { None };
        Ok(Self { weight, bias, adapter: None })
    }

    /// The layer with an adapter (`lora_a`, `lora_b` under `vb`, the layer's own prefix) when
    /// `lora` is given.
    pub fn with_lora(mut self, lora: Option<&LoraSpec>, vb: &VarBuilder) -> Result<Self> {
        if let Some(spec) = lora {
            let (fan_out, fan_in) = self.weight.dims2()?;
            self.adapter = Some(Adapter::new(spec, fan_in, fan_out, vb)?);
        }
        Ok(self)
    }

    pub fn from_weight(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias, adapter: None }
    }

    /// The weight the layer applies: W, or W + scale B A with an adapter (a graph node over A
    /// and B, so a fused kernel's weight gradient reaches the adapter).
    pub fn weight(&self) -> Result<Tensor> {
        match &self.adapter {
            None => Ok(self.weight.clone()),
            Some(adapter) => &self.weight + adapter.delta()?,
        }
    }

    /// Whether this forward applies the layer as one product with [`Linear::weight`]: not while
    /// training an adapter with dropout on its input.
    fn is_one_product(&self, mode: &Mode) -> bool {
        !(mode.train && self.adapter.as_ref().is_some_and(|a| a.dropout > 0.0))
    }

    /// The layer as one product in this forward (W with its adapter merged, and b), for a
    /// backend that fuses it into a larger node; None while an adapter trains under dropout
    /// (then the layer is two products).
    pub fn product(&self, mode: &Mode) -> Result<Option<Product<'_>>> {
        match self.is_one_product(mode) {
            true => Ok(Some(Product { weight: self.weight()?, bias: self.bias.as_ref() })),
            false => Ok(None),
        }
    }

    pub fn forward(&self, x: &Tensor, mode: &mut Mode) -> Result<Tensor> {
        let ops = mode.backend();
        match &self.adapter {
            Some(adapter) if !self.is_one_product(mode) => {
                let base = ops.linear(x, &self.weight, self.bias.as_ref())?;
                let input = dropout(x, adapter.dropout, mode)?;
                let low = ops.linear(&ops.linear(&input, &adapter.a, None)?, &adapter.b, None)?;
                base + (low * adapter.scale)?
            }
            _ => ops.linear(x, &self.weight()?, self.bias.as_ref()),
        }
    }

    /// act(x W^T + b), one node on the CPU.
    pub fn forward_act(&self, x: &Tensor, act: Activation, mode: &mut Mode) -> Result<Tensor> {
        match self.is_one_product(mode) {
            true => mode.backend().linear_act(x, &self.weight()?, self.bias.as_ref(), act),
            false => mode.backend().activate(&self.forward(x, mode)?, act),
        }
    }
}

/// Token embedding table; also the output head when weights are tied.
#[derive(Debug, Clone)]
pub struct Embedding {
    pub weight: Tensor,
}

impl Embedding {
    pub fn new(count: usize, dim: usize, init: Init, vb: VarBuilder) -> Result<Self> {
        Ok(Self { weight: vb.get_with_hints((count, dim), "weight", init)? })
    }

    /// ids (B, T) u32 -> (B, T, dim) in `dtype`.
    pub fn forward(&self, ids: &Tensor, dtype: DType) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let dim = self.weight.dim(1)?;
        self.weight.to_dtype(dtype)?.index_select(&ids.flatten_all()?, 0)?.reshape((b, t, dim))
    }
}
