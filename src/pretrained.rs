//! Pretrained Hugging Face checkpoints: a directory with `config.json`, `model.safetensors` and
//! `tokenizer.json`, loaded into taper's modules by the checkpoint's own tensor names.

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{DType, Device};

use crate::checkpoint::{load_matching, load_tensors, LoadReport};
use crate::config::{Kernels, NormPlacement};
use crate::model::bert::{BertConfig, BertEncoder};
use crate::model::ParamStore;

/// A BERT encoder with trainable parameters initialised from `dir`.
pub struct PretrainedBert {
    pub config: BertConfig,
    pub encoder: BertEncoder,
    pub params: ParamStore,
    pub report: LoadReport,
}

/// Loads the BERT encoder in `dir`. Tensors under `pooler.` (and the `position_ids` buffer) are
/// not part of the bare encoder and are ignored; with `norm = Pre` the final LayerNorm, which
/// no post-LN checkpoint has, starts fresh. Any other missing or extra tensor is an error that
/// names it. Checkpoints saved from a task model (`bert.` prefix) load too.
pub fn load_bert(
    dir: &Path,
    norm: NormPlacement,
    kernels: Kernels,
    device: &Device,
    seed: u64,
) -> Result<PretrainedBert> {
    let config = BertConfig::from_dir(dir)?;
    let params = ParamStore::new();
    let encoder = BertEncoder::new(&config, norm, kernels, DType::F32, params.var_builder(seed, device))
        .with_context(|| format!("cannot build the encoder described by {}/config.json", dir.display()))?;
    let file = dir.join("model.safetensors");
    let mut tensors = load_tensors(&file, device)?;
    if !tensors.is_empty() && tensors.keys().all(|k| k.starts_with("bert.")) {
        tensors = tensors.into_iter().map(|(k, v)| (k["bert.".len()..].to_string(), v)).collect();
    }
    let report =
        load_matching(&params, tensors, &file, &|name| name.starts_with("encoder.final_layer_norm."), &|name| {
            name == "embeddings.position_ids" || name.starts_with("pooler.")
        })?;
    Ok(PretrainedBert { config, encoder, params, report })
}
