//! Encoder-decoder Transformer (Vaswani et al.; T5/BART-style): an encoder stack of
//! bidirectional blocks over the source, and a decoder stack of blocks with masked
//! self-attention, then cross-attention over the encoder's output, then the FFN, all the same
//! `Block` as the GPT and BERT, under one pre-/post-LN switch. Source and target share one
//! embedding table (`shared`) or have one each; the output head is tied to the target
//! embedding or not.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::attention::{causal_mask, padding_mask, Mask};
use super::block::{run_blocks, Block, BlockCache, BlockConfig, BlockInputs, BlockNames};
use super::gpt::init_policy;
use super::layers::{cross_entropy_sum, dropout, log_softmax_last_dim, Embedding, LayerNorm, Linear, Mode};
use super::positions::PositionEncoding;
use crate::config::{Kernels, ModelConfig, NormPlacement};

/// The encoder's output and the source's key-padding mask, which cross-attention reads.
pub struct Memory {
    pub hidden: Tensor,
    /// Additive (B, 1, 1, S) padding mask, or None when the source has no padding.
    pub mask: Option<Tensor>,
}

impl Memory {
    fn mask(&self) -> Mask<'_> {
        self.mask.as_ref().map_or(Mask::None, Mask::Additive)
    }
}

/// One stack: token embedding (possibly shared), positions, blocks, and for pre-LN a final
/// LayerNorm.
#[derive(Debug, Clone)]
struct Stack {
    embedding: Embedding,
    positions: PositionEncoding,
    blocks: Vec<Block>,
    ln_f: Option<LayerNorm>,
}

#[derive(Debug, Clone)]
pub struct Seq2Seq {
    encoder: Stack,
    decoder: Stack,
    lm_head: Linear,
    causal: Tensor,
    embed_scale: f64,
    dropout: f64,
    block_size: usize,
    dtype: DType,
    kernels: Kernels,
}

impl Seq2Seq {
    /// Parameters: `shared.weight` (or `encoder.tok_emb.weight` and `decoder.tok_emb.weight`),
    /// `encoder.pos_emb`, `encoder.blocks.N.*`, `encoder.ln_f`, the same under `decoder.`
    /// (with `cross_attn` and `ln_cross` in each block), and `lm_head` when not tied.
    pub fn new(cfg: &ModelConfig, src_vocab: usize, tgt_vocab: usize, dtype: DType, vb: VarBuilder) -> Result<Self> {
        let init = init_policy(cfg);
        let d = cfg.d_model;
        let (src_emb, tgt_emb) = if cfg.share_embeddings {
            let shared = Embedding::new(src_vocab, d, init.embedding(d), vb.pp("shared"))?;
            (shared.clone(), shared)
        } else {
            (
                Embedding::new(src_vocab, d, init.embedding(d), vb.pp("encoder.tok_emb"))?,
                Embedding::new(tgt_vocab, d, init.embedding(d), vb.pp("decoder.tok_emb"))?,
            )
        };
        let stack = |name: &str, embedding: Embedding, layers: usize, cross_attention: bool| -> Result<Stack> {
            let block_cfg = BlockConfig::from_model(cfg, cross_attention);
            let vb = vb.pp(name);
            let blocks = (0..layers)
                .map(|i| Block::new(&block_cfg, &init, &BlockNames::TAPER, vb.pp(format!("blocks.{i}"))))
                .collect::<Result<Vec<_>>>()?;
            let ln_f = match cfg.norm {
                NormPlacement::Pre => Some(LayerNorm::new(d, cfg.layer_norm_eps, cfg.kernels, vb.pp("ln_f"))?),
                NormPlacement::Post => None,
            };
            Ok(Stack { embedding, positions: PositionEncoding::new(cfg, &init, vb.pp("pos_emb"))?, blocks, ln_f })
        };
        let lm_head = if cfg.tie_embeddings {
            Linear::from_weight(tgt_emb.weight.clone(), None, cfg.kernels)
        } else {
            Linear::new(d, tgt_vocab, false, init.matrix(d, tgt_vocab, false), cfg.kernels, vb.pp("lm_head"))?
        };
        Ok(Self {
            encoder: stack("encoder", src_emb, cfg.n_layer, false)?,
            decoder: stack("decoder", tgt_emb, cfg.n_decoder_layer.unwrap_or(cfg.n_layer), true)?,
            lm_head,
            causal: causal_mask(cfg.block_size, 0, vb.device())?,
            embed_scale: if cfg.scale_embeddings { (d as f64).sqrt() } else { 1.0 },
            dropout: cfg.dropout,
            block_size: cfg.block_size,
            dtype,
            kernels: cfg.kernels,
        })
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Embeds `ids` at positions `offset..` for `stack`: scaled token embedding + positions, dropout.
    fn embed<'a>(
        &self,
        stack: &'a Stack,
        ids: &Tensor,
        offset: usize,
        mode: &mut Mode,
    ) -> Result<(Tensor, Option<(&'a super::positions::Rope, usize)>)> {
        let (_, t) = ids.dims2()?;
        if offset + t > self.block_size {
            candle_core::bail!("sequence of {} tokens exceeds the model's block_size {}", offset + t, self.block_size);
        }
        let mut x = stack.embedding.forward(ids, self.dtype)?;
        if self.embed_scale != 1.0 {
            x = (x * self.embed_scale)?;
        }
        let (x, rope) = stack.positions.apply(x, offset, self.kernels)?;
        Ok((dropout(&x, self.dropout, mode)?, rope))
    }

    /// Runs the encoder over `src` (B, S) u32; `src_keep` (B, S) marks real tokens with 1
    /// (None: no padding).
    pub fn encode(&self, src: &Tensor, src_keep: Option<&Tensor>, mode: &mut Mode) -> Result<Memory> {
        let mask = src_keep.map(padding_mask).transpose()?;
        let (x, rope) = self.embed(&self.encoder, src, 0, mode)?;
        let inputs = BlockInputs { self_mask: mask.as_ref().map_or(Mask::None, Mask::Additive), memory: None, rope };
        let x = run_blocks(&self.encoder.blocks, x, &inputs, None, mode)?;
        let hidden = match &self.encoder.ln_f {
            Some(ln) => ln.forward(&x)?,
            None => x,
        };
        Ok(Memory { hidden, mask })
    }

    /// Decoder hidden states (B, T, D) for target inputs `tgt` (B, T) at positions `offset..`;
    /// `caches` (one per decoder block) make it incremental.
    fn decode_hidden(
        &self,
        tgt: &Tensor,
        memory: &Memory,
        offset: usize,
        caches: Option<&mut [BlockCache]>,
        mode: &mut Mode,
    ) -> Result<Tensor> {
        let (_, t) = tgt.dims2()?;
        let (x, rope) = self.embed(&self.decoder, tgt, offset, mode)?;
        // Padding follows a target's EOS, so the causal mask already keeps real queries off it.
        let bias = if t > 1 { Some(self.causal.narrow(0, offset, t)?.narrow(1, 0, offset + t)?) } else { None };
        let self_mask = bias.as_ref().map_or(Mask::None, |bias| Mask::Causal { offset, bias });
        let inputs = BlockInputs { self_mask, memory: Some((&memory.hidden, memory.mask())), rope };
        let x = run_blocks(&self.decoder.blocks, x, &inputs, caches, mode)?;
        match &self.decoder.ln_f {
            Some(ln) => ln.forward(&x),
            None => Ok(x),
        }
    }

    /// Logits (B, T, vocab) for every target position (teacher forcing).
    pub fn forward(&self, tgt_in: &Tensor, memory: &Memory, mode: &mut Mode) -> Result<Tensor> {
        self.lm_head.forward(&self.decode_hidden(tgt_in, memory, 0, None, mode)?)
    }

    /// Summed cross-entropy over the target positions `positions` (N) u32 of the flattened
    /// (B * T) batch, whose tokens are `targets` (N) u32: padding is left out by the caller.
    /// With `label_smoothing` e > 0 each term is (1 - e) * NLL + e * mean over the vocabulary
    /// of -log p.
    pub fn loss_sum(
        &self,
        logits: &Tensor,
        positions: &Tensor,
        targets: &Tensor,
        label_smoothing: f64,
    ) -> Result<Tensor> {
        let (b, t, v) = logits.dims3()?;
        let selected = logits.reshape((b * t, v))?.index_select(positions, 0)?;
        if label_smoothing == 0.0 {
            return cross_entropy_sum(&selected, targets, self.kernels);
        }
        let log_probs = log_softmax_last_dim(&selected)?;
        let nll = log_probs.gather(&targets.unsqueeze(1)?, 1)?.sum_all()?.neg()?;
        let uniform = (log_probs.sum_all()?.neg()? / v as f64)?;
        (nll * (1.0 - label_smoothing))? + (uniform * label_smoothing)?
    }

    pub fn new_caches(&self) -> Vec<BlockCache> {
        vec![BlockCache::default(); self.decoder.blocks.len()]
    }

    /// Feeds `tgt` (B, T) after what `caches` hold and returns the last position's logits
    /// (B, vocab) in f32. The first call fills each cross-attention cache with the memory's
    /// keys and values; later calls reuse them.
    pub fn decode_step(&self, tgt: &Tensor, memory: &Memory, caches: &mut [BlockCache]) -> Result<Tensor> {
        let offset = caches.first().map_or(0, |c| c.self_attn.len());
        let (_, t) = tgt.dims2()?;
        let hidden = self.decode_hidden(tgt, memory, offset, Some(caches), &mut Mode::eval())?;
        self.lm_head.forward(&hidden.narrow(1, t - 1, 1)?.squeeze(1)?)?.to_dtype(DType::F32)
    }
}
