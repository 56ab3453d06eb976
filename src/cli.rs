//! The `taper` command line.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use crate::classify::TrainedClassifier;
use crate::config::{Config, TaskKind};
use crate::decode::BeamOptions;
use crate::generate::{generate, SamplingOptions};
use crate::run_dir::{RunDir, TrainedGpt};
use crate::train::{train, TrainOptions};
use crate::translate::TrainedSeq2Seq;

#[derive(Parser)]
#[command(name = "taper", version, about = "Train Transformers from one TOML file, on candle")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model from a config (or continue a run with --resume RUN_DIR).
    Train {
        /// The run's TOML config, e.g. configs/gpt-shakespeare-char.toml.
        #[arg(required_unless_present = "resume")]
        config: Option<PathBuf>,
        /// Override a config key: --set model.norm=post --set schedule.warmup_steps=0
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
        overrides: Vec<String>,
        /// Continue the run in this directory from its latest checkpoint, with its saved config.
        #[arg(long, value_name = "RUN_DIR", conflicts_with = "config")]
        resume: Option<PathBuf>,
        /// No progress bar or console lines.
        #[arg(long)]
        quiet: bool,
    },
    /// Train a grid of settings (and seeds), one run directory each; resumes and skips finished runs.
    Sweep {
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
    },
    /// Compare runs: loss curves and per-layer plots (SVG) and a table (console and Markdown).
    Compare {
        /// Run directories, e.g. runs/ln-study/*
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// Where to write report.md and the plots.
        #[arg(long, default_value = "reports/compare")]
        out: PathBuf,
        /// Val loss for the "steps to reach" column (default: the worst group's best val loss).
        #[arg(long)]
        target_loss: Option<f64>,
    },
    /// Gradient norms by layer at initialisation, pre-LN and post-LN, at several depths.
    InspectInit {
        config: PathBuf,
        #[arg(long, value_delimiter = ',', default_values_t = vec![6usize, 12, 24])]
        depths: Vec<usize>,
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
        overrides: Vec<String>,
        #[arg(long, default_value = "reports/inspect-init")]
        out: PathBuf,
    },
    /// Sample text from a trained GPT run, or decode inputs with a seq2seq run.
    Generate {
        /// The run directory, e.g. runs/gpt-shakespeare-char.
        run_dir: PathBuf,
        /// GPT runs: the text to continue.
        #[arg(long, default_value = "\n")]
        prompt: String,
        /// Seq2seq runs: one source text to decode.
        #[arg(long, conflicts_with = "input_file")]
        input: Option<String>,
        /// Seq2seq runs: a file with one source text per line; outputs are printed one per line.
        #[arg(long)]
        input_file: Option<PathBuf>,
        /// Seq2seq runs: beams for beam search (1: greedy decoding).
        #[arg(long, default_value_t = 1)]
        beam_size: usize,
        /// Seq2seq runs: rank finished beams by log p / length^PENALTY.
        #[arg(long, default_value_t = 1.0)]
        length_penalty: f64,
        /// Seq2seq runs: the most output tokens (default: the run's task.max_target_len).
        #[arg(long)]
        max_len: Option<usize>,
        #[arg(long, default_value_t = 200)]
        max_new_tokens: usize,
        /// Softmax temperature; 0 is greedy decoding.
        #[arg(long, default_value_t = 0.8)]
        temperature: f64,
        /// Sample among the k most likely tokens only (0: all).
        #[arg(long, default_value_t = 200)]
        top_k: usize,
        /// Nucleus sampling: the smallest set of tokens whose probability reaches p.
        #[arg(long)]
        top_p: Option<f64>,
        #[arg(long, default_value_t = 1337)]
        seed: u64,
        /// Which checkpoint: latest, best or step-N.
        #[arg(long, default_value = "latest")]
        checkpoint: String,
        /// Recompute every position at each step instead of using the KV-cache.
        #[arg(long)]
        no_cache: bool,
        /// Device, as in `train.device` (default: the run's).
        #[arg(long)]
        device: Option<String>,
    },
    /// Score a run on a file: classification (loss, accuracy, macro-F1) or seq2seq (loss, token
    /// accuracy, exact match, BLEU).
    Eval {
        run_dir: PathBuf,
        /// Labelled (or source/target) .csv/.tsv/.jsonl file (default: the run's `data.val_path`).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Which checkpoint: best, latest or step-N.
        #[arg(long, default_value = "best")]
        checkpoint: String,
        #[arg(long)]
        device: Option<String>,
    },
    /// Label every input of a file with a classification run; one JSON line per input.
    Predict {
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
    },
    /// Write a run's checkpoint in another format: `hf` = a Hugging Face model directory.
    Export {
        run_dir: PathBuf,
        #[arg(long, default_value = "hf")]
        format: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "best")]
        checkpoint: String,
    },
}

/// The device a command on a run uses: the one asked for, else the run's own.
fn run_device(run_dir: &std::path::Path, device: Option<String>) -> Result<String> {
    match device {
        Some(d) => Ok(d),
        None => Ok(RunDir::new(run_dir).load_config(&[])?.train.device),
    }
}

pub fn run() -> Result<()> {
    match Cli::parse().command {
        Command::Train { config, overrides, resume, quiet } => {
            let (config, resume) = match (config, resume) {
                (Some(path), None) => (Config::load(&path, &overrides)?, false),
                (None, Some(dir)) => (RunDir::new(dir).load_config(&overrides)?, true),
                _ => bail!("give a config file, or --resume RUN_DIR"),
            };
            train(config, &TrainOptions { resume, quiet, stop_after: None })?;
            Ok(())
        }
        Command::Sweep { config, grid, seeds, overrides, out, quiet } => {
            let runs = crate::sweep::expand(&grid, &seeds)?;
            let out = out.unwrap_or_else(|| {
                PathBuf::from("runs")
                    .join(config.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default())
            });
            let outcomes = crate::sweep::run_sweep(&config, &overrides, &runs, &out, quiet)?;
            for o in &outcomes {
                println!("{:<50} {}", o.name, o.status);
            }
            Ok(())
        }
        Command::Compare { runs, out, target_loss } => {
            let table = crate::compare::compare(&runs, &out, target_loss)?;
            println!("{table}");
            println!("report and plots: {}", out.join("report.md").display());
            Ok(())
        }
        Command::InspectInit { config, depths, overrides, out } => {
            if depths.is_empty() || depths.contains(&0) {
                bail!("--depths needs positive layer counts, e.g. --depths 6,12,24");
            }
            let config = Config::load(&config, &overrides)?;
            let profiles = crate::inspect::inspect_init(&config, &depths)?;
            println!("{}", crate::inspect::markdown(&profiles));
            crate::inspect::write_report(&profiles, &out)?;
            println!("plot: {}", out.join("inspect-init.svg").display());
            Ok(())
        }
        Command::Generate {
            run_dir,
            prompt,
            input,
            input_file,
            beam_size,
            length_penalty,
            max_len,
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            seed,
            checkpoint,
            no_cache,
            device,
        } => {
            let device = run_device(&run_dir, device)?;
            if RunDir::new(&run_dir).load_config(&[])?.task.kind == TaskKind::Seq2seq {
                let inputs = match (input, input_file) {
                    (Some(text), None) => vec![text],
                    (None, Some(file)) => std::fs::read_to_string(&file)
                        .with_context(|| format!("cannot read {}", file.display()))?
                        .lines()
                        .map(String::from)
                        .collect(),
                    _ => bail!("a seq2seq run decodes --input TEXT or --input-file FILE"),
                };
                if beam_size == 0 {
                    bail!("--beam-size must be at least 1");
                }
                let trained = TrainedSeq2Seq::load(&run_dir, &checkpoint, &device)?;
                let beam = BeamOptions { beam_size, length_penalty };
                for output in trained.translate(&inputs, beam, max_len)? {
                    println!("{output}");
                }
                return Ok(());
            }
            if input.is_some() || input_file.is_some() {
                bail!("--input and --input-file are for seq2seq runs; a GPT run continues --prompt");
            }
            let trained = TrainedGpt::load(&run_dir, &checkpoint, &device)?;
            let prompt_ids = trained.tokenizer.encode(&prompt).context("cannot tokenize the prompt")?;
            let opts = SamplingOptions {
                max_new_tokens,
                temperature,
                top_k: (top_k > 0).then_some(top_k),
                top_p,
                seed,
                use_cache: !no_cache,
            };
            let new_ids = generate(&trained.model, &prompt_ids, &opts)?;
            let mut all = prompt_ids;
            all.extend(&new_ids);
            println!("{}", trained.tokenizer.decode(&all)?);
            Ok(())
        }
        Command::Eval { run_dir, file, checkpoint, device } => {
            let config = RunDir::new(&run_dir).load_config(&[])?;
            let device = run_device(&run_dir, device)?;
            let file = match file {
                Some(f) => f,
                None => config.val_file()?,
            };
            let (metrics, used) = match config.task.kind {
                TaskKind::SequenceClassification => {
                    let classifier = TrainedClassifier::load(&run_dir, &checkpoint, &device)?;
                    (classifier.evaluate(&file)?, classifier.checkpoint)
                }
                TaskKind::Seq2seq => {
                    let model = TrainedSeq2Seq::load(&run_dir, &checkpoint, &device)?;
                    (model.evaluate(&file)?, model.checkpoint)
                }
                other => bail!(
                    "`taper eval` scores sequence-classification and seq2seq runs; a {other:?} run's val loss is in its metrics.jsonl"
                ),
            };
            println!("{} on {} ({}):", run_dir.display(), file.display(), used.display());
            for (name, value) in &metrics {
                println!("  {name:<15} {value:.4}");
            }
            Ok(())
        }
        Command::Predict { run_dir, input, output, checkpoint, device } => {
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
        Command::Export { run_dir, format, out, checkpoint } => {
            if format != "hf" {
                bail!("--format `{format}` is not known; valid: hf");
            }
            crate::export::export_hf(&run_dir, &checkpoint, &out)?;
            println!("exported {} to {}", run_dir.display(), out.display());
            Ok(())
        }
    }
}
