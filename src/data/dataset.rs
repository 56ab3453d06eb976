//! A tokenized corpus, split into train and val, served as random contiguous blocks.
//! Which blocks a step sees is a pure function of (seed, step, micro-batch): resuming at step
//! N sees exactly the batches the uninterrupted run saw, with no data-loader state to save.

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};

use super::shards::TokenStream;
use crate::rng::Rng;

const TRAIN_STREAM: u64 = 1;
const EVAL_STREAM: u64 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Val,
}

pub struct TokenDataset {
    train: TokenStream,
    val: TokenStream,
    block_size: usize,
}

/// Reads a corpus as UTF-8, refusing a missing or empty file with its name.
pub fn read_corpus(path: &Path) -> Result<String> {
    if !path.exists() {
        bail!("corpus file {} does not exist (set `data.path`)", path.display());
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read corpus {} as UTF-8 text", path.display()))?;
    if text.trim().is_empty() {
        bail!("corpus file {} is empty", path.display());
    }
    Ok(text)
}

impl TokenDataset {
    /// Splits `tokens`: the first (1 - val_fraction) for training, the rest for validation.
    pub fn new(tokens: Vec<u32>, val_fraction: f64, block_size: usize, source: &Path) -> Result<Self> {
        let split = ((1.0 - val_fraction) * tokens.len() as f64) as usize;
        let val = tokens[split..].to_vec();
        let mut train = tokens;
        train.truncate(split);
        Self::from_streams(TokenStream::from_vec(train), TokenStream::from_vec(val), block_size, &source.display())
    }

    /// The two splits as given (a mapped shard set's), each needing a block and its target.
    pub fn from_streams(
        train: TokenStream,
        val: TokenStream,
        block_size: usize,
        source: &dyn std::fmt::Display,
    ) -> Result<Self> {
        let need = block_size + 1;
        if train.len() < need || val.len() < need {
            bail!(
                "corpus {source} has {} tokens: its train split has {} and its val split {}, but each needs at least \
                 block_size + 1 = {need} tokens; use a longer corpus, a smaller `model.block_size`, or another `data.val_fraction`",
                train.len() + val.len(),
                train.len(),
                val.len(),
            );
        }
        Ok(Self { train, val, block_size })
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn len(&self, split: Split) -> usize {
        self.tokens(split).len()
    }

    /// The token ids of `split`, in corpus order.
    pub fn tokens(&self, split: Split) -> &TokenStream {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
        }
    }

    /// Fills `inputs` and `targets` (batch * block_size each) with blocks drawn by `rng`.
    fn fill(&self, split: Split, batch_size: usize, rng: &mut Rng, inputs: &mut Vec<u32>, targets: &mut Vec<u32>) {
        let src = self.tokens(split);
        let t = self.block_size;
        inputs.clear();
        targets.clear();
        for _ in 0..batch_size {
            let start = rng.below(src.len() - t);
            src.copy(start, t, inputs);
            src.copy(start + 1, t, targets);
        }
        src.release();
    }

    /// The inputs of [`Self::train_batch`] (or, with `Split::Val` and `index` for `step`,
    /// [`Self::eval_batch`]) on the host, for tasks that corrupt them there (masked-lm).
    pub fn windows(
        &self,
        split: Split,
        seed: u64,
        step: usize,
        micro: usize,
        batch_size: usize,
        buf: &mut BatchBuffers,
    ) {
        let mut rng = match split {
            Split::Train => Rng::derived(seed, &[TRAIN_STREAM, step as u64, micro as u64]),
            Split::Val => Rng::derived(seed, &[EVAL_STREAM, step as u64]),
        };
        self.fill(split, batch_size, &mut rng, &mut buf.inputs, &mut buf.targets);
    }

    /// The training batch for (step, micro-batch) as (inputs, targets), each (B, T) u32.
    pub fn train_batch(
        &self,
        seed: u64,
        step: usize,
        micro: usize,
        batch_size: usize,
        device: &Device,
        buf: &mut BatchBuffers,
    ) -> Result<(Tensor, Tensor)> {
        let mut rng = Rng::derived(seed, &[TRAIN_STREAM, step as u64, micro as u64]);
        self.fill(Split::Train, batch_size, &mut rng, &mut buf.inputs, &mut buf.targets);
        buf.to_tensors(batch_size, self.block_size, device)
    }

    /// Non-overlapping blocks of the val split (each with its next-token targets).
    pub fn val_blocks(&self) -> usize {
        self.val.len().saturating_sub(1) / self.block_size
    }

    /// Batch `index` of the val split's non-overlapping blocks, in order, on the host: up to
    /// `batch_size` rows (the last batch may have fewer); returns its rows.
    pub fn val_block_windows(&self, index: usize, batch_size: usize, buf: &mut BatchBuffers) -> usize {
        let t = self.block_size;
        let first = index * batch_size;
        let rows = batch_size.min(self.val_blocks().saturating_sub(first));
        buf.inputs.clear();
        buf.targets.clear();
        for block in first..first + rows {
            self.val.copy(block * t, t, &mut buf.inputs);
            self.val.copy(block * t + 1, t, &mut buf.targets);
        }
        self.val.release();
        rows
    }

    /// [`Self::val_block_windows`] as (inputs, targets) tensors, each (rows, T) u32.
    pub fn val_block_batch(
        &self,
        index: usize,
        batch_size: usize,
        device: &Device,
        buf: &mut BatchBuffers,
    ) -> Result<(Tensor, Tensor)> {
        let rows = self.val_block_windows(index, batch_size, buf);
        buf.to_tensors(rows, self.block_size, device)
    }

    /// Evaluation batch `index`: the same blocks at every evaluation, so val curves compare.
    pub fn eval_batch(
        &self,
        seed: u64,
        index: usize,
        batch_size: usize,
        device: &Device,
        buf: &mut BatchBuffers,
    ) -> Result<(Tensor, Tensor)> {
        let mut rng = Rng::derived(seed, &[EVAL_STREAM, index as u64]);
        self.fill(Split::Val, batch_size, &mut rng, &mut buf.inputs, &mut buf.targets);
        buf.to_tensors(batch_size, self.block_size, device)
    }
}

/// Host buffers reused across steps, so the data path allocates nothing per step.
#[derive(Default)]
pub struct BatchBuffers {
    inputs: Vec<u32>,
    targets: Vec<u32>,
}

impl BatchBuffers {
    /// The input windows of the last fill, batch * block_size ids.
    pub fn inputs(&self) -> &[u32] {
        &self.inputs
    }

    fn to_tensors(&self, b: usize, t: usize, device: &Device) -> Result<(Tensor, Tensor)> {
        Ok((Tensor::from_slice(&self.inputs, (b, t), device)?, Tensor::from_slice(&self.targets, (b, t), device)?))
    }
}
