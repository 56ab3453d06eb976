//! Hugging Face's checkpoint families, one adapter each behind one trait ([`Family`]), registered
//! in one list ([`FAMILIES`]), as torchtitan's state-dict adapters: a family reads its
//! config.json into taper's `[model]` ([`Checkpoint`]), maps tensor names both ways by a
//! table ([`NameTable`]; fused projections split and merged, layouts and scalings undone and
//! redone, in the adapter), names its special tokens, and writes an export's config.json and
//! architecture class. `model.init_from` finds a family by config.json's `model_type`, `taper
//! export` by the run's architecture ([`fitting`]); nothing else matches on a family.
//!
//! A new family is one file here implementing [`Family`] and one line in [`FAMILIES`].

pub mod albert;
pub mod bert;
mod decoder;
pub mod distilbert;
pub mod electra;
pub mod gpt2;
pub mod llama;
mod names;
pub mod roberta;
pub mod t5;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use serde::Serialize;
use serde_json::Value;

use crate::config::{Architecture, ModelConfig};
pub use names::NameTable;

/// Every family taper reads and writes: one line each.
pub static FAMILIES: [&dyn Family; 10] = [
    &bert::Bert,
    &roberta::ROBERTA,
    &roberta::XLM_ROBERTA,
    &distilbert::DistilBert,
    &electra::Electra,
    &albert::Albert,
    &gpt2::Gpt2,
    &llama::LLAMA,
    &llama::QWEN2,
    &t5::T5,
];

/// What a trained model's head is, as transformers' class names tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// Next-token logits (`...ForCausalLM`, `GPT2LMHeadModel`).
    CausalLm,
    /// One label per sequence (`...ForSequenceClassification`).
    SequenceClassification,
    /// One tag per token (`...ForTokenClassification`).
    TokenClassification,
    /// Masked-token logits (`...ForMaskedLM`).
    MaskedLm,
    /// An encoder-decoder's target logits (`...ForConditionalGeneration`).
    Seq2SeqLm,
}

/// How many positions a checkpoint takes, which bounds `model.block_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextLength {
    /// Exactly this many (an encoder's learned table, loaded as it is).
    Exactly(usize),
    /// At most this many (a decoder's learned table is cut to `block_size`; rotary tables are
    /// made for it).
    AtMost(usize),
    /// Any number (relative positions), this many unless `block_size` says.
    Any { default: usize },
}

/// What a config.json describes.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Every architecture key of `[model]`; the training choices (dropout, init, kernels)
    /// at their defaults unless `dropout` below says.
    pub model: ModelConfig,
    /// Rows of the token embedding.
    pub vocab_size: usize,
    /// Rows of an encoder's token-type (segment) embedding.
    pub type_vocab_size: usize,
    pub context: ContextLength,
    /// The checkpoint's own dropout (hidden, attention), which a run takes unless `[model]`
    /// sets its own (encoders'; a decoder's dropout is the run's alone).
    pub dropout: Option<(f64, f64)>,
    /// Architecture keys a run may choose for itself with this checkpoint (a BERT rebuilt
    /// pre-LN: `norm`).
    pub run_chooses: &'static [&'static str],
}

impl Checkpoint {
    /// `model` (a run's own choices: `arch`, `norm`, `kernels`, ...) made this checkpoint's
    /// architecture, as `model.init_from` makes it ([`adopt`]).
    pub fn adopted(&self, mut model: ModelConfig, source: &Path) -> Result<ModelConfig> {
        adopt(&mut model, self, source)?;
        Ok(model)
    }

    /// The rows of an encoder's embeddings.
    pub fn encoder_vocab(&self) -> crate::model::encoder::EncoderVocab {
        crate::model::encoder::EncoderVocab { tokens: self.vocab_size, token_types: self.type_vocab_size }
    }
}

/// The ids an export's config.json names.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpecialIds {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub pad: Option<u32>,
    /// An encoder-decoder's first decoder input.
    pub decoder_start: Option<u32>,
}

/// What an export's config.json is made from (also a run's own record of its architecture,
/// without a head).
pub struct Export<'a> {
    pub model: &'a ModelConfig,
    pub head: Option<Head>,
    pub vocab_size: usize,
    pub type_vocab_size: usize,
    pub ids: SpecialIds,
    /// A classifier's labels or a tagger's tags, in output order.
    pub labels: Option<&'a [String]>,
}

/// The special tokens of a family's tokenizers, by role: the first of each list the
/// tokenizer has is the one.
#[derive(Debug, Clone, Copy)]
pub struct Tokens {
    pub bos: &'static [&'static str],
    pub eos: &'static [&'static str],
    pub pad: &'static [&'static str],
    /// An encoder's sequence start ([CLS]) and separator ([SEP]), and its mask token.
    pub cls: &'static [&'static str],
    pub sep: &'static [&'static str],
    pub mask: &'static [&'static str],
}

/// A tensor map: names to tensors.
pub type Tensors = HashMap<String, Tensor>;

/// One Hugging Face checkpoint family (a `model_type`).
pub trait Family: Sync {
    /// config.json's `model_type`.
    fn model_type(&self) -> &'static str;

    /// The architecture taper builds for it.
    fn arch(&self) -> Architecture;

    /// transformers' class of a model of this family with `head`, if it has one.
    fn class(&self, head: Head) -> Option<&'static str>;

    /// What config.json (read from `source`) describes; a key taper cannot reproduce is an error
    /// naming it.
    fn read_config(&self, config: &Value) -> Result<Checkpoint>;

    /// What keeps `model` from being of this family, as `model.key = value` notes (empty: it is
    /// one).
    fn mismatches(&self, model: &ModelConfig) -> Vec<String>;

    /// taper's module paths and the checkpoint's, prefix by prefix, for `model`.
    fn names(&self, model: &ModelConfig) -> NameTable;

    /// An encoder family's prefix of the encoder in its task models (`bert`): a bare encoder's
    /// file (`BertModel`) has its names without it.
    fn encoder_prefix(&self) -> Option<&'static str> {
        None
    }

    /// How its classification heads are made (BERT's: a pooler of dense + tanh on [CLS]).
    fn head_style(&self) -> crate::model::encoder::HeadStyle {
        crate::model::encoder::HeadStyle::BERT
    }

    /// Whether a checkpoint's tensor is one taper builds nothing for and may pass over (buffers,
    /// heads of tasks taper does not train).
    fn ignorable(&self, _name: &str) -> bool {
        false
    }

    /// Whether a run of this family keeps the checkpoint's names in its store and checkpoints
    /// (an encoder's task models are built through [`Family::names`]: a file loads by name and
    /// exports as it is) rather than taper's (a decoder's, converted on load and export).
    fn keeps_names(&self) -> bool {
        false
    }

    /// A checkpoint's tensors (with its `config`) under taper's names for `model`: fused
    /// projections split, layouts and scalings undone; what taper has no use for (buffers, a
    /// tied head's copy) returned apart, by name. A tensor no rule covers keeps its name (the
    /// loader reports it).
    fn to_taper(&self, tensors: Tensors, model: &ModelConfig, config: &Value) -> Result<(Tensors, Vec<String>)> {
        let _ = config;
        let table = self.names(model);
        Ok((tensors.into_iter().map(|(name, t)| (table.taper_name(&name).unwrap_or(name), t)).collect(), Vec::new()))
    }

    /// taper's tensors of `model` under the family's names and layouts.
    fn to_hf(&self, tensors: &Tensors, model: &ModelConfig) -> Result<Tensors> {
        let table = self.names(model);
        let class = self.model_type();
        tensors
            .iter()
            .map(|(name, t)| {
                let hf = table.checkpoint_name(name).with_context(|| format!("`{name}` has no place in a {class}"))?;
                Ok((hf, t.clone()))
            })
            .collect()
    }

    /// The checkpoint's name of the tensor that holds taper's `name` (whole or in part).
    fn checkpoint_name(&self, name: &str, model: &ModelConfig) -> String {
        self.names(model).checkpoint_name(name).unwrap_or_else(|| name.to_string())
    }

    /// The special tokens of its tokenizers.
    fn tokens(&self) -> Tokens;

    /// The special ids a config.json names (transformers' defaults of the family where absent).
    fn special_ids(&self, config: &Value) -> SpecialIds {
        let id = |key: &str| config.get(key).and_then(Value::as_u64).map(|v| v as u32);
        SpecialIds {
            bos: id("bos_token_id"),
            eos: id("eos_token_id"),
            pad: id("pad_token_id"),
            decoder_start: id("decoder_start_token_id"),
        }
    }

    /// An export's config.json.
    fn config_json(&self, export: &Export) -> Result<Value>;
}

/// An encoder family's class for `head`, of its `[sequence classifier, token classifier,
/// masked LM]` classes.
pub(crate) fn encoder_class(head: Head, classes: [&'static str; 3]) -> Option<&'static str> {
    match head {
        Head::SequenceClassification => Some(classes[0]),
        Head::TokenClassification => Some(classes[1]),
        Head::MaskedLm => Some(classes[2]),
        Head::CausalLm | Head::Seq2SeqLm => None,
    }
}

/// An encoder export's config.json finished as every encoder family's is: the class of its
/// head, the dtype, the special ids the export names, the labels.
pub(crate) fn finish_encoder_json(family: &dyn Family, mut hf: Value, export: &Export) -> Value {
    if let Some(class) = export.head.and_then(|head| family.class(head)) {
        hf["architectures"] = serde_json::json!([class]);
    }
    hf["torch_dtype"] = serde_json::json!("float32");
    let ids = [("pad_token_id", export.ids.pad), ("bos_token_id", export.ids.bos), ("eos_token_id", export.ids.eos)];
    for (key, id) in ids {
        if let Some(id) = id {
            hf[key] = serde_json::json!(id);
        }
    }
    if let Some(labels) = export.labels {
        add_labels(&mut hf, labels);
    }
    hf
}

/// What keeps `model` from being a post-LN encoder with learned positions from row 0 (the
/// layout of `name`, e.g. "ELECTRA"), as `model.key = value` notes.
pub(crate) fn post_ln_learned_mismatches(model: &ModelConfig, name: &str) -> Vec<String> {
    let mut out = Vec::new();
    if model.norm != crate::config::NormPlacement::Post {
        out.push(format!("`model.norm = {}` ({name} is post-LN)", show(&model.norm)));
    }
    if model.positions != crate::config::Positions::Learned || model.position_offset != 0 {
        out.push(format!(
            "`model.positions = {}`, `model.position_offset = {}` ({name}'s positions are learned, from 0)",
            show(&model.positions),
            model.position_offset
        ));
    }
    out
}

/// A value as the TOML config spells it (`"gelu-tanh"`).
pub fn show<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// A classifier's labels (a tagger's tags) as config.json's `id2label` and `label2id`.
pub fn add_labels(hf: &mut Value, labels: &[String]) {
    let id2label: serde_json::Map<String, Value> =
        labels.iter().enumerate().map(|(i, n)| (i.to_string(), Value::from(n.as_str()))).collect();
    let label2id: serde_json::Map<String, Value> =
        labels.iter().enumerate().map(|(i, n)| (n.clone(), Value::from(i))).collect();
    hf["id2label"] = Value::Object(id2label);
    hf["label2id"] = Value::Object(label2id);
}

/// The family of config.json's `model_type`.
pub fn by_model_type(model_type: &str) -> Option<&'static dyn Family> {
    FAMILIES.iter().copied().find(|f| f.model_type() == model_type)
}

/// The family a run of `arch` from scratch records its architecture in (an encoder's
/// config.json): the first registered one (BERT for an encoder).
pub fn from_scratch(arch: Architecture) -> Result<&'static dyn Family> {
    FAMILIES.iter().copied().find(|f| f.arch() == arch).with_context(|| format!("no family is {}", show(&arch)))
}

/// The family whose architecture `model` (a run's `[model]`) is, among those with a class for
/// `head`, or an error naming what keeps it from each of them.
pub fn fitting(model: &ModelConfig, head: Head) -> Result<&'static dyn Family> {
    let candidates = FAMILIES.iter().filter(|f| f.arch() == model.arch).filter_map(|f| Some((*f, f.class(head)?)));
    let notes: Vec<(&dyn Family, &str, Vec<String>)> =
        candidates.map(|(f, class)| (f, class, f.mismatches(model))).collect();
    if let Some((family, ..)) = notes.iter().find(|(.., n)| n.is_empty()) {
        return Ok(*family);
    }
    if notes.is_empty() {
        bail!("no Hugging Face family taper exports is {} with a {head:?} head", show(&model.arch));
    }
    let said: Vec<String> = notes.iter().map(|(_, class, n)| format!("as {class} it has {}", n.join(", "))).collect();
    bail!("this model fits no Hugging Face family taper exports: {}", said.join("; "))
}

/// The files a pretrained model directory must hold.
pub const MODEL_FILES: [&str; 3] = ["config.json", "model.safetensors", "tokenizer.json"];

/// `dir/config.json`, parsed.
pub fn read_config_json(dir: &Path) -> Result<(Value, PathBuf)> {
    let path = dir.join("config.json");
    if !path.is_file() {
        bail!("{} has no config.json: a Hugging Face model directory holds {}", dir.display(), MODEL_FILES.join(", "));
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let config = serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
    Ok((config, path))
}

/// The family of a config.json (read from `source`) for a run of `arch`: its `model_type` must
/// be registered for that architecture (an error says which architecture loads it otherwise).
pub fn family_of(config: &Value, source: &Path, arch: Architecture) -> Result<&'static dyn Family> {
    let model_type = config.get("model_type").and_then(Value::as_str).unwrap_or("");
    match by_model_type(model_type) {
        Some(family) if family.arch() == arch => Ok(family),
        other => {
            let of_arch: Vec<&str> = FAMILIES.iter().filter(|f| f.arch() == arch).map(|f| f.model_type()).collect();
            let kind = match arch {
                Architecture::DecoderOnly => "a decoder",
                Architecture::EncoderOnly => "an encoder",
                Architecture::EncoderDecoder => "an encoder-decoder",
            };
            let elsewhere = other.map_or(String::new(), |f| {
                format!("; a {model_type} loads into a run with `model.arch = {}`", show(&f.arch()))
            });
            bail!(
                "{}: model_type `{model_type}` is not {kind} taper loads ({}){elsewhere}",
                source.display(),
                of_arch.join(", ")
            )
        }
    }
}

/// Training choices: keys of `[model]` a checkpoint never sets (`block_size` is bounded by
/// its [`ContextLength`], `init_std` is its own `initializer_range`).
const TRAINING_CHOICES: [&str; 11] = [
    "init_from",
    "block_size",
    "dropout",
    "classifier_dropout",
    "attn_dropout",
    "resid_dropout",
    "emb_dropout",
    "kernels",
    "init",
    "init_std",
    "scale_residual_init",
];

/// The bias keys, compared as the biases they give (query/key/value, output, FFN).
const BIAS_KEYS: [&str; 4] = ["bias", "qkv_bias", "out_bias", "ffn_bias"];

/// Makes `model` the checkpoint's architecture (read from `source`): every architecture key
/// is the checkpoint's, and one the user set (not at its default) that disagrees is an error
/// naming it; `block_size` is bounded by the checkpoint's context; `init_std` is the
/// checkpoint's; dropout is the user's where set, else the checkpoint's own, if it has one.
pub fn adopt(model: &mut ModelConfig, theirs: &Checkpoint, source: &Path) -> Result<()> {
    let table = |m: &ModelConfig| -> Result<toml::Table> { Ok(toml::Table::try_from(m)?) };
    let (mine, defaults, their) = (table(model)?, table(&ModelConfig::defaults())?, table(&theirs.model)?);
    let mut merged = mine.clone();
    let keys: std::collections::BTreeSet<&String> = mine.keys().chain(their.keys()).collect();
    let skip = |k: &str| {
        TRAINING_CHOICES.contains(&k) || BIAS_KEYS.contains(&k) || k == "vocab_size" || theirs.run_chooses.contains(&k)
    };
    for key in keys.into_iter().filter(|k| !skip(k)) {
        let (given, theirs) = (mine.get(key), their.get(key));
        if given != defaults.get(key) && given != theirs {
            let show = |v: Option<&toml::Value>| v.map_or("nothing".to_string(), |v| v.to_string());
            bail!(
                "`model.{key}` = {} disagrees with {} ({}); remove the key (`model.init_from` sets the architecture)",
                show(given),
                source.display(),
                show(theirs)
            );
        }
        match theirs {
            Some(value) => merged.insert(key.clone(), value.clone()),
            None => merged.remove(key),
        };
    }

    // The resolved `[lora]` is the run's: the table holds the TOML keys only.
    let mut adopted = ModelConfig { lora: model.lora, ..merged.try_into()? };
    adopt_biases(&mut adopted, model, &theirs.model, source)?;
    adopt_vocab(&mut adopted, model, theirs, source)?;
    adopted.init_std = theirs.model.init_std;
    adopted.block_size = block_size(model.block_size, theirs.context, source)?;
    if let Some((hidden, attention)) = theirs.dropout {
        adopt_dropout(&mut adopted, model, &theirs.model, hidden, attention);
    }
    *model = adopted;
    Ok(())
}

/// The bias keys: the user's (any given) must give the checkpoint's biases; the checkpoint's
/// way of writing them is kept.
fn adopt_biases(adopted: &mut ModelConfig, mine: &ModelConfig, theirs: &ModelConfig, source: &Path) -> Result<()> {
    let given = (mine.bias, mine.qkv_bias, mine.out_bias, mine.ffn_bias) != (true, None, None, None);
    if given && mine.biases() != theirs.biases() {
        bail!(
            "`model.bias` (or qkv_bias, out_bias, ffn_bias) disagrees with {}: its query/key/value, output and FFN \
             biases are {:?}; remove the keys (`model.init_from` sets the architecture)",
            source.display(),
            theirs.biases()
        );
    }
    (adopted.bias, adopted.qkv_bias, adopted.out_bias, adopted.ffn_bias) =
        (theirs.bias, theirs.qkv_bias, theirs.out_bias, theirs.ffn_bias);
    Ok(())
}

/// `model.vocab_size` (a decoder's, or an encoder-decoder's shared vocabulary's): the user's
/// must be the checkpoint's rows.
fn adopt_vocab(adopted: &mut ModelConfig, mine: &ModelConfig, theirs: &Checkpoint, source: &Path) -> Result<()> {
    let one_vocabulary = theirs.model.arch != Architecture::EncoderOnly;
    let rows = one_vocabulary.then_some(theirs.vocab_size);
    if mine.vocab_size.is_some() && mine.vocab_size != rows {
        bail!(
            "`model.vocab_size` = {} disagrees with {} ({}); remove the key (`model.init_from` sets the architecture)",
            show(&mine.vocab_size),
            source.display(),
            show(&rows)
        );
    }
    adopted.vocab_size = rows;
    Ok(())
}

/// `block_size` as the checkpoint's context allows it (0: not given).
fn block_size(given: usize, context: ContextLength, source: &Path) -> Result<usize> {
    Ok(match (context, given) {
        (ContextLength::Exactly(n) | ContextLength::AtMost(n), 0) => n,
        (ContextLength::Any { default }, 0) => default,
        (ContextLength::Exactly(n), given) if given != n => bail!(
            "`model.block_size` = {given} disagrees with {}'s {n} positions; remove the key (`model.init_from` sets \
             the architecture)",
            source.display()
        ),
        (ContextLength::AtMost(n), given) if given > n => bail!(
            "`model.block_size` = {given} is longer than {} allows ({n} positions); remove the key or shorten it",
            source.display()
        ),
        (_, given) => given,
    })
}

/// Dropout from a checkpoint that has its own (hidden, attention): the user's at each site
/// where `[model]` sets one, else the checkpoint's, written as its families write it. The
/// heads': the user's `classifier_dropout`, else the checkpoint's unless the user set `dropout`.
fn adopt_dropout(adopted: &mut ModelConfig, mine: &ModelConfig, theirs: &ModelConfig, hidden: f64, attention: f64) {
    adopted.classifier_dropout = match (mine.classifier_dropout, mine.dropout > 0.0) {
        (Some(p), _) => Some(p),
        (None, true) => None,
        (None, false) => theirs.classifier_dropout,
    };
    let hidden = match mine.dropout > 0.0 || mine.resid_dropout.is_some() {
        true => mine.resid_dropout(),
        false => hidden,
    };
    let attention = match mine.dropout > 0.0 || mine.attn_dropout.is_some() {
        true => mine.attn_dropout(),
        false => attention,
    };
    adopted.dropout = hidden;
    adopted.resid_dropout = None;
    adopted.emb_dropout = None;
    adopted.attn_dropout = (attention != hidden).then_some(attention);
}
