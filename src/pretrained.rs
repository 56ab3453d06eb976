//! Pretrained Hugging Face checkpoints: a directory (or a Hub id) with `config.json`,
//! `model.safetensors` and `tokenizer.json`, read through its family's adapter (`hf`): the
//! architecture into the run's `[model]`, the weights into taper's modules.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use serde_json::Value;

use crate::checkpoint::{load_matching, load_tensors, LoadReport};
use crate::config::{Architecture, Kernels, ModelConfig, NormPlacement};
use crate::data::TextTokenizer;
pub use crate::hf::MODEL_FILES;
use crate::hf::{self, Checkpoint, Family, SpecialIds, Tensors};
use crate::model::encoder::{Encoder, EncoderVocab, HEADS};
use crate::model::lora::is_adapter;
use crate::model::ParamStore;

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
        // Optional: an encoder-decoder's decoding defaults, absent on many models (no error).
        let _ = repo.get("generation_config.json");
    }
    let dir = files[0].parent().context("cached file without a directory")?.to_path_buf();
    if files.iter().any(|f| f.parent() != Some(dir.as_path())) {
        bail!("the cached files of {spec} are from different revisions");
    }
    Ok(dir)
}

/// A pretrained model to start a run from: its directory, family, config.json, the
/// architecture it describes, and its tokenizer.
pub struct Pretrained {
    pub dir: PathBuf,
    pub family: &'static dyn Family,
    pub config: Value,
    pub checkpoint: Checkpoint,
    pub tokenizer: TextTokenizer,
}

impl Pretrained {
    /// Finds `spec` (a directory or a Hub id), reads its config.json (a family of
    /// `model.arch`) and tokenizer.json, and makes `model` its architecture (keys given must
    /// agree; `hf::adopt`).
    pub fn open(spec: &str, model: &mut ModelConfig) -> Result<Self> {
        let dir = resolve_model_dir(spec).with_context(|| format!("cannot find `model.init_from` = {spec}"))?;
        refuse_pickles(&dir)?;
        let (family, config, checkpoint) = read_architecture(&dir, model)?;
        let tokenizer = TextTokenizer::load(&dir.join("tokenizer.json"))
            .with_context(|| format!("{} needs a tokenizer.json", dir.display()))?;
        Ok(Self { dir, family, config, checkpoint, tokenizer })
    }

    /// Copies its generation_config.json (if it has one) to `to`: decoding defaults for the run.
    pub fn copy_generation_config(&self, to: &Path) -> Result<()> {
        let from = self.dir.join("generation_config.json");
        if !from.is_file() {
            return Ok(());
        }
        let bytes = std::fs::read(&from).with_context(|| format!("cannot read {}", from.display()))?;
        crate::fsutil::write_atomic(to, &bytes)
    }

    /// The special ids its config.json names.
    pub fn ids(&self) -> SpecialIds {
        self.family.special_ids(&self.config)
    }

    /// The rows of an encoder's embeddings.
    pub fn encoder_vocab(&self) -> EncoderVocab {
        self.checkpoint.encoder_vocab()
    }

    fn file(&self) -> PathBuf {
        self.dir.join("model.safetensors")
    }

    /// Copies the checkpoint's weights into `params`, a model built with taper's names from the
    /// adopted `model` (a decoder, an encoder-decoder): every parameter must be there with its
    /// shape (an error names the tensor by the checkpoint's name and taper's, and both shapes),
    /// every tensor used or set apart by the adapter; LoRA adapters start fresh. Returns the
    /// start-up line that says what was loaded.
    pub fn load_into(&self, params: &ParamStore, model: &ModelConfig, device: &Device) -> Result<String> {
        let (file, config_path) = (self.file(), self.dir.join("config.json"));
        let tensors = load_tensors(&file, device)?;
        let (tensors, unused) = self.family.to_taper(tensors, model, &self.config)?;
        for (name, var) in params.named_vars() {
            match tensors.get(&name) {
                Some(t) if t.dims() != var.dims() => bail!(
                    "{}: tensor `{}` (taper's `{name}`) holds {:?} in taper's layout, but {} describes {:?}",
                    file.display(),
                    self.family.checkpoint_name(&name, model),
                    t.dims(),
                    config_path.display(),
                    var.dims()
                ),
                _ => {}
            }
        }
        // LoRA adapters start fresh (B at zero: the model starts as the checkpoint).
        load_matching(params, tensors, &file, &|n| is_adapter(n), &|_| false)?;
        let unused = if unused.is_empty() { String::new() } else { format!("; unused: {}", unused.join(", ")) };
        Ok(format!("loaded {} ({}){unused}", self.dir.display(), self.family.model_type()))
    }

    /// Copies the checkpoint's weights into `params`, a task model built through the family's
    /// names from the adopted `model` (an encoder's: `Family::keeps_names`). A bare encoder's
    /// file (`BertModel`, without the task models' prefix) loads too. Parameters under the
    /// task's `heads` (taper's names), the final norm of a pre-LN rebuild and LoRA adapters may
    /// start fresh; the file's tensors of other heads, and those the family sets aside, are
    /// skipped; anything else missing or left over is an error naming it.
    pub fn load_task_model(
        &self,
        params: &ParamStore,
        model: &ModelConfig,
        device: &Device,
        heads: &[&str],
    ) -> Result<LoadReport> {
        let table = self.family.names(model);
        let file = self.file();
        let tensors = task_model_names(self.family, load_tensors(&file, device)?, &table);
        let fresh = |n: &str| is_adapter(n) || table.is_under(n, heads) || table.is_under(n, &["encoder.ln_f"]);
        let ignore = |n: &str| self.family.ignorable(n) || table.is_under(n, &HEADS);
        let mut report = load_matching(params, tensors, &file, &fresh, &ignore)?;
        report.fresh.retain(|n| !is_adapter(n));
        Ok(report)
    }
}

/// A directory with PyTorch's pickled weights (`pytorch_model.bin`) and no model.safetensors:
/// an error with the one-line conversion (taper reads safetensors only; unpickling runs code).
fn refuse_pickles(dir: &Path) -> Result<()> {
    let pickled = ["pytorch_model.bin", "pytorch_model.bin.index.json"].iter().find(|f| dir.join(f).is_file());
    match pickled {
        Some(file) if !dir.join("model.safetensors").is_file() => bail!(
            "{} has {file} and no model.safetensors: taper reads safetensors only (a pickle can run code). Convert \
             it once with transformers: python -c \"from transformers import AutoModel as M; \
             M.from_pretrained('{d}').save_pretrained('{d}', safe_serialization=True)\" (for a task model use its \
             AutoModelFor... class, so the head is kept)",
            dir.display(),
            d = dir.display()
        ),
        _ => Ok(()),
    }
}

/// The family of `dir`'s config.json and the architecture it describes, made `model`'s.
fn read_architecture(dir: &Path, model: &mut ModelConfig) -> Result<(&'static dyn Family, Value, Checkpoint)> {
    let (config, path) = hf::read_config_json(dir)?;
    let family = hf::family_of(&config, &path, model.arch)?;
    let checkpoint = family
        .read_config(&config)
        .with_context(|| format!("{} does not describe a model taper can build", path.display()))?;
    hf::adopt(model, &checkpoint, &path)?;
    Ok((family, config, checkpoint))
}

/// A bare encoder's file (no tensor under the family's encoder prefix) with its encoder's
/// tensors put under it, as a task model names them; a task model's file as it is.
fn task_model_names(family: &dyn Family, tensors: Tensors, table: &hf::NameTable) -> Tensors {
    let Some(prefix) = family.encoder_prefix() else { return tensors };
    let prefixed = format!("{prefix}.");
    if tensors.keys().any(|k| k.starts_with(&prefixed)) {
        return tensors;
    }
    let own = |k: &str| table.taper_name(k).is_some() || family.ignorable(k);
    tensors.into_iter().map(|(k, v)| if own(&k) { (k, v) } else { (format!("{prefixed}{k}"), v) }).collect()
}

/// A bare encoder with trainable parameters initialised from a pretrained directory.
pub struct PretrainedEncoder {
    pub model: ModelConfig,
    pub encoder: Encoder,
    pub params: ParamStore,
    pub report: LoadReport,
}

/// Loads the bare encoder of `dir` (`BertModel`: hidden states), rebuilt with `norm`, its
/// parameters under the bare file's names. Tensors of the heads (`pooler.`) and buffers are
/// skipped; with `norm = Pre` the final LayerNorm, which no post-LN checkpoint has, starts
/// fresh. Any other missing or extra tensor is an error that names it. A task model's file
/// (`bert.` prefix) loads too.
pub fn load_encoder(
    dir: &Path,
    norm: NormPlacement,
    kernels: Kernels,
    device: &Device,
    seed: u64,
) -> Result<PretrainedEncoder> {
    let mut model = ModelConfig { arch: Architecture::EncoderOnly, norm, kernels, ..ModelConfig::defaults() };
    let (family, _, checkpoint) = read_architecture(dir, &mut model)?;
    let prefix = family.encoder_prefix().context("not an encoder family")?;
    let bare = family.names(&model).under("encoder", prefix);
    let params = ParamStore::new();
    let vb = bare.renamed(params.var_builder(seed, device));
    let encoder = Encoder::new(&model, checkpoint.encoder_vocab(), DType::F32, vb)
        .with_context(|| format!("cannot build the encoder described by {}/config.json", dir.display()))?;
    let file = dir.join("model.safetensors");
    let prefixed = format!("{prefix}.");
    let mut tensors = load_tensors(&file, device)?;
    if !tensors.is_empty() && tensors.keys().all(|k| k.starts_with(&prefixed)) {
        tensors = tensors.into_iter().map(|(k, v)| (k[prefixed.len()..].to_string(), v)).collect();
    }
    let task_names = family.names(&model);
    let of_head = |n: &str| task_names.is_under(n, &HEADS) || task_names.is_under(&format!("{prefixed}{n}"), &HEADS);
    let report = load_matching(&params, tensors, &file, &|n| bare.to_taper(n).starts_with("ln_f."), &|n| {
        family.ignorable(n) || of_head(n)
    })?;
    Ok(PretrainedEncoder { model, encoder, params, report })
}
