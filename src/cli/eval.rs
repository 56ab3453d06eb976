//! `taper eval`: score a trained run (the task decides on what and how).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::run_device;
use crate::trained::TrainedRun;

#[derive(Args)]
pub struct EvalArgs {
    run_dir: PathBuf,
    /// Labelled (or source/target) .csv/.tsv/.jsonl file, a tagged .conll/.jsonl file for a tagger
    /// (default: the run's `data.val_path`);
    /// for a causal-lm run, a text file (default: the validation split of its corpus).
    #[arg(long)]
    file: Option<PathBuf>,
    /// Which checkpoint: best, latest or step-N.
    #[arg(long, default_value = "best")]
    checkpoint: String,
    #[arg(long)]
    device: Option<String>,
    /// Print the metrics as one JSON object, at full precision (for scripts).
    #[arg(long)]
    json: bool,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let device = run_device(&args.run_dir, args.device)?;
    let trained = TrainedRun::load(&args.run_dir, &args.checkpoint, &device)?;
    let (metrics, scored) = trained.evaluate(args.file.as_deref())?;
    if args.json {
        println!("{}", serde_json::to_string(&metrics)?);
        return Ok(());
    }
    println!("{} on {scored} ({}):", args.run_dir.display(), trained.checkpoint().display());
    for (name, value) in &metrics {
        match value.fract() == 0.0 {
            true => println!("  {name:<15} {value}"), // counts
            false => println!("  {name:<15} {value:.4}"),
        }
    }
    Ok(())
}
