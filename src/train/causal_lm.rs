//! Next-token prediction with the GPT on a plain corpus (random contiguous blocks), and a
//! trained GPT run loaded back: `taper generate` samples from it, `taper eval` scores it.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::shared::{batch_share, detached};
use super::task::{Evaluation, Task, Trained};
use super::{run_task, settings_of, Launch, RunSummary, TaskKind, TaskSettings, TaskSpec};
use crate::config::{Architecture, Config, EvalBatches, Metric, ModelConfig, VAL_LOSS};
use crate::data::{corpus_dataset, read_corpus, BatchBuffers, Corpus, Split, TextTokenizer, TokenDataset};
use crate::distributed::Collective;
use crate::generate::{generate, SamplingOptions};
use crate::hf::Head;
use crate::host;
use crate::model::{Gpt, Mode, ParamStore};
use crate::pretrained::Pretrained;
use crate::run_dir::{OpenedCheckpoint, RunDir};

/// `task.kind = "causal-lm"`: next-token prediction on a plain corpus (decoder-only).
pub struct CausalLmSpec;

pub static CAUSAL_LM: CausalLmSpec = CausalLmSpec;

/// `[task]` of `kind = "causal-lm"`: no keys of its own.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CausalLmTask {}

impl TaskSpec for CausalLmSpec {
    fn name(&self) -> &'static str {
        "causal-lm"
    }
    fn arch(&self) -> Architecture {
        Architecture::DecoderOnly
    }
    fn metrics(&self) -> &'static [Metric] {
        &[VAL_LOSS]
    }
    fn settings(&self, table: toml::Table) -> Result<Box<dyn TaskSettings>, toml::de::Error> {
        settings_of::<CausalLmTask>(table)
    }
    fn samples(&self) -> bool {
        true
    }
    fn prepares_corpus(&self) -> bool {
        true
    }
    fn head(&self, _cfg: &Config) -> Result<Head> {
        Ok(Head::CausalLm)
    }
    fn train(&self, cfg: &Config, launch: &Launch) -> Result<RunSummary> {
        run_task(&CausalLm::new(cfg, launch.run, launch.resuming, launch.params, launch.device)?, launch)
    }
    fn load(&self, opened: OpenedCheckpoint) -> Result<Box<dyn Trained>> {
        Ok(Box::new(TrainedGpt::from_checkpoint(opened)?))
    }
}

pub struct CausalLm {
    cfg: Config,
    data: TokenDataset,
    /// How the corpus was split (many documents), for the start-up line.
    corpus_note: String,
    vocab_size: usize,
    model: Gpt,
    device: Device,
    buffers: RefCell<BatchBuffers>,
    /// What loading the pretrained weights did (fresh runs with `model.init_from`).
    loaded: Option<String>,
    tokenizer: TextTokenizer,
}

impl CausalLm {
    /// Reads and tokenizes the corpus (training the tokenizer on a fresh run, taking a
    /// pretrained model's with `model.init_from`, reading the run's own on resume) and builds
    /// the GPT over `params`, with the pretrained weights on a fresh `init_from` run.
    pub fn new(cfg: &Config, run: &RunDir, resuming: bool, params: &ParamStore, device: &Device) -> Result<Self> {
        let corpus = Corpus::resolve(&cfg.data)?;
        let mut cfg = cfg.clone();
        let (tokenizer, pretrained) = match (&cfg.model.init_from, resuming) {
            (_, true) => (TextTokenizer::load(&run.tokenizer())?, None),
            (Some(spec), false) => {
                let pretrained = Pretrained::open(&spec.clone(), &mut cfg.model)?;
                cfg.validate()?;
                (pretrained.tokenizer.clone(), Some(pretrained))
            }
            (None, false) => (crate::data::corpus_tokenizer(&cfg.tokenizer, &cfg.data, &corpus)?, None),
        };
        if !resuming {
            tokenizer.save(&run.tokenizer())?;
        }
        let (data, corpus_note) = corpus_dataset(&cfg.data, &corpus, &tokenizer, cfg.model.block_size)?;
        let vocab_size = decoder_vocab(&cfg.model, &tokenizer)?;
        let dtype = cfg.train.dtype.to_dtype();
        let model = Gpt::new(&cfg.model, vocab_size, dtype, params.var_builder(cfg.train.seed, device))?;
        let loaded = pretrained.map(|p| p.load_into(params, &cfg.model, device)).transpose()?;
        if !resuming && cfg.train.sample_every > 0 {
            // A prompt the vocabulary cannot encode fails here, not at the first sample.
            tokenizer.encode(&cfg.train.sample_prompt).context("`train.sample_prompt`")?;
        }
        let buffers = Default::default();
        Ok(Self { cfg, data, corpus_note, vocab_size, model, device: device.clone(), buffers, loaded, tokenizer })
    }
}

/// A decoder's embedding rows: `model.vocab_size`, or the tokenizer's vocabulary.
pub fn decoder_vocab(model: &ModelConfig, tokenizer: &TextTokenizer) -> Result<usize> {
    let tokens = tokenizer.vocab_size();
    match model.vocab_size {
        Some(n) if n < tokens => anyhow::bail!(
            "`model.vocab_size` = {n} is smaller than the tokenizer's {tokens} tokens; remove the key or raise it"
        ),
        Some(n) => Ok(n),
        None => Ok(tokens),
    }
}

impl Task for CausalLm {
    /// (inputs, targets), each (B, T) u32.
    type Batch = (Tensor, Tensor);

    fn config(&self) -> &Config {
        &self.cfg
    }

    fn describe(&self) -> String {
        let shortfall = self.cfg.tokenizer.shortfall(self.vocab_size).unwrap_or_default();
        let data = format!(
            "{} train / {} val tokens{}{shortfall}",
            self.data.len(Split::Train),
            self.data.len(Split::Val),
            self.corpus_note
        );
        crate::train::encoder::with_loaded(data, &self.loaded)
    }

    fn train_batch(&self, step: usize, micro: usize) -> Result<Self::Batch> {
        let buffers = &mut self.buffers.borrow_mut();
        self.data.train_batch(self.cfg.train.seed, step, micro, self.cfg.train.batch_size, &self.device, buffers)
    }

    fn tied_head(&self) -> bool {
        self.cfg.model.tie_embeddings
    }

    fn embedding_tables(&self) -> Vec<Tensor> {
        self.model.embedding_tables()
    }

    fn targets(&self, batch: &Self::Batch) -> usize {
        batch.1.elem_count()
    }

    fn tokens(&self, batch: &Self::Batch) -> usize {
        batch.0.elem_count()
    }

    fn loss_sum(&self, (inputs, targets): &Self::Batch, mode: &mut Mode) -> Result<Tensor> {
        Ok(self.model.loss_sum(inputs, targets, mode)?)
    }

    /// Mean next-token loss over the fixed val batches, or over every val block; each rank
    /// scores batches rank, rank + size, ... and the sums are added over the ranks.
    fn evaluate(&self, params: &ParamStore, world: &dyn Collective) -> Result<Evaluation> {
        let cfg = &self.cfg;
        let model = Gpt::new(&cfg.model, self.vocab_size, cfg.train.dtype.to_dtype(), detached(params, &self.device))?;
        let batch = cfg.train.batch_size;
        let buffers = &mut self.buffers.borrow_mut();
        // [loss sum, targets]
        let mut sums = [0f64; 2];
        let batches = match cfg.train.eval_batches {
            EvalBatches::Sampled(n) => n,
            EvalBatches::All => self.data.val_blocks().div_ceil(batch),
        };
        for index in batch_share(world, batches) {
            let (inputs, targets) = match cfg.train.eval_batches {
                EvalBatches::Sampled(_) => self.data.eval_batch(cfg.train.seed, index, batch, &self.device, buffers)?,
                EvalBatches::All => self.data.val_block_batch(index, batch, &self.device, buffers)?,
            };
            sums[0] += host::scalar(&model.loss_sum(&inputs, &targets, &mut Mode::eval())?)?;
            sums[1] += targets.elem_count() as f64;
        }
        world.sum_values(&mut sums)?;
        Ok(BTreeMap::from([("val_loss".to_string(), sums[0] / sums[1].max(1.0))]))
    }

    fn splits_evaluation(&self) -> bool {
        true
    }

    /// `train.sample_tokens` tokens after `train.sample_prompt`, sampled as `taper generate`
    /// does by default (temperature 0.8, top-k 200) with the run's seed: the same draw each time.
    fn sample(&self, params: &ParamStore) -> Result<Vec<String>> {
        let cfg = &self.cfg;
        let model = Gpt::new(&cfg.model, self.vocab_size, cfg.train.dtype.to_dtype(), detached(params, &self.device))?;
        let prompt = self.tokenizer.encode(&cfg.train.sample_prompt)?;
        let opts =
            SamplingOptions { max_new_tokens: cfg.train.sample_tokens, seed: cfg.train.seed, ..Default::default() };
        let tokens = generate(&model, &prompt, &opts)?;
        Ok(vec![self.tokenizer.decode(&[prompt, tokens].concat())?])
    }

    fn residual_rms(&self, (inputs, _): &Self::Batch) -> Result<BTreeMap<String, f64>> {
        Ok(self.model.norm_input_rms(inputs)?.into_iter().collect())
    }
}

/// Windows scored per forward by [`score_stream`].
const SCORE_BATCH: usize = 16;

/// Next-token loss of `model` over every token of `ids` after the first, in consecutive
/// windows of the model's block size (the last one shorter): `val_loss` (mean nats per token),
/// `perplexity` (its exponential) and `tokens` (how many were scored).
fn score_stream(model: &Gpt, ids: &[u32], device: &Device) -> Result<Evaluation> {
    let t = model.block_size();
    if ids.len() < 2 {
        anyhow::bail!("there is nothing to score: {} tokens (at least 2 are needed)", ids.len());
    }
    let starts: Vec<usize> = (0..ids.len() - 1).step_by(t).collect();
    let (mut total, mut count) = (0f64, 0usize);
    let full: Vec<usize> = starts.iter().copied().filter(|&s| s + t < ids.len()).collect();
    let partial = starts.iter().copied().filter(|&s| s + t >= ids.len());
    let mut score = |windows: &[usize], len: usize| -> Result<()> {
        let inputs: Vec<u32> = windows.iter().flat_map(|&s| ids[s..s + len].iter().copied()).collect();
        let targets: Vec<u32> = windows.iter().flat_map(|&s| ids[s + 1..s + 1 + len].iter().copied()).collect();
        let inputs = Tensor::from_vec(inputs, (windows.len(), len), device)?;
        let targets = Tensor::from_vec(targets, (windows.len(), len), device)?;
        total += host::scalar(&model.loss_sum(&inputs, &targets, &mut Mode::eval())?)?;
        count += windows.len() * len;
        Ok(())
    };
    for chunk in full.chunks(SCORE_BATCH) {
        score(chunk, t)?;
    }
    for start in partial {
        score(&[start], ids.len() - 1 - start)?;
    }
    let loss = total / count as f64;
    Ok(BTreeMap::from([
        ("val_loss".to_string(), loss),
        ("perplexity".to_string(), loss.exp()),
        ("tokens".to_string(), count as f64),
    ]))
}

/// The token ids `taper eval` scores a GPT run on: `file` tokenized with the run's
/// tokenizer, or else the run's own validation split of its corpus.
fn eval_tokens(cfg: &Config, tokenizer: &TextTokenizer, file: Option<&Path>) -> Result<Vec<u32>> {
    match file {
        Some(path) => tokenizer.encode_corpus(&read_corpus(path)?),
        None => {
            let (data, _) = corpus_dataset(&cfg.data, &Corpus::resolve(&cfg.data)?, tokenizer, cfg.model.block_size)?;
            Ok(data.tokens(Split::Val).to_vec())
        }
    }
}

/// A trained GPT, ready to generate and to be scored: its config, tokenizer, and weights from
/// one checkpoint.
pub struct TrainedGpt {
    pub config: Config,
    pub tokenizer: TextTokenizer,
    pub model: Gpt,
    pub checkpoint: PathBuf,
}

impl TrainedGpt {
    /// `which`: "latest", "best" or "step-N". `device`: as in `train.device`.
    pub fn load(run_dir: &Path, which: &str, device: &str) -> Result<Self> {
        Self::from_checkpoint(OpenedCheckpoint::open(run_dir, which, device, TaskKind::new(&CAUSAL_LM))?)
    }

    pub fn from_checkpoint(opened: OpenedCheckpoint) -> Result<Self> {
        let tokenizer = TextTokenizer::load(&opened.run.tokenizer())?;
        let (cfg, vocab) = (&opened.config, decoder_vocab(&opened.config.model, &tokenizer)?);
        let model = opened.build(|vb| Ok(Gpt::new(&cfg.model, vocab, cfg.train.dtype.to_dtype(), vb)?))?;
        Ok(Self { config: opened.config, tokenizer, model, checkpoint: opened.checkpoint })
    }

    /// `taper eval`: loss and perplexity over `file`, or the run's validation split.
    pub fn evaluate(&self, file: Option<&Path>) -> Result<Evaluation> {
        let ids = eval_tokens(&self.config, &self.tokenizer, file)?;
        score_stream(&self.model, &ids, self.model.device())
    }
}

impl Trained for TrainedGpt {
    fn checkpoint(&self) -> &Path {
        &self.checkpoint
    }

    fn evaluate(&self, file: Option<&Path>) -> Result<(Evaluation, String)> {
        let scored = file.map_or("its validation split".into(), |f| f.display().to_string());
        Ok((TrainedGpt::evaluate(self, file)?, scored))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
