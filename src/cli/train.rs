//! `taper train`: a fresh run from a config, or `--resume RUN_DIR`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use crate::config::Config;
use crate::run_dir::RunDir;
use crate::train::{train, TrainOptions};

#[derive(Args)]
pub struct TrainArgs {
    /// The run's TOML config, e.g. configs/gpt-shakespeare-char.toml.
    #[arg(required_unless_present = "resume")]
    config: Option<PathBuf>,
    /// Override a config key: --set model.norm=post --set schedule.warmup_steps=0
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
    /// Continue the run in this directory from its latest checkpoint, with its saved config.
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "config")]
    resume: Option<PathBuf>,
    /// With --resume: continue from this checkpoint (step-N) instead of the newest intact one;
    /// the checkpoints after it are removed.
    #[arg(long, requires = "resume", value_name = "step-N")]
    checkpoint: Option<String>,
    /// Start afresh in a run directory that holds an earlier run's files (removes them,
    /// checkpoints included).
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// No progress bar or console lines.
    #[arg(long)]
    quiet: bool,
}

pub fn run(args: TrainArgs) -> Result<()> {
    crate::interrupt::install()?;
    let (config, resume) = match (args.config, args.resume) {
        (Some(path), None) => (Config::load(&path, &args.overrides)?, false),
        (None, Some(dir)) => (RunDir::new(dir).load_config(&args.overrides)?, true),
        _ => bail!("give a config file, or --resume RUN_DIR"),
    };
    let options = TrainOptions {
        resume,
        quiet: args.quiet,
        overwrite: args.overwrite,
        checkpoint: args.checkpoint,
        ..Default::default()
    };
    train(config, &options)?;
    Ok(())
}
