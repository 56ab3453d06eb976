//! A trained run loaded back for inference: the one dispatch on a run's task kind that the
//! commands on trained runs (`generate`, `eval`, `predict`) share. Each task's trained model
//! lives in its task file (`train/causal_lm.rs`, ...), built from one `OpenedCheckpoint`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::config::TaskKind;
use crate::run_dir::OpenedCheckpoint;
pub use crate::train::causal_lm::TrainedGpt;
pub use crate::train::classification::TrainedClassifier;
pub use crate::train::seq2seq::TrainedSeq2Seq;
use crate::train::task::Evaluation;
pub use crate::train::token_classification::TrainedTagger;

/// Boxed: the models are kilobytes of tensor handles each.
pub enum TrainedRun {
    Gpt(Box<TrainedGpt>),
    Classifier(Box<TrainedClassifier>),
    Tagger(Box<TrainedTagger>),
    Seq2Seq(Box<TrainedSeq2Seq>),
}

impl TrainedRun {
    /// The run in `run_dir` at checkpoint `which` ("latest", "best", "step-N") on `device`.
    pub fn load(run_dir: &Path, which: &str, device: &str) -> Result<Self> {
        let kind = crate::run_dir::RunDir::new(run_dir).load_config(&[])?.task.kind();
        let open = || OpenedCheckpoint::open(run_dir, which, device, kind);
        Ok(match kind {
            TaskKind::CausalLm => Self::Gpt(Box::new(TrainedGpt::from_checkpoint(open()?)?)),
            TaskKind::SequenceClassification => {
                Self::Classifier(Box::new(TrainedClassifier::from_checkpoint(open()?)?))
            }
            TaskKind::TokenClassification => Self::Tagger(Box::new(TrainedTagger::from_checkpoint(open()?)?)),
            TaskKind::Seq2seq => Self::Seq2Seq(Box::new(TrainedSeq2Seq::from_checkpoint(open()?)?)),
            TaskKind::MaskedLm => bail!(
                "{}: a masked-lm run has no inference command; its val loss and masked-token accuracy are in \
                 its metrics.jsonl, and `taper export` writes it for fine-tuning",
                run_dir.display()
            ),
        })
    }

    /// The checkpoint the weights came from.
    pub fn checkpoint(&self) -> &Path {
        match self {
            Self::Gpt(t) => &t.checkpoint,
            Self::Classifier(t) => &t.checkpoint,
            Self::Tagger(t) => &t.checkpoint,
            Self::Seq2Seq(t) => &t.checkpoint,
        }
    }

    /// The task's metrics on `file` (default: a GPT's validation split, the run's
    /// `data.val_path` otherwise), and what was scored.
    pub fn evaluate(&self, file: Option<&Path>) -> Result<(Evaluation, String)> {
        let labelled = |config: &crate::config::Config| -> Result<PathBuf> {
            file.map_or_else(|| config.val_file(), |f| Ok(f.to_path_buf()))
        };
        Ok(match self {
            Self::Gpt(t) => {
                let scored = file.map_or("its validation split".into(), |f| f.display().to_string());
                (t.evaluate(file)?, scored)
            }
            Self::Classifier(t) => {
                let file = labelled(&t.config)?;
                (t.evaluate(&file)?, file.display().to_string())
            }
            Self::Tagger(t) => {
                let file = labelled(&t.config)?;
                (t.evaluate(&file)?, file.display().to_string())
            }
            Self::Seq2Seq(t) => {
                let file = labelled(&t.config)?;
                (t.evaluate(&file)?, file.display().to_string())
            }
        })
    }

    /// `taper predict`: one JSON record per input of `input` (a classifier's label, or a
    /// tagger's tag per word).
    pub fn predict(&self, input: &Path) -> Result<Vec<serde_json::Value>> {
        match self {
            Self::Classifier(t) => t.predict(input),
            Self::Tagger(t) => t.predict(input),
            Self::Gpt(_) | Self::Seq2Seq(_) => bail!("`taper predict` needs a sequence- or token-classification run"),
        }
    }
}
