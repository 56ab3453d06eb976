//! The Transformer block, one implementation for every stack: self-attention, optional
//! cross-attention (decoder of an encoder-decoder), and the position-wise FFN, each a residual
//! sub-layer whose norms [`NormPlacement`] (pre, post, sandwich, DeepNorm) places once, when
//! the block is built ([`SublayerNorms`]).

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::attention::{Attention, AttentionConfig, KvCache};
use super::layers::{InitPolicy, Linear};
use super::norm::{DeepNorm, Norm, NormKind, StackRole};
use super::positions::Rope;
use crate::config::{Activation, NormPlacement};
use crate::kernels::{Branch, BranchSpec, FfnSpec, Mask, Mode, Residual};

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

    /// The FFN as a sub-layer's branch.
    fn branch(&self) -> FfnBranch<'_> {
        FfnBranch(self)
    }
}

/// The FFN as a sub-layer's branch.
struct FfnBranch<'a>(&'a Mlp);

impl Branch for FfnBranch<'_> {
    fn forward(&mut self, h: &Tensor, mode: &mut Mode) -> Result<Tensor> {
        self.0.forward(h, mode)
    }

    /// Opaque while a layer is two products (a LoRA adapter under dropout).
    fn spec(&self, _x: &Tensor, mode: &Mode) -> Result<BranchSpec<'_>> {
        let mlp = self.0;
        let gate = match &mlp.gate {
            Some(gate) => match gate.product(mode)? {
                Some(product) => Some(product),
                None => return Ok(BranchSpec::Opaque),
            },
            None => None,
        };
        let (Some(fc1), Some(fc2)) = (mlp.fc1.product(mode)?, mlp.fc2.product(mode)?) else {
            return Ok(BranchSpec::Opaque);
        };
        Ok(BranchSpec::Ffn(FfnSpec { fc1, gate, fc2, act: mlp.activation }))
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

/// The norms of one sub-layer, `Norm::Identity` where the placement has none: before the branch
/// (pre-LN, sandwich), on its output (sandwich's second), after the add (post-LN, DeepNorm).
#[derive(Debug, Clone)]
struct SublayerNorms {
    pre: Norm,
    out: Norm,
    post: Norm,
}

impl SublayerNorms {
    /// The norms `cfg.norm` places around a branch: `name` (`ln_1`, `ln_cross`, `ln_2`) and,
    /// for the sandwich, `{name}_out`, under `vb`.
    fn new(cfg: &BlockConfig, name: &str, vb: &VarBuilder) -> Result<Self> {
        let norm = |name: &str| Norm::new(cfg.norm_kind, cfg.d_model, cfg.layer_norm_eps, vb.pp(name));
        let none = || Norm::Identity;
        Ok(match cfg.norm {
            NormPlacement::Pre => Self { pre: norm(name)?, out: none(), post: none() },
            NormPlacement::Sandwich => Self { pre: norm(name)?, out: norm(&format!("{name}_out"))?, post: none() },
            NormPlacement::Post | NormPlacement::DeepNorm => Self { pre: none(), out: none(), post: norm(name)? },
        })
    }

    /// The names of the norms there are, `name` the sub-layer's, in the order they run.
    fn names(&self, name: &'static str, out_name: &'static str) -> Vec<&'static str> {
        [(&self.pre, name), (&self.out, out_name), (&self.post, name)]
            .into_iter()
            .filter(|(norm, _)| !norm.is_identity())
            .map(|(_, name)| name)
            .collect()
    }
}

#[derive(Debug, Clone)]
pub struct Block {
    ln_1: SublayerNorms,
    attn: Attention,
    cross: Option<(SublayerNorms, Attention)>,
    ln_2: SublayerNorms,
    mlp: Mlp,
    /// DeepNorm's residual multiplier (1 otherwise).
    alpha: f64,
    /// Dropout on each branch's output.
    dropout: f64,
}

impl Block {
    /// Shaw's relative embedding tables of the self-attention, if it has them.
    pub fn relative_tables(&self) -> Vec<Tensor> {
        self.attn.relative().map(|r| vec![r.keys.clone(), r.values.clone()]).unwrap_or_default()
    }

    /// Names of this block's norms in the order they run.
    pub fn norm_names(&self) -> Vec<&'static str> {
        let mut names = self.ln_1.names("ln_1", "ln_1_out");
        if let Some((norms, _)) = &self.cross {
            names.extend(norms.names("ln_cross", "ln_cross_out"));
        }
        names.extend(self.ln_2.names("ln_2", "ln_2_out"));
        names
    }

    /// The block's parameters under `vb`: `ln_1`, `attn.{q,k,v,out}_proj`, `ln_cross` and
    /// `cross_attn.*` (with cross-attention), `ln_2`, `mlp.fc1`, `mlp.fc2`; with the sandwich
    /// placement `ln_1_out`, `ln_cross_out`, `ln_2_out`.
    pub fn new(cfg: &BlockConfig, init: &InitPolicy, vb: VarBuilder) -> Result<Self> {
        let init = &InitPolicy { branch_gain: cfg.deepnorm.beta, ..*init };
        let attention = |name: &str, relative| Attention::new(&cfg.attention(relative), init, vb.pp(name));
        let cross = match cfg.cross_attention {
            true => Some((SublayerNorms::new(cfg, "ln_cross", &vb)?, attention("cross_attn", false)?)),
            false => None,
        };
        Ok(Self {
            ln_1: SublayerNorms::new(cfg, "ln_1", &vb)?,
            attn: attention("attn", true)?,
            cross,
            ln_2: SublayerNorms::new(cfg, "ln_2", &vb)?,
            mlp: Mlp::new(cfg, init, vb.pp("mlp"))?,
            alpha: cfg.deepnorm.alpha,
            dropout: cfg.resid_dropout,
        })
    }

    /// One of the block's sub-layers with `norms`, as the backends take it.
    fn sublayer<'a>(&self, norms: &'a SublayerNorms) -> Residual<'a> {
        let (pre, out, post) = (norms.pre.view(), norms.out.view(), norms.post.view());
        Residual { pre, out, post, alpha: self.alpha, dropout: self.dropout }
    }

    /// The recipe: self-attention, cross-attention (decoder of an encoder-decoder), FFN, each a
    /// residual sub-layer y = post(alpha x + dropout(out(f(pre(x))))) with its norms where the
    /// placement put them (`kernels::residual` draws it); the backend runs each.
    pub fn forward(
        &self,
        x: &Tensor,
        inputs: &BlockInputs,
        mut cache: Option<&mut BlockCache>,
        mode: &mut Mode,
    ) -> Result<Tensor> {
        let ops = mode.backend();
        let self_cache = cache.as_deref_mut().map(|c| &mut c.self_attn);
        let mut attention = self.attn.on_self(&inputs.self_mask, inputs.rope, self_cache);
        let x = ops.residual(x, &self.sublayer(&self.ln_1), &mut attention, mode)?;
        let x = match (&self.cross, &inputs.memory) {
            (Some((norms, cross)), Some((memory, memory_mask))) => {
                let mut cross = cross.on_memory(memory, memory_mask, cache.map(|c| &mut c.cross_attn));
                ops.residual(&x, &self.sublayer(norms), &mut cross, mode)?
            }
            (None, None) => x,
            (Some(_), None) => candle_core::bail!("this block has cross-attention but was given no encoder output"),
            (None, Some(_)) => candle_core::bail!("this block has no cross-attention but was given an encoder output"),
        };
        ops.residual(&x, &self.sublayer(&self.ln_2), &mut self.mlp.branch(), mode)
    }
}
