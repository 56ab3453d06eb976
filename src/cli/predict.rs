//! `taper predict`: label every input of a file with a classification run (a label per text,
//! or a tag per word).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use super::run_device;
use crate::config::TaskKind;
use crate::trained::TrainedRun;

#[derive(Args)]
pub struct PredictArgs {
    run_dir: PathBuf,
    /// .csv/.tsv/.jsonl with the run's text column(s) (a tagger: .conll or .jsonl with the words);
    /// labels or tags are optional.
    #[arg(long)]
    input: PathBuf,
    /// Where to write the predictions (JSON lines; default: standard output).
    #[arg(long)]
    output: Option<PathBuf>,
    #[arg(long, default_value = "best")]
    checkpoint: String,
    #[arg(long)]
    device: Option<String>,
}

pub fn run(args: PredictArgs) -> Result<()> {
    let PredictArgs { run_dir, input, output, checkpoint, device } = args;
    let kind = crate::run_dir::RunDir::new(&run_dir).load_config(&[])?.task.kind();
    if !matches!(kind, TaskKind::SequenceClassification | TaskKind::TokenClassification) {
        bail!(
            "{} is not a sequence- or token-classification run (its task is {kind}): `taper predict` labels inputs \
             with one; a language model or a seq2seq run generates with `taper generate`",
            run_dir.display()
        );
    }
    let trained = TrainedRun::load(&run_dir, &checkpoint, &run_device(&run_dir, device)?)?;
    let records = trained.predict(&input)?;
    let mut text = String::new();
    for record in &records {
        text.push_str(&serde_json::to_string(record)?);
        text.push('\n');
    }
    match output {
        Some(path) => {
            crate::fsutil::write_atomic(&path, text.as_bytes())?;
            eprintln!("{} predictions written to {}", records.len(), path.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}
