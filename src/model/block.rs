//! The Transformer block, one implementation for every stack: self-attention, optional
//! cross-attention (decoder of an encoder-decoder), and the position-wise FFN, each wrapped in
//! a residual with its norm placed per [`NormPlacement`], matched in one place: [`Block::residual`].

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::attention::{Attention, AttentionConfig, KvCache};
use super::layers::{InitPolicy, Linear};
use super::norm::{Norm, NormKind};
use super::positions::Rope;
use crate::config::{Activation, NormPlacement};
use crate::kernels::{self, dropout, Mask, Mode, SublayerNorm};

#[derive(Debug, Clone, Copy)]
pub struct BlockConfig {
    pub d_model: usize,
    pub n_head: usize,
    pub d_ff: usize,
    pub activation: Activation,
    pub norm: NormPlacement,
    pub dropout: f64,
    pub bias: bool,
    pub layer_norm_eps: f64,
    pub norm_kind: NormKind,
    /// Key/value heads (grouped-query attention when fewer than `n_head`).
    pub n_kv_head: usize,
    pub cross_attention: bool,
}

impl BlockConfig {
    /// The block a taper model config describes (with or without cross-attention).
    pub fn from_model(cfg: &crate::config::ModelConfig, cross_attention: bool) -> Self {
        Self {
            d_model: cfg.d_model,
            n_head: cfg.n_head,
            d_ff: cfg.d_ff(),
            activation: cfg.activation,
            norm: cfg.norm,
            dropout: cfg.dropout,
            bias: cfg.bias,
            layer_norm_eps: cfg.layer_norm_eps,
            norm_kind: cfg.norm_kind,
            n_kv_head: cfg.n_kv_head(),
            cross_attention,
        }
    }

    fn attention(&self) -> AttentionConfig {
        let (d_model, n_head, n_kv_head) = (self.d_model, self.n_head, self.n_kv_head);
        AttentionConfig { d_model, n_head, n_kv_head, bias: self.bias, dropout: self.dropout }
    }
}

/// Runs `x` through `blocks` in order, each with its cache when `caches` is given.
pub fn run_blocks(
    blocks: &[Block],
    mut x: Tensor,
    inputs: &BlockInputs,
    caches: Option<&mut [BlockCache]>,
    mode: &mut Mode,
) -> Result<Tensor> {
    match caches {
        Some(caches) => {
            for (block, cache) in blocks.iter().zip(caches.iter_mut()) {
                x = block.forward(&x, inputs, Some(cache), mode)?;
            }
        }
        None => {
            for block in blocks {
                x = block.forward(&x, inputs, None, mode)?;
            }
        }
    }
    Ok(x)
}

/// Position-wise feed-forward network: fc2(act(fc1(x))), or gated (swiglu, geglu, reglu):
/// fc2(act(gate(x)) * fc1(x)).
#[derive(Debug, Clone)]
pub struct Mlp {
    fc1: Linear,
    /// The gate's projection of a gated FFN.
    gate: Option<Linear>,
    fc2: Linear,
    activation: Activation,
}

impl Mlp {
    /// `fc1`, `gate` (gated FFNs), `fc2` under `vb`.
    pub fn new(cfg: &BlockConfig, init: &InitPolicy, vb: VarBuilder) -> Result<Self> {
        let (d, ff) = (cfg.d_model, cfg.d_ff);
        let input = |name: &str| Linear::new(d, ff, cfg.bias, init.matrix(d, ff, false), vb.pp(name));
        Ok(Self {
            fc1: input("fc1")?,
            gate: cfg.activation.gate().map(|_| input("gate")).transpose()?,
            fc2: Linear::new(ff, d, cfg.bias, init.matrix(ff, d, true), vb.pp("fc2"))?,
            activation: cfg.activation,
        })
    }

    pub fn forward(&self, x: &Tensor, mode: &Mode) -> Result<Tensor> {
        let hidden = match &self.gate {
            Some(gate) => (gate.forward_act(x, self.activation, mode)? * self.fc1.forward(x, mode)?)?,
            None => self.fc1.forward_act(x, self.activation, mode)?,
        };
        self.fc2.forward(&hidden, mode)
    }

    /// The whole FFN sub-layer (Add & Norm included) as one node, where the backend has one.
    fn sublayer(&self, x: &Tensor, norm: SublayerNorm, p: f64, mode: &mut Mode) -> Result<Option<Tensor>> {
        if self.gate.is_some() {
            return Ok(None);
        }
        let (fc1, fc2) = ((&self.fc1.weight, self.fc1.bias.as_ref()), (&self.fc2.weight, self.fc2.bias.as_ref()));
        kernels::ffn_sublayer(x, norm, fc1, fc2, self.activation, p, mode)
    }
}

/// Caches of one block while decoding.
#[derive(Debug, Clone, Default)]
pub struct BlockCache {
    pub self_attn: KvCache,
    pub cross_attn: KvCache,
}

/// Everything a block reads besides its input.
pub struct BlockInputs<'a> {
    /// Which keys self-attention sees (causal and/or key padding).
    pub self_mask: Mask<'a>,
    /// Encoder output and its padding mask, for cross-attention.
    pub memory: Option<(&'a Tensor, Mask<'a>)>,
    /// Rotary table and the position of the input's first token.
    pub rope: Option<(&'a Rope, usize)>,
}

#[derive(Debug, Clone)]
pub struct Block {
    ln_1: Norm,
    attn: Attention,
    cross: Option<(Norm, Attention)>,
    ln_2: Norm,
    mlp: Mlp,
    norm: NormPlacement,
    dropout: f64,
}

impl Block {
    /// Names of this block's LayerNorms in the order they run.
    pub fn norm_names(&self) -> Vec<&'static str> {
        if self.cross.is_some() {
            vec!["ln_1", "ln_cross", "ln_2"]
        } else {
            vec!["ln_1", "ln_2"]
        }
    }

    /// The block's parameters under `vb`: `ln_1`, `attn.{q,k,v,out}_proj`, `ln_cross` and
    /// `cross_attn.*` (with cross-attention), `ln_2`, `mlp.fc1`, `mlp.fc2`.
    pub fn new(cfg: &BlockConfig, init: &InitPolicy, vb: VarBuilder) -> Result<Self> {
        let attention = |name: &str| Attention::new(&cfg.attention(), init, vb.pp(name));
        let norm = |name: &str| Norm::new(cfg.norm_kind, cfg.d_model, cfg.layer_norm_eps, vb.pp(name));
        let cross = if cfg.cross_attention { Some((norm("ln_cross")?, attention("cross_attn")?)) } else { None };
        Ok(Self {
            ln_1: norm("ln_1")?,
            attn: attention("attn")?,
            cross,
            ln_2: norm("ln_2")?,
            mlp: Mlp::new(cfg, init, vb.pp("mlp"))?,
            norm: cfg.norm,
            dropout: cfg.dropout,
        })
    }

    /// The recipe: self-attention, cross-attention (decoder of an encoder-decoder), FFN, each
    /// in a residual with its norm (`residual`).
    pub fn forward(
        &self,
        x: &Tensor,
        inputs: &BlockInputs,
        mut cache: Option<&mut BlockCache>,
        mode: &mut Mode,
    ) -> Result<Tensor> {
        let self_cache = cache.as_deref_mut().map(|c| &mut c.self_attn);
        let x = self.self_attention(x, inputs, self_cache, mode)?;
        let x = match (&self.cross, &inputs.memory) {
            (Some((ln_cross, cross_attn)), Some((memory, memory_mask))) => {
                let cross_cache = cache.map(|c| &mut c.cross_attn);
                self.residual(&x, ln_cross, mode, |h, mode| {
                    cross_attn.forward(h, Some(memory), memory_mask, None, cross_cache, mode)
                })?
            }
            (None, None) => x,
            (Some(_), None) => candle_core::bail!("this block has cross-attention but was given no encoder output"),
            (None, Some(_)) => candle_core::bail!("this block has no cross-attention but was given an encoder output"),
        };
        let pre = self.norm == NormPlacement::Pre;
        match self.mlp.sublayer(&x, self.ln_2.as_sublayer(pre), self.dropout, mode)? {
            Some(out) => Ok(out),
            None => self.residual(&x, &self.ln_2, mode, |h, mode| self.mlp.forward(h, mode)),
        }
    }

    /// The self-attention sub-layer: one node where the backend has one (not while decoding
    /// with a cache), else the composed residual.
    fn self_attention(
        &self,
        x: &Tensor,
        inputs: &BlockInputs,
        cache: Option<&mut KvCache>,
        mode: &mut Mode,
    ) -> Result<Tensor> {
        if cache.is_none() {
            let norm = self.ln_1.as_sublayer(self.norm == NormPlacement::Pre);
            let positions = (&inputs.self_mask, inputs.rope);
            if let Some(out) = self.attn.sublayer(x, norm, positions, self.dropout, mode)? {
                return Ok(out);
            }
        }
        self.residual(x, &self.ln_1, mode, |h, mode| {
            self.attn.forward(h, None, &inputs.self_mask, inputs.rope, cache, mode)
        })
    }

    /// Add & Norm, in the configured order. Pre-LN: x + f(LN(x)). Post-LN: LN(x + f(x)).
    fn residual(
        &self,
        x: &Tensor,
        norm: &Norm,
        mode: &mut Mode,
        branch: impl FnOnce(&Tensor, &mut Mode) -> Result<Tensor>,
    ) -> Result<Tensor> {
        match self.norm {
            NormPlacement::Pre => {
                mode.record_norm_input(x)?;
                let out = branch(&norm.forward(x, mode)?, mode)?;
                x + dropout(&out, self.dropout, mode)?
            }
            NormPlacement::Post => {
                let out = branch(x, mode)?;
                let sum = (x + dropout(&out, self.dropout, mode)?)?;
                mode.record_norm_input(&sum)?;
                norm.forward(&sum, mode)
            }
        }
    }
}
