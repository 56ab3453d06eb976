//! The `taper` command line: one file per subcommand (its arguments and what it runs).

mod compare;
mod completions;
mod eval;
mod export;
mod generate;
mod inspect_init;
mod predict;
mod prepare;
mod sweep;
mod train;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::run_dir::RunDir;

#[derive(Parser)]
#[command(name = "taper", version, about = "Train Transformers from one TOML file, on candle")]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model from a config (or continue a run with --resume RUN_DIR).
    Train(train::TrainArgs),
    /// Tokenize a config's corpus into its shard set in the cache, and stop (train then maps it).
    Prepare(prepare::PrepareArgs),
    /// Train a grid of settings (and seeds), one run directory each; resumes and skips finished runs.
    Sweep(sweep::SweepArgs),
    /// Compare runs: loss curves and per-layer plots (SVG) and a table (console and Markdown).
    Compare(compare::CompareArgs),
    /// Gradient norms by layer at initialisation, pre-LN and post-LN, at several depths.
    InspectInit(inspect_init::InspectInitArgs),
    /// Sample text from a trained GPT run, or decode inputs with a seq2seq run.
    Generate(generate::GenerateArgs),
    /// Score a run: causal-lm (loss and perplexity on the val split or a text file),
    /// classification (loss, accuracy, macro-F1) or seq2seq (loss, token accuracy, exact
    /// match, BLEU) on a file.
    Eval(eval::EvalArgs),
    /// Label every input of a file with a classification run; one JSON line per input.
    Predict(predict::PredictArgs),
    /// Write a run's checkpoint in another format: `hf` = a Hugging Face model directory.
    Export(export::ExportArgs),
    /// Print a shell completion script: `taper completions bash > ~/.local/share/bash-completion/completions/taper`.
    Completions(completions::CompletionsArgs),
    /// Print taper's man page (roff): `taper man > ~/.local/share/man/man1/taper.1`.
    Man,
}

/// The device a command on a run uses: the one asked for, else the run's own.
fn run_device(run_dir: &std::path::Path, device: Option<String>) -> Result<String> {
    match device {
        Some(d) => Ok(d),
        None => Ok(RunDir::new(run_dir).load_config(&[])?.train.device),
    }
}

pub fn run() -> Result<()> {
    let command = Cli::parse().command;
    if !matches!(command, Command::Train(_) | Command::Sweep(_)) {
        crate::runtime::quiet_on_closed_pipe();
    }
    match command {
        Command::Train(args) => train::run(args),
        Command::Prepare(args) => prepare::run(args),
        Command::Sweep(args) => sweep::run(args),
        Command::Compare(args) => compare::run(args),
        Command::InspectInit(args) => inspect_init::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Predict(args) => predict::run(args),
        Command::Export(args) => export::run(args),
        Command::Completions(args) => completions::run(args),
        Command::Man => completions::man(),
    }
}
