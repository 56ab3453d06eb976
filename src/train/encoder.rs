//! What every encoder run (classification, masked-lm) starts from: the architecture (a
//! pretrained checkpoint's config.json, or the [model] section) and the tokenizer (the
//! checkpoint's, or one trained on the corpus), saved into the run so that resume, eval,
//! predict and export need nothing else.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::Device;

use crate::config::Config;
use crate::data::TextTokenizer;
use crate::model::bert::BertConfig;
use crate::model::ParamStore;
use crate::pretrained::{adopt_shape, load_task_weights, resolve_model_dir};
use crate::run_dir::RunDir;

pub struct EncoderSetup {
    pub bert: BertConfig,
    pub tokenizer: TextTokenizer,
    /// The config with the shape keys filled in from the architecture.
    pub config: Config,
    /// The pretrained directory to load weights from (fresh runs with `model.init_from`).
    pub pretrained: Option<PathBuf>,
}

/// `corpus`: the text a tokenizer is trained on when there is no pretrained one.
pub fn setup(cfg: &Config, run: &RunDir, resuming: bool, corpus: Option<&crate::data::Corpus>) -> Result<EncoderSetup> {
    let mut config = cfg.clone();
    if resuming {
        let path = run.bert_config();
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut bert: BertConfig =
            serde_json::from_str(&text).with_context(|| format!("invalid {}", path.display()))?;
        bert.lora = cfg.model.lora;
        // The saved architecture fills the shape keys, as on the fresh run.
        adopt_shape(&mut config.model, &bert, &path)?;
        adopt_dropout(&mut config.model, &bert);
        let tokenizer = TextTokenizer::load(&run.tokenizer())?;
        return Ok(EncoderSetup { bert, tokenizer, config, pretrained: None });
    }
    let (bert, tokenizer, pretrained) = match &cfg.model.init_from {
        Some(spec) => {
            let dir = resolve_model_dir(spec).with_context(|| format!("cannot find `model.init_from` = {spec}"))?;
            let mut bert = BertConfig::from_dir(&dir)?;
            bert.lora = cfg.model.lora;
            adopt_shape(&mut config.model, &bert, &dir.join("config.json"))?;
            // Dropout is a training choice: the [model] values win when given.
            if cfg.model.dropout > 0.0 || cfg.model.resid_dropout.is_some() {
                bert.hidden_dropout_prob = cfg.model.resid_dropout();
            }
            if cfg.model.dropout > 0.0 || cfg.model.attn_dropout.is_some() {
                bert.attention_probs_dropout_prob = cfg.model.attn_dropout();
            }
            adopt_dropout(&mut config.model, &bert);
            let tokenizer = TextTokenizer::load(&dir.join("tokenizer.json"))
                .with_context(|| format!("{} needs a tokenizer.json", dir.display()))?;
            (bert, tokenizer, Some(dir))
        }
        None => {
            let corpus = corpus.with_context(|| {
                format!(
                    "{} starts from a pretrained encoder: set `model.init_from` (a Hugging Face BERT directory or \
                     hub id, or the `taper export` of your own masked-lm run)",
                    cfg.task.kind()
                )
            })?;
            let tokenizer = crate::data::corpus_tokenizer(&cfg.tokenizer, &cfg.data, corpus)?;
            (BertConfig::from_model_config(&cfg.model, tokenizer.vocab_size()), tokenizer, None)
        }
    };
    config.validate()?;
    tokenizer.save(&run.tokenizer())?;
    crate::fsutil::write_atomic(&run.bert_config(), serde_json::to_string_pretty(&bert)?.as_bytes())?;
    Ok(EncoderSetup { bert, tokenizer, config, pretrained })
}

/// RMS of the residual stream entering each LayerNorm of a task model's encoder (diagnostics),
/// by the task model's Hugging Face names (`bert.encoder.layer.0...`).
pub fn residual_rms(
    encoder: &crate::model::bert::BertEncoder,
    ids: &candle_core::Tensor,
    mask: Option<&candle_core::Tensor>,
) -> Result<std::collections::BTreeMap<String, f64>> {
    let rms = encoder.norm_input_rms(ids, mask)?;
    Ok(rms.into_iter().map(|(name, v)| (format!("bert.{name}"), v)).collect())
}

/// A trained encoder run's architecture, with its LoRA adapters (`[lora]`).
pub fn trained_bert(opened: &crate::run_dir::OpenedCheckpoint) -> Result<BertConfig> {
    let mut bert = opened.run.read_bert_config()?;
    bert.lora = opened.config.model.lora;
    Ok(bert)
}

/// The longest input the model takes: `requested` (`task.max_len`), at most the model's
/// positions.
pub fn max_len(requested: Option<usize>, bert: &BertConfig) -> anyhow::Result<usize> {
    let positions = bert.max_position_embeddings;
    match requested {
        Some(n) if n > positions => {
            anyhow::bail!("`task.max_len` = {n} exceeds the model's max_position_embeddings = {positions}")
        }
        Some(n) => Ok(n),
        None => Ok(positions),
    }
}

/// `model`'s dropout keys as a BERT config's: hidden (residual and embeddings) and attention.
fn adopt_dropout(model: &mut crate::config::ModelConfig, bert: &BertConfig) {
    model.dropout = bert.hidden_dropout_prob;
    model.resid_dropout = None;
    model.emb_dropout = None;
    model.attn_dropout =
        (bert.attention_probs_dropout_prob != bert.hidden_dropout_prob).then_some(bert.attention_probs_dropout_prob);
}

/// Loads `setup`'s pretrained weights (fresh runs with `model.init_from`) into a task model.
/// Parameters under the task's `head` prefixes (and the final LayerNorm of a pre-LN rebuild)
/// may start fresh; tensors under `other_heads` (another task's head) are skipped. Returns the
/// line that says so, for the start-up message.
pub fn load_pretrained(
    setup: &EncoderSetup,
    params: &ParamStore,
    device: &Device,
    head: &[&str],
    other_heads: &[&str],
) -> Result<Option<String>> {
    let Some(dir) = &setup.pretrained else { return Ok(None) };
    let report = load_task_weights(
        params,
        dir,
        device,
        &|n| n.starts_with("bert.encoder.final_layer_norm.") || head.iter().any(|h| n.starts_with(h)),
        &|n| n.ends_with("position_ids") || other_heads.iter().any(|h| n.starts_with(h)),
    )?;
    let fresh = if report.fresh.is_empty() { "nothing".to_string() } else { report.fresh.join(", ") };
    let unused =
        if report.ignored.is_empty() { String::new() } else { format!("; unused: {}", report.ignored.join(", ")) };
    Ok(Some(format!("loaded {}; starting fresh: {fresh}{unused}", dir.display())))
}

/// The start-up description of an encoder task, with what loading did.
pub fn with_loaded(data: String, loaded: &Option<String>) -> String {
    match loaded {
        Some(line) => format!("{data}; {line}"),
        None => data,
    }
}
