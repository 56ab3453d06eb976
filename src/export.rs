//! `taper export --format hf`: a run's checkpoint as a Hugging Face model directory
//! (config.json, model.safetensors, tokenizer.json; generation_config.json for a decoder or an
//! encoder-decoder) that transformers' Auto classes and candle-transformers load. The run's
//! family (`hf`) writes it: an encoder run's, named by its saved config.json, keeps its family's
//! names and writes its weights as they are; a decoder's or an encoder-decoder's is the family
//! its `[model]` fits, through that adapter's tensor names and layouts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde_json::{json, Value};

use crate::config::{Architecture, Config};
use crate::data::TextTokenizer;
use crate::hf::{self, Export, Family, Head, SpecialIds};
use crate::model::lora::merge_adapters;
use crate::run_dir::RunDir;
use crate::train::causal_lm::decoder_vocab;

/// The files an export writes into its directory.
const EXPORT_FILES: [&str; 4] = ["config.json", "model.safetensors", "tokenizer.json", "generation_config.json"];

/// Writes the export into `out` (created if needed); every file goes to a temporary name
/// first, so an interrupted export never leaves a half-written file under its final name.
/// Files already in `out` under those names are replaced only with `overwrite`.
pub fn export_hf(run_dir: &Path, which: &str, out: &Path, overwrite: bool) -> Result<()> {
    let _lock = crate::fsutil::lock_dir(out, "export")?.removed_at_end(out);
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
    let head =
        config.task.kind().spec().head(&config).with_context(|| format!("{}: cannot export", run_dir.display()))?;
    match config.model.arch {
        Architecture::EncoderOnly => export_encoder(&run, &config, head, which, out),
        Architecture::DecoderOnly => export_decoder(&run, &config, head, which, out),
        Architecture::EncoderDecoder => export_seq2seq(&run, &config, head, which, out),
    }
}

/// `family`'s class for `head`, or an error naming both.
fn class(family: &dyn Family, head: Head, run: &RunDir) -> Result<()> {
    match family.class(head) {
        Some(_) => Ok(()),
        None => bail!("{}: a {} has no {head:?} head in transformers", run.path().display(), family.model_type()),
    }
}

/// An encoder run as its family's `...ForSequenceClassification` / `...ForTokenClassification`
/// / `...ForMaskedLM`.
fn export_encoder(run: &RunDir, config: &Config, head: Head, which: &str, out: &Path) -> Result<()> {
    let run_dir = run.path();
    let (saved, path) = run.read_encoder_config()?;
    let family = hf::family_of(&saved, &path, Architecture::EncoderOnly)?;
    let mismatches = family.mismatches(&config.model);
    if !mismatches.is_empty() {
        bail!(
            "{}: cannot export: a {} in transformers has no equivalent of {}; the run stays in taper's format",
            run_dir.display(),
            family.model_type(),
            mismatches.join(", ")
        );
    }
    class(family, head, run)?;
    let checkpoint = family.read_config(&saved).with_context(|| format!("invalid {}", path.display()))?;
    let tokenizer = TextTokenizer::load(&run.tokenizer())?;
    let id = |names: &[&str]| names.iter().find_map(|t| tokenizer.inner().token_to_id(t));
    let tokens = family.tokens();
    let ids = SpecialIds { pad: id(tokens.pad), bos: id(tokens.bos), eos: id(tokens.eos), decoder_start: None };
    let labels = match head {
        Head::SequenceClassification | Head::TokenClassification => Some(run.read_labels()?.names),
        _ => None,
    };
    let hf = family.config_json(&Export {
        model: &config.model,
        head: Some(head),
        vocab_size: checkpoint.vocab_size,
        type_vocab_size: checkpoint.type_vocab_size,
        ids,
        labels: labels.as_deref(),
    })?;
    let (tensors, weights) = checkpoint_tensors(run_dir, which, config)?;
    let tensors = match family.keeps_names() {
        true => tensors,
        false => family
            .to_hf(&tensors, &config.model)
            .with_context(|| format!("{} as {}", weights.display(), family.model_type()))?,
    };
    write_weights(&tensors, out)?;
    write_json(&out.join("config.json"), &hf)?;
    tokenizer.save(&out.join("tokenizer.json"))
}

/// The tensors of checkpoint `which` (and the file they came from), with a LoRA run's adapters
/// merged into their weights: the plain model the adapted one computes.
fn checkpoint_tensors(run_dir: &Path, which: &str, config: &Config) -> Result<(HashMap<String, Tensor>, PathBuf)> {
    let checkpoint = crate::checkpoint::resolve_checkpoint(run_dir, which)?;
    crate::checkpoint::verify_weights(&checkpoint)?;
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

fn write_json(path: &Path, value: &Value) -> Result<()> {
    crate::fsutil::write_atomic(path, serde_json::to_string_pretty(value)?.as_bytes())
}

/// A decoder or encoder-decoder run's tensors as its `family`'s, and the family: the one its
/// `[model]` fits.
fn family_of_run(run: &RunDir, config: &Config, head: Head) -> Result<&'static dyn Family> {
    hf::fitting(&config.model, head).with_context(|| format!("{}: cannot export", run.path().display()))
}

/// Writes the weights of checkpoint `which` as `family`'s.
fn write_family_weights(family: &dyn Family, run: &RunDir, config: &Config, which: &str, out: &Path) -> Result<()> {
    let (tensors, weights) = checkpoint_tensors(run.path(), which, config)?;
    let tensors = family
        .to_hf(&tensors, &config.model)
        .with_context(|| format!("{} as a {}", weights.display(), family.model_type()))?;
    write_weights(&tensors, out)
}

/// A seq2seq run as its family's `...ForConditionalGeneration`; the tokenizer gains taper's
/// three special tokens (pad, start, end, as the family spells them) at the ids the model
/// gives them.
fn export_seq2seq(run: &RunDir, config: &Config, head: Head, which: &str, out: &Path) -> Result<()> {
    let run_dir = run.path();
    let family = family_of_run(run, config, head)?;
    let vocab = crate::train::seq2seq::Vocabularies::load(run, &config.model)?;
    let specials = vocab.source_specials;
    let tokens = family.tokens();
    let names = [tokens.pad.first(), tokens.bos.first(), tokens.eos.first()];
    let [Some(pad), Some(bos), Some(eos)] = names.map(|n| n.copied()) else {
        bail!("{}: a {} tokenizer names no pad, start and end tokens", run_dir.display(), family.model_type());
    };
    // The specials the tokenizer lacks, added as special tokens at the ids the model uses.
    let mut inner = vocab.source.inner().clone();
    let wanted = [(pad, specials.pad), (bos, specials.bos), (eos, specials.eos)];
    let wanted: Vec<(&str, u32)> = wanted.into_iter().filter(|&(n, id)| n != bos || id != specials.pad).collect();
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
    write_family_weights(family, run, config, which, out)?;
    let ids =
        SpecialIds { bos: None, eos: Some(specials.eos), pad: Some(specials.pad), decoder_start: Some(specials.bos) };
    let export = Export {
        model: &config.model,
        head: Some(head),
        vocab_size: vocab.source_size(),
        type_vocab_size: 0,
        ids,
        labels: None,
    };
    write_json(&out.join("config.json"), &family.config_json(&export)?)?;
    write_json(&out.join("generation_config.json"), &seq2seq_generation_config(run, specials)?)?;
    let json = inner.to_string(true).map_err(anyhow::Error::msg)?;
    crate::fsutil::write_atomic(&out.join("tokenizer.json"), json.as_bytes())
}

/// The run's special ids, over the decoding settings of the checkpoint it started from (its
/// generation_config.json, copied into the run), so the export decodes there as it did here.
fn seq2seq_generation_config(run: &RunDir, specials: crate::data::pairs::Specials) -> Result<serde_json::Value> {
    let ids = json!({
        "decoder_start_token_id": specials.bos, "eos_token_id": specials.eos, "pad_token_id": specials.pad,
    });
    let path = run.generation_config();
    if !path.is_file() {
        let mut generation = ids;
        generation["_from_model_config"] = true.into();
        return Ok(generation);
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut generation: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
    let map = generation.as_object_mut().with_context(|| format!("{} must hold a JSON object", path.display()))?;
    map.extend(ids.as_object().into_iter().flatten().map(|(k, v)| (k.clone(), v.clone())));
    Ok(generation)
}

/// The id of the first of `tokens` the tokenizer has.
fn first_id(tokenizer: &TextTokenizer, tokens: &[&str]) -> Option<u32> {
    tokens.iter().find_map(|t| tokenizer.inner().token_to_id(t))
}

/// A causal-lm run as the `...ForCausalLM` of the family its `[model]` fits.
fn export_decoder(run: &RunDir, config: &Config, head: Head, which: &str, out: &Path) -> Result<()> {
    let family = family_of_run(run, config, head)?;
    let tokenizer = TextTokenizer::load(&run.tokenizer())?;
    let vocab = decoder_vocab(&config.model, &tokenizer)?;
    let tokens = family.tokens();
    let ids = SpecialIds {
        bos: first_id(&tokenizer, tokens.bos),
        eos: first_id(&tokenizer, tokens.eos),
        ..Default::default()
    };
    write_family_weights(family, run, config, which, out)?;
    let export =
        Export { model: &config.model, head: Some(head), vocab_size: vocab, type_vocab_size: 0, ids, labels: None };
    write_json(&out.join("config.json"), &family.config_json(&export)?)?;
    let generation = json!({ "bos_token_id": ids.bos, "eos_token_id": ids.eos, "_from_model_config": true });
    write_json(&out.join("generation_config.json"), &generation)?;
    tokenizer.save(&out.join("tokenizer.json"))
}
