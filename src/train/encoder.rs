//! What every encoder run (classification, tagging, masked-lm) starts from: the architecture (a
//! pretrained checkpoint's config.json, or the [model] section) of a Hugging Face family, whose
//! adapter names the task model's parameters and the tokenizer's special tokens; and the
//! tokenizer (the checkpoint's, or one trained on the corpus). Both are saved into the run so
//! that resume, eval, predict and export need nothing else. The shared steps of the encoder
//! tasks are here too: their labelled data's split and the pretrained weights' loading.

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::Device;
use candle_nn::VarBuilder;

use crate::config::{Architecture, Config, ModelConfig};
use crate::data::labelled::LabelSet;
use crate::data::sampling::hold_out;
use crate::data::TextTokenizer;
use crate::hf::{self, Export, Family, Tokens};
use crate::model::encoder::{Encoder, EncoderVocab};
use crate::model::ParamStore;
use crate::pretrained::Pretrained;
use crate::run_dir::{OpenedCheckpoint, RunDir};

/// An encoder run's family and embedding rows.
#[derive(Clone, Copy)]
pub struct EncoderArch {
    pub family: &'static dyn Family,
    pub vocab: EncoderVocab,
}

impl EncoderArch {
    /// The family and rows the run's saved config.json describes, and the architecture with
    /// the file it came from.
    fn read(run: &RunDir) -> Result<(Self, hf::Checkpoint, std::path::PathBuf)> {
        let (saved, path) = run.read_encoder_config()?;
        let family = hf::family_of(&saved, &path, Architecture::EncoderOnly)?;
        let checkpoint = family.read_config(&saved).with_context(|| format!("invalid {}", path.display()))?;
        Ok((Self { family, vocab: checkpoint.encoder_vocab() }, checkpoint, path))
    }

    /// The run's saved architecture, made `model`'s (a resumed run's keys agree with it).
    fn of_run(run: &RunDir, model: &mut ModelConfig) -> Result<Self> {
        let (arch, checkpoint, path) = Self::read(run)?;
        hf::adopt(model, &checkpoint, &path)?;
        Ok(arch)
    }

    /// `vb` (at the root of a store) seen through the family's names: a task model of `model`
    /// built over it keeps them.
    pub fn renamed<'a>(&self, model: &ModelConfig, vb: VarBuilder<'a>) -> VarBuilder<'a> {
        self.family.names(model).renamed(vb)
    }

    /// The tokenizer's id of the family's special token for `role` (its pad, cls, sep, mask),
    /// which `what` needs.
    pub fn special_id(&self, tokenizer: &TextTokenizer, role: fn(&Tokens) -> &[&str], what: &str) -> Result<u32> {
        let all = self.family.tokens();
        let tokens = role(&all);
        let found = tokens.iter().find_map(|t| tokenizer.inner().token_to_id(t));
        match (found, tokens.first()) {
            (Some(id), _) => Ok(id),
            (None, Some(first)) => tokenizer.special_id(first, what),
            (None, None) => {
                anyhow::bail!("a {} tokenizer has no such special token, which {what} needs", self.family.model_type())
            }
        }
    }

    /// The task model's parameter `name` (the family's) as its checkpoint's name of taper's
    /// module path under `encoder` (diagnostics name the residual stream by it).
    fn encoder_name(&self, model: &ModelConfig, name: &str) -> String {
        let path = format!("encoder.{name}");
        self.family.names(model).checkpoint_name(&path).unwrap_or(path)
    }
}

pub struct EncoderSetup {
    pub arch: EncoderArch,
    pub tokenizer: TextTokenizer,
    /// The config with the architecture's keys filled in.
    pub config: Config,
    /// The pretrained model to load weights from (fresh runs with `model.init_from`).
    pub pretrained: Option<Pretrained>,
}

/// `corpus`: the text a tokenizer is trained on when there is no pretrained one.
pub fn setup(cfg: &Config, run: &RunDir, resuming: bool, corpus: Option<&crate::data::Corpus>) -> Result<EncoderSetup> {
    let mut config = cfg.clone();
    if resuming {
        let arch = EncoderArch::of_run(run, &mut config.model)?;
        let tokenizer = TextTokenizer::load(&run.tokenizer())?;
        return Ok(EncoderSetup { arch, tokenizer, config, pretrained: None });
    }
    let (arch, tokenizer, pretrained) = match &cfg.model.init_from {
        Some(spec) => {
            let pretrained = Pretrained::open(spec, &mut config.model)?;
            let arch = EncoderArch { family: pretrained.family, vocab: pretrained.encoder_vocab() };
            (arch, pretrained.tokenizer.clone(), Some(pretrained))
        }
        None => {
            let corpus = corpus.with_context(|| {
                format!(
                    "{} starts from a pretrained encoder: set `model.init_from` (a Hugging Face encoder directory or \
                     hub id, or the `taper export` of your own masked-lm run)",
                    cfg.task.kind()
                )
            })?;
            let tokenizer = crate::data::corpus_tokenizer(&cfg.tokenizer, &cfg.data, corpus)?;
            let family = hf::from_scratch(Architecture::EncoderOnly)?;
            let vocab = EncoderVocab { tokens: tokenizer.vocab_size(), token_types: 2 };
            (EncoderArch { family, vocab }, tokenizer, None)
        }
    };
    config.validate()?;
    tokenizer.save(&run.tokenizer())?;
    let record = arch.family.config_json(&Export {
        model: &config.model,
        head: None,
        vocab_size: arch.vocab.tokens,
        type_vocab_size: arch.vocab.token_types,
        ids: Default::default(),
        labels: None,
    })?;
    crate::fsutil::write_atomic(&run.encoder_config(), serde_json::to_string_pretty(&record)?.as_bytes())?;
    Ok(EncoderSetup { arch, tokenizer, config, pretrained })
}

/// RMS of the residual stream entering each LayerNorm of a task model's encoder (diagnostics),
/// by the task model's names (`bert.encoder.layer.0...`).
pub fn residual_rms(
    arch: &EncoderArch,
    model: &ModelConfig,
    encoder: &Encoder,
    ids: &candle_core::Tensor,
    mask: Option<&candle_core::Tensor>,
) -> Result<std::collections::BTreeMap<String, f64>> {
    let rms = encoder.norm_input_rms(ids, mask)?;
    Ok(rms.into_iter().map(|(name, v)| (arch.encoder_name(model, &name), v)).collect())
}

/// A trained encoder run's family and embedding rows.
pub fn trained_arch(opened: &OpenedCheckpoint) -> Result<EncoderArch> {
    Ok(EncoderArch::read(&opened.run)?.0)
}

/// The longest input the model takes: `requested` (`task.max_len`), at most the model's
/// positions (`block_size`, an encoder's max_position_embeddings).
pub fn max_len(requested: Option<usize>, model: &ModelConfig) -> anyhow::Result<usize> {
    let positions = model.block_size;
    match requested {
        Some(n) if n > positions => {
            anyhow::bail!("`task.max_len` = {n} exceeds the model's max_position_embeddings = {positions}")
        }
        Some(n) => Ok(n),
        None => Ok(positions),
    }
}

/// Loads `setup`'s pretrained weights (fresh runs with `model.init_from`) into a task model
/// whose own head is `head` (taper's names: `pooler`, `classifier`, `mlm`): its parameters, and
/// the final LayerNorm of a pre-LN rebuild, may start fresh. Returns the line that says what
/// loading did, for the start-up message.
pub fn load_pretrained(
    setup: &EncoderSetup,
    params: &ParamStore,
    device: &Device,
    head: &[&str],
) -> Result<Option<String>> {
    let Some(pretrained) = &setup.pretrained else { return Ok(None) };
    let report = pretrained.load_task_model(params, &setup.config.model, device, head)?;
    let fresh = if report.fresh.is_empty() { "nothing".to_string() } else { report.fresh.join(", ") };
    let unused =
        if report.ignored.is_empty() { String::new() } else { format!("; unused: {}", report.ignored.join(", ")) };
    Ok(Some(format!("loaded {}; starting fresh: {fresh}{unused}", pretrained.dir.display())))
}

/// The start-up description of an encoder task, with what loading did.
pub fn with_loaded(data: String, loaded: &Option<String>) -> String {
    match loaded {
        Some(line) => format!("{data}; {line}"),
        None => data,
    }
}

/// A labelled task's rows: its label set, and its training and validation rows, encoded.
pub struct LabelledRows<R> {
    pub labels: LabelSet,
    pub train: Vec<R>,
    pub val: Vec<R>,
}

/// A labelled task's rows (classification, tagging): the training file `read`; its label set
/// the run's own on resume, else made of the training examples by `label_set` and saved into
/// the run; the validation examples `data.val_path`'s, or a share of the training file's held
/// out (`unit`: what an example is called); both `encode`d with the label set.
pub fn labelled_rows<E, R>(
    cfg: &Config,
    run: &RunDir,
    resuming: bool,
    unit: &str,
    read: impl Fn(&Path) -> Result<Vec<E>>,
    label_set: impl FnOnce(&[E], &Path) -> Result<LabelSet>,
    encode: impl Fn(&[E], &LabelSet, &Path) -> Result<Vec<R>>,
) -> Result<LabelledRows<R>> {
    let train_file = cfg.data.path.file()?;
    let mut train = read(train_file)?;
    let labels = match resuming {
        true => run.read_labels()?,
        false => {
            let labels = label_set(&train, train_file)?;
            crate::fsutil::write_atomic(&run.labels(), serde_json::to_string_pretty(&labels.names)?.as_bytes())?;
            labels
        }
    };
    let (val, val_source) = match &cfg.data.val_path {
        Some(path) => (read(path)?, path.as_path()),
        None => (hold_out(&mut train, cfg.data.val_fraction, cfg.train.seed, unit, train_file)?, train_file),
    };
    Ok(LabelledRows { train: encode(&train, &labels, train_file)?, val: encode(&val, &labels, val_source)?, labels })
}
