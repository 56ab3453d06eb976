//! Hugging Face GPT-2 (`GPT2LMHeadModel`) for taper's decoder: its config.json, its tensor names,
//! and the two transforms a rename cannot do: the Conv1D weights are stored (in, out), and
//! `c_attn` packs the query, key and value projections in one matrix.

use std::collections::HashMap;
use std::sync::LazyLock;

use anyhow::{bail, Context as _, Result};
use candle_core::Tensor;
use serde::Deserialize;
use serde_json::{json, Value};

use super::decoder::{drop_tied_head, mismatches as decoder_mismatches, tokens as decoder_tokens};
use super::{show, Checkpoint, ContextLength, Export, Family, Head};
use super::{NameTable, Tensors, Tokens};
use crate::config::{Activation, Architecture, ModelConfig, NormKind, NormPlacement, Positions};

const RULES: [(&str, &str); 10] = [
    ("tok_emb", "transformer.wte"),
    ("pos_emb", "transformer.wpe"),
    ("blocks.{i}.ln_1", "transformer.h.{i}.ln_1"),
    // Split into q_proj, k_proj, v_proj (and packed back) by the transforms below.
    ("blocks.{i}.attn.qkv", "transformer.h.{i}.attn.c_attn"),
    ("blocks.{i}.attn.out_proj", "transformer.h.{i}.attn.c_proj"),
    ("blocks.{i}.ln_2", "transformer.h.{i}.ln_2"),
    ("blocks.{i}.mlp.fc1", "transformer.h.{i}.mlp.c_fc"),
    ("blocks.{i}.mlp.fc2", "transformer.h.{i}.mlp.c_proj"),
    ("ln_f", "transformer.ln_f"),
    ("lm_head", "lm_head"),
];

static TABLE: LazyLock<NameTable> = LazyLock::new(|| NameTable::new(RULES));

/// The fields of GPT-2's config.json taper reads (transformers' defaults where absent).
#[derive(Debug, Deserialize)]
struct Gpt2Config {
    #[serde(default = "d_vocab")]
    vocab_size: usize,
    #[serde(default = "d_positions")]
    n_positions: usize,
    #[serde(default = "d_width")]
    n_embd: usize,
    #[serde(default = "d_depth")]
    n_layer: usize,
    #[serde(default = "d_depth")]
    n_head: usize,
    n_inner: Option<usize>,
    #[serde(default = "d_activation")]
    activation_function: String,
    #[serde(default = "d_eps")]
    layer_norm_epsilon: f64,
    #[serde(default = "d_std")]
    initializer_range: f64,
    #[serde(default = "yes")]
    tie_word_embeddings: bool,
    #[serde(default = "yes")]
    scale_attn_weights: bool,
    #[serde(default)]
    scale_attn_by_inverse_layer_idx: bool,
}

fn d_vocab() -> usize {
    50257
}
fn d_positions() -> usize {
    1024
}
fn d_width() -> usize {
    768
}
fn d_depth() -> usize {
    12
}
fn d_activation() -> String {
    "gelu_new".into()
}
fn d_eps() -> f64 {
    1e-5
}
fn d_std() -> f64 {
    0.02
}
fn yes() -> bool {
    true
}

/// Hugging Face's name of an elementwise activation, and back.
const ACTIVATIONS: [(&str, Activation); 6] = [
    ("gelu_new", Activation::GeluTanh),
    ("gelu_pytorch_tanh", Activation::GeluTanh),
    ("gelu", Activation::Gelu),
    ("relu", Activation::Relu),
    ("silu", Activation::Silu),
    ("swish", Activation::Silu),
];

/// The architecture a GPT-2 config.json describes.
fn read(config: &Value) -> Result<Checkpoint> {
    let c: Gpt2Config = serde_json::from_value(config.clone())?;
    if !c.scale_attn_weights || c.scale_attn_by_inverse_layer_idx {
        bail!("scale_attn_weights = false or scale_attn_by_inverse_layer_idx = true: taper scales scores by 1/sqrt(head_dim) only");
    }
    let Some(&(_, activation)) = ACTIVATIONS.iter().find(|(name, _)| *name == c.activation_function) else {
        let known: Vec<&str> = ACTIVATIONS.iter().map(|(n, _)| *n).collect();
        bail!("activation_function `{}` is not one taper has (it has {})", c.activation_function, known.join(", "));
    };
    let model = ModelConfig {
        arch: Architecture::DecoderOnly,
        n_layer: c.n_layer,
        n_head: c.n_head,
        n_kv_head: Some(c.n_head),
        d_model: c.n_embd,
        d_ff: Some(c.n_inner.unwrap_or(4 * c.n_embd)),
        block_size: c.n_positions,
        norm: NormPlacement::Pre,
        norm_kind: NormKind::Layer,
        activation,
        positions: Positions::Learned,
        tie_embeddings: c.tie_word_embeddings,
        layer_norm_eps: c.layer_norm_epsilon,
        init_std: c.initializer_range,
        ..ModelConfig::defaults()
    };
    let context = ContextLength::AtMost(c.n_positions);
    Ok(Checkpoint { model, vocab_size: c.vocab_size, type_vocab_size: 0, context, dropout: None, run_chooses: &[] })
}

/// What keeps `model` from being a GPT-2, as `model.key = value` notes (empty: it is one).
fn mismatches(model: &ModelConfig) -> Vec<String> {
    let mut out = Vec::new();
    if model.norm_kind != NormKind::Layer {
        out.push("`model.norm_kind = \"rms\"` (GPT-2 has LayerNorm)".into());
    }
    if model.positions != Positions::Learned {
        out.push(format!("`model.positions = {}` (GPT-2 has learned positions)", show(&model.positions)));
    }
    if model.activation.gate().is_some() {
        out.push(format!("`model.activation = {}` (GPT-2's FFN is elementwise)", show(&model.activation)));
    }
    if model.n_kv_head() != model.n_head {
        out.push("`model.n_kv_head` (GPT-2 has one key/value head per query head)".into());
    }
    if model.biases() != (true, true, true) {
        out.push("`model.bias = false` or a group's (GPT-2's linear layers all have biases)".into());
    }
    out.extend(decoder_mismatches(model));
    out
}

/// GPT-2's config.json for `model` with `vocab_size` rows.
fn config_json(export: &Export) -> Value {
    let (model, vocab_size, specials) = (export.model, export.vocab_size, export.ids);
    let activation = ACTIVATIONS.iter().find(|(_, a)| *a == model.activation).map_or("gelu_new", |(n, _)| n);
    let d_ff = model.d_ff();
    json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": vocab_size,
        "n_positions": model.block_size,
        "n_ctx": model.block_size,
        "n_embd": model.d_model,
        "n_layer": model.n_layer,
        "n_head": model.n_head,
        "n_inner": if d_ff == 4 * model.d_model { Value::Null } else { json!(d_ff) },
        "activation_function": activation,
        "layer_norm_epsilon": model.layer_norm_eps,
        "initializer_range": model.init_std,
        "resid_pdrop": model.resid_dropout(),
        "embd_pdrop": model.emb_dropout(),
        "attn_pdrop": model.attn_dropout(),
        "tie_word_embeddings": model.tie_embeddings,
        "scale_attn_weights": true,
        "use_cache": true,
        "bos_token_id": specials.bos,
        "eos_token_id": specials.eos,
        "torch_dtype": "float32",
    })
}

/// GPT-2's attention-mask buffers of older checkpoints: not parameters.
fn is_buffer(name: &str) -> bool {
    name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias")
}

/// Conv1D layers: their weight is stored (in, out).
fn is_conv1d_weight(taper: &str) -> bool {
    ["attn.qkv.weight", "attn.out_proj.weight", "mlp.fc1.weight", "mlp.fc2.weight"].iter().any(|s| taper.ends_with(s))
}

/// A GPT-2 file's tensors under taper's names (`transformer.` optional, as in the original
/// checkpoints), the learned positions cut to `block_size` rows; the buffers it holds are
/// returned apart, by name. A tensor no rule covers keeps its name (the loader reports it).
fn to_taper(tensors: Tensors, block_size: usize) -> Result<(Tensors, Vec<String>)> {
    let prefixed = tensors.keys().any(|k| k.starts_with("transformer."));
    let (mut out, mut buffers) = (HashMap::new(), Vec::new());
    for (name, t) in tensors {
        let name = if prefixed || name.starts_with("lm_head.") { name } else { format!("transformer.{name}") };
        if is_buffer(&name) {
            buffers.push(name);
            continue;
        }
        let Some(taper) = TABLE.taper_name(&name) else {
            out.insert(name, t);
            continue;
        };
        let t = if is_conv1d_weight(&taper) { t.t()?.contiguous()? } else { t }; // (in, out) -> (out, in)
        let t = match taper == "pos_emb.weight" && t.dim(0)? > block_size {
            true => t.narrow(0, 0, block_size)?,
            false => t,
        };
        match taper.strip_suffix(".attn.qkv.weight").or(taper.strip_suffix(".attn.qkv.bias")) {
            Some(block) => {
                let kind = if taper.ends_with("weight") { "weight" } else { "bias" };
                let rows = t.dim(0)?;
                if rows % 3 != 0 {
                    bail!("tensor `{name}` has shape {:?}: c_attn packs three equal projections", t.dims());
                }
                for (i, proj) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
                    out.insert(format!("{block}.attn.{proj}.{kind}"), t.narrow(0, i * rows / 3, rows / 3)?);
                }
            }
            None => {
                out.insert(taper, t);
            }
        }
    }
    Ok((out, buffers))
}

/// `blocks.3.attn.q_proj.weight` -> (`blocks.3`, `q_proj`, `weight`), for the three projections.
fn qkv_part(name: &str) -> Option<(&str, &str, &str)> {
    let (rest, kind) = name.rsplit_once('.')?;
    let (block, proj) = rest.rsplit_once(".attn.")?;
    matches!(proj, "q_proj" | "k_proj" | "v_proj").then_some((block, proj, kind))
}

/// The GPT-2 name of the tensor that holds taper's `name` (`c_attn` for the three projections).
fn checkpoint_name(name: &str) -> String {
    let packed = qkv_part(name).map(|(block, _, kind)| format!("{block}.attn.qkv.{kind}"));
    let taper = packed.as_deref().unwrap_or(name);
    TABLE.checkpoint_name(taper).unwrap_or_else(|| name.to_string())
}

/// taper's tensors of a GPT-2-shaped decoder under GPT2LMHeadModel's names and layouts.
fn to_hf(tensors: &Tensors) -> Result<Tensors> {
    let mut out = HashMap::new();
    for (name, t) in tensors {
        let (taper, t) = match qkv_part(name) {
            Some((block, "q_proj", kind)) => {
                let part = |proj: &str| {
                    let key = format!("{block}.attn.{proj}.{kind}");
                    tensors.get(&key).cloned().with_context(|| format!("`{key}` is missing beside `{name}`"))
                };
                let packed = Tensor::cat(&[part("q_proj")?, part("k_proj")?, part("v_proj")?], 0)?; // (3D, D)
                (format!("{block}.attn.qkv.{kind}"), packed)
            }
            Some(_) => continue, // packed with q_proj
            None => (name.clone(), t.clone()),
        };
        let t = if is_conv1d_weight(&taper) { t.t()?.contiguous()? } else { t }; // (out, in) -> (in, out)
        let hf = TABLE.checkpoint_name(&taper).with_context(|| format!("`{name}` has no place in GPT2LMHeadModel"))?;
        out.insert(hf, t);
    }
    Ok(out)
}

/// GPT-2's adapter.
pub struct Gpt2;

impl Family for Gpt2 {
    fn model_type(&self) -> &'static str {
        "gpt2"
    }

    fn arch(&self) -> Architecture {
        Architecture::DecoderOnly
    }

    fn class(&self, head: Head) -> Option<&'static str> {
        (head == Head::CausalLm).then_some("GPT2LMHeadModel")
    }

    fn read_config(&self, config: &Value) -> Result<Checkpoint> {
        read(config)
    }

    fn mismatches(&self, model: &ModelConfig) -> Vec<String> {
        mismatches(model)
    }

    fn names(&self, _model: &ModelConfig) -> NameTable {
        TABLE.clone()
    }

    fn to_taper(&self, tensors: Tensors, model: &ModelConfig, _config: &Value) -> Result<(Tensors, Vec<String>)> {
        let (tensors, unused) = to_taper(tensors, model.block_size)?;
        Ok(drop_tied_head(tensors, unused, model))
    }

    fn to_hf(&self, tensors: &Tensors, _model: &ModelConfig) -> Result<Tensors> {
        to_hf(tensors)
    }

    fn checkpoint_name(&self, name: &str, _model: &ModelConfig) -> String {
        checkpoint_name(name)
    }

    fn tokens(&self) -> Tokens {
        decoder_tokens()
    }

    fn config_json(&self, export: &Export) -> Result<Value> {
        Ok(config_json(export))
    }
}
