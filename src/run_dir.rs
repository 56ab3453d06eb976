//! The layout of a run directory, and loading a trained model back from it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_nn::VarBuilder;

use crate::config::Config;
use crate::data::TextTokenizer;
use crate::model::Gpt;

pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
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
    pub fn metrics(&self) -> PathBuf {
        self.path.join("metrics.jsonl")
    }
    /// An encoder run's architecture, as a Hugging Face BERT config.json.
    pub fn bert_config(&self) -> PathBuf {
        self.path.join("bert_config.json")
    }
    /// A classifier's labels, in output order.
    pub fn labels(&self) -> PathBuf {
        self.path.join("labels.json")
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

/// A trained GPT, ready to generate: its config, tokenizer, and weights from one checkpoint.
pub struct TrainedGpt {
    pub config: Config,
    pub tokenizer: TextTokenizer,
    pub model: Gpt,
    pub checkpoint: PathBuf,
}

impl TrainedGpt {
    /// `which`: "latest", "best" or "step-N". `device`: as in `train.device`.
    pub fn load(run_dir: &Path, which: &str, device: &str) -> Result<Self> {
        let run = RunDir::new(run_dir);
        let config = run.load_config(&[])?;
        let tokenizer = TextTokenizer::load(&run.tokenizer())?;
        let device = crate::device::open_device(device)?;
        let checkpoint = crate::checkpoint::resolve_checkpoint(run_dir, which)?;
        let file = checkpoint.join("model.safetensors");
        let tensors = crate::checkpoint::load_tensors(&file, &device)?;
        let vb = VarBuilder::from_tensors(tensors, candle_core::DType::F32, &device);
        let dtype = config.train.dtype.to_dtype();
        let model = Gpt::new(&config.model, tokenizer.vocab_size(), dtype, vb)
            .with_context(|| format!("checkpoint {} does not fit the run's config", file.display()))?;
        Ok(Self { config, tokenizer, model, checkpoint })
    }
}
