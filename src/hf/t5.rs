//! Hugging Face T5 (`T5ForConditionalGeneration`) for taper's encoder-decoder: its config.json,
//! its tensor names, and the two scalings T5 leaves out, folded into the weights so that the
//! same function is computed: T5 does not divide attention scores by sqrt(head_dim) (the
//! exported W_q is taper's W_q / sqrt(head_dim), in self- and cross-attention), and T5 v1.0
//! (a tied head) multiplies the decoder's output by d_model^-0.5 (the exported decoder final
//! norm's gain is taper's times sqrt(d_model)). taper writes a tied head scaled and an untied
//! one not, and reads whichever a file has (`scale_decoder_outputs`, transformers 5's key). Both are powers of two when head_dim and d_model are
//! powers of four; otherwise a load -> export round trip may move a weight by an ulp.

use anyhow::{bail, Context as _, Result};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{show, Checkpoint, ContextLength, Export, Family, Head, NameTable, SpecialIds, Tensors, Tokens};
use crate::config::{Activation, Architecture, ModelConfig, NormKind, NormPlacement, Positions};

/// taper's block paths and T5's, per stack; `{ffn}` is the FFN layer's index.
const SELF: [(&str, &str); 5] = [
    ("ln_1", "layer.0.layer_norm"),
    ("attn.q_proj", "layer.0.SelfAttention.q"),
    ("attn.k_proj", "layer.0.SelfAttention.k"),
    ("attn.v_proj", "layer.0.SelfAttention.v"),
    ("attn.out_proj", "layer.0.SelfAttention.o"),
];
const CROSS: [(&str, &str); 5] = [
    ("ln_cross", "layer.1.layer_norm"),
    ("cross_attn.q_proj", "layer.1.EncDecAttention.q"),
    ("cross_attn.k_proj", "layer.1.EncDecAttention.k"),
    ("cross_attn.v_proj", "layer.1.EncDecAttention.v"),
    ("cross_attn.out_proj", "layer.1.EncDecAttention.o"),
];

/// T5's names for a model with a gated FFN or not (`wi` vs `wi_0` / `wi_1`).
fn table(gated: bool) -> NameTable {
    let mut rules: Vec<(String, String)> = vec![
        ("shared".into(), "shared".into()),
        ("lm_head".into(), "lm_head".into()),
        ("encoder.ln_f".into(), "encoder.final_layer_norm".into()),
        ("decoder.ln_f".into(), "decoder.final_layer_norm".into()),
    ];
    for (stack, ffn) in [("encoder", 1), ("decoder", 2)] {
        rules.push((
            format!("{stack}.pos_emb.rel_bias"),
            format!("{stack}.block.0.layer.0.SelfAttention.relative_attention_bias"),
        ));
        let cross = if stack == "decoder" { &CROSS[..] } else { &[] };
        let fc1 = if gated { "wi_1" } else { "wi" };
        let ffn_rules = [
            ("ln_2".to_string(), format!("layer.{ffn}.layer_norm")),
            ("mlp.fc1".into(), format!("layer.{ffn}.DenseReluDense.{fc1}")),
            ("mlp.gate".into(), format!("layer.{ffn}.DenseReluDense.wi_0")),
            ("mlp.fc2".into(), format!("layer.{ffn}.DenseReluDense.wo")),
        ];
        let block = SELF.iter().chain(cross).map(|(t, c)| (t.to_string(), c.to_string())).chain(ffn_rules);
        rules.extend(block.map(|(t, c)| (format!("{stack}.blocks.{{i}}.{t}"), format!("{stack}.block.{{i}}.{c}"))));
    }
    NameTable::new(rules)
}

/// T5's `feed_forward_proj` of taper's activation, and back.
const ACTIVATIONS: [(&str, Activation); 7] = [
    ("relu", Activation::Relu),
    ("gelu", Activation::Gelu),
    ("gelu_new", Activation::GeluTanh),
    ("silu", Activation::Silu),
    ("gated-relu", Activation::Reglu),
    ("gated-silu", Activation::Swiglu),
    // T5 v1.1: its gated-gelu gates with the tanh GELU.
    ("gated-gelu", Activation::GegluTanh),
];

/// The fields of T5's config.json taper reads (transformers' defaults where absent).
#[derive(Debug, Deserialize)]
struct T5Config {
    vocab_size: usize,
    d_model: usize,
    d_kv: usize,
    d_ff: usize,
    num_layers: usize,
    num_decoder_layers: Option<usize>,
    num_heads: usize,
    #[serde(default = "d_buckets")]
    relative_attention_num_buckets: usize,
    #[serde(default = "d_distance")]
    relative_attention_max_distance: usize,
    #[serde(default = "d_eps")]
    layer_norm_epsilon: f64,
    #[serde(default = "d_ffn")]
    feed_forward_proj: String,
    #[serde(default = "yes")]
    tie_word_embeddings: bool,
    /// transformers 5 writes this (and always tie_word_embeddings = true); before, a tied
    /// head meant a scaled one.
    scale_decoder_outputs: Option<bool>,
}

fn d_buckets() -> usize {
    32
}
fn d_distance() -> usize {
    128
}
fn d_eps() -> f64 {
    1e-6
}
fn d_ffn() -> String {
    "relu".into()
}
fn yes() -> bool {
    true
}

/// Whether a T5 config.json's model multiplies the decoder's output by d_model^-0.5 before the
/// head (v1.0's tied head; transformers 5 says so in `scale_decoder_outputs`).
fn scaled_head(config: &Value) -> Result<bool> {
    let c: T5Config = serde_json::from_value(config.clone())?;
    Ok(c.scale_decoder_outputs.unwrap_or(c.tie_word_embeddings))
}

/// The architecture a T5 config.json describes (T5's relative positions take any length:
/// `block_size` 512 unless the run says).
fn read(config: &Value) -> Result<Checkpoint> {
    let c: T5Config = serde_json::from_value(config.clone())?;
    if c.d_kv * c.num_heads != c.d_model {
        bail!("d_kv * num_heads = {} is not d_model = {}, as taper's heads are", c.d_kv * c.num_heads, c.d_model);
    }
    let Some(&(_, activation)) = ACTIVATIONS.iter().find(|(name, _)| *name == c.feed_forward_proj) else {
        bail!("feed_forward_proj `{}` is not one taper has (relu, gelu, gelu_new, silu, gated-relu, gated-silu, gated-gelu)", c.feed_forward_proj);
    };
    let model = ModelConfig {
        arch: Architecture::EncoderDecoder,
        n_layer: c.num_layers,
        n_decoder_layer: Some(c.num_decoder_layers.unwrap_or(c.num_layers)),
        n_head: c.num_heads,
        d_model: c.d_model,
        d_ff: Some(c.d_ff),
        norm: NormPlacement::Pre,
        norm_kind: NormKind::Rms,
        activation,
        positions: Positions::T5,
        bias: false,
        tie_embeddings: c.tie_word_embeddings,
        layer_norm_eps: c.layer_norm_epsilon,
        relative_buckets: c.relative_attention_num_buckets,
        relative_max_distance: c.relative_attention_max_distance,
        ..ModelConfig::defaults()
    };
    let context = ContextLength::Any { default: 512 };
    Ok(Checkpoint { model, vocab_size: c.vocab_size, type_vocab_size: 0, context, dropout: None, run_chooses: &[] })
}

/// What keeps the encoder-decoder `model` from being a T5, as `model.key = value` notes.
fn mismatches(model: &ModelConfig) -> Vec<String> {
    let mut out = Vec::new();
    let mut need = |ok: bool, note: String| {
        if !ok {
            out.push(note);
        }
    };
    need(model.norm == NormPlacement::Pre, format!("`model.norm = {}` (T5 is pre-LN)", show(&model.norm)));
    need(model.norm_kind == NormKind::Rms, "`model.norm_kind = \"layer\"` (T5 has RMSNorm)".into());
    need(
        model.positions == Positions::T5,
        format!("`model.positions = {}` (T5 has its relative bias, \"t5\")", show(&model.positions)),
    );
    need(model.biases() == (false, false, false), "`model.bias = true` or a group's (T5 has no biases)".into());
    need(model.share_embeddings, "`model.share_embeddings = false` (T5 has one vocabulary)".into());
    need(!model.scale_embeddings, "`model.scale_embeddings = true` (T5 does not scale its embeddings)".into());
    need(
        model.activation != Activation::Geglu,
        "`model.activation = \"geglu\"` (T5's gated-gelu gates with the tanh GELU: \"geglu-tanh\")".into(),
    );
    need(!model.qk_norm, "`model.qk_norm = true` (T5 has no QK-norm)".into());
    need(model.n_kv_head() == model.n_head, "`model.n_kv_head` (T5 has one key/value head per query head)".into());
    out
}

/// T5's config.json for `model` with `vocab_size` rows.
fn config_json(export: &Export) -> Value {
    let (model, vocab_size, ids) = (export.model, export.vocab_size, export.ids);
    let ffn = ACTIVATIONS.iter().find(|(_, a)| *a == model.activation).map_or("relu", |(n, _)| n);
    json!({
        "architectures": ["T5ForConditionalGeneration"],
        "model_type": "t5",
        "is_encoder_decoder": true,
        "vocab_size": vocab_size,
        "d_model": model.d_model,
        "d_kv": model.head_dim(),
        "d_ff": model.d_ff(),
        "num_layers": model.n_layer,
        "num_decoder_layers": model.n_decoder_layer.unwrap_or(model.n_layer),
        "num_heads": model.n_head,
        "relative_attention_num_buckets": model.relative_buckets,
        "relative_attention_max_distance": model.relative_max_distance,
        "dropout_rate": model.dropout,
        "layer_norm_epsilon": model.layer_norm_eps,
        "initializer_factor": 1.0,
        "feed_forward_proj": ffn,
        "tie_word_embeddings": model.tie_embeddings,
        // A tied head is written scaled (T5 v1.0), an untied one not (v1.1), as transformers 4
        // reads them; transformers 5 reads this key.
        "scale_decoder_outputs": model.tie_embeddings,
        "pad_token_id": ids.pad,
        "eos_token_id": ids.eos,
        "decoder_start_token_id": ids.decoder_start,
        "use_cache": true,
        "torch_dtype": "float32",
    })
}

/// The factor taper's tensor `name` is multiplied by on its way to a T5 whose head input is
/// `scaled` (1 for most).
fn fold(name: &str, model: &ModelConfig, scaled: bool) -> f64 {
    if name.ends_with("attn.q_proj.weight") {
        1.0 / (model.head_dim() as f64).sqrt()
    } else if name == "decoder.ln_f.weight" && scaled {
        (model.d_model as f64).sqrt()
    } else {
        1.0
    }
}

/// taper's tensors of a T5-shaped encoder-decoder under T5's names, the scalings folded in.
fn to_hf(tensors: &Tensors, model: &ModelConfig) -> Result<Tensors> {
    let table = table(model.activation.gate().is_some());
    let mut out = Tensors::new();
    for (name, t) in tensors {
        let hf = table
            .checkpoint_name(name)
            .with_context(|| format!("`{name}` has no place in T5ForConditionalGeneration"))?;
        let factor = fold(name, model, model.tie_embeddings);
        out.insert(hf, if factor == 1.0 { t.clone() } else { (t * factor)? });
    }
    Ok(out)
}

/// A T5 file's tensors under taper's names for `model` (its head input `scaled` or not), the
/// scalings taken back out; the tied copies of the shared table (and a tied head's) are
/// returned apart, by name.
fn to_taper(tensors: Tensors, model: &ModelConfig, scaled: bool) -> Result<(Tensors, Vec<String>)> {
    let table = table(model.activation.gate().is_some());
    let (mut out, mut unused) = (Tensors::new(), Vec::new());
    for (name, t) in tensors {
        let copy = name.ends_with("embed_tokens.weight") || (model.tie_embeddings && name == "lm_head.weight");
        if copy {
            unused.push(name);
            continue;
        }
        let Some(taper) = table.taper_name(&name) else {
            out.insert(name, t);
            continue;
        };
        let factor = fold(&taper, model, scaled);
        out.insert(taper, if factor == 1.0 { t } else { (t / factor)? });
    }
    unused.sort();
    Ok((out, unused))
}

/// T5's adapter.
pub struct T5;

impl Family for T5 {
    fn model_type(&self) -> &'static str {
        "t5"
    }

    fn arch(&self) -> Architecture {
        Architecture::EncoderDecoder
    }

    fn class(&self, head: Head) -> Option<&'static str> {
        (head == Head::Seq2SeqLm).then_some("T5ForConditionalGeneration")
    }

    fn read_config(&self, config: &Value) -> Result<Checkpoint> {
        read(config)
    }

    fn mismatches(&self, model: &ModelConfig) -> Vec<String> {
        mismatches(model)
    }

    fn names(&self, model: &ModelConfig) -> NameTable {
        table(model.activation.gate().is_some())
    }

    fn to_taper(&self, tensors: Tensors, model: &ModelConfig, config: &Value) -> Result<(Tensors, Vec<String>)> {
        to_taper(tensors, model, scaled_head(config)?)
    }

    fn to_hf(&self, tensors: &Tensors, model: &ModelConfig) -> Result<Tensors> {
        to_hf(tensors, model)
    }

    fn tokens(&self) -> Tokens {
        Tokens { bos: &["<s>"], eos: &["</s>"], pad: &["<pad>"], cls: &[], sep: &[], mask: &[] }
    }

    /// T5's defaults: pad 0, end 1, the decoder starting from the pad id.
    fn special_ids(&self, config: &Value) -> SpecialIds {
        let id = |key: &str| config.get(key).and_then(Value::as_u64).map(|v| v as u32);
        let (pad, eos) = (id("pad_token_id").unwrap_or(0), id("eos_token_id").unwrap_or(1));
        SpecialIds {
            bos: None,
            eos: Some(eos),
            pad: Some(pad),
            decoder_start: Some(id("decoder_start_token_id").unwrap_or(pad)),
        }
    }

    fn config_json(&self, export: &Export) -> Result<Value> {
        Ok(config_json(export))
    }
}
