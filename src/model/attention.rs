//! Multi-head scaled dot-product attention: self-attention (causal or not) and cross-attention,
//! with its projections, rotary positions and a KV-cache for decoding; as a sub-layer's branch,
//! [`SelfAttentionBranch`] and [`CrossAttentionBranch`]. The attention itself runs on the
//! forward's backend.

use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};

use super::layers::{InitPolicy, Linear};
use super::norm::{Norm, NormKind};
use super::positions::Rope;
use crate::kernels::{AttentionSpec, Branch, BranchSpec, Mask, Mode, RelativeTables};

/// Keys and values seen so far by one attention layer while decoding, each (B, T_k, D_kv):
/// the key/value heads only (grouped-query attention caches n_kv_head of them).
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    pub keys: Option<Tensor>,
    pub values: Option<Tensor>,
}

impl KvCache {
    pub fn len(&self) -> usize {
        self.keys.as_ref().map_or(0, |k| k.dims()[1])
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The shape of one attention layer.
#[derive(Debug, Clone, Copy)]
pub struct AttentionConfig {
    pub d_model: usize,
    pub n_head: usize,
    /// Key/value heads: n_head (multi-head), fewer (grouped-query), 1 (multi-query).
    pub n_kv_head: usize,
    /// Biases of the query/key/value projections, and of the output projection.
    pub bias: (bool, bool),
    /// Dropout on the attention weights.
    pub dropout: f64,
    /// Shaw et al.'s relative key/value embeddings, distances clipped at this (self-attention).
    pub shaw_clip: Option<usize>,
    /// QK-norm: each head's queries and keys normalised (this norm, this epsilon) before the
    /// scores, one gain of head_dim shared by the heads.
    pub qk_norm: Option<(NormKind, f64)>,
}

/// Shaw et al.'s relative key and value embeddings of one layer, (2 * clip + 1, head_dim) each.
#[derive(Debug, Clone)]
pub struct ShawEmbeddings {
    pub keys: Tensor,
    pub values: Tensor,
    pub clip: usize,
}

impl ShawEmbeddings {
    /// `rel_keys` and `rel_values` under `vb`.
    fn new(clip: usize, head_dim: usize, init: &InitPolicy, vb: &VarBuilder) -> Result<Self> {
        let table = |name: &str| vb.get_with_hints((2 * clip + 1, head_dim), name, init.embedding(head_dim));
        Ok(Self { keys: table("rel_keys")?, values: table("rel_values")?, clip })
    }

    fn tables(&self) -> RelativeTables<'_> {
        RelativeTables { keys: &self.keys, values: &self.values, clip: self.clip }
    }
}

#[derive(Debug, Clone)]
pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    n_head: usize,
    n_kv_head: usize,
    dropout: f64,
    relative: Option<ShawEmbeddings>,
    /// QK-norm's norms of the queries and of the keys (`q_norm`, `k_norm`).
    qk_norm: Option<(Norm, Norm)>,
}

impl Attention {
    /// The projections under `vb`: `q_proj`, `k_proj`, `v_proj` (n_kv_head heads wide),
    /// `out_proj`; Shaw's `rel_keys` and `rel_values` when `shaw_clip` is set.
    pub fn new(cfg: &AttentionConfig, init: &InitPolicy, vb: VarBuilder) -> Result<Self> {
        let d = cfg.d_model;
        let d_kv = d / cfg.n_head.max(1) * cfg.n_kv_head;
        let (qkv_bias, out_bias) = cfg.bias;
        let proj = |name: &str, out: usize, values: Init, bias| {
            Linear::new(d, out, bias, values, vb.pp(name))?.with_lora(init.lora_for(name), &vb.pp(name))
        };
        Ok(Self {
            q_proj: proj("q_proj", d, init.matrix(d, d, false), qkv_bias)?,
            k_proj: proj("k_proj", d_kv, init.matrix(d, d_kv, false), qkv_bias)?,
            // DeepNorm scales the values' and the output's init (`branch_matrix`), not Q's and K's.
            v_proj: proj("v_proj", d_kv, init.branch_matrix(d, d_kv, false), qkv_bias)?,
            out_proj: proj("out_proj", d, init.branch_matrix(d, d, true), out_bias)?,
            n_head: cfg.n_head,
            n_kv_head: cfg.n_kv_head,
            dropout: cfg.dropout,
            relative: cfg
                .shaw_clip
                .map(|clip| ShawEmbeddings::new(clip, d / cfg.n_head.max(1), init, &vb))
                .transpose()?,
            qk_norm: cfg.qk_norm.map(|(kind, eps)| qk_norms(kind, d / cfg.n_head.max(1), eps, &vb)).transpose()?,
        })
    }

    /// Shaw's relative embeddings of this layer, if it has them.
    pub fn relative(&self) -> Option<&ShawEmbeddings> {
        self.relative.as_ref()
    }

    /// Keys or values (B, T_k, n_kv_head * head_dim) widened to every query head (B, T_k, D):
    /// each key/value head repeated for its group of n_head / n_kv_head query heads.
    fn repeat_kv(&self, x: Tensor) -> Result<Tensor> {
        let group = self.n_head / self.n_kv_head;
        if group == 1 {
            return Ok(x);
        }
        let (b, t, d_kv) = x.dims3()?;
        let head_dim = d_kv / self.n_kv_head;
        x.reshape((b, t, self.n_kv_head, 1, head_dim))? // (B, T, D_kv) -> (B, T, H_kv, 1, hd)
            .broadcast_as((b, t, self.n_kv_head, group, head_dim))? // -> (B, T, H_kv, group, hd)
            .reshape((b, t, self.n_head * head_dim)) // -> (B, T, D): query head h reads kv head h / group
    }

    fn all_projections(&self) -> [&Linear; 4] {
        [&self.q_proj, &self.k_proj, &self.v_proj, &self.out_proj]
    }

    /// The layer as self-attention over a sub-layer's input: keys under `mask`, rotary
    /// positions from `rope`, decoding with `cache` when given.
    pub fn on_self<'a>(
        &'a self,
        mask: &'a Mask<'a>,
        rope: Option<(&'a Rope, usize)>,
        cache: Option<&'a mut KvCache>,
    ) -> SelfAttentionBranch<'a> {
        SelfAttentionBranch { attention: self, mask, rope, cache }
    }

    /// The layer as cross-attention from a sub-layer's input to `memory` (the encoder's
    /// output), keys under `mask`, its keys and values kept in `cache` when given.
    pub fn on_memory<'a>(
        &'a self,
        memory: &'a Tensor,
        mask: &'a Mask<'a>,
        cache: Option<&'a mut KvCache>,
    ) -> CrossAttentionBranch<'a> {
        CrossAttentionBranch { attention: self, memory, mask, cache }
    }

    /// What self-attention over `x` is, for a backend that fuses the sub-layer: Opaque while a
    /// projection is two products (a LoRA adapter under dropout).
    fn self_spec<'a>(
        &'a self,
        x: &Tensor,
        mask: &'a Mask<'a>,
        rope: Option<(&'a Rope, usize)>,
        mode: &Mode,
    ) -> Result<BranchSpec<'a>> {
        let [q, k, v, o] = self.all_projections().map(|p| p.product(mode));
        let (Some(q), Some(k), Some(v), Some(o)) = (q?, k?, v?, o?) else { return Ok(BranchSpec::Opaque) };
        Ok(BranchSpec::SelfAttention(AttentionSpec {
            projections: [q, k, v, o],
            heads: (self.n_head, self.n_kv_head),
            rotary: rope.map(|(rope, offset)| rope.at(offset, x.dim(1)?)).transpose()?,
            qk_norm: self.qk_norm.as_ref().map(|(q, k)| [q.view(), k.view()]),
            relative: self.relative.as_ref().map(ShawEmbeddings::tables),
            mask,
            dropout: self.dropout,
        }))
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
        mask: &Mask,
        rope: Option<(&Rope, usize)>,
        cache: Option<&mut KvCache>,
        mode: &mut Mode,
    ) -> Result<Tensor> {
        let ops = mode.backend();
        let q = self.q_proj.forward(x, mode)?;
        let q = match &self.qk_norm {
            Some((q_norm, _)) => per_head(q_norm, &q, self.n_head, mode)?,
            None => q,
        };
        // Rotary positions apply to self-attention only: memory positions are not the queries'.
        let (q, rope) = match (memory, rope) {
            (None, Some((rope, offset))) => (rope.apply(&q, self.n_head, offset, ops)?, Some((rope, offset))),
            _ => (q, None),
        };
        let (k, v) = self.keys_values(x, memory, rope, cache, mode)?;
        let (k, v) = (self.repeat_kv(k)?, self.repeat_kv(v)?);
        let context = match (&self.relative, memory) {
            (Some(relative), None) => {
                let tables = relative.tables();
                ops.relative_attention(&q, &k, &v, self.n_head, mask, &tables, self.dropout, mode)?
            }
            _ => ops.attention(&q, &k, &v, self.n_head, mask, self.dropout, mode)?,
        };
        self.out_proj.forward(&context, mode)
    }

    /// Keys and values (B, T_k, n_kv_head * head_dim) for `forward`: projected from `memory`
    /// (or `x`), rotated, and joined with (or taken from) the cache, which holds the key/value
    /// heads only.
    fn keys_values(
        &self,
        x: &Tensor,
        memory: Option<&Tensor>,
        rope: Option<(&Rope, usize)>,
        cache: Option<&mut KvCache>,
        mode: &mut Mode,
    ) -> Result<(Tensor, Tensor)> {
        let project = |src: &Tensor, mode: &mut Mode| -> Result<(Tensor, Tensor)> {
            let k = self.k_proj.forward(src, mode)?;
            let k = match &self.qk_norm {
                Some((_, k_norm)) => per_head(k_norm, &k, self.n_kv_head, mode)?,
                None => k,
            };
            let k = match rope {
                Some((rope, offset)) => rope.apply(&k, self.n_kv_head, offset, mode.backend())?,
                None => k,
            };
            Ok((k, self.v_proj.forward(src, mode)?))
        };
        let Some(cache) = cache else { return project(memory.unwrap_or(x), mode) };
        let (k, v) = match (memory, &cache.keys, &cache.values) {
            // Cross-attention: the memory's keys and values, once per source.
            (Some(_), Some(k), Some(v)) => return Ok((k.clone(), v.clone())),
            (Some(memory), _, _) => project(memory, mode)?,
            (None, Some(k), Some(v)) => {
                let (k_new, v_new) = project(x, mode)?;
                (Tensor::cat(&[k, &k_new], 1)?, Tensor::cat(&[v, &v_new], 1)?) // along T
            }
            (None, _, _) => project(x, mode)?,
        };
        cache.keys = Some(k.clone());
        cache.values = Some(v.clone());
        Ok((k, v))
    }
}

/// QK-norm's two norms of one layer, over head_dim: `q_norm` and `k_norm` under `vb`.
fn qk_norms(kind: NormKind, head_dim: usize, eps: f64, vb: &VarBuilder) -> Result<(Norm, Norm)> {
    Ok((Norm::new(kind, head_dim, eps, vb.pp("q_norm"))?, Norm::new(kind, head_dim, eps, vb.pp("k_norm"))?))
}

/// `norm` over each head of x (B, T, heads * head_dim).
fn per_head(norm: &Norm, x: &Tensor, heads: usize, mode: &Mode) -> Result<Tensor> {
    let (b, t, d) = x.dims3()?;
    let x = x.reshape((b, t, heads, d / heads))?; // (B, T, D) -> (B, T, H, head_dim)
    norm.forward(&x, mode)?.reshape((b, t, d)) // -> (B, T, D)
}

/// Self-attention as a sub-layer's branch ([`Attention::on_self`]).
pub struct SelfAttentionBranch<'a> {
    attention: &'a Attention,
    mask: &'a Mask<'a>,
    rope: Option<(&'a Rope, usize)>,
    cache: Option<&'a mut KvCache>,
}

impl Branch for SelfAttentionBranch<'_> {
    fn forward(&mut self, h: &Tensor, mode: &mut Mode) -> Result<Tensor> {
        self.attention.forward(h, None, self.mask, self.rope, self.cache.as_deref_mut(), mode)
    }

    /// Opaque while decoding with a cache (the node attends over its own input only).
    fn spec(&self, x: &Tensor, mode: &Mode) -> Result<BranchSpec<'_>> {
        match self.cache {
            Some(_) => Ok(BranchSpec::Opaque),
            None => self.attention.self_spec(x, self.mask, self.rope, mode),
        }
    }
}

/// Cross-attention to the encoder's output as a sub-layer's branch ([`Attention::on_memory`]).
pub struct CrossAttentionBranch<'a> {
    attention: &'a Attention,
    memory: &'a Tensor,
    mask: &'a Mask<'a>,
    cache: Option<&'a mut KvCache>,
}

impl Branch for CrossAttentionBranch<'_> {
    fn forward(&mut self, h: &Tensor, mode: &mut Mode) -> Result<Tensor> {
        self.attention.forward(h, Some(self.memory), self.mask, None, self.cache.as_deref_mut(), mode)
    }
}
