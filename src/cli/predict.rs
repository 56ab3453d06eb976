//! `taper predict`: label every input of a file with a classification run (a label per text,
//! or a tag per word).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use super::run_device;
use crate::trained::TrainedRun;

#[derive(Args)]
pub struct PredictArgs {
    run_dir: PathBuf,
    /// .csv/.tsv/.jsonl with the run's text column(s) (a tagger: .conll or .jsonl with the words);
    /// labels or tags are optional.
    #[arg(long)]
    input: PathBuf,
    /// Where to write the predictions (JSON lines; default: standard output). An existing file
    /// is replaced only with --overwrite; never the input.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Replace an existing --output file.
    #[arg(long)]
    overwrite: bool,
    #[arg(long, default_value = "best")]
    checkpoint: String,
    #[arg(long)]
    device: Option<String>,
}

pub fn run(args: PredictArgs) -> Result<()> {
    let PredictArgs { run_dir, input, output, overwrite, checkpoint, device } = args;
    if let Some(path) = &output {
        check_output(path, &input, overwrite)?;
    }
    let kind = crate::run_dir::RunDir::new(&run_dir).load_config(&[])?.task.kind();
    if !kind.spec().predicts() {
        let names: Vec<&str> = crate::train::TASKS.iter().filter(|t| t.predicts()).map(|t| t.name()).collect();
        bail!(
            "{} is not a {} run (its task is {kind}): `taper predict` labels inputs with one; a language model or \
             a seq2seq run generates with `taper generate`",
            run_dir.display(),
            either(&names)
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
            crate::console::say(format!("{} predictions written to {}", records.len(), path.display()));
        }
        None => print!("{text}"),
    }
    Ok(())
}

/// An output file may not be the input (it would replace the data with predictions), nor an
/// existing file unless `overwrite`.
fn check_output(output: &std::path::Path, input: &std::path::Path, overwrite: bool) -> Result<()> {
    let same = |a: &std::path::Path, b: &std::path::Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    };
    if same(output, input) {
        bail!(
            "--output {} is the --input file: the predictions would replace it; write them elsewhere",
            output.display()
        );
    }
    if output.exists() && !overwrite {
        bail!(
            "--output {} already exists; taper does not overwrite it: choose another file, or pass --overwrite",
            output.display()
        );
    }
    Ok(())
}

/// `names` as one alternative: "a or b", the last word they share written once
/// ("sequence- or token-classification").
fn either(names: &[&str]) -> String {
    let shared = names.first().and_then(|n| n.rfind('-')).map(|i| &names[0][i..]);
    match shared.filter(|s| names.len() > 1 && names.iter().all(|n| n.ends_with(s))) {
        Some(suffix) => {
            let heads: Vec<String> = names.iter().map(|n| format!("{}-", &n[..n.len() - suffix.len()])).collect();
            let (last, rest) = heads.split_last().map_or((String::new(), &[][..]), |(l, r)| (l.clone(), r));
            format!("{} or {last}{}", rest.join(", "), &suffix[1..])
        }
        None => names.join(" or "),
    }
}
