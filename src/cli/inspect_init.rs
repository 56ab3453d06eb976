//! `taper inspect-init`: gradient norms by layer at initialisation, pre-LN and post-LN.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use crate::config::Config;

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

pub fn run(args: InspectInitArgs) -> Result<()> {
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
