//! Position information: a learned table or fixed sinusoids (added to the embeddings), rotary
//! embeddings (applied to queries and keys inside attention), a bias on the attention scores
//! (ALiBi's fixed slopes, T5's learned buckets), Shaw's relative embeddings (held by each
//! attention layer), or none.

use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use super::layers::{Embedding, InitPolicy};
use crate::config::{ModelConfig, Positions};
use crate::kernels::{Backend, Mode, Rotary, ScoreBias};

/// How a stack learns where its tokens are, as `model.positions` chooses.
#[derive(Debug, Clone)]
pub enum PositionEncoding {
    /// A learned (offset + block_size, d_model) table under `vb` (`weight`), added to the
    /// embeddings: position t is row offset + t.
    Learned { table: Embedding, offset: usize },
    /// The fixed sinusoids, added to the embeddings.
    Sinusoidal(Tensor),
    /// Rotary embeddings, applied to queries and keys inside self-attention.
    Rope(Rope),
    /// ALiBi's slope per head, a fixed penalty on self-attention's scores by distance.
    Alibi(Arc<[f32]>),
    /// T5's learned bias on self-attention's scores by bucketed distance.
    T5(RelativeBias),
    /// Shaw's relative embeddings: each self-attention layer holds its own.
    Shaw,
    /// No position information.
    None,
}

impl PositionEncoding {
    /// The stack's positions under `vb` (`weight` for a learned table, `rel_bias.weight` for
    /// T5's); `causal`: the stack is a decoder (T5's buckets then look back only).
    pub fn new(cfg: &ModelConfig, init: &InitPolicy, causal: bool, vb: VarBuilder) -> Result<Self> {
        let device = vb.device().clone();
        Ok(match cfg.positions {
            Positions::Learned => {
                let (rows, width) = (cfg.block_size + cfg.position_offset, cfg.embedding_dim());
                let table = Embedding::new(rows, width, init.embedding(width), vb)?;
                Self::Learned { table, offset: cfg.position_offset }
            }
            Positions::Sinusoidal => Self::Sinusoidal(sinusoidal_table(cfg.block_size, cfg.embedding_dim(), &device)?),
            Positions::Rope => Self::Rope(Rope::new(cfg.block_size, cfg.head_dim(), cfg.rope_theta, &device)?),
            Positions::Alibi => Self::Alibi(alibi_slopes(cfg.n_head).into()),
            Positions::T5 => {
                let buckets = Buckets { count: cfg.relative_buckets, max_distance: cfg.relative_max_distance, causal };
                let init = init.embedding(cfg.d_model);
                let table = Embedding::new(buckets.count, cfg.n_head, init, vb.pp("rel_bias"))?;
                Self::T5(RelativeBias { table, buckets })
            }
            Positions::Shaw => Self::Shaw,
            Positions::None => Self::None,
        })
    }

    /// What positions add to self-attention's scores for `t_q` queries over `t_k` keys.
    pub fn score_bias(&self, t_q: usize, t_k: usize) -> Result<Option<ScoreBias>> {
        Ok(match self {
            Self::Alibi(slopes) => Some(ScoreBias::Alibi(slopes.clone())),
            Self::T5(bias) => Some(ScoreBias::Learned(bias.forward(t_q, t_k)?)),
            _ => None,
        })
    }

    /// The learned table of a T5 bias (an embedding table: no weight decay).
    pub fn bias_table(&self) -> Option<&Tensor> {
        match self {
            Self::T5(bias) => Some(&bias.table.weight),
            _ => None,
        }
    }

    /// Adds the positions `offset..offset + T` to `x` (B, T, D), or leaves `x` as it is and
    /// returns the rotary table for the blocks.
    pub fn apply(&self, x: Tensor, offset: usize, mode: &Mode) -> Result<(Tensor, Option<(&Rope, usize)>)> {
        let (_, t, _) = x.dims3()?;
        let dtype: DType = x.dtype();
        match self {
            Self::Learned { table, offset: first } => {
                let pos = table.weight.narrow(0, first + offset, t)?.to_dtype(dtype)?;
                Ok((mode.backend().add_broadcast(&x, &pos)?, None))
            }
            Self::Sinusoidal(table) => {
                Ok((mode.backend().add_broadcast(&x, &table.narrow(0, offset, t)?.to_dtype(dtype)?)?, None))
            }
            Self::Rope(rope) => Ok((x, Some((rope, offset)))),
            Self::Alibi(_) | Self::T5(_) | Self::Shaw | Self::None => Ok((x, None)),
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
/// together): its tables; the rotation is an op of the backend (`Backend::rotate_halves`).
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

    /// x: (B, T, n_head * head_dim), heads side by side, its first position being `offset`,
    /// rotated by `ops`.
    pub fn apply(&self, x: &Tensor, n_head: usize, offset: usize, ops: &dyn Backend) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let x = x.reshape((b, t, n_head, d / n_head))?; // (B, T, D) -> (B, T, H, head_dim)
        let (cos, sin) = (self.cos.narrow(0, offset, t)?, self.sin.narrow(0, offset, t)?);
        ops.rotate_halves(&x, &cos, &sin)?.reshape((b, t, d)) // -> (B, T, D)
    }
}

/// ALiBi's head slopes (Press et al. 2022): the geometric sequence 2^(-8/n), 2^(-16/n), ... for
/// n a power of two; otherwise those of the power of two below n, then every other slope of
/// the next power of two up, as the paper's code does.
pub fn alibi_slopes(n_head: usize) -> Vec<f32> {
    let power_of_two = |n: usize| -> Vec<f64> {
        let start = 2f64.powf(-8.0 / n as f64);
        (1..=n).map(|i| start.powi(i as i32)).collect()
    };
    if n_head.is_power_of_two() {
        return power_of_two(n_head).into_iter().map(|s| s as f32).collect();
    }
    let below = 1usize << n_head.ilog2();
    let mut slopes = power_of_two(below);
    slopes.extend(power_of_two(2 * below).into_iter().step_by(2).take(n_head - below));
    slopes.into_iter().map(|s| s as f32).collect()
}

/// T5's bucketing of relative distances.
#[derive(Debug, Clone, Copy)]
pub struct Buckets {
    pub count: usize,
    pub max_distance: usize,
    /// Decoder: only distances to earlier keys count (later ones share bucket 0).
    pub causal: bool,
}

impl Buckets {
    /// The bucket of `relative` = key position - query position, as T5's
    /// `_relative_position_bucket`: an encoder gives each direction half the buckets; within a
    /// direction, distances below half the buckets get one each, longer ones share buckets
    /// spaced logarithmically up to `max_distance`.
    pub fn of(&self, relative: i64) -> usize {
        let (mut count, mut bucket) = (self.count, 0);
        let distance = if self.causal {
            (-relative).max(0) as usize
        } else {
            count /= 2;
            if relative > 0 {
                bucket += count;
            }
            relative.unsigned_abs() as usize
        };
        let exact = count / 2;
        if distance < exact {
            return bucket + distance;
        }
        let log_ratio = (distance as f64 / exact as f64).ln() / (self.max_distance as f64 / exact as f64).ln();
        let large = exact + (log_ratio * (count - exact) as f64) as usize;
        bucket + large.min(count - 1)
    }
}

/// T5's relative attention bias: a learned (buckets, n_head) table, looked up by bucketed
/// distance for every (query, key) pair.
#[derive(Debug, Clone)]
pub struct RelativeBias {
    pub table: Embedding,
    pub buckets: Buckets,
}

impl RelativeBias {
    /// The bias (1, H, T_q, T_k) for query i at position T_k - T_q + i and key j.
    pub fn forward(&self, t_q: usize, t_k: usize) -> Result<Tensor> {
        let first = (t_k - t_q) as i64;
        let rows: Vec<u32> =
            (0..t_q as i64).flat_map(|i| (0..t_k as i64).map(move |j| self.buckets.of(j - first - i) as u32)).collect();
        let rows = Tensor::from_vec(rows, t_q * t_k, self.table.weight.device())?;
        let n_head = self.table.weight.dim(1)?;
        self.table
            .weight
            .index_select(&rows, 0)? // (T_q*T_k, H)
            .reshape((t_q, t_k, n_head))? // -> (T_q, T_k, H)
            .permute((2, 0, 1))? // -> (H, T_q, T_k)
            .unsqueeze(0) // -> (1, H, T_q, T_k)
    }
}
