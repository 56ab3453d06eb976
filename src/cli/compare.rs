//! `taper compare`: tables and plots of finished runs.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub struct CompareArgs {
    /// Run directories, e.g. runs/ln-study/*
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// Where to write report.md and the plots.
    #[arg(long, default_value = "reports/compare")]
    out: PathBuf,
    /// Val loss for the "steps to reach" column (default: the worst group's best val loss).
    #[arg(long)]
    target_loss: Option<f64>,
}

pub fn run(args: CompareArgs) -> Result<()> {
    let table = crate::compare::compare(&args.runs, &args.out, args.target_loss)?;
    println!("{table}");
    println!("report and plots: {}", args.out.join("report.md").display());
    Ok(())
}
