//! Position information: learned table, fixed sinusoids (added to the embeddings), or rotary
//! embeddings (applied to queries and keys inside attention).

use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::VarBuilder;

use super::layers::{Embedding, InitPolicy};
use crate::config::{ModelConfig, Positions};
use crate::kernels::{add_broadcast, Mode, Rotary};

/// How a stack learns where its tokens are, as `model.positions` chooses.
#[derive(Debug, Clone)]
pub enum PositionEncoding {
    /// A learned (block_size, d_model) table under `vb` (`weight`), added to the embeddings.
    Learned(Embedding),
    /// The fixed sinusoids, added to the embeddings.
    Sinusoidal(Tensor),
    /// Rotary embeddings, applied to queries and keys inside self-attention.
    Rope(Rope),
}

impl PositionEncoding {
    pub fn new(cfg: &ModelConfig, init: &InitPolicy, vb: VarBuilder) -> Result<Self> {
        let device = vb.device().clone();
        Ok(match cfg.positions {
            Positions::Learned => {
                Self::Learned(Embedding::new(cfg.block_size, cfg.d_model, init.embedding(cfg.d_model), vb)?)
            }
            Positions::Sinusoidal => Self::Sinusoidal(sinusoidal_table(cfg.block_size, cfg.d_model, &device)?),
            Positions::Rope => Self::Rope(Rope::new(cfg.block_size, cfg.head_dim(), cfg.rope_theta, &device)?),
        })
    }

    /// Adds the positions `offset..offset + T` to `x` (B, T, D), or leaves `x` as it is and
    /// returns the rotary table for the blocks.
    pub fn apply(&self, x: Tensor, offset: usize, mode: &Mode) -> Result<(Tensor, Option<(&Rope, usize)>)> {
        let (_, t, _) = x.dims3()?;
        let dtype: DType = x.dtype();
        match self {
            Self::Learned(table) => {
                let pos = table.weight.narrow(0, offset, t)?.to_dtype(dtype)?;
                Ok((add_broadcast(&x, &pos, mode)?, None))
            }
            Self::Sinusoidal(table) => {
                Ok((add_broadcast(&x, &table.narrow(0, offset, t)?.to_dtype(dtype)?, mode)?, None))
            }
            Self::Rope(rope) => Ok((x, Some((rope, offset)))),
        }
    }
}

/// The fixed sinusoidal table of Vaswani et al.: (positions, dim).
pub fn sinusoidal_table(positions: usize, dim: usize, device: &Device) -> Result<Tensor> {
    let mut values = vec![0f32; positions * dim];
    for pos in 0..positions {
        for i in 0..dim / 2 {
            let angle = pos as f64 / 10_000f64.powf(2.0 * i as f64 / dim as f64);
            values[pos * dim + 2 * i] = angle.sin() as f32;
            values[pos * dim + 2 * i + 1] = angle.cos() as f32;
        }
        if dim % 2 == 1 {
            values[pos * dim + dim - 1] = 0.0;
        }
    }
    Tensor::from_vec(values, (positions, dim), device)
}

/// Rotary position embedding (RoPE, GPT-NeoX layout: the two halves of each head rotate
/// together), written with differentiable ops: candle-nn's fused `rope` has no backward.
#[derive(Debug, Clone)]
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    pub fn new(positions: usize, head_dim: usize, theta: f64, device: &Device) -> Result<Self> {
        let half = head_dim / 2;
        let mut cos = vec![0f32; positions * half];
        let mut sin = vec![0f32; positions * half];
        for pos in 0..positions {
            for i in 0..half {
                let freq = theta.powf(-2.0 * i as f64 / head_dim as f64);
                let angle = pos as f64 * freq;
                cos[pos * half + i] = angle.cos() as f32;
                sin[pos * half + i] = angle.sin() as f32;
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (positions, half), device)?,
            sin: Tensor::from_vec(sin, (positions, half), device)?,
        })
    }

    /// The tables for positions `offset..offset + t`, as the kernels take them.
    pub fn at(&self, offset: usize, t: usize) -> Result<Rotary> {
        Ok(Rotary { cos: self.cos.narrow(0, offset, t)?, sin: self.sin.narrow(0, offset, t)? })
    }

    /// x: (B, T, n_head * head_dim), heads side by side, its first position being `offset`.
    pub fn apply(&self, x: &Tensor, n_head: usize, offset: usize) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let half = d / n_head / 2;
        let x = x.reshape((b, t, n_head, 2 * half))?; // (B, T, D) -> (B, T, H, head_dim)
                                                      // (T, half) -> (T, 1, half): one rotation per position, shared by the heads.
        let cos = self.cos.narrow(0, offset, t)?.to_dtype(x.dtype())?.unsqueeze(1)?;
        let sin = self.sin.narrow(0, offset, t)?.to_dtype(x.dtype())?.unsqueeze(1)?;
        let x1 = x.narrow(D::Minus1, 0, half)?;
        let x2 = x.narrow(D::Minus1, half, half)?;
        let rotated_1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
        let rotated_2 = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
        Tensor::cat(&[&rotated_1, &rotated_2], D::Minus1)?.reshape((b, t, d)) // -> (B, T, D)
    }
}
