//! A checkpoint's generation_config.json (transformers' `GenerationConfig`), as far as decoding
//! an encoder-decoder goes: the settings it gives, each `None` where the file is silent, so that
//! `taper generate` decodes as transformers' `generate()` does by default. A key that would change
//! the outputs and that taper does not apply is refused by name (`off_value`); null values
//! count as absent, and keys about neither (ids, sampling settings without `do_sample`, output
//! flags) are left alone.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};

use super::{EarlyStopping, OutputRules};

/// What generation_config.json sets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationConfig {
    pub num_beams: Option<usize>,
    pub length_penalty: Option<f64>,
    pub early_stopping: Option<EarlyStopping>,
    pub num_return_sequences: Option<usize>,
    /// Output tokens, EOS included: `max_new_tokens`, else `max_length` - 1 (it counts the
    /// decoder start token).
    pub max_new_tokens: Option<usize>,
    pub rules: OutputRules,
}

/// Keys that change the outputs, with the value that leaves them off.
fn off_value(key: &str) -> Option<Value> {
    let value = match key {
        "do_sample" | "renormalize_logits" => Value::Bool(false),
        "repetition_penalty" | "encoder_repetition_penalty" => 1.0.into(),
        "num_beam_groups" => 1.into(),
        "diversity_penalty" | "encoder_no_repeat_ngram_size" | "penalty_alpha" => 0.into(),
        "bad_words_ids"
        | "force_words_ids"
        | "suppress_tokens"
        | "begin_suppress_tokens"
        | "forced_decoder_ids"
        | "sequence_bias"
        | "exponential_decay_length_penalty"
        | "constraints"
        | "stop_strings"
        | "max_time"
        | "guidance_scale"
        | "watermarking_config"
        | "assistant_model"
        | "prompt_lookup_num_tokens"
        | "dola_layers" => Value::Null,
        _ => return None,
    };
    Some(value)
}

fn is_off(value: &Value, off: &Value) -> bool {
    match (value.as_f64(), off.as_f64()) {
        (Some(a), Some(b)) => a == b,
        _ => value == off || value.as_array().is_some_and(Vec::is_empty),
    }
}

fn count(map: &Map<String, Value>, key: &str) -> Result<Option<usize>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(|n| Some(n as usize)).with_context(|| format!("`{key}` must be a count, got {v}")),
    }
}

impl GenerationConfig {
    /// Reads `path`; errors name the file and the key.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let value: Value =
            serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
        Self::from_json(&value).with_context(|| format!("in {}", path.display()))
    }

    pub fn from_json(value: &Value) -> Result<Self> {
        let map = value.as_object().context("generation_config.json must hold a JSON object")?;
        for (key, value) in map.iter().filter(|(_, v)| !v.is_null()) {
            if let Some(off) = off_value(key) {
                if !is_off(value, &off) {
                    bail!(
                        "`{key}` = {value} changes the outputs in a way taper does not apply; set it to {off} \
                         (or delete it) to decode without it"
                    );
                }
            }
        }
        let early_stopping = match map.get("early_stopping") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(b.to_string().parse()?),
            Some(Value::String(s)) => Some(s.parse().context("`early_stopping`")?),
            Some(v) => bail!("`early_stopping` is true, false or \"never\", got {v}"),
        };
        let length_penalty = match map.get("length_penalty") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_f64().with_context(|| format!("`length_penalty` must be a number, got {v}"))?),
        };
        let max_new_tokens = match (count(map, "max_new_tokens")?, count(map, "max_length")?) {
            (Some(n), _) => Some(n),
            (None, Some(n)) => Some(n.saturating_sub(1)),
            (None, None) => None,
        };
        let min_len = count(map, "min_new_tokens")?.max(count(map, "min_length")?.map(|n| n.saturating_sub(1)));
        let forced_first = count(map, "forced_bos_token_id")?.map(|n| n as u32);
        let forced_eos = count(map, "forced_eos_token_id")?;
        // eos_token_id may be a list; with one id, a forced EOS must be it.
        if let (Some(forced), Some(eos)) = (forced_eos, map.get("eos_token_id").and_then(Value::as_u64)) {
            if forced as u64 != eos {
                bail!("`forced_eos_token_id` = {forced} is not `eos_token_id` = {eos}; taper forces the EOS only");
            }
        }
        Ok(Self {
            num_beams: count(map, "num_beams")?,
            length_penalty,
            early_stopping,
            num_return_sequences: count(map, "num_return_sequences")?,
            max_new_tokens,
            rules: OutputRules {
                no_repeat_ngram_size: count(map, "no_repeat_ngram_size")?.unwrap_or(0),
                min_len: min_len.unwrap_or(0),
                forced_first,
                forced_eos: forced_eos.is_some(),
            },
        })
    }
}
