//! `taper sweep`, `taper compare` and `taper inspect-init`: many runs, their comparison, and
//! gradient norms at initialisation.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use crate::config::Config;

#[derive(Args)]
pub struct SweepArgs {
    /// The base config.
    config: PathBuf,
    /// An axis of the grid: --grid model.norm=pre,post --grid schedule.warmup_steps=0,100
    #[arg(long = "grid", value_name = "SECTION.KEY=V1,V2,...")]
    grid: Vec<String>,
    /// Seeds to run every setting with: --seeds 1,2,3
    #[arg(long, value_delimiter = ',')]
    seeds: Vec<u64>,
    /// Overrides for every run.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
    /// Parent directory of the runs (default: runs/<config name>).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long)]
    quiet: bool,
}

pub fn sweep(args: SweepArgs) -> Result<()> {
    let runs = crate::sweep::expand(&args.grid, &args.seeds)?;
    let config = &args.config;
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(config.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default())
    });
    let outcomes = crate::sweep::run_sweep(config, &args.overrides, &runs, &out, args.quiet)?;
    for o in &outcomes {
        println!("{:<50} {}", o.name, o.status);
    }
    Ok(())
}

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

pub fn compare(args: CompareArgs) -> Result<()> {
    let table = crate::compare::compare(&args.runs, &args.out, args.target_loss)?;
    println!("{table}");
    println!("report and plots: {}", args.out.join("report.md").display());
    Ok(())
}

#[derive(Args)]
pub struct InspectInitArgs {
    config: PathBuf,
    #[arg(long, value_delimiter = ',', default_values_t = vec![6usize, 12, 24])]
    depths: Vec<usize>,
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
    #[arg(long, default_value = "reports/inspect-init")]
    out: PathBuf,
}

pub fn inspect_init(args: InspectInitArgs) -> Result<()> {
    if args.depths.is_empty() || args.depths.contains(&0) {
        bail!("--depths needs positive layer counts, e.g. --depths 6,12,24");
    }
    let config = Config::load(&args.config, &args.overrides)?;
    let profiles = crate::inspect::inspect_init(&config, &args.depths)?;
    println!("{}", crate::inspect::markdown(&profiles));
    crate::inspect::write_report(&profiles, &args.out)?;
    println!("plot: {}", args.out.join("inspect-init.svg").display());
    Ok(())
}
