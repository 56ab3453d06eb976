//! The small modules every stack is made of: initialisation policy, linear layer, embedding
//! table. Each holds only its tensors; `crate::kernels` runs their ops.

use candle_core::{DType, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::config::InitScheme;
use crate::kernels::{self, Activation, Mode};

/// How a model's weights are initialised, from `[model]` init settings.
#[derive(Debug, Clone, Copy)]
pub struct InitPolicy {
    pub scheme: InitScheme,
    pub std: f64,
    /// Multiplier for the output projection of each residual branch.
    pub residual_scale: f64,
    /// Gain of the branches' value, output and FFN matrices (DeepNorm's beta; 1 otherwise).
    pub branch_gain: f64,
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

    pub fn embedding(&self, dim: usize) -> Init {
        match self.scheme {
            InitScheme::Normal => Init::Randn { mean: 0.0, stdev: self.std },
            InitScheme::Xavier => Init::Randn { mean: 0.0, stdev: (dim as f64).powf(-0.5) },
        }
    }
}

/// y = x W^T + b over the last dimension, for input of any rank. Holds only its tensors; the
/// seam (`kernels::linear`) picks the implementation for the forward's backend.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn new(fan_in: usize, fan_out: usize, bias: bool, init: Init, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints((fan_out, fan_in), "weight", init)?;
        let bias = if bias { Some(vb.get_with_hints(fan_out, "bias", Init::Const(0.0))?) } else { None };
        Ok(Self { weight, bias })
    }

    pub fn from_weight(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    pub fn forward(&self, x: &Tensor, mode: &Mode) -> Result<Tensor> {
        kernels::linear(x, &self.weight, self.bias.as_ref(), mode)
    }

    /// act(x W^T + b), one node on the CPU.
    pub fn forward_act(&self, x: &Tensor, act: Activation, mode: &Mode) -> Result<Tensor> {
        kernels::linear_act(x, &self.weight, self.bias.as_ref(), act, mode)
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
