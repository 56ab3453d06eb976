//! `taper export --format hf`: a run's checkpoint as a Hugging Face model directory
//! (config.json, model.safetensors, tokenizer.json; generation_config.json for a decoder) that
//! transformers' Auto classes and candle-transformers load. A BERT-family run stores its
//! parameters under Hugging Face's names (its models are built through `model::names::bert`),
//! so the weights are written as they are; a decoder's go through its family's adapter
//! (`model::names::decoder`: GPT2LMHeadModel or LlamaForCausalLM), a seq2seq run's through
//! T5's (`model::names::t5`: T5ForConditionalGeneration).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use candle_core::{Device, Tensor};

use crate::config::{Config, NormPlacement, PoolingName, TaskKind};
use crate::data::TextTokenizer;
use crate::model::lora::merge_adapters;
use crate::model::names::decoder::{DecoderFamily, Specials};
use crate::model::names::t5;
use crate::run_dir::RunDir;
use crate::train::causal_lm::decoder_vocab;

/// The files an export writes into its directory.
const EXPORT_FILES: [&str; 4] = ["config.json", "model.safetensors", "tokenizer.json", "generation_config.json"];

/// Writes the export into `out` (created if needed); every file goes to a temporary name
/// first, so an interrupted export never leaves a half-written file under its final name.
/// Files already in `out` under those names are replaced only with `overwrite`.
pub fn export_hf(run_dir: &Path, which: &str, out: &Path, overwrite: bool) -> Result<()> {
    let present: Vec<&str> = EXPORT_FILES.into_iter().filter(|f| out.join(f).exists()).collect();
    if !present.is_empty() && !overwrite {
        bail!(
            "{} already holds {}; taper does not overwrite them: choose another --out, or pass --overwrite",
            out.display(),
            present.join(", ")
        );
    }
    let run = RunDir::new(run_dir);
    let config = run.load_config(&[])?;
    match config.task.kind() {
        TaskKind::SequenceClassification | TaskKind::TokenClassification | TaskKind::MaskedLm => {
            export_encoder(&run, &config, which, out)
        }
        TaskKind::CausalLm => export_decoder(&run, &config, which, out),
        TaskKind::Seq2seq => export_seq2seq(&run, &config, which, out),
    }
}

/// A classification or masked-lm run as BertForSequenceClassification /
/// BertForTokenClassification / BertForMaskedLM.
fn export_encoder(run: &RunDir, config: &Config, which: &str, out: &Path) -> Result<()> {
    let run_dir = run.path();
    if config.model.norm != NormPlacement::Post {
        bail!("{}: Hugging Face's BERT is post-LN; a pre-LN encoder has no equivalent there", run_dir.display());
    }
    let bert = run.read_bert_config()?;
    if let Some(p) = &bert.taper_positions {
        bail!(
            "{}: `model.positions = {}` has no place in Hugging Face's BERT (learned positions only); the run stays in \
             taper's format",
            run_dir.display(),
            crate::model::names::decoder::show(&p.positions)
        );
    }
    let mut hf = serde_json::to_value(&bert)?;
    let architecture = match config.task.kind() {
        TaskKind::SequenceClassification => {
            if config.task.classification()?.pooling != PoolingName::Cls {
                bail!(
                    "{}: mean pooling has no Hugging Face BertForSequenceClassification equivalent",
                    run_dir.display()
                );
            }
            add_labels(&mut hf, run)?;
            "BertForSequenceClassification"
        }
        TaskKind::TokenClassification => {
            add_labels(&mut hf, run)?;
            "BertForTokenClassification"
        }
        TaskKind::MaskedLm => "BertForMaskedLM",
        TaskKind::CausalLm | TaskKind::Seq2seq => bail!("{}: not an encoder run", run_dir.display()),
    };
    hf["architectures"] = json!([architecture]);
    hf["model_type"] = json!("bert");
    hf["torch_dtype"] = json!("float32");
    let tokenizer = TextTokenizer::load(&run.tokenizer())?;
    if let Some(pad) = tokenizer.inner().token_to_id("[PAD]") {
        hf["pad_token_id"] = json!(pad);
    }

    let (tensors, _) = checkpoint_tensors(run_dir, which, config)?;
    write_weights(&tensors, out)?;
    crate::fsutil::write_atomic(&out.join("config.json"), serde_json::to_string_pretty(&hf)?.as_bytes())?;
    tokenizer.save(&out.join("tokenizer.json"))?;
    Ok(())
}

/// The run's labels (or tags) as config.json's `id2label` and `label2id`.
fn add_labels(hf: &mut Value, run: &RunDir) -> Result<()> {
    let labels = run.read_labels()?;
    let id2label: serde_json::Map<String, Value> =
        labels.names.iter().enumerate().map(|(i, n)| (i.to_string(), json!(n))).collect();
    let label2id: serde_json::Map<String, Value> =
        labels.names.iter().enumerate().map(|(i, n)| (n.clone(), json!(i))).collect();
    hf["id2label"] = Value::Object(id2label);
    hf["label2id"] = Value::Object(label2id);
    Ok(())
}

/// The tensors of checkpoint `which` (and the file they came from), with a LoRA run's adapters
/// merged into their weights: the plain model the adapted one computes.
fn checkpoint_tensors(run_dir: &Path, which: &str, config: &Config) -> Result<(HashMap<String, Tensor>, PathBuf)> {
    let checkpoint = crate::checkpoint::resolve_checkpoint(run_dir, which)?;
    let weights = checkpoint.join("model.safetensors");
    let mut tensors = crate::checkpoint::load_tensors(&weights, &Device::Cpu)?;
    if let Some(spec) = &config.model.lora {
        merge_adapters(&mut tensors, spec)
            .with_context(|| format!("merging the LoRA adapters of {}", weights.display()))?;
    }
    Ok((tensors, weights))
}

/// Writes `tensors` as `out`/model.safetensors (a temporary name, synced, then renamed).
fn write_weights(tensors: &HashMap<String, Tensor>, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let file = out.join("model.safetensors");
    let tmp = crate::fsutil::tmp_path(&file);
    candle_core::safetensors::save(tensors, &tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    crate::fsutil::sync_file(&tmp)?;
    std::fs::rename(&tmp, &file).with_context(|| format!("cannot write {}", file.display()))
}

/// A T5-shaped seq2seq run as T5ForConditionalGeneration; the tokenizer gains taper's three
/// special tokens (`<pad>`, `<s>`, `</s>`) at the ids the model gives them.
fn export_seq2seq(run: &RunDir, config: &Config, which: &str, out: &Path) -> Result<()> {
    let run_dir = run.path();
    let mismatches = t5::mismatches(&config.model);
    if !mismatches.is_empty() {
        bail!(
            "{}: cannot export: a seq2seq run exports as T5ForConditionalGeneration, and this one has {}",
            run_dir.display(),
            mismatches.join(", ")
        );
    }
    let vocab = crate::train::seq2seq::Vocabularies::load(run, &config.model)?;
    let specials = vocab.source_specials;
    // The specials the tokenizer lacks, added as special tokens at the ids the model uses.
    let mut inner = vocab.source.inner().clone();
    let wanted = [("<pad>", specials.pad), ("<s>", specials.bos), ("</s>", specials.eos)];
    let wanted: Vec<(&str, u32)> = wanted.into_iter().filter(|&(n, id)| n != "<s>" || id != specials.pad).collect();
    for (name, _) in &wanted {
        if vocab.source.special_token_id(name).is_none() {
            inner.add_special_tokens(&[tokenizers::AddedToken::from(*name, true)]);
        }
    }
    if let Some((name, id)) = wanted.iter().find(|&&(n, id)| inner.token_to_id(n) != Some(id)) {
        bail!(
            "{}: the tokenizer holds `{name}` as a plain token; it cannot take taper's special id {id}",
            run_dir.display()
        );
    }
    let (tensors, weights) = checkpoint_tensors(run_dir, which, config)?;
    let tensors = t5::to_hf(&tensors, &config.model).with_context(|| format!("{} as T5", weights.display()))?;
    write_weights(&tensors, out)?;
    let t5_specials = t5::T5Specials { pad: specials.pad, eos: specials.eos, decoder_start: specials.bos };
    let hf = t5::config_json(&config.model, vocab.source_size(), t5_specials);
    crate::fsutil::write_atomic(&out.join("config.json"), serde_json::to_string_pretty(&hf)?.as_bytes())?;
    let generation = json!({
        "decoder_start_token_id": specials.bos, "eos_token_id": specials.eos, "pad_token_id": specials.pad,
        "_from_model_config": true
    });
    crate::fsutil::write_atomic(
        &out.join("generation_config.json"),
        serde_json::to_string_pretty(&generation)?.as_bytes(),
    )?;
    let json = inner.to_string(true).map_err(anyhow::Error::msg)?;
    crate::fsutil::write_atomic(&out.join("tokenizer.json"), json.as_bytes())
}

/// The id of the first of `tokens` the tokenizer has.
fn first_id(tokenizer: &TextTokenizer, tokens: &[&str]) -> Option<u32> {
    tokens.iter().find_map(|t| tokenizer.inner().token_to_id(t))
}

/// A causal-lm run as GPT2LMHeadModel or LlamaForCausalLM, whichever family its [model] is.
fn export_decoder(run: &RunDir, config: &Config, which: &str, out: &Path) -> Result<()> {
    let run_dir = run.path();
    let family =
        DecoderFamily::fitting(&config.model).with_context(|| format!("{}: cannot export", run_dir.display()))?;
    let tokenizer = TextTokenizer::load(&run.tokenizer())?;
    let vocab = decoder_vocab(&config.model, &tokenizer)?;
    let specials = Specials {
        bos: first_id(&tokenizer, &["<|endoftext|>", "<s>", "[BOS]"]),
        eos: first_id(&tokenizer, &["<|endoftext|>", "</s>", "[EOS]"]),
    };
    let (tensors, weights) = checkpoint_tensors(run_dir, which, config)?;
    let tensors =
        family.to_hf(&tensors).with_context(|| format!("{} as {}", weights.display(), family.architecture()))?;
    write_weights(&tensors, out)?;
    let hf = family.config_json(&config.model, vocab, &specials);
    crate::fsutil::write_atomic(&out.join("config.json"), serde_json::to_string_pretty(&hf)?.as_bytes())?;
    let generation = json!({ "bos_token_id": specials.bos, "eos_token_id": specials.eos, "_from_model_config": true });
    crate::fsutil::write_atomic(
        &out.join("generation_config.json"),
        serde_json::to_string_pretty(&generation)?.as_bytes(),
    )?;
    tokenizer.save(&out.join("tokenizer.json"))
}
