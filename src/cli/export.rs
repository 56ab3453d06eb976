//! `taper export`: a run's checkpoint in another format.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

#[derive(Args)]
pub struct ExportArgs {
    run_dir: PathBuf,
    #[arg(long, default_value = "hf")]
    format: String,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "best")]
    checkpoint: String,
    /// Replace the files of an earlier export in --out.
    #[arg(long)]
    overwrite: bool,
}

pub fn run(args: ExportArgs) -> Result<()> {
    let ExportArgs { run_dir, format, out, checkpoint, overwrite } = args;
    if format != "hf" {
        bail!("--format `{format}` is not known; valid: hf");
    }
    crate::export::export_hf(&run_dir, &checkpoint, &out, overwrite)?;
    println!("exported {} to {}", run_dir.display(), out.display());
    Ok(())
}
