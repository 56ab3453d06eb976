//! `taper predict`: label every input of a file with a classification run.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::run_device;
use crate::trained::TrainedClassifier;

#[derive(Args)]
pub struct PredictArgs {
    run_dir: PathBuf,
    /// .csv/.tsv/.jsonl with the run's text column(s); a label column is optional.
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
    let classifier = TrainedClassifier::load(&run_dir, &checkpoint, &run_device(&run_dir, device)?)?;
    let records = classifier.predict(&input)?;
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
