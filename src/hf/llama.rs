//! Hugging Face Llama (`LlamaForCausalLM`) and Qwen2 (`Qwen2ForCausalLM`: Llama's layout with
//! biases on the query, key and value projections alone) for taper's decoder: their config.json
//! and their tensor names. A rename is all it takes: the projections are (out, in) as taper's,
//! and Hugging Face's rotary layout (the two halves of each head rotate together) is taper's.

use std::sync::LazyLock;

use anyhow::{bail, Result};
use serde::Deserialize;
use serde_json::{json, Value};

use super::decoder::{drop_tied_head, mismatches as decoder_mismatches, tokens as decoder_tokens};
use super::{show, Checkpoint, ContextLength, Export, Family, Head};
use super::{NameTable, Tensors, Tokens};
use crate::config::{Activation, Architecture, ModelConfig, NormKind, NormPlacement, Positions};

const RULES: [(&str, &str); 12] = [
    ("tok_emb", "model.embed_tokens"),
    ("blocks.{i}.ln_1", "model.layers.{i}.input_layernorm"),
    ("blocks.{i}.attn.q_proj", "model.layers.{i}.self_attn.q_proj"),
    ("blocks.{i}.attn.k_proj", "model.layers.{i}.self_attn.k_proj"),
    ("blocks.{i}.attn.v_proj", "model.layers.{i}.self_attn.v_proj"),
    ("blocks.{i}.attn.out_proj", "model.layers.{i}.self_attn.o_proj"),
    ("blocks.{i}.ln_2", "model.layers.{i}.post_attention_layernorm"),
    ("blocks.{i}.mlp.gate", "model.layers.{i}.mlp.gate_proj"),
    ("blocks.{i}.mlp.fc1", "model.layers.{i}.mlp.up_proj"),
    ("blocks.{i}.mlp.fc2", "model.layers.{i}.mlp.down_proj"),
    ("ln_f", "model.norm"),
    ("lm_head", "lm_head"),
];

static TABLE: LazyLock<NameTable> = LazyLock::new(|| NameTable::new(RULES));

/// The fields of Llama's config.json taper reads (transformers' defaults where absent).
#[derive(Debug, Deserialize)]
struct LlamaConfig {
    #[serde(default = "d_vocab")]
    vocab_size: usize,
    #[serde(default = "d_width")]
    hidden_size: usize,
    #[serde(default = "d_ff")]
    intermediate_size: usize,
    #[serde(default = "d_depth")]
    num_hidden_layers: usize,
    #[serde(default = "d_depth")]
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    #[serde(default = "d_positions")]
    max_position_embeddings: usize,
    #[serde(default = "d_eps")]
    rms_norm_eps: f64,
    #[serde(default = "d_theta")]
    rope_theta: f64,
    rope_scaling: Option<Value>,
    /// transformers 5's form of the rotary settings: {rope_theta, rope_type}.
    rope_parameters: Option<Value>,
    #[serde(default = "d_act")]
    hidden_act: String,
    #[serde(default)]
    attention_bias: bool,
    mlp_bias: Option<bool>,
    /// Qwen2's sliding-window attention (taper attends to the whole context).
    #[serde(default)]
    use_sliding_window: bool,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default = "d_std")]
    initializer_range: f64,
}

fn d_vocab() -> usize {
    32000
}
fn d_width() -> usize {
    4096
}
fn d_ff() -> usize {
    11008
}
fn d_depth() -> usize {
    32
}
fn d_positions() -> usize {
    2048
}
fn d_eps() -> f64 {
    1e-6
}
fn d_theta() -> f64 {
    10_000.0
}
fn d_act() -> String {
    "silu".into()
}
fn d_std() -> f64 {
    0.02
}

/// Hugging Face's `hidden_act` of a gated FFN, and taper's activation for it.
const ACTIVATIONS: [(&str, Activation); 5] = [
    ("silu", Activation::Swiglu),
    ("gelu", Activation::Geglu),
    ("gelu_pytorch_tanh", Activation::GegluTanh),
    ("gelu_new", Activation::GegluTanh),
    ("relu", Activation::Reglu),
];

/// The architecture a Llama (or, with `qwen2`, a Qwen2) config.json describes.
fn read(config: &Value, qwen2: bool) -> Result<Checkpoint> {
    let c: LlamaConfig = serde_json::from_value(config.clone())?;
    if c.use_sliding_window {
        bail!(
            "use_sliding_window is true: taper attends to the whole context; set it false (or give a model without it)"
        );
    }
    if c.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
        bail!("rope_scaling is set: taper's rotary positions have no scaling (Llama 3.1's, YaRN, ...)");
    }
    let parameters = c.rope_parameters.as_ref().filter(|v| !v.is_null());
    let rope_type = parameters.and_then(|p| p.get("rope_type")).and_then(Value::as_str).unwrap_or("default");
    if rope_type != "default" {
        bail!("rope_parameters.rope_type is `{rope_type}`: taper's rotary positions are the default kind (no scaling)");
    }
    let rope_theta = parameters.and_then(|p| p.get("rope_theta")).and_then(Value::as_f64).unwrap_or(c.rope_theta);
    let head_dim = c.hidden_size / c.num_attention_heads.max(1);
    if let Some(h) = c.head_dim.filter(|&h| h != head_dim) {
        bail!("head_dim = {h} is not hidden_size / num_attention_heads = {head_dim}, as taper's heads are");
    }
    let Some(&(_, activation)) = ACTIVATIONS.iter().find(|(name, _)| *name == c.hidden_act) else {
        bail!(
            "hidden_act `{}` is not one taper has (it has silu, gelu, gelu_pytorch_tanh, gelu_new, relu)",
            c.hidden_act
        );
    };
    let (qkv, out, ffn) = match qwen2 {
        true => (true, false, false),
        false => (c.attention_bias, c.attention_bias, c.mlp_bias.unwrap_or(c.attention_bias)),
    };
    let model = ModelConfig {
        arch: Architecture::DecoderOnly,
        n_layer: c.num_hidden_layers,
        n_head: c.num_attention_heads,
        n_kv_head: Some(c.num_key_value_heads.unwrap_or(c.num_attention_heads)),
        d_model: c.hidden_size,
        d_ff: Some(c.intermediate_size),
        block_size: c.max_position_embeddings,
        norm: NormPlacement::Pre,
        norm_kind: NormKind::Rms,
        activation,
        positions: Positions::Rope,
        bias: ffn,
        qkv_bias: (qkv != ffn).then_some(qkv),
        out_bias: (out != ffn).then_some(out),
        tie_embeddings: c.tie_word_embeddings,
        layer_norm_eps: c.rms_norm_eps,
        rope_theta,
        init_std: c.initializer_range,
        ..ModelConfig::defaults()
    };
    let context = ContextLength::AtMost(c.max_position_embeddings);
    Ok(Checkpoint { model, vocab_size: c.vocab_size, type_vocab_size: 0, context, dropout: None, run_chooses: &[] })
}

/// What keeps `model` from being a Llama (or a Qwen2), as `model.key = value` notes (empty:
/// it is one).
fn mismatches(model: &ModelConfig, qwen2: bool) -> Vec<String> {
    let mut out = Vec::new();
    let (qkv, o, ffn) = model.biases();
    match qwen2 {
        true if (qkv, o, ffn) != (true, false, false) => out.push(format!(
            "biases (query/key/value, output, FFN) {:?} (Qwen2 has them on query, key and value alone: \
             `model.bias = false`, `model.qkv_bias = true`)",
            (qkv, o, ffn)
        )),
        false if qkv != o => {
            out.push("`model.qkv_bias` differs from `model.out_bias` (Llama's attention_bias is both)".into())
        }
        _ => {}
    }
    if model.norm_kind != NormKind::Rms {
        out.push("`model.norm_kind = \"layer\"` (Llama has RMSNorm)".into());
    }
    if model.positions != Positions::Rope {
        out.push(format!("`model.positions = {}` (Llama has rotary positions)", show(&model.positions)));
    }
    if model.activation.gate().is_none() {
        out.push(format!("`model.activation = {}` (Llama's FFN is gated: swiglu)", show(&model.activation)));
    }
    out.extend(decoder_mismatches(model));
    out
}

/// Llama's (or Qwen2's) config.json for `model` with `vocab_size` rows.
fn config_json(export: &Export, qwen2: bool) -> Value {
    let (model, vocab_size, specials) = (export.model, export.vocab_size, export.ids);
    let act = ACTIVATIONS.iter().find(|(_, a)| *a == model.activation).map_or("silu", |(n, _)| n);
    let (qkv_bias, _, ffn_bias) = model.biases();
    let (architecture, model_type) = if qwen2 { ("Qwen2ForCausalLM", "qwen2") } else { ("LlamaForCausalLM", "llama") };
    json!({
        "architectures": [architecture],
        "model_type": model_type,
        "use_sliding_window": false,
        "vocab_size": vocab_size,
        "hidden_size": model.d_model,
        "intermediate_size": model.d_ff(),
        "num_hidden_layers": model.n_layer,
        "num_attention_heads": model.n_head,
        "num_key_value_heads": model.n_kv_head(),
        "head_dim": model.head_dim(),
        "max_position_embeddings": model.block_size,
        "rms_norm_eps": model.layer_norm_eps,
        "rope_theta": model.rope_theta,
        "rope_scaling": Value::Null,
        "rope_parameters": {"rope_theta": model.rope_theta, "rope_type": "default"},
        "hidden_act": act,
        "attention_bias": qkv_bias,
        "mlp_bias": ffn_bias,
        "attention_dropout": model.attn_dropout(),
        "tie_word_embeddings": model.tie_embeddings,
        "initializer_range": model.init_std,
        "pretraining_tp": 1,
        "use_cache": true,
        "bos_token_id": specials.bos,
        "eos_token_id": specials.eos,
        "torch_dtype": "float32",
    })
}

/// A Llama file's tensors under taper's names; the rotary buffers some files hold, and a tied
/// head's copy, are returned apart. A tensor no rule covers keeps its name (the loader reports
/// it).
fn to_taper(tensors: Tensors, model: &ModelConfig) -> (Tensors, Vec<String>) {
    let (mut out, mut buffers) = (Tensors::new(), Vec::new());
    for (name, t) in tensors {
        if name.ends_with("rotary_emb.inv_freq") {
            buffers.push(name);
            continue;
        }
        out.insert(TABLE.taper_name(&name).unwrap_or(name), t);
    }
    drop_tied_head(out, buffers, model)
}

/// Llama's adapter, and Qwen2's (Llama's layout with biases on the query, key and value
/// projections alone): the families share the names and differ in their biases.
pub struct Llama {
    qwen2: bool,
}

pub static LLAMA: Llama = Llama { qwen2: false };
pub static QWEN2: Llama = Llama { qwen2: true };

impl Family for Llama {
    fn model_type(&self) -> &'static str {
        if self.qwen2 {
            "qwen2"
        } else {
            "llama"
        }
    }

    fn arch(&self) -> Architecture {
        Architecture::DecoderOnly
    }

    fn class(&self, head: Head) -> Option<&'static str> {
        let class = if self.qwen2 { "Qwen2ForCausalLM" } else { "LlamaForCausalLM" };
        (head == Head::CausalLm).then_some(class)
    }

    fn read_config(&self, config: &Value) -> Result<Checkpoint> {
        read(config, self.qwen2)
    }

    fn mismatches(&self, model: &ModelConfig) -> Vec<String> {
        mismatches(model, self.qwen2)
    }

    fn names(&self, _model: &ModelConfig) -> NameTable {
        TABLE.clone()
    }

    fn to_taper(&self, tensors: Tensors, model: &ModelConfig, _config: &Value) -> Result<(Tensors, Vec<String>)> {
        Ok(to_taper(tensors, model))
    }

    fn tokens(&self) -> Tokens {
        decoder_tokens()
    }

    fn config_json(&self, export: &Export) -> Result<Value> {
        Ok(config_json(export, self.qwen2))
    }
}
