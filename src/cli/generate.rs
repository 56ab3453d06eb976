//! `taper generate`: sample from a GPT run, or decode inputs with a seq2seq run.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use super::run_device;
use crate::decode::{BeamOptions, EarlyStopping, GenerationConfig, OutputLimits, OutputRules};
use crate::generate::{generate_streaming, SamplingOptions};
use crate::run_dir::RunDir;
use crate::trained::{TrainedGpt, TrainedRun, TrainedSeq2Seq};

#[derive(Args)]
pub struct GenerateArgs {
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
    /// Seq2seq runs: beams for beam search (1: greedy decoding). The defaults of this and the
    /// next four come from the run's generation_config.json (a pretrained checkpoint's), else
    /// transformers' defaults: 1, 1.0, false, 1, 0.
    #[arg(long)]
    beam_size: Option<usize>,
    /// Seq2seq runs: rank finished beams by log p / length^PENALTY (transformers' length_penalty).
    #[arg(long, allow_hyphen_values = true)]
    length_penalty: Option<f64>,
    /// Seq2seq runs: when beam search stops, as transformers' early_stopping: false (once BEAMS
    /// outputs have finished and no running beam can beat them), true (once BEAMS have
    /// finished), never (as false, a positive length penalty scoring running beams at --max-len).
    #[arg(long)]
    early_stopping: Option<EarlyStopping>,
    /// Seq2seq runs: print the N best outputs of each input, best first, one per line (N <= BEAMS).
    #[arg(long)]
    num_return_sequences: Option<usize>,
    /// Seq2seq runs: no n-gram of N tokens occurs twice in an output (0: no such rule).
    #[arg(long)]
    no_repeat_ngram_size: Option<usize>,
    /// Seq2seq runs: the most output tokens, EOS included (default: the run's generation_config.json,
    /// else its task.max_target_len).
    #[arg(long)]
    max_len: Option<usize>,
    #[arg(long, default_value_t = 200)]
    max_new_tokens: usize,
    /// Softmax temperature; 0 is greedy decoding.
    #[arg(long, default_value_t = 0.8, allow_hyphen_values = true)]
    temperature: f64,
    /// Sample among the k most likely tokens only (0: all).
    #[arg(long, default_value_t = 200, allow_negative_numbers = true)]
    top_k: i64,
    /// Nucleus sampling: the smallest set of tokens whose probability reaches p.
    #[arg(long, allow_hyphen_values = true)]
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
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let device = run_device(&args.run_dir, args.device.clone())?;
    let loaded = TrainedRun::load(&args.run_dir, &args.checkpoint, &device)?;
    if let Some(trained) = loaded.as_any().downcast_ref::<TrainedSeq2Seq>() {
        return translate(&args, trained);
    }
    let Some(trained) = loaded.as_any().downcast_ref::<TrainedGpt>() else {
        bail!("{} is a classification run: label inputs with `taper predict`", args.run_dir.display())
    };
    if args.input.is_some() || args.input_file.is_some() {
        bail!("--input and --input-file are for seq2seq runs; a GPT run continues --prompt");
    }
    if args.top_k < 0 {
        bail!("--top-k must be >= 0 (0: every token), got {}", args.top_k);
    }
    let prompt_ids = trained.tokenizer.encode(&args.prompt).context("cannot tokenize the prompt")?;
    let opts = SamplingOptions {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_k: (args.top_k > 0).then_some(args.top_k as usize),
        top_p: args.top_p,
        seed: args.seed,
        use_cache: !args.no_cache,
    };
    opts.validate()?;
    let window = trained.model.block_size();
    if prompt_ids.len() + args.max_new_tokens > window {
        crate::console::say(format!(
            "taper: {} tokens are more than the model's context ({window}): past it, each token sees the last \
             {window} only",
            prompt_ids.len() + args.max_new_tokens
        ));
    }
    let mut text = Streamed::new(prompt_ids.clone());
    text.show(&trained.tokenizer)?;
    generate_streaming(&trained.model, &prompt_ids, &opts, |token| {
        text.tokens.push(token);
        text.show(&trained.tokenizer)
    })?;
    text.finish(&trained.tokenizer)
}

/// Text printed as its tokens come: the whole sequence decoded again each time (a tokenizer's
/// decoding of a suffix can differ from the same part of the whole), the new part printed once
/// it ends in whole characters.
struct Streamed {
    tokens: Vec<u32>,
    printed: usize,
}

impl Streamed {
    fn new(tokens: Vec<u32>) -> Self {
        Self { tokens, printed: 0 }
    }

    /// Prints what the tokens decode to beyond what is printed already.
    fn show(&mut self, tokenizer: &crate::data::TextTokenizer) -> Result<()> {
        use std::io::Write;
        let text = tokenizer.decode(&self.tokens)?;
        // A byte-level token that ends inside a character decodes to U+FFFD until the rest comes.
        if text.ends_with('\u{FFFD}') || text.len() <= self.printed || !text.is_char_boundary(self.printed) {
            return Ok(());
        }
        let mut out = std::io::stdout().lock();
        out.write_all(&text.as_bytes()[self.printed..])?;
        out.flush()?;
        self.printed = text.len();
        Ok(())
    }

    /// Prints the rest and ends the line.
    fn finish(self, tokenizer: &crate::data::TextTokenizer) -> Result<()> {
        use std::io::Write;
        let text = tokenizer.decode(&self.tokens)?;
        let rest = text.get(self.printed..).unwrap_or_default();
        Ok(writeln!(std::io::stdout().lock(), "{rest}")?)
    }
}

/// A seq2seq run decodes `--input` or each line of `--input-file`.
fn translate(args: &GenerateArgs, trained: &TrainedSeq2Seq) -> Result<()> {
    let inputs = match (&args.input, &args.input_file) {
        (Some(text), None) => vec![text.clone()],
        (None, Some(file)) => std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?
            .lines()
            .map(String::from)
            .collect(),
        _ => bail!("a seq2seq run decodes --input TEXT or --input-file FILE"),
    };
    let (beam, limits) = decoding(args)?;
    for output in trained.translate(&inputs, beam, limits)?.into_iter().flatten() {
        println!("{output}");
    }
    Ok(())
}

/// Beam-search settings and output limits: each flag, else the run's generation_config.json,
/// else transformers' default.
fn decoding(args: &GenerateArgs) -> Result<(BeamOptions, OutputLimits)> {
    let path = RunDir::new(&args.run_dir).generation_config();
    let file = if path.is_file() { GenerationConfig::read(&path)? } else { GenerationConfig::default() };
    let beam = BeamOptions {
        beam_size: args.beam_size.or(file.num_beams).unwrap_or(1),
        length_penalty: args.length_penalty.or(file.length_penalty).unwrap_or(1.0),
        early_stopping: args.early_stopping.or(file.early_stopping).unwrap_or_default(),
        num_return_sequences: args.num_return_sequences.or(file.num_return_sequences).unwrap_or(1),
    };
    beam.validate().context("check --beam-size, --length-penalty and --num-return-sequences")?;
    let rules = OutputRules {
        no_repeat_ngram_size: args.no_repeat_ngram_size.unwrap_or(file.rules.no_repeat_ngram_size),
        ..file.rules
    };
    if file != GenerationConfig::default() {
        let (n, lp, es) = (beam.beam_size, beam.length_penalty, beam.early_stopping);
        eprintln!(
            "decoding as {} says where no flag is given: {n} beam(s), length penalty {lp}, early stopping {es}, \
             no repeated {}-grams (0: off), at least {} tokens, forced first token {:?}, forced EOS {}",
            path.display(),
            rules.no_repeat_ngram_size,
            rules.min_len,
            rules.forced_first,
            rules.forced_eos
        );
    }
    Ok((beam, OutputLimits { max_len: args.max_len.or(file.max_new_tokens), rules }))
}
