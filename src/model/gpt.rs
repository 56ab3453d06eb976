//! Decoder-only Transformer (GPT): token + position embeddings, a stack of causal blocks, a
//! final LayerNorm for pre-LN, and a language-model head (tied to the token embedding or not).

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use super::block::{Block, BlockCache, BlockConfig};
use super::layers::{Embedding, InitPolicy, Linear};
use super::norm::Norm;
use super::positions::PositionEncoding;
use super::stack::{Embeddings, Stack, StackInputs};
use crate::config::ModelConfig;
use crate::kernels::Mode;

#[derive(Debug, Clone)]
pub struct Gpt {
    stack: Stack,
    lm_head: Linear,
}

pub fn init_policy(cfg: &ModelConfig) -> InitPolicy {
    InitPolicy {
        scheme: cfg.init,
        std: cfg.init_std,
        residual_scale: if cfg.scale_residual_init { 1.0 / (2.0 * cfg.n_layer as f64).sqrt() } else { 1.0 },
        branch_gain: 1.0,
        lora: cfg.lora,
    }
}

/// `n` blocks under `vb` at `prefix.N`, taper's names.
pub fn taper_blocks(cfg: &BlockConfig, init: &InitPolicy, n: usize, vb: &VarBuilder) -> Result<Vec<Block>> {
    (0..n).map(|i| Block::new(cfg, init, vb.pp(format!("blocks.{i}")))).collect()
}

/// The final norm a pre-LN stack ends with (`ln_f` under `vb`).
pub fn final_norm(cfg: &ModelConfig, vb: &VarBuilder) -> Result<Option<Norm>> {
    match cfg.norm.has_final_norm() {
        true => Ok(Some(Norm::new(cfg.norm_kind, cfg.d_model, cfg.layer_norm_eps, vb.pp("ln_f"))?)),
        false => Ok(None),
    }
}

impl Gpt {
    /// Builds the model over `vb` (parameter names are the module paths: `tok_emb.weight`,
    /// `blocks.0.attn.q_proj.weight`, ...). `dtype` is the compute precision; parameters keep
    /// whatever dtype `vb` gives them (f32 master weights when training).
    pub fn new(cfg: &ModelConfig, vocab_size: usize, dtype: DType, vb: VarBuilder) -> Result<Self> {
        let init = init_policy(cfg);
        let tok_emb = Embedding::new(vocab_size, cfg.d_model, init.embedding(cfg.d_model), vb.pp("tok_emb"))?;
        let lm_head = if cfg.tie_embeddings {
            Linear::from_weight(tok_emb.weight.clone(), None)
        } else {
            Linear::new(cfg.d_model, vocab_size, false, init.matrix(cfg.d_model, vocab_size, false), vb.pp("lm_head"))?
        };
        let stack = Stack {
            embeddings: Embeddings::tokens(tok_emb),
            positions: PositionEncoding::new(cfg, &init, true, vb.pp("pos_emb"))?,
            blocks: taper_blocks(&BlockConfig::from_model(cfg, false), &init, cfg.n_layer, &vb)?,
            final_norm: final_norm(cfg, &vb)?,
            causal: true,
            dropout: cfg.emb_dropout(),
            max_len: (cfg.block_size, "block_size"),
            dtype,
            kernels: cfg.kernels,
        };
        Ok(Self { stack, lm_head })
    }

    pub fn block_size(&self) -> usize {
        self.stack.max_len.0
    }
    pub fn device(&self) -> &Device {
        self.stack.device()
    }

    /// RMS of the input of every LayerNorm (the residual stream), by name, for one batch.
    pub fn norm_input_rms(&self, ids: &Tensor) -> Result<Vec<(String, f64)>> {
        self.stack.norm_input_rms(ids, StackInputs::default(), |i| format!("blocks.{i}"), "ln_f")
    }

    /// Logits (B, T, vocab) for every position.
    pub fn forward(&self, ids: &Tensor, mode: &mut Mode) -> Result<Tensor> {
        let hidden = self.stack.forward(ids, StackInputs::default(), None, mode)?;
        self.lm_head.forward(&hidden, mode)
    }

    /// Sum over all positions of the next-token cross-entropy; `targets` (B, T) u32.
    pub fn loss_sum(&self, ids: &Tensor, targets: &Tensor, mode: &mut Mode) -> Result<Tensor> {
        let logits = self.forward(ids, mode)?;
        let (b, t, v) = logits.dims3()?;
        mode.backend().cross_entropy_sum(&logits.reshape((b * t, v))?, &targets.flatten_all()?)
        // (B, T, V) -> (B*T, V)
    }

    /// The embedding tables (token, learned positions).
    pub fn embedding_tables(&self) -> Vec<Tensor> {
        self.stack.embedding_tables()
    }

    /// Fresh, empty caches for incremental decoding.
    pub fn new_caches(&self) -> Vec<BlockCache> {
        self.stack.new_caches()
    }

    /// Feeds `ids` (B, T) after whatever `caches` hold, and returns the logits of the last
    /// position only, (B, vocab), in f32.
    pub fn forward_cached(&self, ids: &Tensor, caches: &mut [BlockCache]) -> Result<Tensor> {
        let offset = caches.first().map_or(0, |c| c.self_attn.len());
        let mut mode = Mode::eval();
        let inputs = StackInputs { offset, ..Default::default() };
        let hidden = self.stack.forward(ids, inputs, Some(caches), &mut mode)?;
        last_position_logits(&self.lm_head, &hidden, &mut mode)
    }
}

/// The head's logits (B, vocab), in f32, for the last position of `hidden` (B, T, D).
pub fn last_position_logits(head: &Linear, hidden: &Tensor, mode: &mut Mode) -> Result<Tensor> {
    let t = hidden.dim(1)?;
    let last = hidden.narrow(1, t - 1, 1)?.squeeze(1)?; // (B, T, D) -> (B, D)
    head.forward(&last, mode)?.to_dtype(DType::F32)
}
