//! Encoder-decoder Transformer (Vaswani et al.; T5/BART-style): an encoder stack of
//! bidirectional blocks over the source, and a decoder stack of blocks with masked
//! self-attention, then cross-attention over the encoder's output, then the FFN, all the same
//! `Block` as the GPT and BERT, under one pre-/post-LN switch. Source and target share one
//! embedding table (`shared`) or have one each; the output head is tied to the target
//! embedding or not.

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

use super::block::{BlockCache, BlockConfig};
use super::gpt::{final_norm, init_policy, last_position_logits, taper_blocks};
use super::layers::{Embedding, Linear};
use super::positions::PositionEncoding;
use super::stack::{Embeddings, Stack, StackInputs};
use crate::config::ModelConfig;
use crate::kernels::{Mask, Mode};

/// The encoder's output and the source's key padding, which cross-attention reads.
pub struct Memory {
    pub hidden: Tensor,
    /// (B, S): 1 for real source tokens, 0 for padding; None when the source has no padding.
    pub keep: Option<Tensor>,
}

impl Memory {
    fn mask(&self) -> Mask<'_> {
        Mask::padding_or_none(self.keep.as_ref())
    }
}

#[derive(Debug, Clone)]
pub struct Seq2Seq {
    encoder: Stack,
    decoder: Stack,
    lm_head: Linear,
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
        let lm_head = if cfg.tie_embeddings {
            Linear::from_weight(tgt_emb.weight.clone(), None)
        } else {
            Linear::new(d, tgt_vocab, false, init.matrix(d, tgt_vocab, false), vb.pp("lm_head"))?
        };
        let stack = |name: &str, tokens: Embedding, layers: usize, decoder: bool| -> Result<Stack> {
            let vb = vb.pp(name);
            let scale = if cfg.scale_embeddings { (d as f64).sqrt() } else { 1.0 };
            Ok(Stack {
                embeddings: Embeddings { scale, ..Embeddings::tokens(tokens) },
                positions: PositionEncoding::new(cfg, &init, decoder, vb.pp("pos_emb"))?,
                blocks: taper_blocks(&BlockConfig::from_model(cfg, decoder), &init, layers, &vb)?,
                final_norm: final_norm(cfg, &vb)?,
                causal: decoder,
                dropout: cfg.emb_dropout(),
                max_len: (cfg.block_size, "block_size"),
                dtype,
                kernels: cfg.kernels,
            })
        };
        Ok(Self {
            encoder: stack("encoder", src_emb, cfg.n_layer, false)?,
            decoder: stack("decoder", tgt_emb, cfg.n_decoder_layer.unwrap_or(cfg.n_layer), true)?,
            lm_head,
        })
    }

    pub fn block_size(&self) -> usize {
        self.decoder.max_len.0
    }

    /// Runs the encoder over `src` (B, S) u32; `src_keep` (B, S) marks real tokens with 1
    /// (None: no padding).
    pub fn encode(&self, src: &Tensor, src_keep: Option<&Tensor>, mode: &mut Mode) -> Result<Memory> {
        let inputs = StackInputs { keep: src_keep, ..Default::default() };
        let hidden = self.encoder.forward(src, inputs, None, mode)?;
        Ok(Memory { hidden, keep: src_keep.cloned() })
    }

    /// Decoder hidden states (B, T, D) for target inputs `tgt` (B, T) at positions `offset..`;
    /// `caches` (one per decoder block) make it incremental. Padding follows a target's EOS,
    /// so the causal mask already keeps real queries off it.
    fn decode_hidden(
        &self,
        tgt: &Tensor,
        memory: &Memory,
        offset: usize,
        caches: Option<&mut [BlockCache]>,
        mode: &mut Mode,
    ) -> Result<Tensor> {
        let inputs = StackInputs { offset, memory: Some((&memory.hidden, memory.mask())), ..Default::default() };
        self.decoder.forward(tgt, inputs, caches, mode)
    }

    /// RMS of the input of every LayerNorm of both stacks (the residual streams), by name
    /// (`encoder.blocks.0.ln_1`, ..., `decoder.ln_f`), for one batch.
    pub fn norm_input_rms(&self, src: &Tensor, src_keep: &Tensor, tgt: &Tensor) -> Result<Vec<(String, f64)>> {
        let keep = StackInputs { keep: Some(src_keep), ..Default::default() };
        let mut rms = self.encoder.norm_input_rms(src, keep, |i| format!("encoder.blocks.{i}"), "encoder.ln_f")?;
        let memory = self.encode(src, Some(src_keep), &mut Mode::eval())?;
        let inputs = StackInputs { memory: Some((&memory.hidden, memory.mask())), ..Default::default() };
        rms.extend(self.decoder.norm_input_rms(tgt, inputs, |i| format!("decoder.blocks.{i}"), "decoder.ln_f")?);
        Ok(rms)
    }

    /// Logits (B, T, vocab) for every target position (teacher forcing).
    pub fn forward(&self, tgt_in: &Tensor, memory: &Memory, mode: &mut Mode) -> Result<Tensor> {
        let hidden = self.decode_hidden(tgt_in, memory, 0, None, mode)?;
        self.lm_head.forward(&hidden, mode)
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
        mode: &Mode,
    ) -> Result<Tensor> {
        let (b, t, v) = logits.dims3()?;
        let selected = logits.reshape((b * t, v))?.index_select(positions, 0)?; // (B*T, V) -> (N, V)
        if label_smoothing == 0.0 {
            return mode.backend().cross_entropy_sum(&selected, targets);
        }
        let log_probs = mode.backend().log_softmax_last_dim(&selected)?;
        let nll = log_probs.gather(&targets.unsqueeze(1)?, 1)?.sum_all()?.neg()?;
        let uniform = (log_probs.sum_all()?.neg()? / v as f64)?;
        (nll * (1.0 - label_smoothing))? + (uniform * label_smoothing)?
    }

    /// The embedding tables of both stacks (a shared table once per stack).
    pub fn embedding_tables(&self) -> Vec<Tensor> {
        let mut tables = self.encoder.embedding_tables();
        tables.extend(self.decoder.embedding_tables());
        tables
    }

    pub fn new_caches(&self) -> Vec<BlockCache> {
        self.decoder.new_caches()
    }

    /// Feeds `tgt` (B, T) after what `caches` hold and returns the last position's logits
    /// (B, vocab) in f32. The first call fills each cross-attention cache with the memory's
    /// keys and values; later calls reuse them.
    pub fn decode_step(&self, tgt: &Tensor, memory: &Memory, caches: &mut [BlockCache]) -> Result<Tensor> {
        let offset = caches.first().map_or(0, |c| c.self_attn.len());
        let mut mode = Mode::eval();
        let hidden = self.decode_hidden(tgt, memory, offset, Some(caches), &mut mode)?;
        last_position_logits(&self.lm_head, &hidden, &mut mode)
    }
}
