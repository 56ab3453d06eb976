//! A trained run loaded back for inference: its task (registered in `train::TASKS`) builds the
//! model from one `OpenedCheckpoint`, and the commands on trained runs (`generate`, `eval`,
//! `predict`) ask it (`train::task::Trained`).

use std::path::Path;

use anyhow::Result;

use crate::run_dir::OpenedCheckpoint;
pub use crate::train::causal_lm::TrainedGpt;
pub use crate::train::classification::TrainedClassifier;
pub use crate::train::seq2seq::TrainedSeq2Seq;
pub use crate::train::task::Trained;
pub use crate::train::token_classification::TrainedTagger;

/// A trained run of any task.
pub struct TrainedRun(Box<dyn Trained>);

impl TrainedRun {
    /// The run in `run_dir` at checkpoint `which` ("latest", "best", "step-N") on `device`.
    pub fn load(run_dir: &Path, which: &str, device: &str) -> Result<Self> {
        let kind = crate::run_dir::RunDir::new(run_dir).load_config(&[])?.task.kind();
        Ok(Self(kind.spec().load(OpenedCheckpoint::open(run_dir, which, device, kind)?)?))
    }
}

impl std::ops::Deref for TrainedRun {
    type Target = dyn Trained;

    fn deref(&self) -> &Self::Target {
        self.0.as_ref()
    }
}
