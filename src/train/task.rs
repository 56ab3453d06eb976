//! What the training loop trains: a [`Task`] is one run's, it owns its data and model and
//! turns a (step, micro-batch) into a loss, the loop (`run.rs`) owns everything else; and a
//! trained run loaded back ([`Trained`]). A kind of task is a `train::TaskSpec`.

use std::any::Any;
use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Result};
use candle_core::Tensor;

use crate::config::Config;
use crate::distributed::Collective;
use crate::model::{Mode, ParamStore};

/// Metrics of one evaluation, by name (`val_loss`, `accuracy`, ...).
pub type Evaluation = BTreeMap<String, f64>;

pub trait Task {
    type Batch;

    /// One line on the data (and pretrained weights), for the start-up message.
    fn describe(&self) -> String;

    /// The run's config as the task resolved it (an encoder's shape filled in from its
    /// checkpoint): what the loop trains with and saves as `config.toml`.
    fn config(&self) -> &Config;

    /// Micro-batch `micro` of optimizer step `step`: a pure function of (seed, step, micro),
    /// so a resumed run sees the batches the uninterrupted run saw.
    fn train_batch(&self, step: usize, micro: usize) -> Result<Self::Batch>;

    /// How many targets the batch's loss sums over (known on the host): the step's loss is
    /// normalised by the total over its micro-batches.
    fn targets(&self, batch: &Self::Batch) -> usize;

    /// Input tokens in the batch, for the throughput figure.
    fn tokens(&self, batch: &Self::Batch) -> usize;

    /// The length of a training row: T in the attention term of the FLOPs count (mfu.rs).
    fn context(&self) -> usize {
        self.config().model.block_size
    }

    /// Whether the output head multiplies by the token table (`embedding_tables()[0]`), so
    /// the FLOPs count (mfu.rs) counts that table as a product's weight.
    fn tied_head(&self) -> bool {
        false
    }

    /// The model's embedding tables (token, segment, learned position): a parameter role
    /// (weight decay skips them unless `optim.decay_embeddings`).
    fn embedding_tables(&self) -> Vec<Tensor>;

    /// Summed loss over the batch's targets, recording a graph.
    fn loss_sum(&self, batch: &Self::Batch, mode: &mut Mode) -> Result<Tensor>;

    /// Metrics on the validation data, computed over detached `params` (no graph). A task whose
    /// `splits_evaluation` is true is called on every rank of `world`, scores its share of the
    /// batches and sums with the others (the same numbers as one process, up to the order of
    /// the sums); any other is called on rank 0 alone.
    fn evaluate(&self, params: &ParamStore, world: &dyn Collective) -> Result<Evaluation>;

    /// Whether `evaluate` splits its batches over the ranks.
    fn splits_evaluation(&self) -> bool {
        false
    }

    /// What the model generates now (`train.sample_every`), over detached `params`: a GPT's
    /// continuation of the sample prompt, a seq2seq model's outputs for the first val sources.
    fn sample(&self, _params: &ParamStore) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// RMS of the residual stream entering each LayerNorm on `batch` (diagnostics), where the
    /// model exposes it.
    fn residual_rms(&self, _batch: &Self::Batch) -> Result<BTreeMap<String, f64>> {
        Ok(BTreeMap::new())
    }
}

/// A trained run loaded back: `taper eval`, `taper predict`, `taper generate`.
pub trait Trained {
    /// The checkpoint its weights came from.
    fn checkpoint(&self) -> &Path;

    /// Its task's metrics on `file` (default: a language model's validation split, the run's
    /// `data.val_path` otherwise), and what was scored.
    fn evaluate(&self, file: Option<&Path>) -> Result<(Evaluation, String)>;

    /// `taper predict`: one JSON record per input of `input`.
    fn predict(&self, _input: &Path) -> Result<Vec<serde_json::Value>> {
        bail!(
            "`taper predict` labels inputs with a sequence- or token-classification run; a language model or a \
             seq2seq run generates with `taper generate`"
        )
    }

    /// The concrete model, for the commands that differ by it (`taper generate`).
    fn as_any(&self) -> &dyn Any;
}
