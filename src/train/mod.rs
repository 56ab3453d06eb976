//! Training: the kinds of task taper trains, registered in one list ([`TASKS`]) with the
//! interface each implements ([`TaskSpec`]: its `[task]` keys, the architecture it trains, its
//! metrics, how it trains, how a trained run of it loads back), and the recipe that trains any
//! of them (`run.rs`). A new task is one file implementing [`TaskSpec`] and one line in
//! [`TASKS`]; the shared pieces (an encoder's setup and labelled rows, the rank-split
//! evaluation) are helpers its file calls (`encoder.rs`, `shared.rs`).

pub mod causal_lm;
pub mod checkpointer;
pub mod classification;
pub mod config;
pub mod diagnostics;
pub mod encoder;
pub mod logger;
pub mod masked_lm;
pub mod metrics;
pub mod mfu;
pub mod parallel;
mod run;
pub mod seq2seq;
pub mod shared;
pub mod step;
pub mod task;
pub mod tensorboard;
pub mod token_classification;

use std::any::Any;

use anyhow::Result;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::{Architecture, Config, Metric};
use crate::hf::Head;
use crate::run_dir::OpenedCheckpoint;
pub use logger::{peak_rss_mb, Diverged, RunSummary};
pub use run::{run_task, train, train_with, Launch, TrainOptions};
pub use step::accumulate_gradients;
use task::Trained;

/// Every kind of task taper trains (`task.kind`), one line each.
pub static TASKS: [&dyn TaskSpec; 5] = [
    &causal_lm::CAUSAL_LM,
    &classification::SEQUENCE_CLASSIFICATION,
    &token_classification::TOKEN_CLASSIFICATION,
    &masked_lm::MASKED_LM,
    &seq2seq::SEQ2SEQ,
];

/// The registered task called `name`.
pub fn task_kind(name: &str) -> Option<TaskKind> {
    TASKS.iter().find(|t| t.name() == name).map(|t| TaskKind::new(*t))
}

/// A kind of task (`task.kind`), registered once in `train::TASKS`.
pub trait TaskSpec: Sync {
    /// `task.kind`'s value (`causal-lm`).
    fn name(&self) -> &'static str;

    /// The architecture it trains.
    fn arch(&self) -> Architecture;

    /// The metrics an evaluation reports, any of which may pick the best checkpoint.
    fn metrics(&self) -> &'static [Metric];

    /// Its `[task]` keys (the table without `kind`), read into its settings: defaults filled
    /// in, an unknown key refused with the valid ones listed ([`settings_of`]).
    fn settings(&self, table: toml::Table) -> Result<Box<dyn TaskSettings>, toml::de::Error>;

    /// Checks of its keys against the rest of the config.
    fn validate(&self, _cfg: &Config) -> Result<()> {
        Ok(())
    }

    /// Whether it shows what the model makes (`train.sample_every`).
    fn samples(&self) -> bool {
        false
    }

    /// Whether a trained run of it labels inputs (`taper predict`).
    fn predicts(&self) -> bool {
        false
    }

    /// Whether its data is a language-model corpus, which `taper prepare` tokenizes ahead.
    fn prepares_corpus(&self) -> bool {
        false
    }

    /// The head a Hugging Face export of a run of it has.
    fn head(&self, cfg: &Config) -> Result<Head>;

    /// Trains the run `cfg` describes in `launch` (builds the task, then the loop).
    fn train(&self, cfg: &Config, launch: &Launch) -> Result<RunSummary>;

    /// A trained run of it, loaded back from its checkpoint.
    fn load(&self, opened: OpenedCheckpoint) -> Result<Box<dyn Trained>>;
}

/// A kind of task as a config holds it: the registered [`TaskSpec`], compared by name.
#[derive(Clone, Copy)]
pub struct TaskKind(&'static dyn TaskSpec);

impl TaskKind {
    pub const fn new(spec: &'static dyn TaskSpec) -> Self {
        Self(spec)
    }

    pub fn spec(self) -> &'static dyn TaskSpec {
        self.0
    }

    /// `task.kind`'s value.
    pub fn name(self) -> &'static str {
        self.0.name()
    }

    /// The architecture the task trains.
    pub fn arch(self) -> Architecture {
        self.0.arch()
    }

    /// Whether it shows what the model makes (`train.sample_every`).
    pub fn samples(self) -> bool {
        self.0.samples()
    }

    /// Its own checks of `cfg` (its keys against the rest).
    pub fn validate(self, cfg: &Config) -> Result<()> {
        self.0.validate(cfg)
    }

    /// Every registered task.
    pub fn all() -> impl Iterator<Item = TaskKind> {
        TASKS.iter().map(|t| TaskKind(*t))
    }

    /// The metrics an evaluation of this task reports.
    pub fn metrics(self) -> &'static [Metric] {
        self.0.metrics()
    }

    /// The metric of this task called `name`.
    pub fn metric(self, name: &str) -> Option<Metric> {
        self.metrics().iter().copied().find(|m| m.name == name)
    }
}

impl PartialEq for TaskKind {
    fn eq(&self, other: &Self) -> bool {
        self.0.name() == other.0.name()
    }
}

impl Eq for TaskKind {}

impl std::fmt::Display for TaskKind {
    /// As `task.kind` spells it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.name())
    }
}

impl std::fmt::Debug for TaskKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.name())
    }
}

/// A task kind's `[task]` keys: its own serde struct, with documented defaults.
pub trait TaskSettings: Any + std::fmt::Debug + Send + Sync {
    /// The keys as TOML (a `None` key left out).
    fn to_table(&self) -> Result<toml::Table>;
    /// Whether `other` is the same kind's, with the same values.
    fn same(&self, other: &dyn TaskSettings) -> bool;
    fn as_any(&self) -> &dyn Any;
}

impl<T: Serialize + PartialEq + std::fmt::Debug + Send + Sync + 'static> TaskSettings for T {
    fn to_table(&self) -> Result<toml::Table> {
        Ok(toml::Table::try_from(self)?)
    }
    fn same(&self, other: &dyn TaskSettings) -> bool {
        other.as_any().downcast_ref::<T>().is_some_and(|other| other == self)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// `table` read as the settings `T` ([`TaskSpec::settings`]).
pub fn settings_of<T: DeserializeOwned + TaskSettings>(
    table: toml::Table,
) -> Result<Box<dyn TaskSettings>, toml::de::Error> {
    Ok(Box::new(table.try_into::<T>()?))
}
