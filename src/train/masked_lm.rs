//! Masked-language modelling (BERT pretraining) on a plain corpus: windows of
//! `block_size - 2` tokens framed as [CLS] window [SEP], corrupted by [`MaskingRule`], and a
//! loss on the selected tokens only. Evaluation reports the loss and the masked-token accuracy
//! on fixed validation windows with a fixed corruption.

use std::cell::RefCell;
use std::collections::BTreeMap;

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::encoder::{self, with_loaded, EncoderArch};
use super::shared::{batch_share, detached};
use super::task::{Evaluation, Task, Trained};
use super::{run_task, settings_of, Launch, RunSummary, TaskSettings, TaskSpec};
use crate::config::{higher, Architecture, Config, EvalBatches, Metric, VAL_LOSS};
use crate::data::masking::MaskingRule;
use crate::data::{BatchBuffers, Corpus, Split, TokenDataset};
use crate::hf::Head;
use crate::host;
use crate::model::encoder::MaskedLm as MaskedLmModel;
use crate::model::{Mode, ParamStore};
use crate::rng::Rng;
use crate::run_dir::{OpenedCheckpoint, RunDir};

/// `task.kind = "masked-lm"`: BERT's masked-language modelling on a plain corpus
/// (encoder-only).
pub struct MaskedLmSpec;

pub static MASKED_LM: MaskedLmSpec = MaskedLmSpec;

/// `[task]` of `kind = "masked-lm"`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MaskedLmTask {
    /// Share of tokens selected (of which 80 % become [MASK], 10 % a random token, 10 % stay).
    #[serde(default = "default_mask_prob")]
    pub mask_prob: f64,
}

fn default_mask_prob() -> f64 {
    0.15
}

impl TaskSpec for MaskedLmSpec {
    fn name(&self) -> &'static str {
        "masked-lm"
    }
    fn arch(&self) -> Architecture {
        Architecture::EncoderOnly
    }
    fn metrics(&self) -> &'static [Metric] {
        const METRICS: [Metric; 2] = [VAL_LOSS, higher("masked_accuracy")];
        &METRICS
    }
    fn settings(&self, table: toml::Table) -> Result<Box<dyn TaskSettings>, toml::de::Error> {
        settings_of::<MaskedLmTask>(table)
    }
    fn validate(&self, cfg: &Config) -> Result<()> {
        let p = cfg.task.settings::<MaskedLmTask>()?.mask_prob;
        if !(0.0..1.0).contains(&p) || p == 0.0 {
            bail!("`task.mask_prob` must be in (0, 1), got {p}");
        }
        Ok(())
    }
    fn prepares_corpus(&self) -> bool {
        true
    }
    fn head(&self, _cfg: &Config) -> Result<Head> {
        Ok(Head::MaskedLm)
    }
    fn train(&self, cfg: &Config, launch: &Launch) -> Result<RunSummary> {
        run_task(&MaskedLm::new(cfg, launch.run, launch.resuming, launch.params, launch.device)?, launch)
    }
    fn load(&self, opened: OpenedCheckpoint) -> Result<Box<dyn Trained>> {
        bail!(
            "{}: a masked-lm run has no inference command; its val loss and masked-token accuracy are in its \
             metrics.jsonl, and `taper export` writes it for fine-tuning",
            opened.run.path().display()
        )
    }
}

const MASK_STREAM: u64 = 5;
const EVAL_MASK_STREAM: u64 = 6;

pub struct MaskedLm {
    cfg: Config,
    arch: EncoderArch,
    model: MaskedLmModel,
    data: TokenDataset,
    /// How the corpus was split (many documents), for the start-up line.
    corpus_note: String,
    rule: MaskingRule,
    cls_id: u32,
    sep_id: u32,
    /// What loading the pretrained weights did (fresh runs with `model.init_from`).
    loaded: Option<String>,
    device: Device,
    buffers: RefCell<BatchBuffers>,
}

/// One corrupted batch: inputs (B, T), the selected flat positions (N) and their ids (N).
pub struct MaskedBatch {
    pub inputs: Tensor,
    pub positions: Tensor,
    pub labels: Tensor,
}

impl MaskedLm {
    pub fn new(cfg: &Config, run: &RunDir, resuming: bool, params: &ParamStore, device: &Device) -> Result<Self> {
        let corpus = Corpus::resolve(&cfg.data)?;
        let setup = encoder::setup(cfg, run, resuming, Some(&corpus))?;
        let (arch, tokenizer, config) = (setup.arch, &setup.tokenizer, &setup.config);
        let special = |role: fn(&crate::hf::Tokens) -> &[&str]| arch.special_id(tokenizer, role, "masked-lm");
        let (cls_id, sep_id) = (special(|t| t.cls)?, special(|t| t.sep)?);
        let special_ids = vec![cls_id, sep_id, special(|t| t.pad)?];
        let rule = MaskingRule {
            mask_prob: config.task.settings::<MaskedLmTask>()?.mask_prob,
            mask_id: special(|t| t.mask)?,
            vocab_size: arch.vocab.tokens,
            special_ids,
        };
        let positions = config.model.block_size;
        if positions < 3 {
            anyhow::bail!("masked-lm frames windows as [CLS] tokens [SEP]: `model.block_size` must be at least 3, got {positions}");
        }
        let window = positions - 2;
        let (data, corpus_note) = crate::data::corpus_dataset(&config.data, &corpus, tokenizer, window)?;
        let vb = arch.renamed(&config.model, params.var_builder(cfg.train.seed, device));
        let model = MaskedLmModel::new(&config.model, arch.vocab, vb)?;
        let loaded = encoder::load_pretrained(&setup, params, device, &["mlm"])?;
        let task = Self {
            cfg: setup.config.clone(),
            loaded,
            arch,
            model,
            data,
            corpus_note,
            rule,
            cls_id,
            sep_id,
            device: device.clone(),
            buffers: Default::default(),
        };
        Ok(task)
    }

    /// Frames and corrupts the windows of the last fill of `buffers`.
    fn corrupt(&self, buffers: &BatchBuffers, rng: &mut Rng) -> Result<MaskedBatch> {
        let window = self.data.block_size();
        let batch = buffers.inputs().len() / window;
        let mut ids = Vec::with_capacity(batch * (window + 2));
        for row in buffers.inputs().chunks(window) {
            ids.push(self.cls_id);
            ids.extend_from_slice(row);
            ids.push(self.sep_id);
        }
        let masked = self.rule.apply(&mut ids, rng);
        let n = masked.positions.len();
        Ok(MaskedBatch {
            inputs: Tensor::from_vec(ids, (batch, window + 2), &self.device)?,
            positions: Tensor::from_vec(masked.positions, n, &self.device)?,
            labels: Tensor::from_vec(masked.labels, n, &self.device)?,
        })
    }
}

impl Task for MaskedLm {
    type Batch = MaskedBatch;

    fn describe(&self) -> String {
        let shortfall = self.cfg.tokenizer.shortfall(self.arch.vocab.tokens).unwrap_or_default();
        let (train, val) = (self.data.len(Split::Train), self.data.len(Split::Val));
        let data = format!("{train} train / {val} val tokens{}{shortfall}", self.corpus_note);
        with_loaded(data, &self.loaded)
    }

    fn config(&self) -> &Config {
        &self.cfg
    }

    fn train_batch(&self, step: usize, micro: usize) -> Result<Self::Batch> {
        let buffers = &mut self.buffers.borrow_mut();
        let seed = self.cfg.train.seed;
        self.data.windows(Split::Train, seed, step, micro, self.cfg.train.batch_size, buffers);
        self.corrupt(buffers, &mut Rng::derived(seed, &[MASK_STREAM, step as u64, micro as u64]))
    }

    /// The MLM decoder is the word-embedding table (with its own bias).
    fn tied_head(&self) -> bool {
        true
    }

    fn embedding_tables(&self) -> Vec<Tensor> {
        self.model.encoder.embedding_tables()
    }

    fn targets(&self, batch: &Self::Batch) -> usize {
        batch.labels.elem_count()
    }

    fn tokens(&self, batch: &Self::Batch) -> usize {
        batch.inputs.elem_count()
    }

    fn residual_rms(&self, batch: &Self::Batch) -> Result<BTreeMap<String, f64>> {
        super::encoder::residual_rms(&self.arch, &self.cfg.model, &self.model.encoder, &batch.inputs, None)
    }

    fn loss_sum(&self, batch: &Self::Batch, mode: &mut Mode) -> Result<Tensor> {
        let logits = self.model.logits_at(&batch.inputs, &batch.positions, mode)?;
        Ok(mode.backend().cross_entropy_sum(&logits, &batch.labels)?)
    }

    /// Loss and accuracy at the masked positions of the val windows; each rank scores windows
    /// batches rank, rank + size, ... and the sums are added over the ranks.
    fn evaluate(&self, params: &ParamStore, world: &dyn crate::distributed::Collective) -> Result<Evaluation> {
        let cfg = &self.cfg;
        let vb = self.arch.renamed(&cfg.model, detached(params, &self.device));
        let model = MaskedLmModel::new(&cfg.model, self.arch.vocab, vb)?;
        let buffers = &mut self.buffers.borrow_mut();
        // [loss sum, correct, masked positions]
        let mut sums = [0f64; 3];
        let batches = match cfg.train.eval_batches {
            EvalBatches::Sampled(n) => n.max(1),
            EvalBatches::All => self.data.val_blocks().div_ceil(cfg.train.batch_size),
        };
        for index in batch_share(world, batches) {
            match cfg.train.eval_batches {
                EvalBatches::Sampled(_) => {
                    self.data.windows(Split::Val, cfg.train.seed, index, 0, cfg.train.batch_size, buffers)
                }
                EvalBatches::All => _ = self.data.val_block_windows(index, cfg.train.batch_size, buffers),
            }
            let batch = self.corrupt(buffers, &mut Rng::derived(cfg.train.seed, &[EVAL_MASK_STREAM, index as u64]))?;
            let mut mode = Mode::eval();
            let logits = model.logits_at(&batch.inputs, &batch.positions, &mut mode)?;
            sums[0] += host::scalar(&mode.backend().cross_entropy_sum(&logits, &batch.labels)?)?;
            let predicted: Vec<u32> = host::vec1(&logits.argmax(1)?)?;
            let labels: Vec<u32> = host::vec1(&batch.labels)?;
            sums[1] += predicted.iter().zip(&labels).filter(|(p, l)| p == l).count() as f64;
            sums[2] += labels.len() as f64;
        }
        world.sum_values(&mut sums)?;
        let count = sums[2].max(1.0);
        Ok(BTreeMap::from([
            ("val_loss".to_string(), sums[0] / count),
            ("masked_accuracy".to_string(), sums[1] / count),
        ]))
    }

    fn splits_evaluation(&self) -> bool {
        true
    }
}
