//! Multi-head scaled dot-product attention: self-attention (causal or not) and cross-attention,
//! with an additive mask for causality and key padding, RoPE, and a KV-cache for decoding.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::block::BlockConfig;
use super::fused;
use super::layers::{dropout, matmul, softmax_last_dim, InitPolicy, LayerNorm, Linear, Mode};
use super::positions::Rope;
use crate::config::Kernels;

/// Large enough to zero a softmax weight, small enough for f16/bf16 and to keep a fully masked
/// row finite (it then attends uniformly instead of producing NaN).
pub const MASKED: f32 = -1e4;

/// Keys and values seen so far by one attention layer while decoding.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    pub keys: Option<Tensor>,
    pub values: Option<Tensor>,
}

impl KvCache {
    pub fn len(&self) -> usize {
        self.keys.as_ref().map_or(0, |k| k.dims()[2])
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which keys each query may attend to.
#[derive(Debug, Clone, Copy)]
pub enum Mask<'a> {
    /// Every key.
    None,
    /// Query i, at position `offset + i`, sees keys 0..=offset+i. `bias` is the same mask as an
    /// additive (T_q, T_k) tensor, for the composed path; the fused softmax needs only `offset`.
    Causal { offset: usize, bias: &'a Tensor },
    /// An additive mask (0 or MASKED), broadcastable to (B, H, T_q, T_k): key padding.
    Additive(&'a Tensor),
}

/// The additive mask for causal self-attention: (q_len, offset + q_len), 0 where query
/// `offset + i` may see key `j` (j <= offset + i), MASKED elsewhere.
pub fn causal_mask(q_len: usize, offset: usize, device: &Device) -> Result<Tensor> {
    let k_len = offset + q_len;
    let values: Vec<f32> =
        (0..q_len).flat_map(|i| (0..k_len).map(move |j| if j <= offset + i { 0.0 } else { MASKED })).collect();
    Tensor::from_vec(values, (q_len, k_len), device)
}

/// The additive mask for key padding: `keep` (B, T_k) with 1 for real tokens, 0 for padding,
/// as (B, 1, 1, T_k), to broadcast over heads and queries.
pub fn padding_mask(keep: &Tensor) -> Result<Tensor> {
    let (b, t) = keep.dims2()?;
    let keep = keep.to_dtype(DType::F32)?;
    ((1.0 - keep)? * MASKED as f64)?.reshape((b, 1, 1, t))
}

#[derive(Debug, Clone)]
pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    n_head: usize,
    head_dim: usize,
    dropout: f64,
    kernels: Kernels,
}

impl Attention {
    // `names`: paths, under `vb`, of the query, key, value and output projections.
    pub fn new(cfg: &BlockConfig, init: &InitPolicy, names: [&str; 4], vb: VarBuilder) -> Result<Self> {
        let (d_model, n_head) = (cfg.d_model, cfg.n_head);
        let (bias, dropout, kernels) = (cfg.bias, cfg.dropout, cfg.kernels);
        let proj = |name: &str, residual_output: bool| {
            let init = init.matrix(d_model, d_model, residual_output);
            Linear::new(d_model, d_model, bias, init, kernels, vb.pp(name))
        };
        let [q, k, v, out] = names;
        Ok(Self {
            q_proj: proj(q, false)?,
            k_proj: proj(k, false)?,
            v_proj: proj(v, false)?,
            out_proj: proj(out, true)?,
            n_head,
            head_dim: d_model / n_head,
            dropout,
            kernels,
        })
    }

    /// (B, T, D) -> (B, H, T, head_dim), contiguous.
    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        x.reshape((b, t, self.n_head, self.head_dim))?.transpose(1, 2)?.contiguous()
    }

    /// The fused kernel's form of `mask`, when the fused kernel applies (CPU f32/f64, and a mask
    /// it knows: none, causal, or additive key padding of shape (B, 1, 1, T_k)).
    fn fused_mask(&self, x: &Tensor, mask: Mask) -> Result<Option<fused::AttentionMask>> {
        if self.kernels != Kernels::Fused || !fused::applies(x) {
            return Ok(None);
        }
        Ok(match mask {
            Mask::None => Some(fused::AttentionMask::default()),
            Mask::Causal { offset, .. } => Some(fused::AttentionMask { causal_offset: Some(offset), key_bias: None }),
            Mask::Additive(bias) => match bias.dims() {
                &[_, 1, 1, _] => Some(fused::AttentionMask {
                    causal_offset: None,
                    key_bias: Some(bias.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?),
                }),
                _ => None,
            },
        })
    }

    /// [Q | K | V] = x [Wq | Wk | Wv]^T + [bq | bk | bv], (B, T, 3D), in one fused product.
    fn packed_projection(&self, x: &Tensor) -> Result<Tensor> {
        let projections = [&self.q_proj, &self.k_proj, &self.v_proj];
        let weight = Tensor::cat(&projections.map(|p| &p.weight), 0)?.to_dtype(x.dtype())?;
        let bias = match projections.map(|p| p.bias.as_ref()) {
            [Some(q), Some(k), Some(v)] => Some(Tensor::cat(&[q, k, v], 0)?.to_dtype(x.dtype())?),
            _ => None,
        };
        fused::linear(x, &weight, bias.as_ref())
    }

    /// The whole self-attention sub-layer around this attention (`norm` before or after,
    /// dropout `residual_dropout` on its output, the residual add) as one fused CPU node, when
    /// its kernels apply (see `fused::self_attention_sublayer`): same function as the block's
    /// Add & Norm over `forward`, with the same dropout masks, fewer gradient buffers. None:
    /// the caller takes the composed path.
    pub fn fused_sublayer(
        &self,
        x: &Tensor,
        (norm, pre_norm): (&LayerNorm, bool),
        mask: Mask,
        residual_dropout: f64,
        mode: &mut Mode,
    ) -> Result<Option<Tensor>> {
        let projections = [&self.q_proj, &self.k_proj, &self.v_proj, &self.out_proj];
        let [Some(bq), Some(bk), Some(bv), Some(bo)] = projections.map(|p| p.bias.as_ref()) else { return Ok(None) };
        if !projections.iter().all(|p| p.runs_fused(x)) || !norm.runs_fused(x) {
            return Ok(None);
        }
        let Some(mask) = self.fused_mask(x, mask)? else { return Ok(None) };
        let (b, t, _) = x.dims3()?;
        // Drawn in the composed path's order: the weights' mask, then the output's.
        let dropout =
            (mode.train && self.dropout > 0.0).then(|| mode.dropout_mask(b * self.n_head * t * t, self.dropout));
        let residual_dropout =
            (mode.train && residual_dropout > 0.0).then(|| mode.dropout_mask(x.elem_count(), residual_dropout));
        let (first, second) = fused::pack_parameters(
            (&norm.weight, &norm.bias),
            &[&self.q_proj.weight, &self.k_proj.weight, &self.v_proj.weight, bq, bk, bv],
            &[&self.out_proj.weight, bo],
        )?;
        let norm = fused::SublayerNorm { pre_norm, eps: norm.eps };
        let attention = (mask, dropout);
        Ok(Some(fused::self_attention_sublayer(x, (&first, &second), self.n_head, attention, norm, residual_dropout)?))
    }

    /// `x`: queries' input (B, T_q, D). `memory`: keys' and values' input for cross-attention
    /// (None: self-attention over `x`). `mask`: which keys each query sees.
    /// `rope`: rotary table and the position of x's first token. `cache`: for self-attention,
    /// keys/values of earlier positions, extended here; for cross-attention, the memory's
    /// keys/values, computed on first use and reused.
    pub fn forward(
        &self,
        x: &Tensor,
        memory: Option<&Tensor>,
        mask: Mask,
        rope: Option<(&Rope, usize)>,
        cache: Option<&mut KvCache>,
        mode: &mut Mode,
    ) -> Result<Tensor> {
        let (b, t_q, d) = x.dims3()?;
        if cache.is_none() && rope.is_none() {
            if let Some(mask) = self.fused_mask(x, mask)? {
                let t_k = memory.unwrap_or(x).dim(1)?;
                let dropout = (mode.train && self.dropout > 0.0)
                    .then(|| mode.dropout_mask(b * self.n_head * t_q * t_k, self.dropout));
                let context = match memory {
                    // One product for all three projections (weights stacked: a 3x wider GEMM
                    // and one gradient for x instead of three).
                    None => fused::attention_packed(&self.packed_projection(x)?, self.n_head, mask, dropout)?,
                    Some(memory) => {
                        let q = self.q_proj.forward(x)?;
                        let (k, v) = (self.k_proj.forward(memory)?, self.v_proj.forward(memory)?);
                        fused::attention(&q, &k, &v, self.n_head, mask, dropout)?
                    }
                };
                return self.out_proj.forward(&context);
            }
        }
        let mut q = self.split_heads(&self.q_proj.forward(x)?)?;
        // Rotary positions apply to self-attention only: memory positions are not the queries'.
        let self_rope = if memory.is_none() { rope } else { None };
        let project_kv = |src: &Tensor| -> Result<(Tensor, Tensor)> {
            let mut k = self.split_heads(&self.k_proj.forward(src)?)?;
            let v = self.split_heads(&self.v_proj.forward(src)?)?;
            if let Some((rope, offset)) = self_rope {
                k = rope.apply(&k, offset)?;
            }
            Ok((k, v))
        };
        let (k, v) = match (memory, cache) {
            (None, None) => project_kv(x)?,
            (None, Some(cache)) => {
                let (k_new, v_new) = project_kv(x)?;
                let (k, v) = match (&cache.keys, &cache.values) {
                    (Some(k), Some(v)) => (Tensor::cat(&[k, &k_new], 2)?, Tensor::cat(&[v, &v_new], 2)?),
                    _ => (k_new, v_new),
                };
                cache.keys = Some(k.clone());
                cache.values = Some(v.clone());
                (k, v)
            }
            (Some(memory), None) => project_kv(memory)?,
            (Some(memory), Some(cache)) => match (&cache.keys, &cache.values) {
                (Some(k), Some(v)) => (k.clone(), v.clone()),
                _ => {
                    let (k, v) = project_kv(memory)?;
                    cache.keys = Some(k.clone());
                    cache.values = Some(v.clone());
                    (k, v)
                }
            },
        };
        if let Some((rope, offset)) = self_rope {
            q = rope.apply(&q, offset)?;
        }
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let scores = matmul(&q, &k.t()?)?;
        let fused = self.kernels == Kernels::Fused && fused::applies(&scores);
        let weights = match mask {
            Mask::None if fused => fused::scaled_softmax(&scores, scale, None)?,
            Mask::Causal { offset, .. } if fused => fused::scaled_softmax(&scores, scale, Some(offset))?,
            Mask::None => softmax_last_dim(&(scores * scale)?)?,
            Mask::Causal { bias, .. } | Mask::Additive(bias) => {
                softmax_last_dim(&(scores * scale)?.broadcast_add(&bias.to_dtype(q.dtype())?)?)?
            }
        };
        let weights = dropout(&weights, self.dropout, mode)?;
        let context = matmul(&weights, &v)?; // (B, H, T_q, head_dim)
        let context = context.transpose(1, 2)?.contiguous()?.reshape((b, t_q, d))?;
        self.out_proj.forward(&context)
    }
}
