//! Run configuration: one TOML file, one section per part of the code.
//!
//! Two steps, as ripgrep and uv do it: [`Config::load`] parses the file (unknown keys are
//! rejected by serde with the valid ones listed), applies `--set` overrides, then
//! [`Config::validate`] checks values that depend on each other. Every error names the file.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub use crate::data::config::{DataConfig, TokenizerConfig, TokenizerKind};
pub use crate::kernels::{Activation, Kernels};
pub use crate::model::config::{Architecture, InitScheme, ModelConfig, NormPlacement, Positions};
pub use crate::model::norm::NormKind;
pub use crate::optim::config::{Decay, OptimConfig, ScheduleConfig};
pub use crate::train::config::{
    higher, lower, CheckpointConfig, DTypeName, EvalBatches, LossScale, Metric, TaskConfig, TaskKind, TrainConfig,
    VAL_LOSS,
};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub model: ModelConfig,
    pub data: DataConfig,
    #[serde(default)]
    pub tokenizer: TokenizerConfig,
    #[serde(default)]
    pub optim: OptimConfig,
    #[serde(default)]
    pub schedule: ScheduleConfig,
    pub train: TrainConfig,
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    #[serde(default)]
    pub task: TaskConfig,
    /// LoRA fine-tuning: train low-rank adapters of the pretrained model's layers alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<crate::model::lora::LoraConfig>,
}

/// An error in a `--set` override (not in the config file).
#[derive(Debug)]
pub struct SetError {
    item: String,
    message: String,
}

impl std::fmt::Display for SetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "in --set {}: {}", self.item, self.message)
    }
}

impl std::error::Error for SetError {}

/// Who is at fault for a config that does not deserialize with its overrides: the file (its own
/// error, with its line and column) or the override whose key the error names.
fn blame(err: toml::de::Error, text: &str, overrides: &[String]) -> anyhow::Error {
    if let Err(file_err) = Config::from_toml_str(text, &[]) {
        return file_err;
    }
    on_overrides(err.into(), overrides)
}

/// `err`, caused by `overrides` (the file alone is fine), as a [`SetError`] naming the override
/// whose key (or section) the message names, or all of them.
fn on_overrides(err: anyhow::Error, overrides: &[String]) -> anyhow::Error {
    let message = format!("{err:#}").replace('\n', " ");
    let key = |item: &String| item.split_once('=').map_or(item.clone(), |(k, _)| k.trim().to_string());
    let named = overrides.iter().rev().find(|item| message.contains(&format!("`{}`", key(item))));
    let section = overrides.iter().rev().find(|item| {
        let k = key(item);
        k.split_once('.').is_some_and(|(section, _)| message.contains(&format!("`{section}`")))
    });
    let item = named.or(section).cloned().unwrap_or_else(|| overrides.join(" --set "));
    SetError { item, message: message.trim().to_string() }.into()
}

impl Config {
    /// Reads `path`, applies `overrides` (`section.key=value`, value in TOML syntax or a bare
    /// string), and validates the result.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
        let mut config = Self::from_toml_str(&text, overrides).map_err(|err| match err.is::<SetError>() {
            true => err,
            false => err.context(format!("in config file {}", path.display())),
        })?;
        if config.checkpoint.dir.is_none() {
            let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
            config.checkpoint.dir = Some(Path::new("runs").join(stem.unwrap_or_else(|| "run".into())));
        }
        Ok(config)
    }

    pub fn from_toml_str(text: &str, overrides: &[String]) -> Result<Self> {
        // Without overrides, parse the text itself so errors point at its line and column.
        let mut table: toml::Table = toml::from_str(text)?;
        for item in overrides {
            apply_override(&mut table, item)?;
        }
        if let Err(err) = all_finite(&table, "") {
            let file_alone_is_valid = !overrides.is_empty() && Self::from_toml_str(text, &[]).is_ok();
            return Err(if file_alone_is_valid { on_overrides(err, overrides) } else { err });
        }
        let default_norm = encoder_norm_default(&mut table);
        let upgraded = upgrade_task(&mut table);
        let mut config: Config = if overrides.is_empty() && !default_norm && !upgraded {
            toml::from_str(text)?
        } else {
            match toml::Value::Table(table).try_into() {
                Ok(config) => config,
                Err(err) => return Err(blame(err, text, overrides)),
            }
        };
        if let Err(err) = config.validate() {
            let file_alone_is_valid = !overrides.is_empty() && Self::from_toml_str(text, &[]).is_ok();
            return Err(if file_alone_is_valid { on_overrides(err, overrides) } else { err });
        }
        config.model.lora = config.lora.as_ref().map(|lora| lora.spec()).transpose()?;
        Ok(config)
    }

    pub fn to_toml_string(&self) -> Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }

    /// The file `taper eval` scores when none is given: `data.val_path`.
    pub fn val_file(&self) -> Result<PathBuf> {
        self.data.val_path.clone().context(
            "the run has no `data.val_path` (its validation share was held out of the training file); give --file",
        )
    }

    /// The keys whose values differ between `self` (before) and `after`, each as
    /// `section.key: before -> after` (a key one side lacks shows as `-`); the run directory
    /// (`checkpoint.dir`) is left out.
    pub fn differences(&self, after: &Config) -> Result<Vec<String>> {
        let flat = |c: &Config| -> Result<std::collections::BTreeMap<String, String>> {
            let toml::Value::Table(sections) = toml::Value::try_from(c)? else { bail!("a config is a table") };
            let mut keys = std::collections::BTreeMap::new();
            for (section, table) in sections {
                for (key, value) in table.as_table().into_iter().flatten() {
                    keys.insert(format!("{section}.{key}"), value.to_string());
                }
            }
            keys.remove("checkpoint.dir");
            Ok(keys)
        };
        let (before, after) = (flat(self)?, flat(after)?);
        let all: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
        let shown = |v: Option<&String>| v.cloned().unwrap_or_else(|| "-".into());
        Ok(all
            .into_iter()
            .filter(|k| before.get(*k) != after.get(*k))
            .map(|k| format!("{k}: {} -> {}", shown(before.get(k)), shown(after.get(k))))
            .collect())
    }

    pub fn run_dir(&self) -> PathBuf {
        self.checkpoint.dir.clone().unwrap_or_else(|| PathBuf::from("runs/run"))
    }

    /// Checks values that serde cannot: each section's ranges (beside the section), then the
    /// relations between sections.
    pub fn validate(&self) -> Result<()> {
        self.validate_task()?;
        self.model.validate()?;
        self.train.validate()?;
        if self.train.sample_every > 0 && !self.task.kind().samples() {
            let which: Vec<&str> = TaskKind::all().filter(|t| t.samples()).map(|t| t.name()).collect();
            bail!("`train.sample_every` shows generated text: {} runs only; remove the key", which.join(" and "));
        }
        self.checkpoint.validate()?;
        self.data.validate()?;
        self.tokenizer.validate()?;
        self.optim.validate()?;
        if let Some(lora) = &self.lora {
            lora.validate()?;
            if self.model.init_from.is_none() {
                bail!(
                    "[lora] adapts a pretrained model: set `model.init_from` (or remove [lora] to train every weight)"
                );
            }
        }
        self.schedule.validate(self.train.steps, self.optim.lr)
    }

    /// Which task goes with which architecture, and the task's own keys.
    fn validate_task(&self) -> Result<()> {
        let (m, task) = (&self.model, &self.task);
        let kind = task.kind();
        if kind.arch() != m.arch {
            let needs: Vec<String> =
                TaskKind::all().map(|t| format!("{} needs {}", t.name(), kebab(&t.arch()))).collect();
            bail!(
                "`task.kind = \"{kind}\"` does not go with `model.arch = \"{}\"`: {}",
                kebab(&m.arch),
                needs.join("; ")
            );
        }
        validate_encoder(m)?;
        if m.init_from.is_some() && (self.tokenizer.kind != TokenizerKind::Char || self.tokenizer.path.is_some()) {
            bail!("with `model.init_from` the tokenizer is the checkpoint's tokenizer.json; remove the [tokenizer] section");
        }
        if m.arch != Architecture::EncoderDecoder
            && (m.n_decoder_layer.is_some() || !m.share_embeddings || m.scale_embeddings)
        {
            bail!("`model.n_decoder_layer`, `model.share_embeddings` and `model.scale_embeddings` apply to `arch = \"encoder-decoder\"`");
        }
        if m.n_decoder_layer == Some(0) {
            bail!("`model.n_decoder_layer` must be at least 1");
        }
        kind.validate(self)?;
        if task.kind().metric(&self.checkpoint.best_metric).is_none() {
            let valid: Vec<&str> = task.kind().metrics().iter().map(|m| m.name).collect();
            bail!(
                "`checkpoint.best_metric = \"{}\"` is not a metric of task {}; valid: {}",
                self.checkpoint.best_metric,
                task.kind(),
                valid.join(", ")
            );
        }
        Ok(())
    }
}

/// What an encoder-only model allows: one from scratch records its architecture as a BERT's
/// config.json (the first encoder family, `hf::from_scratch`), which has these keys alone; a
/// pretrained one's keys must agree with its checkpoint (`hf::adopt`).
fn validate_encoder(m: &ModelConfig) -> Result<()> {
    if m.arch == Architecture::EncoderOnly
        && (m.norm_kind != NormKind::Layer || m.activation.gate().is_some() || m.n_kv_head() != m.n_head || m.qk_norm)
    {
        bail!(
            "an encoder-only model is a BERT (Hugging Face's layout, for export and `init_from`): LayerNorm, an \
             elementwise activation (gelu, relu, gelu-tanh, silu), n_kv_head = n_head and no QK-norm; remove \
             `model.norm_kind`, the gated `model.activation`, `model.n_kv_head` or `model.qk_norm`"
        );
    }
    if m.arch == Architecture::EncoderOnly && m.emb_dropout() != m.resid_dropout() {
        bail!(
            "a BERT's embedding dropout is its hidden_dropout_prob, the residual branches' too: remove \
             `model.emb_dropout` or make it `model.resid_dropout`"
        );
    }
    if m.init_from.is_some()
        && m.arch == Architecture::EncoderOnly
        && matches!(m.norm, NormPlacement::Sandwich | NormPlacement::DeepNorm)
    {
        bail!(
            "`model.norm = \"{}\"` does not fit a pretrained encoder (`model.init_from`): its weights were trained \
             post-LN, without sandwich's extra norms or DeepNorm's scaled residual; use \"post\" (or \"pre\")",
            kebab(&m.norm)
        );
    }
    Ok(())
}

/// Every number of the config is finite: TOML's `nan` and `inf` are no value of any key.
fn all_finite(table: &toml::Table, prefix: &str) -> Result<()> {
    for (key, value) in table {
        let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        match value {
            toml::Value::Float(x) if !x.is_finite() => bail!("`{path}` = {x}: every number in a config must be finite"),
            toml::Value::Table(inner) => all_finite(inner, &path)?,
            toml::Value::Array(items) => {
                if let Some(x) = items.iter().filter_map(toml::Value::as_float).find(|x| !x.is_finite()) {
                    bail!("`{path}` holds {x}: every number in a config must be finite");
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// An encoder's `model.norm` defaults to BERT's post-LN (a decoder's to GPT-2's pre-LN), so a
/// pretrained BERT is never silently rebuilt pre-LN. Returns whether it filled the key in.
fn encoder_norm_default(table: &mut toml::Table) -> bool {
    let Some(model) = table.get_mut("model").and_then(|m| m.as_table_mut()) else { return false };
    let encoder = model.get("arch").and_then(|a| a.as_str()) == Some("encoder-only");
    if encoder && !model.contains_key("norm") {
        model.insert("norm".into(), toml::Value::String("post".into()));
        return true;
    }
    false
}

/// A config enum's name as written in TOML (`encoder-only`).
fn kebab<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

/// `[task]` as written before it was tagged on its kind, read as now; true if that changed it.
fn upgrade_task(table: &mut toml::Table) -> bool {
    let Some(toml::Value::Table(task)) = table.get_mut("task") else { return false };
    let before = task.clone();
    crate::train::config::upgrade_task_table(task);
    *task != before
}

/// Applies one `section.key=value` override. The value is parsed as TOML (`0.1`, `true`,
/// `[0.9, 0.95]`, `"post"`); anything that does not parse is taken as a string (`post`).
fn apply_override(table: &mut toml::Table, item: &str) -> Result<()> {
    let (key, raw) = item.split_once('=').with_context(|| format!("--set `{item}`: expected section.key=value"))?;
    let path: Vec<&str> = key.trim().split('.').collect();
    if path.len() != 2 || path.iter().any(|p| p.is_empty()) {
        bail!("--set `{item}`: the key must be `section.key`, for example `model.norm=post`");
    }
    let raw = raw.trim();
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let section = table.entry(path[0].to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let section = section.as_table_mut().with_context(|| format!("--set `{item}`: `{}` is not a section", path[0]))?;
    section.insert(path[1].to_string(), value);
    Ok(())
}
