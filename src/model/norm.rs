//! The norms a block places around its branches. Today: LayerNorm (weight and bias, in f32
//! whatever the activations' dtype). A new norm (RMSNorm) is a variant here, with its kernels
//! behind the seam; where it sits (pre, post) is matched in one place, `Block::residual`.

use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::kernels::{self, Mode, SublayerNorm};

/// LayerNorm over the last dimension.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(dim, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(dim, "bias", Init::Const(0.0))?;
        Ok(Self { weight, bias, eps })
    }

    pub fn forward(&self, x: &Tensor, mode: &Mode) -> Result<Tensor> {
        kernels::layer_norm(x, &self.weight, &self.bias, self.eps, mode)
    }

    /// This norm as a fused sub-layer's, before (`pre`) or after the branch.
    pub fn as_sublayer(&self, pre: bool) -> SublayerNorm<'_> {
        SublayerNorm { weight: &self.weight, bias: &self.bias, eps: self.eps, pre }
    }
}
