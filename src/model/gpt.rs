//! Decoder-only Transformer (GPT): token + position embeddings, a stack of causal blocks, a
//! final LayerNorm for pre-LN, and a language-model head (tied to the token embedding or not).

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::attention::{causal_mask, Mask};
use super::block::{run_blocks, Block, BlockCache, BlockConfig, BlockInputs, BlockNames};
use super::layers::{cross_entropy_sum, dropout, Embedding, InitPolicy, LayerNorm, Linear, Mode};
use super::positions::PositionEncoding;
use crate::config::{Kernels, ModelConfig, NormPlacement};

#[derive(Debug, Clone)]
pub struct Gpt {
    tok_emb: Embedding,
    positions: PositionEncoding,
    blocks: Vec<Block>,
    ln_f: Option<LayerNorm>,
    lm_head: Linear,
    causal: Tensor,
    dropout: f64,
    block_size: usize,
    dtype: DType,
    kernels: Kernels,
}

pub fn init_policy(cfg: &ModelConfig) -> InitPolicy {
    InitPolicy {
        scheme: cfg.init,
        std: cfg.init_std,
        residual_scale: if cfg.scale_residual_init { 1.0 / (2.0 * cfg.n_layer as f64).sqrt() } else { 1.0 },
    }
}

impl Gpt {
    /// Builds the model over `vb` (parameter names are the module paths: `tok_emb.weight`,
    /// `blocks.0.attn.q_proj.weight`, ...). `dtype` is the compute precision; parameters keep
    /// whatever dtype `vb` gives them (f32 master weights when training).
    pub fn new(cfg: &ModelConfig, vocab_size: usize, dtype: DType, vb: VarBuilder) -> Result<Self> {
        let init = init_policy(cfg);
        let device = vb.device().clone();
        let tok_emb = Embedding::new(vocab_size, cfg.d_model, init.embedding(cfg.d_model), vb.pp("tok_emb"))?;
        let positions = PositionEncoding::new(cfg, &init, vb.pp("pos_emb"))?;
        let block_cfg = BlockConfig::from_model(cfg, false);
        let blocks = (0..cfg.n_layer)
            .map(|i| Block::new(&block_cfg, &init, &BlockNames::TAPER, vb.pp(format!("blocks.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let ln_f = match cfg.norm {
            NormPlacement::Pre => Some(LayerNorm::new(cfg.d_model, cfg.layer_norm_eps, cfg.kernels, vb.pp("ln_f"))?),
            NormPlacement::Post => None,
        };
        let lm_head = if cfg.tie_embeddings {
            Linear::from_weight(tok_emb.weight.clone(), None, cfg.kernels)
        } else {
            let init = init.matrix(cfg.d_model, vocab_size, false);
            Linear::new(cfg.d_model, vocab_size, false, init, cfg.kernels, vb.pp("lm_head"))?
        };
        Ok(Self {
            tok_emb,
            positions,
            blocks,
            ln_f,
            lm_head,
            causal: causal_mask(cfg.block_size, 0, &device)?,
            dropout: cfg.dropout,
            block_size: cfg.block_size,
            dtype,
            kernels: cfg.kernels,
        })
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }
    pub fn device(&self) -> &Device {
        self.tok_emb.weight.device()
    }

    /// Hidden states after the last block (and ln_f), (B, T, D). `ids` (B, T) u32 start at
    /// position `offset`; `caches` (one per block) make it incremental.
    fn hidden(
        &self,
        ids: &Tensor,
        offset: usize,
        caches: Option<&mut [BlockCache]>,
        mode: &mut Mode,
    ) -> Result<Tensor> {
        let (_, t) = ids.dims2()?;
        if offset + t > self.block_size {
            candle_core::bail!("sequence of {} tokens exceeds the model's block_size {}", offset + t, self.block_size);
        }
        let x = self.tok_emb.forward(ids, self.dtype)?;
        let (x, rope) = self.positions.apply(x, offset, self.kernels)?;
        let x = dropout(&x, self.dropout, mode)?;
        // A single new token may see every cached one: no mask needed.
        let bias = if t > 1 { Some(self.causal.narrow(0, offset, t)?.narrow(1, 0, offset + t)?) } else { None };
        let self_mask = match &bias {
            Some(bias) => Mask::Causal { offset, bias },
            None => Mask::None,
        };
        let inputs = BlockInputs { self_mask, memory: None, rope };
        let x = run_blocks(&self.blocks, x, &inputs, caches, mode)?;
        match &self.ln_f {
            Some(ln) => {
                mode.record_norm_input(&x)?;
                ln.forward(&x)
            }
            None => Ok(x),
        }
    }

    /// RMS of the input of every LayerNorm (the residual stream), by name, for one batch.
    pub fn norm_input_rms(&self, ids: &Tensor) -> Result<Vec<(String, f64)>> {
        let mut mode = Mode::probing();
        self.hidden(ids, 0, None, &mut mode)?;
        let mut names: Vec<String> = Vec::new();
        for (i, block) in self.blocks.iter().enumerate() {
            names.extend(block.norm_names().iter().map(|n| format!("blocks.{i}.{n}")));
        }
        if self.ln_f.is_some() {
            names.push("ln_f".into());
        }
        Ok(names.into_iter().zip(mode.take_probe()?).collect())
    }

    /// Logits (B, T, vocab) for every position.
    pub fn forward(&self, ids: &Tensor, mode: &mut Mode) -> Result<Tensor> {
        self.lm_head.forward(&self.hidden(ids, 0, None, mode)?)
    }

    /// Sum over all positions of the next-token cross-entropy; `targets` (B, T) u32.
    pub fn loss_sum(&self, ids: &Tensor, targets: &Tensor, mode: &mut Mode) -> Result<Tensor> {
        let logits = self.forward(ids, mode)?;
        let (b, t, v) = logits.dims3()?;
        cross_entropy_sum(&logits.reshape((b * t, v))?, &targets.flatten_all()?, self.kernels)
    }

    /// Fresh, empty caches for incremental decoding.
    pub fn new_caches(&self) -> Vec<BlockCache> {
        vec![BlockCache::default(); self.blocks.len()]
    }

    /// Feeds `ids` (B, T) after whatever `caches` hold, and returns the logits of the last
    /// position only, (B, vocab), in f32.
    pub fn forward_cached(&self, ids: &Tensor, caches: &mut [BlockCache]) -> Result<Tensor> {
        let offset = caches.first().map_or(0, |c| c.self_attn.len());
        let (_, t) = ids.dims2()?;
        let hidden = self.hidden(ids, offset, Some(caches), &mut Mode::eval())?;
        self.lm_head.forward(&hidden.narrow(1, t - 1, 1)?.squeeze(1)?)?.to_dtype(DType::F32)
    }
}
