//! Hugging Face's decoder families (GPT-2, Llama) and taper's decoder: which family a
//! config.json or a run is, the shape it fixes of `[model]`, and each family's tensor adapter
//! (`gpt2.rs`, `llama.rs`) behind one dispatch.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use serde::Serialize;
use serde_json::Value;

use super::{gpt2, llama};
use crate::kernels::Activation;
use crate::model::config::{Architecture, ModelConfig, NormPlacement, Positions};
use crate::model::norm::NormKind;

/// What a decoder checkpoint's config.json fixes of taper's `[model]`.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderShape {
    pub n_layer: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub d_model: usize,
    pub d_ff: usize,
    /// The most positions the checkpoint takes (its learned table's rows, for GPT-2).
    pub max_positions: usize,
    pub vocab_size: usize,
    pub norm_kind: NormKind,
    pub activation: Activation,
    pub positions: Positions,
    /// Biases of the query/key/value projections, the attention output, the FFN.
    pub biases: (bool, bool, bool),
    pub tie_embeddings: bool,
    pub eps: f64,
    pub rope_theta: f64,
    pub init_std: f64,
}

/// The tokenizer's start and end ids, for an exported config.json.
#[derive(Debug, Clone, Default)]
pub struct Specials {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
}

/// A value as the TOML config spells it (`"gelu-tanh"`).
pub fn show<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// Sets `ours` to the checkpoint's value; a value the user gave (other than the default) that
/// disagrees is an error naming the key.
fn agree<T: PartialEq + Serialize>(key: &str, ours: &mut T, default: T, theirs: T, source: &Path) -> Result<()> {
    if *ours != default && *ours != theirs {
        bail!(
            "`model.{key}` = {} disagrees with {} ({}); remove the key (`model.init_from` sets the architecture)",
            show(ours),
            source.display(),
            show(&theirs)
        );
    }
    *ours = theirs;
    Ok(())
}

/// Sets `model`'s bias keys to the checkpoint's `biases`; bias keys the user gave must agree.
fn adopt_biases(model: &mut ModelConfig, biases: (bool, bool, bool), source: &Path) -> Result<()> {
    let given = (model.bias, model.qkv_bias, model.out_bias, model.ffn_bias) != (true, None, None, None);
    if given && model.biases() != biases {
        bail!(
            "`model.bias` (or qkv_bias, out_bias, ffn_bias) disagrees with {}: its query/key/value, output and FFN \
             biases are {biases:?}; remove the keys (`model.init_from` sets the architecture)",
            source.display()
        );
    }
    let (qkv, out, ffn) = biases;
    model.bias = ffn;
    model.qkv_bias = (qkv != ffn).then_some(qkv);
    model.out_bias = (out != ffn).then_some(out);
    model.ffn_bias = None;
    Ok(())
}

impl DecoderShape {
    /// Fills `model`'s architecture from this shape (read from `source`). Keys the user gave
    /// must agree, except `block_size`, which may be shorter than the checkpoint's positions.
    pub fn adopt(&self, model: &mut ModelConfig, source: &Path) -> Result<()> {
        let defaults = ModelConfig::defaults();
        agree("n_layer", &mut model.n_layer, 0, self.n_layer, source)?;
        agree("n_head", &mut model.n_head, 0, self.n_head, source)?;
        agree("d_model", &mut model.d_model, 0, self.d_model, source)?;
        agree("n_kv_head", &mut model.n_kv_head, None, Some(self.n_kv_head), source)?;
        agree("d_ff", &mut model.d_ff, None, Some(self.d_ff), source)?;
        agree("vocab_size", &mut model.vocab_size, None, Some(self.vocab_size), source)?;
        agree("norm", &mut model.norm, defaults.norm, NormPlacement::Pre, source)?;
        agree("norm_kind", &mut model.norm_kind, defaults.norm_kind, self.norm_kind, source)?;
        agree("activation", &mut model.activation, defaults.activation, self.activation, source)?;
        agree("positions", &mut model.positions, defaults.positions, self.positions, source)?;
        adopt_biases(model, self.biases, source)?;
        agree("tie_embeddings", &mut model.tie_embeddings, defaults.tie_embeddings, self.tie_embeddings, source)?;
        agree("layer_norm_eps", &mut model.layer_norm_eps, defaults.layer_norm_eps, self.eps, source)?;
        agree("rope_theta", &mut model.rope_theta, defaults.rope_theta, self.rope_theta, source)?;
        agree("qk_norm", &mut model.qk_norm, false, false, source)?;
        model.init_std = self.init_std;
        match model.block_size {
            0 => model.block_size = self.max_positions,
            n if n > self.max_positions => bail!(
                "`model.block_size` = {n} is longer than {} allows ({} positions); remove the key or shorten it",
                source.display(),
                self.max_positions
            ),
            _ => {}
        }
        Ok(())
    }
}

/// A Hugging Face decoder family taper reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecoderFamily {
    Gpt2,
    Llama,
    /// Llama's layout with biases on the query, key and value projections only.
    Qwen2,
}

impl DecoderFamily {
    const ALL: [Self; 3] = [Self::Gpt2, Self::Llama, Self::Qwen2];

    /// The family of a config.json's `model_type`.
    pub fn of_model_type(model_type: &str) -> Option<Self> {
        match model_type {
            "gpt2" => Some(Self::Gpt2),
            "llama" => Some(Self::Llama),
            "qwen2" => Some(Self::Qwen2),
            _ => None,
        }
    }

    /// The transformers class an export is.
    pub fn architecture(self) -> &'static str {
        match self {
            Self::Gpt2 => "GPT2LMHeadModel",
            Self::Llama => "LlamaForCausalLM",
            Self::Qwen2 => "Qwen2ForCausalLM",
        }
    }

    /// The shape a config.json of this family (read from `source`) describes.
    pub fn shape(self, config: Value, source: &Path) -> Result<DecoderShape> {
        let shape = match self {
            Self::Gpt2 => gpt2::shape(config),
            Self::Llama => llama::shape(config, false),
            Self::Qwen2 => llama::shape(config, true),
        };
        shape.with_context(|| format!("{} does not describe a model taper can build", source.display()))
    }

    /// What keeps the decoder `model` from being of this family (empty: it is one).
    fn mismatches(self, model: &ModelConfig) -> Vec<String> {
        let mut out = match self {
            Self::Gpt2 => gpt2::mismatches(model),
            Self::Llama => llama::mismatches(model, false),
            Self::Qwen2 => llama::mismatches(model, true),
        };
        if model.norm != NormPlacement::Pre {
            out.push(format!("`model.norm = {}` (it is pre-LN)", show(&model.norm)));
        }
        if model.qk_norm {
            out.push("`model.qk_norm = true` (it has no QK-norm)".into());
        }
        out
    }

    /// The family a decoder-only run's `[model]` is, or an error naming the options that keep
    /// it from each.
    pub fn fitting(model: &ModelConfig) -> Result<Self> {
        if model.arch != Architecture::DecoderOnly {
            bail!("not a decoder-only model");
        }
        let notes: Vec<(Self, Vec<String>)> = Self::ALL.iter().map(|f| (*f, f.mismatches(model))).collect();
        if let Some((family, _)) = notes.iter().find(|(_, n)| n.is_empty()) {
            return Ok(*family);
        }
        let said: Vec<String> =
            notes.iter().map(|(f, n)| format!("as {} it has {}", f.architecture(), n.join(", "))).collect();
        bail!("this model fits no Hugging Face decoder family taper exports: {}", said.join("; "))
    }

    /// The config.json of an export of `model` with `vocab_size` rows.
    pub fn config_json(self, model: &ModelConfig, vocab_size: usize, specials: &Specials) -> Value {
        match self {
            Self::Gpt2 => gpt2::config_json(model, vocab_size, specials),
            Self::Llama => llama::config_json(model, vocab_size, specials, false),
            Self::Qwen2 => llama::config_json(model, vocab_size, specials, true),
        }
    }

    /// A checkpoint's tensors under taper's names, for a model of `block_size` positions with
    /// or without a tied head; what taper has no use for (buffers, a tied head's copy) is
    /// returned apart, by name.
    pub fn to_taper(
        self,
        tensors: HashMap<String, Tensor>,
        block_size: usize,
        tied: bool,
    ) -> Result<(HashMap<String, Tensor>, Vec<String>)> {
        let (mut out, mut unused) = match self {
            Self::Gpt2 => gpt2::to_taper(tensors, block_size)?,
            Self::Llama | Self::Qwen2 => llama::to_taper(tensors),
        };
        if tied && out.remove("lm_head.weight").is_some() {
            unused.push("lm_head.weight".into());
        }
        unused.sort();
        Ok((out, unused))
    }

    /// The checkpoint's name of the tensor that holds taper's `name` (whole or in part).
    pub fn checkpoint_name(self, name: &str) -> String {
        match self {
            Self::Gpt2 => gpt2::checkpoint_name(name),
            Self::Llama | Self::Qwen2 => llama::checkpoint_name(name),
        }
    }

    /// taper's tensors under this family's names and layouts.
    pub fn to_hf(self, tensors: &HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
        match self {
            Self::Gpt2 => gpt2::to_hf(tensors),
            Self::Llama | Self::Qwen2 => llama::to_hf(tensors),
        }
    }
}
