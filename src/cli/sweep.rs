//! `taper sweep`: train a grid of settings (and seeds), one run directory each.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

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

pub fn run(args: SweepArgs) -> Result<()> {
    crate::interrupt::install()?;
    let runs = crate::sweep::expand(&args.grid, &args.seeds)?;
    let config = &args.config;
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(config.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default())
    });
    let outcomes = crate::sweep::run_sweep(config, &args.overrides, &runs, &out, args.quiet)?;
    for o in &outcomes {
        crate::console::print(format!("{:<50} {}", o.name, o.status));
    }
    Ok(())
}
