//! The norms a block places around its branches: LayerNorm (weight and bias), RMSNorm (weight
//! only), and `Identity` where a placement has no norm; in f32 whatever the activations' dtype,
//! their kernels behind the seam. Where each sits is decided once, when a block is built
//! (`Block::new`).

use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::kernels::{Mode, NormRef};

/// `model.norm_kind`: which norm the blocks (and a pre-LN stack's final norm) use.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum NormKind {
    /// LayerNorm: centred and scaled, with a gain and a bias (GPT-2, BERT).
    #[default]
    Layer,
    /// RMSNorm: scaled by the root mean square, gain only (Llama, T5).
    Rms,
}

/// DeepNorm's constants for one stack (Wang et al. 2022, DeepNet, Table 1): the residual's
/// multiplier alpha and the init gain beta of the branches' value, output and FFN weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeepNorm {
    pub alpha: f64,
    pub beta: f64,
}

/// Which stack DeepNorm's constants are for.
#[derive(Debug, Clone, Copy)]
pub enum StackRole {
    /// Encoder-only with N layers, or decoder-only with M layers: alpha (2N)^1/4, beta (8N)^-1/4.
    Alone { layers: usize },
    /// The encoder of an encoder-decoder (N encoder, M decoder layers):
    /// alpha 0.81 (N^4 M)^1/16, beta 0.87 (N^4 M)^-1/16.
    Encoder { layers: usize, decoder_layers: usize },
    /// The decoder of an encoder-decoder with M layers: alpha (3M)^1/4, beta (12M)^-1/4.
    Decoder { layers: usize },
}

impl DeepNorm {
    pub fn for_stack(role: StackRole) -> Self {
        match role {
            StackRole::Alone { layers } => {
                let n = layers as f64;
                Self { alpha: (2.0 * n).powf(0.25), beta: (8.0 * n).powf(-0.25) }
            }
            StackRole::Encoder { layers, decoder_layers } => {
                let nm = (layers as f64).powi(4) * decoder_layers as f64;
                Self { alpha: 0.81 * nm.powf(1.0 / 16.0), beta: 0.87 * nm.powf(-1.0 / 16.0) }
            }
            StackRole::Decoder { layers } => {
                let m = layers as f64;
                Self { alpha: (3.0 * m).powf(0.25), beta: (12.0 * m).powf(-0.25) }
            }
        }
    }

    /// No scaling: plain post-LN, and the init as configured.
    pub const NONE: Self = Self { alpha: 1.0, beta: 1.0 };
}

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
        mode.backend().layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

/// RMSNorm over the last dimension: x / sqrt(mean(x^2) + eps) * weight.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self { weight: vb.get_with_hints(dim, "weight", Init::Const(1.0))?, eps })
    }

    pub fn forward(&self, x: &Tensor, mode: &Mode) -> Result<Tensor> {
        mode.backend().rms_norm(x, &self.weight, self.eps)
    }
}

/// One of the norms, as `model.norm_kind` chooses, or none where a placement has none.
#[derive(Debug, Clone)]
pub enum Norm {
    Layer(LayerNorm),
    Rms(RmsNorm),
    /// No norm: the input passes as it is.
    Identity,
}

impl Norm {
    /// The norm's parameters under `vb`: `weight` (and `bias` for LayerNorm).
    pub fn new(kind: NormKind, dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(match kind {
            NormKind::Layer => Self::Layer(LayerNorm::new(dim, eps, vb)?),
            NormKind::Rms => Self::Rms(RmsNorm::new(dim, eps, vb)?),
        })
    }

    pub fn forward(&self, x: &Tensor, mode: &Mode) -> Result<Tensor> {
        match self {
            Self::Layer(norm) => norm.forward(x, mode),
            Self::Rms(norm) => norm.forward(x, mode),
            Self::Identity => Ok(x.clone()),
        }
    }

    pub fn is_identity(&self) -> bool {
        matches!(self, Self::Identity)
    }

    /// The norm as the kernels take it.
    pub fn view(&self) -> NormRef<'_> {
        match self {
            Self::Layer(n) => NormRef::Layer { weight: &n.weight, bias: &n.bias, eps: n.eps },
            Self::Rms(n) => NormRef::Rms { weight: &n.weight, eps: n.eps },
            Self::Identity => NormRef::Identity,
        }
    }
}
