//! The Transformer block, one implementation for every stack: self-attention, optional
//! cross-attention (decoder of an encoder-decoder), and the position-wise FFN, each wrapped in
//! a residual with its norm(s) placed per [`NormPlacement`] (pre, post, sandwich, DeepNorm),
//! matched in one place: [`Block::residual`].

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::attention::{Attention, AttentionConfig, KvCache};
use super::layers::{InitPolicy, Linear};
use super::norm::{DeepNorm, Norm, NormKind, StackRole};
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
    /// Dropout on the attention weights.
    pub attn_dropout: f64,
    /// Dropout on each branch's output, before the residual add.
    pub resid_dropout: f64,
    /// Biases of the query/key/value projections, the attention output, the FFN.
    pub biases: (bool, bool, bool),
    pub layer_norm_eps: f64,
    pub norm_kind: NormKind,
    /// Key/value heads (grouped-query attention when fewer than `n_head`).
    pub n_kv_head: usize,
    /// Shaw's relative embeddings in self-attention, distances clipped at this.
    pub shaw_clip: Option<usize>,
    /// DeepNorm's residual multiplier and init gain (`DeepNorm::NONE` unless `norm = deepnorm`).
    pub deepnorm: DeepNorm,
    /// QK-norm in every attention layer.
    pub qk_norm: bool,
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
            attn_dropout: cfg.attn_dropout(),
            resid_dropout: cfg.resid_dropout(),
            biases: cfg.biases(),
            layer_norm_eps: cfg.layer_norm_eps,
            norm_kind: cfg.norm_kind,
            n_kv_head: cfg.n_kv_head(),
            shaw_clip: (cfg.positions == crate::config::Positions::Shaw).then_some(cfg.shaw_clip),
            deepnorm: match cfg.norm {
                NormPlacement::DeepNorm => DeepNorm::for_stack(stack_role(cfg, cross_attention)),
                _ => DeepNorm::NONE,
            },
            qk_norm: cfg.qk_norm,
            cross_attention,
        }
    }

    /// Self-attention's shape (`relative`: with Shaw's embeddings if configured) or
    /// cross-attention's (memory positions are not the queries': none).
    fn attention(&self, relative: bool) -> AttentionConfig {
        let (d_model, n_head, n_kv_head) = (self.d_model, self.n_head, self.n_kv_head);
        let shaw_clip = if relative { self.shaw_clip } else { None };
        let qk_norm = self.qk_norm.then_some((self.norm_kind, self.layer_norm_eps));
        let dropout = self.attn_dropout;
        let bias = (self.biases.0, self.biases.1);
        AttentionConfig { d_model, n_head, n_kv_head, bias, dropout, shaw_clip, qk_norm }
    }
}

/// Which of DeepNorm's stacks a block with (`cross_attention`) or without cross-attention is in.
fn stack_role(cfg: &crate::config::ModelConfig, cross_attention: bool) -> StackRole {
    let decoder_layers = cfg.n_decoder_layer.unwrap_or(cfg.n_layer);
    match (cfg.arch, cross_attention) {
        (crate::config::Architecture::EncoderDecoder, false) => {
            StackRole::Encoder { layers: cfg.n_layer, decoder_layers }
        }
        (crate::config::Architecture::EncoderDecoder, true) => StackRole::Decoder { layers: decoder_layers },
        _ => StackRole::Alone { layers: cfg.n_layer },
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
        let bias = cfg.biases.2;
        let layer = |name: &str, (fan_in, fan_out): (usize, usize), residual_output: bool| {
            let values = init.branch_matrix(fan_in, fan_out, residual_output);
            Linear::new(fan_in, fan_out, bias, values, vb.pp(name))?.with_lora(init.lora_for(name), &vb.pp(name))
        };
        Ok(Self {
            fc1: layer("fc1", (d, ff), false)?,
            gate: cfg.activation.gate().map(|_| layer("gate", (d, ff), false)).transpose()?,
            fc2: layer("fc2", (ff, d), true)?,
            activation: cfg.activation,
        })
    }

    pub fn forward(&self, x: &Tensor, mode: &mut Mode) -> Result<Tensor> {
        let hidden = match &self.gate {
            Some(gate) => (gate.forward_act(x, self.activation, mode)? * self.fc1.forward(x, mode)?)?,
            None => self.fc1.forward_act(x, self.activation, mode)?,
        };
        self.fc2.forward(&hidden, mode)
    }

    /// The whole FFN sub-layer (Add & Norm included) as one node, where the backend has one.
    fn sublayer(&self, x: &Tensor, norm: SublayerNorm, p: f64, mode: &mut Mode) -> Result<Option<Tensor>> {
        let layers = [Some(&self.fc1), self.gate.as_ref(), Some(&self.fc2)];
        if !layers.iter().flatten().all(|l| l.is_one_product(mode)) {
            return Ok(None);
        }
        let (fc1_w, fc2_w) = (self.fc1.weight()?, self.fc2.weight()?);
        let gate_w = self.gate.as_ref().map(Linear::weight).transpose()?;
        let gate = self.gate.as_ref().zip(gate_w.as_ref()).map(|(g, w)| (w, g.bias.as_ref()));
        let (fc1, fc2) = ((&fc1_w, self.fc1.bias.as_ref()), (&fc2_w, self.fc2.bias.as_ref()));
        kernels::ffn_sublayer(x, norm, gate, fc1, fc2, self.activation, p, mode)
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

/// The norms of one residual: the one placement puts before or after the branch, and the
/// sandwich's second norm on the branch's output.
#[derive(Debug, Clone)]
struct ResidualNorms {
    norm: Norm,
    branch_out: Option<Norm>,
}

#[derive(Debug, Clone)]
pub struct Block {
    ln_1: ResidualNorms,
    attn: Attention,
    cross: Option<(ResidualNorms, Attention)>,
    ln_2: ResidualNorms,
    mlp: Mlp,
    norm: NormPlacement,
    /// DeepNorm's residual multiplier (1 otherwise).
    alpha: f64,
    dropout: f64,
}

impl Block {
    /// Shaw's relative embedding tables of the self-attention, if it has them.
    pub fn relative_tables(&self) -> Vec<Tensor> {
        self.attn.relative().map(|r| vec![r.keys.clone(), r.values.clone()]).unwrap_or_default()
    }

    /// Names of this block's norms in the order they run.
    pub fn norm_names(&self) -> Vec<&'static str> {
        let sandwich = self.norm == NormPlacement::Sandwich;
        let mut names = vec!["ln_1"];
        names.extend(sandwich.then_some("ln_1_out"));
        if self.cross.is_some() {
            names.push("ln_cross");
            names.extend(sandwich.then_some("ln_cross_out"));
        }
        names.push("ln_2");
        names.extend(sandwich.then_some("ln_2_out"));
        names
    }

    /// The block's parameters under `vb`: `ln_1`, `attn.{q,k,v,out}_proj`, `ln_cross` and
    /// `cross_attn.*` (with cross-attention), `ln_2`, `mlp.fc1`, `mlp.fc2`; with the sandwich
    /// placement `ln_1_out`, `ln_cross_out`, `ln_2_out`.
    pub fn new(cfg: &BlockConfig, init: &InitPolicy, vb: VarBuilder) -> Result<Self> {
        let init = &InitPolicy { branch_gain: cfg.deepnorm.beta, ..*init };
        let attention = |name: &str, relative| Attention::new(&cfg.attention(relative), init, vb.pp(name));
        let norms = |name: &str| -> Result<ResidualNorms> {
            let norm = |name: &str| Norm::new(cfg.norm_kind, cfg.d_model, cfg.layer_norm_eps, vb.pp(name));
            let branch_out = (cfg.norm == NormPlacement::Sandwich).then(|| norm(&format!("{name}_out"))).transpose()?;
            Ok(ResidualNorms { norm: norm(name)?, branch_out })
        };
        let cross =
            if cfg.cross_attention { Some((norms("ln_cross")?, attention("cross_attn", false)?)) } else { None };
        Ok(Self {
            ln_1: norms("ln_1")?,
            attn: attention("attn", true)?,
            cross,
            ln_2: norms("ln_2")?,
            mlp: Mlp::new(cfg, init, vb.pp("mlp"))?,
            norm: cfg.norm,
            alpha: cfg.deepnorm.alpha,
            dropout: cfg.resid_dropout,
        })
    }

    /// The residual's norm(s) as a fused sub-layer node takes them: pre, post, DeepNorm (post
    /// with the skip scaled by alpha), sandwich (pre, and the second norm on the branch).
    fn node_norm<'a>(&self, norms: &'a ResidualNorms) -> SublayerNorm<'a> {
        match (self.norm, &norms.branch_out) {
            (NormPlacement::Pre, _) | (NormPlacement::Sandwich, None) => norms.norm.as_sublayer(true, 1.0),
            (NormPlacement::Sandwich, Some(out)) => {
                let out = out.as_sublayer(true, 1.0);
                SublayerNorm { branch_out: Some((out.weight, out.bias)), ..norms.norm.as_sublayer(true, 1.0) }
            }
            (NormPlacement::Post | NormPlacement::DeepNorm, _) => norms.norm.as_sublayer(false, self.alpha),
        }
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
        if let Some(out) = self.mlp.sublayer(&x, self.node_norm(&self.ln_2), self.dropout, mode)? {
            return Ok(out);
        }
        self.residual(&x, &self.ln_2, mode, |h, mode| self.mlp.forward(h, mode))
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
            let (positions, norm) = ((&inputs.self_mask, inputs.rope), self.node_norm(&self.ln_1));
            if let Some(out) = self.attn.sublayer(x, norm, positions, self.dropout, mode)? {
                return Ok(out);
            }
        }
        self.residual(x, &self.ln_1, mode, |h, mode| {
            self.attn.forward(h, None, &inputs.self_mask, inputs.rope, cache, mode)
        })
    }

    /// Add & Norm, in the configured order. Pre-LN: x + f(LN(x)). Sandwich: x + LN'(f(LN(x))).
    /// Post-LN: LN(x + f(x)). DeepNorm: LN(alpha x + f(x)).
    fn residual(
        &self,
        x: &Tensor,
        norms: &ResidualNorms,
        mode: &mut Mode,
        branch: impl FnOnce(&Tensor, &mut Mode) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let norm = &norms.norm;
        match (self.norm, &norms.branch_out) {
            (NormPlacement::Pre, _) | (NormPlacement::Sandwich, None) => {
                mode.record_norm_input(x)?;
                let out = branch(&norm.forward(x, mode)?, mode)?;
                x + dropout(&out, self.dropout, mode)?
            }
            (NormPlacement::Sandwich, Some(branch_out)) => {
                mode.record_norm_input(x)?;
                let out = branch(&norm.forward(x, mode)?, mode)?;
                mode.record_norm_input(&out)?;
                x + dropout(&branch_out.forward(&out, mode)?, self.dropout, mode)?
            }
            (NormPlacement::Post | NormPlacement::DeepNorm, _) => {
                let out = branch(x, mode)?;
                let scaled = if self.alpha == 1.0 { x.clone() } else { (x * self.alpha)? };
                let sum = (scaled + dropout(&out, self.dropout, mode)?)?;
                mode.record_norm_input(&sum)?;
                norm.forward(&sum, mode)
            }
        }
    }
}
