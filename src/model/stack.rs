//! One stack, shared by GPT, BERT and both sides of an encoder-decoder: embed -> positions ->
//! blocks -> final norm. The models differ only in what they build it with (names, which
//! embedding extras, causal or not) and in their heads.

use candle_core::{DType, Device, Result, Tensor};

use super::block::{run_blocks, Block, BlockCache, BlockInputs};
use super::layers::{Embedding, Linear};
use super::norm::{LayerNorm, Norm};
use super::positions::PositionEncoding;
use crate::kernels::{dropout, Kernels, Mask, Mode};

/// Token embedding and what a model adds to it before the positions, and after them.
#[derive(Debug, Clone)]
pub struct Embeddings {
    pub tokens: Embedding,
    /// Multiplier of the token embedding (sqrt(d_model) in the original Transformer).
    pub scale: f64,
    /// BERT's segment embedding, added to the tokens.
    pub token_types: Option<Embedding>,
    /// BERT's LayerNorm over the embedded input.
    pub norm: Option<LayerNorm>,
    /// ELECTRA's projection of narrower embeddings to the blocks' width, after the dropout.
    pub project: Option<Linear>,
}

impl Embeddings {
    /// Just the token table, unscaled.
    pub fn tokens(tokens: Embedding) -> Self {
        Self { tokens, scale: 1.0, token_types: None, norm: None, project: None }
    }
}

#[derive(Debug, Clone)]
pub struct Stack {
    pub embeddings: Embeddings,
    pub positions: PositionEncoding,
    pub blocks: Vec<Block>,
    /// The final norm of a pre-LN stack.
    pub final_norm: Option<Norm>,
    /// Self-attention sees only earlier positions (decoders).
    pub causal: bool,
    /// Dropout on the embedded input.
    pub dropout: f64,
    /// The most positions, and the config key that sets it (for the error message).
    pub max_len: (usize, &'static str),
    pub dtype: DType,
    pub kernels: Kernels,
}

/// What a stack's forward reads besides the token ids.
#[derive(Default)]
pub struct StackInputs<'a> {
    /// Position of the first token (incremental decoding).
    pub offset: usize,
    /// BERT's segment ids (B, T) u32 (None: all 0).
    pub token_types: Option<&'a Tensor>,
    /// (B, T): 1 for real tokens, 0 for padding (None: no padding).
    pub keep: Option<&'a Tensor>,
    /// The encoder's output and its mask, for a decoder's cross-attention.
    pub memory: Option<(&'a Tensor, Mask<'a>)>,
}

impl Stack {
    pub fn device(&self) -> &Device {
        self.embeddings.tokens.weight.device()
    }

    /// Hidden states (B, T, D) after the last block and the final norm. `caches` (one per
    /// block) make it incremental.
    pub fn forward(
        &self,
        ids: &Tensor,
        inputs: StackInputs,
        caches: Option<&mut [BlockCache]>,
        mode: &mut Mode,
    ) -> Result<Tensor> {
        mode.choose_backend(self.kernels, self.device(), self.dtype);
        let (_, t) = ids.dims2()?;
        let offset = inputs.offset;
        let (max_len, key) = self.max_len;
        if offset + t > max_len {
            candle_core::bail!("sequence of {} tokens exceeds the model's {key} {max_len}", offset + t);
        }
        let (x, rope) = self.embed(ids, offset, inputs.token_types, mode)?;
        let self_mask = match (self.causal, inputs.keep) {
            // A single new token may see every cached one: no mask needed.
            (true, _) if t == 1 => Mask::none(),
            (true, _) => Mask::causal(offset),
            (false, keep) => Mask::padding_or_none(keep),
        };
        // Self-attention's keys are positions 0..offset + t, its queries the last t.
        let self_mask = self_mask.with_bias(self.positions.score_bias(t, offset + t)?);
        let block_inputs = BlockInputs { self_mask, memory: inputs.memory, rope };
        let x = run_blocks(&self.blocks, x, &block_inputs, caches, mode)?;
        match &self.final_norm {
            Some(norm) => {
                mode.record_norm_input(&x)?;
                norm.forward(&x, mode)
            }
            None => Ok(x),
        }
    }

    /// Embedded input (B, T, D) at positions `offset..`, and the rotary table for the blocks.
    fn embed(
        &self,
        ids: &Tensor,
        offset: usize,
        token_types: Option<&Tensor>,
        mode: &mut Mode,
    ) -> Result<(Tensor, Option<(&super::positions::Rope, usize)>)> {
        let e = &self.embeddings;
        let mut x = e.tokens.forward(ids, self.dtype)?;
        if e.scale != 1.0 {
            x = (x * e.scale)?;
        }
        if let Some(table) = &e.token_types {
            let types = match token_types {
                Some(types) => types.clone(),
                None => ids.zeros_like()?,
            };
            x = (x + table.forward(&types, self.dtype)?)?;
        }
        let (mut x, rope) = self.positions.apply(x, offset, mode)?;
        if let Some(norm) = &e.norm {
            x = norm.forward(&x, mode)?;
        }
        let x = dropout(&x, self.dropout, mode)?;
        match &e.project {
            Some(project) => Ok((project.forward(&x, mode)?, rope)), // (B, T, E) -> (B, T, D)
            None => Ok((x, rope)),
        }
    }

    /// The stack's embedding tables: tokens, segments, learned positions, T5's bias table,
    /// Shaw's relative embeddings.
    pub fn embedding_tables(&self) -> Vec<Tensor> {
        let e = &self.embeddings;
        let mut tables = vec![e.tokens.weight.clone()];
        tables.extend(e.token_types.as_ref().map(|t| t.weight.clone()));
        if let PositionEncoding::Learned { table, .. } = &self.positions {
            tables.push(table.weight.clone());
        }
        tables.extend(self.positions.bias_table().cloned());
        tables.extend(self.blocks.iter().flat_map(Block::relative_tables));
        tables
    }

    /// Fresh, empty caches for incremental decoding.
    pub fn new_caches(&self) -> Vec<BlockCache> {
        vec![BlockCache::default(); self.blocks.len()]
    }

    /// RMS of the input of every norm (the residual stream), in forward order, for one forward
    /// over `ids`: block i's norms named `block_path(i).<norm>`, the final norm `final_norm_path`.
    pub fn norm_input_rms(
        &self,
        ids: &Tensor,
        inputs: StackInputs,
        block_path: impl Fn(usize) -> String,
        final_norm_path: &str,
    ) -> Result<Vec<(String, f64)>> {
        let mut mode = Mode::probing();
        self.forward(ids, inputs, None, &mut mode)?;
        let mut names: Vec<String> = Vec::new();
        for (i, block) in self.blocks.iter().enumerate() {
            names.extend(block.norm_names().iter().map(|n| format!("{}.{n}", block_path(i))));
        }
        if self.final_norm.is_some() {
            names.push(final_norm_path.into());
        }
        Ok(names.into_iter().zip(mode.take_probe()?).collect())
    }
}
