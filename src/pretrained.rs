//! Pretrained Hugging Face checkpoints: a directory with `config.json`, `model.safetensors` and
//! `tokenizer.json`, loaded into taper's modules by the checkpoint's own tensor names.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};

use crate::checkpoint::{load_matching, load_tensors, LoadReport};
use crate::config::{Kernels, ModelConfig, NormPlacement};
use crate::data::TextTokenizer;
use crate::model::bert::{BertConfig, BertEncoder};
use crate::model::lora::is_adapter;
use crate::model::names::decoder::{DecoderFamily, DecoderShape};
use crate::model::names::t5;
use crate::model::ParamStore;

/// The files a pretrained model directory must hold.
pub const MODEL_FILES: [&str; 3] = ["config.json", "model.safetensors", "tokenizer.json"];

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

/// Where a pretrained model's files are. `spec` is a local directory, or a Hub id
/// (`org/name`) fetched with hf-hub into its cache (`HF_HOME`, default ~/.cache/huggingface);
/// with `HF_HUB_OFFLINE=1` only that cache is read.
pub fn resolve_model_dir(spec: &str) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if path.exists() {
        bail!("{spec} is a file; give the directory that holds {}", MODEL_FILES.join(", "));
    }
    let looks_like_id = !spec.starts_with(['.', '/', '~']) && spec.split('/').count() <= 2 && !spec.is_empty();
    if !looks_like_id {
        bail!("model directory {spec} does not exist");
    }
    let mut files = Vec::new();
    if offline() {
        let cache = hf_hub::Cache::from_env();
        let repo = cache.model(spec.to_string());
        for file in MODEL_FILES {
            files.push(repo.get(file).with_context(|| {
                format!(
                    "HF_HUB_OFFLINE is set and `{file}` of {spec} is not in the Hugging Face cache {}; \
                     give a local directory instead",
                    cache.path().display()
                )
            })?);
        }
    } else {
        let api =
            hf_hub::api::sync::ApiBuilder::from_env().build().context("cannot set up the Hugging Face Hub client")?;
        let repo = api.model(spec.to_string());
        for file in MODEL_FILES {
            files.push(repo.get(file).with_context(|| {
                format!(
                    "cannot fetch `{file}` of {spec} from the Hugging Face Hub (no directory of that name exists \
                     either); give a local directory, or set HF_HUB_OFFLINE=1 to read the cache only"
                )
            })?);
        }
    }
    let dir = files[0].parent().context("cached file without a directory")?.to_path_buf();
    if files.iter().any(|f| f.parent() != Some(dir.as_path())) {
        bail!("the cached files of {spec} are from different revisions");
    }
    Ok(dir)
}

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
    let encoder = BertEncoder::bare(&config, norm, kernels, DType::F32, params.var_builder(seed, device))
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

/// Loads the pretrained tensors of `dir` into a task model whose encoder lives under `bert.`
/// (Hugging Face's task-model names). A bare `BertModel` file (no `bert.` prefix, as
/// all-MiniLM-L6-v2) is mapped by adding the prefix. Parameters `may_start_fresh` allows
/// (the task's head) and LoRA adapters keep their initialisation (adapters are not reported);
/// tensors `may_ignore` allows (another task's head, buffers) are skipped; anything else
/// missing or left over is an error naming it.
pub fn load_task_weights(
    params: &ParamStore,
    dir: &Path,
    device: &Device,
    may_start_fresh: &dyn Fn(&str) -> bool,
    may_ignore: &dyn Fn(&str) -> bool,
) -> Result<LoadReport> {
    let file = dir.join("model.safetensors");
    let mut tensors = load_tensors(&file, device)?;
    let is_head = |k: &str| k.starts_with("cls.") || k.starts_with("classifier.");
    if !tensors.keys().any(|k| k.starts_with("bert.")) {
        tensors =
            tensors.into_iter().map(|(k, v)| if is_head(&k) { (k, v) } else { (format!("bert.{k}"), v) }).collect();
    }
    let fresh = |n: &str| is_adapter(n) || may_start_fresh(n);
    let mut report = load_matching(params, tensors, &file, &fresh, may_ignore)?;
    report.fresh.retain(|n| !is_adapter(n));
    Ok(report)
}

/// Makes `model`'s shape keys agree with a pretrained `bert` config (read from the file
/// `source`): keys left out are filled in, keys given must match (an error names both values).
pub fn adopt_shape(model: &mut ModelConfig, bert: &BertConfig, source: &Path) -> Result<()> {
    let pairs = [
        ("n_layer", &mut model.n_layer, bert.num_hidden_layers, "num_hidden_layers"),
        ("n_head", &mut model.n_head, bert.num_attention_heads, "num_attention_heads"),
        ("d_model", &mut model.d_model, bert.hidden_size, "hidden_size"),
        ("block_size", &mut model.block_size, bert.max_position_embeddings, "max_position_embeddings"),
    ];
    for (key, ours, theirs, their_key) in pairs {
        if *ours != 0 && *ours != theirs {
            bail!(
                "`model.{key}` = {ours} disagrees with {}'s {their_key} = {theirs}; remove the key \
                 (`model.init_from` sets the architecture)",
                source.display()
            );
        }
        *ours = theirs;
    }
    if model.d_ff.is_some_and(|d| d != bert.intermediate_size) {
        bail!(
            "`model.d_ff` disagrees with {}'s intermediate_size = {}; remove the key",
            source.display(),
            bert.intermediate_size
        );
    }
    model.d_ff = Some(bert.intermediate_size);
    model.activation = bert.activation()?;
    model.layer_norm_eps = bert.layer_norm_eps;
    model.init_std = bert.initializer_range;
    Ok(())
}

/// A pretrained decoder (GPT-2, Llama) to start a causal-lm run from.
pub struct PretrainedDecoder {
    pub dir: PathBuf,
    pub family: DecoderFamily,
    pub shape: DecoderShape,
    pub tokenizer: TextTokenizer,
}

/// `dir/config.json`, parsed, and its `model_type`.
fn read_config_json(dir: &Path) -> Result<(serde_json::Value, String)> {
    let path = dir.join("config.json");
    if !path.is_file() {
        bail!("{} has no config.json: a Hugging Face model directory holds {}", dir.display(), MODEL_FILES.join(", "));
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let config: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
    let model_type = config.get("model_type").and_then(|v| v.as_str()).unwrap_or("").to_string();
    Ok((config, model_type))
}

/// Where a checkpoint of `model_type` does load, for an error message.
fn loads_into(model_type: &str) -> &'static str {
    match model_type {
        "bert" => "; a BERT loads into an encoder-only run (`model.arch = \"encoder-only\"`)",
        "t5" => "; a T5 loads into an encoder-decoder run (`model.arch = \"encoder-decoder\"`)",
        "gpt2" | "llama" => "; a GPT-2 or Llama loads into a decoder-only run",
        _ => "",
    }
}

/// The family and shape `dir/config.json` describes.
pub fn read_decoder_config(dir: &Path) -> Result<(DecoderFamily, DecoderShape)> {
    let (config, model_type) = read_config_json(dir)?;
    let path = dir.join("config.json");
    let Some(family) = DecoderFamily::of_model_type(&model_type) else {
        bail!(
            "{}: model_type `{model_type}` is not a decoder taper loads (gpt2, llama){}",
            path.display(),
            loads_into(&model_type)
        );
    };
    Ok((family, family.shape(config, &path)?))
}

/// Copies a checkpoint's tensors of `dir`, already under taper's names (`converted`: them and
/// the names left unused), into `params`; every parameter must be there with its shape (an error
/// names the tensor by the checkpoint's name, `hf_name`, and taper's, and both shapes), every
/// tensor used. Returns the start-up line that says what was loaded.
fn load_converted(
    params: &ParamStore,
    dir: &Path,
    (tensors, unused): (std::collections::HashMap<String, candle_core::Tensor>, Vec<String>),
    architecture: &str,
    hf_name: &dyn Fn(&str) -> String,
) -> Result<String> {
    let (file, config) = (dir.join("model.safetensors"), dir.join("config.json"));
    for (name, var) in params.named_vars() {
        match tensors.get(&name) {
            Some(t) if t.dims() != var.dims() => bail!(
                "{}: tensor `{}` (taper's `{name}`) holds {:?} in taper's layout, but {} describes {:?}",
                file.display(),
                hf_name(&name),
                t.dims(),
                config.display(),
                var.dims()
            ),
            _ => {}
        }
    }
    // LoRA adapters start fresh (B at zero: the model starts as the checkpoint).
    load_matching(params, tensors, &file, &|n| is_adapter(n), &|_| false)?;
    let unused = if unused.is_empty() { String::new() } else { format!("; unused: {}", unused.join(", ")) };
    Ok(format!("loaded {} ({architecture}){unused}", dir.display()))
}

impl PretrainedDecoder {
    /// Finds `spec` (a directory or a Hub id), reads its config.json and tokenizer.json, and
    /// fills `model`'s architecture from it (keys given must agree).
    pub fn open(spec: &str, model: &mut ModelConfig) -> Result<Self> {
        let dir = resolve_model_dir(spec).with_context(|| format!("cannot find `model.init_from` = {spec}"))?;
        let (family, shape) = read_decoder_config(&dir)?;
        shape.adopt(model, &dir.join("config.json"))?;
        let tokenizer = TextTokenizer::load(&dir.join("tokenizer.json"))
            .with_context(|| format!("{} needs a tokenizer.json", dir.display()))?;
        Ok(Self { dir, family, shape, tokenizer })
    }

    /// Copies the checkpoint's weights into `params` (a decoder built from the adopted
    /// config); every parameter must be there, every tensor used or a known buffer. Returns
    /// the start-up line that says what was loaded.
    pub fn load_into(&self, params: &ParamStore, model: &ModelConfig, device: &Device) -> Result<String> {
        let tensors = load_tensors(&self.dir.join("model.safetensors"), device)?;
        let converted = self.family.to_taper(tensors, model.block_size, model.tie_embeddings)?;
        load_converted(params, &self.dir, converted, self.family.architecture(), &|n| self.family.checkpoint_name(n))
    }
}

/// A pretrained T5 to start a seq2seq run from.
pub struct PretrainedT5 {
    pub dir: PathBuf,
    pub tokenizer: TextTokenizer,
    /// config.json's pad, end and decoder-start ids.
    pub specials: t5::T5Specials,
    /// Its decoder output is scaled before the head (T5 v1.0).
    pub scaled_head: bool,
}

impl PretrainedT5 {
    /// Finds `spec`, reads its config.json (model_type t5) and tokenizer.json, and makes
    /// `model` its architecture (keys given must agree; `block_size` defaults to 512).
    pub fn open(spec: &str, model: &mut ModelConfig) -> Result<Self> {
        let dir = resolve_model_dir(spec).with_context(|| format!("cannot find `model.init_from` = {spec}"))?;
        let (config, model_type) = read_config_json(&dir)?;
        let path = dir.join("config.json");
        if model_type != "t5" {
            bail!(
                "{}: model_type `{model_type}` is not an encoder-decoder taper loads (t5){}",
                path.display(),
                loads_into(&model_type)
            );
        }
        let id = |key: &str| config.get(key).and_then(|v| v.as_u64()).map(|v| v as u32);
        let (pad, eos) = (id("pad_token_id").unwrap_or(0), id("eos_token_id").unwrap_or(1));
        let specials = t5::T5Specials { pad, eos, decoder_start: id("decoder_start_token_id").unwrap_or(pad) };
        let block_size = if model.block_size == 0 { 512 } else { model.block_size };
        let theirs = t5::model_config(config, block_size)
            .with_context(|| format!("{} does not describe a model taper can build", path.display()))?;
        let architecture = ModelConfig { vocab_size: Some(theirs.vocab_size), ..theirs.model };
        model.adopt(&architecture, &path)?;
        model.block_size = block_size;
        let tokenizer = TextTokenizer::load(&dir.join("tokenizer.json"))
            .with_context(|| format!("{} needs a tokenizer.json", dir.display()))?;
        Ok(Self { dir, tokenizer, specials, scaled_head: theirs.scaled_head })
    }

    /// Copies the checkpoint's weights into `params` (an encoder-decoder built from the adopted
    /// config); every parameter must be there, every tensor used or a tied copy. Returns the
    /// start-up line that says what was loaded.
    pub fn load_into(&self, params: &ParamStore, model: &ModelConfig, device: &Device) -> Result<String> {
        let tensors = load_tensors(&self.dir.join("model.safetensors"), device)?;
        let converted = t5::to_taper(tensors, model, self.scaled_head)?;
        let gated = model.activation.gate().is_some();
        load_converted(params, &self.dir, converted, "T5ForConditionalGeneration", &|n| t5::checkpoint_name(n, gated))
    }
}
