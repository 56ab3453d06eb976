//! The layout of a run directory, and opening one of its checkpoints for inference.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::config::{Config, TaskKind};
use crate::data::labelled::LabelSet;

pub struct RunDir {
    path: PathBuf,
}

/// The files a run writes into its directory (besides `checkpoints/`); the first, written
/// before any other, marks the directory as taper's.
pub const RUN_FILES: [&str; 10] = [
    ".taper-run",
    "config.toml",
    "tokenizer.json",
    "target_tokenizer.json",
    "generation_config.json",
    "tokens.bin",
    "labels.json",
    "bert_config.json",
    "metrics.jsonl",
    "summary.json",
];

impl RunDir {
    /// Written first into a run directory: what is beside it was written by taper.
    pub fn marker(&self) -> PathBuf {
        self.path.join(".taper-run")
    }

    /// Whether a run trained here: a checkpoint, a summary, or a metrics line.
    pub fn has_trained(&self) -> bool {
        let metrics = std::fs::metadata(self.metrics()).is_ok_and(|m| m.len() > 0);
        metrics || self.summary().exists() || self.path.join("checkpoints").exists()
    }

    /// What of a run is already here: those of [`RUN_FILES`] that exist, and `checkpoints/`.
    pub fn existing(&self) -> Vec<PathBuf> {
        let names = RUN_FILES.iter().copied().chain(["checkpoints", "tensorboard"]);
        names.map(|n| self.path.join(n)).filter(|p| p.exists()).collect()
    }

    /// Removes what a kill or a full disk left behind: `<run file>.tmp` here, and the
    /// checkpoints' `step-N.tmp` / `step-N.trash`. Returns what it removed.
    pub fn clean_leftovers(&self) -> Result<Vec<PathBuf>> {
        let mut removed = crate::checkpoint::clean_leftovers(&self.path)?;
        for name in RUN_FILES {
            let tmp = crate::fsutil::tmp_path(&self.path.join(name));
            if tmp.is_file() {
                std::fs::remove_file(&tmp).with_context(|| format!("cannot remove {}", tmp.display()))?;
                removed.push(tmp);
            }
        }
        Ok(removed)
    }

    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The resolved config the run was trained with.
    pub fn config(&self) -> PathBuf {
        self.path.join("config.toml")
    }
    pub fn tokenizer(&self) -> PathBuf {
        self.path.join("tokenizer.json")
    }
    /// A pretrained encoder-decoder's generation_config.json, copied in by a run that starts
    /// from it: `taper generate`'s defaults, and what an export carries back out.
    pub fn generation_config(&self) -> PathBuf {
        self.path.join("generation_config.json")
    }
    pub fn metrics(&self) -> PathBuf {
        self.path.join("metrics.jsonl")
    }
    /// TensorBoard's event files (`train.tensorboard`).
    pub fn tensorboard(&self) -> PathBuf {
        self.path.join("tensorboard")
    }
    /// Written when the run ends (finished, stopped, interrupted or diverged).
    pub fn summary(&self) -> PathBuf {
        self.path.join("summary.json")
    }
    /// The `status` of summary.json, if the run has one.
    pub fn status(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.summary()).ok()?;
        let value: serde_json::Value = serde_json::from_str(&text).ok()?;
        value.get("status")?.as_str().map(String::from)
    }
    /// An encoder run's architecture, as its family's Hugging Face config.json (named from the
    /// days when every encoder was a BERT).
    pub fn encoder_config(&self) -> PathBuf {
        self.path.join("bert_config.json")
    }
    /// A classifier's labels, in output order.
    pub fn labels(&self) -> PathBuf {
        self.path.join("labels.json")
    }

    /// An encoder run's config.json, read, and where it was read from.
    pub fn read_encoder_config(&self) -> Result<(serde_json::Value, PathBuf)> {
        let path = self.encoder_config();
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok((serde_json::from_str(&text).with_context(|| format!("invalid {}", path.display()))?, path))
    }

    /// A classifier's labels.json, read.
    pub fn read_labels(&self) -> Result<LabelSet> {
        let path = self.labels();
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let names: Vec<String> = serde_json::from_str(&text).with_context(|| format!("invalid {}", path.display()))?;
        Ok(LabelSet { names })
    }

    pub fn load_config(&self, overrides: &[String]) -> Result<Config> {
        let path = self.config();
        if !path.is_file() {
            bail!("{} is not a taper run directory: it has no config.toml", self.path.display());
        }
        let mut config = Config::load(&path, overrides)?;
        config.checkpoint.dir = Some(self.path.clone());
        Ok(config)
    }
}

/// A run's checkpoint opened for inference: the run's resolved config, the checkpoint's
/// directory and its weights on a device. Each task builds its trained model from one (the
/// one loader for every kind of run).
pub struct OpenedCheckpoint {
    pub run: RunDir,
    pub config: Config,
    pub checkpoint: PathBuf,
    pub weights: VarBuilder<'static>,
    pub device: Device,
}

impl OpenedCheckpoint {
    /// Opens checkpoint `which` ("latest", "best", "step-N") of the `kind` run in `run_dir`,
    /// its tensors on `device` (as in `train.device`).
    pub fn open(run_dir: &Path, which: &str, device: &str, kind: TaskKind) -> Result<Self> {
        let run = RunDir::new(run_dir);
        let config = run.load_config(&[])?;
        if config.task.kind() != kind {
            bail!("{} is not a {kind} run (its task is {})", run_dir.display(), config.task.kind());
        }
        let device = crate::device::open_device(device)?;
        let checkpoint = crate::checkpoint::resolve_checkpoint(run_dir, which)?;
        crate::checkpoint::verify_weights(&checkpoint)?;
        let tensors = crate::checkpoint::load_tensors(&checkpoint.join("model.safetensors"), &device)?;
        let weights = VarBuilder::from_tensors(tensors, DType::F32, &device);
        Ok(Self { run, config, checkpoint, weights, device })
    }

    /// The model `build` makes from the weights; an error names the checkpoint that does not fit.
    pub fn build<M>(&self, build: impl FnOnce(VarBuilder<'static>) -> Result<M>) -> Result<M> {
        let file = self.checkpoint.join("model.safetensors");
        build(self.weights.clone())
            .with_context(|| format!("checkpoint {} does not fit the run's config", file.display()))
    }
}
