//! What a run's sizes cost in memory, said before anything that large is allocated: a shape
//! that cannot fit (`model.d_model = 1048576`, `train.batch_size = 10000000`) is refused with
//! the numbers and the key to change, instead of an abort in the allocator. The sums are
//! estimates of the kind `taper plan` will make (parameters exactly once built; activations by
//! the step's largest buffers); they guard against the impossible, not the tight.

use anyhow::{bail, Result};

use crate::config::{Architecture, ModelConfig};

/// Bytes the machine can still give (Linux's MemAvailable), if known.
pub fn available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `bytes` in GB, for messages.
pub fn gb(bytes: u128) -> String {
    format!("{:.1} GB", bytes as f64 / 1e9)
}

/// Training holds each parameter four times in f32: the weight, its gradient, AdamW's two moments.
pub const TRAINING_BYTES_PER_PARAMETER: u64 = 16;

/// The parameters of `model`'s blocks, all stacks (embeddings and head aside: their rows are
/// the vocabulary's, known once the tokenizer is).
pub fn block_parameters(model: &ModelConfig) -> u128 {
    let d = model.d_model as u128;
    let d_kv = (d / model.n_head.max(1) as u128) * model.n_kv_head().max(1) as u128;
    let ffn = if model.activation.gate().is_some() { 3 } else { 2 } * d * model.d_ff() as u128;
    let attention = 2 * d * d + 2 * d * d_kv;
    let layers = model.n_layer as u128;
    match model.arch {
        Architecture::EncoderDecoder => {
            let decoder_layers = model.n_decoder_layer.unwrap_or(model.n_layer) as u128;
            layers * (attention + ffn) + decoder_layers * (2 * attention + ffn)
        }
        Architecture::DecoderOnly | Architecture::EncoderOnly => layers * (attention + ffn),
    }
}

/// Refuses a `[model]` whose blocks alone cannot be held in `available` bytes at
/// `bytes_per_parameter` (16 to train them, 4 frozen).
pub fn check_model(model: &ModelConfig, available: u64, bytes_per_parameter: u64) -> Result<()> {
    let need = block_parameters(model) * bytes_per_parameter as u128;
    if need > available as u128 {
        bail!(
            "the model's blocks have {} parameters: they need {} (in f32; training one also holds its gradient \
             and AdamW's two moments), and this machine has {} available; make the model smaller \
             (`model.n_layer` = {}, `model.d_model` = {}, `model.d_ff` = {})",
            block_parameters(model),
            gb(need),
            gb(available as u128),
            model.n_layer,
            model.d_model,
            model.d_ff()
        );
    }
    Ok(())
}

/// A lower bound on one micro-batch's activations: each layer's input, kept for the backward,
/// and the logits, in f32 (the attention's and the FFN's buffers come on top; an encoder's
/// batches may be shorter than `block_size`, so this counts each token row once).
pub fn step_activation_bytes(model: &ModelConfig, batch: usize, vocab: usize) -> u128 {
    let (b, t, d) = (batch as u128, model.block_size as u128, model.d_model as u128);
    let layers = (model.n_layer + model.n_decoder_layer.unwrap_or(0)) as u128;
    4 * b * t * (layers * d + vocab as u128)
}

/// Refuses a step whose activations cannot fit beside the parameters' `held` bytes.
pub fn check_step(model: &ModelConfig, batch: usize, vocab: usize, held: u64, available: u64) -> Result<()> {
    let need = step_activation_bytes(model, batch, vocab);
    if need + held as u128 > available as u128 {
        bail!(
            "one micro-batch of {batch} x {} tokens needs at least {} of activations beside the model's {}, and this \
             machine has {} available: lower `train.batch_size` (raise `train.grad_accum` for the same batch) or \
             `model.block_size`",
            model.block_size,
            gb(need),
            gb(held as u128),
            gb(available as u128)
        );
    }
    Ok(())
}
