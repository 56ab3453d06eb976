//! `taper eval`: score a trained run (the task decides on what and how).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use super::run_device;
use crate::classify::TrainedClassifier;
use crate::config::TaskKind;
use crate::run_dir::{RunDir, TrainedGpt};
use crate::translate::TrainedSeq2Seq;

#[derive(Args)]
pub struct EvalArgs {
    run_dir: PathBuf,
    /// Labelled (or source/target) .csv/.tsv/.jsonl file (default: the run's `data.val_path`);
    /// for a causal-lm run, a text file (default: the validation split of its corpus).
    #[arg(long)]
    file: Option<PathBuf>,
    /// Which checkpoint: best, latest or step-N.
    #[arg(long, default_value = "best")]
    checkpoint: String,
    #[arg(long)]
    device: Option<String>,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let EvalArgs { run_dir, file, checkpoint, device } = args;
    let config = RunDir::new(&run_dir).load_config(&[])?;
    let device = run_device(&run_dir, device)?;
    let labelled_file = || file.clone().map_or_else(|| config.val_file(), Ok);
    let (metrics, used, scored) = match config.task.kind {
        TaskKind::SequenceClassification => {
            let (classifier, file) = (TrainedClassifier::load(&run_dir, &checkpoint, &device)?, labelled_file()?);
            (classifier.evaluate(&file)?, classifier.checkpoint, file.display().to_string())
        }
        TaskKind::Seq2seq => {
            let (model, file) = (TrainedSeq2Seq::load(&run_dir, &checkpoint, &device)?, labelled_file()?);
            (model.evaluate(&file)?, model.checkpoint, file.display().to_string())
        }
        TaskKind::CausalLm => {
            let trained = TrainedGpt::load(&run_dir, &checkpoint, &device)?;
            let scored = file.as_ref().map_or("its validation split".into(), |f| f.display().to_string());
            (crate::train::causal_lm::evaluate_trained(&trained, file.as_deref())?, trained.checkpoint, scored)
        }
        TaskKind::MaskedLm => bail!(
            "`taper eval` scores causal-lm, sequence-classification and seq2seq runs; a masked-lm run's \
                 val loss and masked-token accuracy are in its metrics.jsonl"
        ),
    };
    println!("{} on {scored} ({}):", run_dir.display(), used.display());
    for (name, value) in &metrics {
        match value.fract() == 0.0 {
            true => println!("  {name:<15} {value}"), // counts
            false => println!("  {name:<15} {value:.4}"),
        }
    }
    Ok(())
}
