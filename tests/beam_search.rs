//! Beam search returns what transformers' `generate` returns: a tiny T5 trained by transformers
//! on the numbers pairs (tests/fixtures/tiny-t5-numbers, scripts/make-beam-fixture.sh) and
//! transformers' sequences and scores for 16 sources under 14 settings (beams 1-5, length
//! penalties -1 to 2, early_stopping false / true / "never", no_repeat_ngram_size 0, 2 and 3,
//! num_return_sequences 1-4, min_length, min_new_tokens, forced first token and EOS), read as a
//! generation_config.json and decoded again by taper from the same input ids.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use taper::decode::{
    beam_search, greedy, BeamOptions, DecodeLimits, EarlyStopping, GenerationConfig, Hypothesis, OutputLimits,
    OutputRules,
};
use taper::hf::Family;
use taper::model::seq2seq::Seq2Seq;
use taper::model::Mode;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-t5-numbers")
}

fn load_t5() -> Seq2Seq {
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("config.json")).unwrap()).unwrap();
    let t5 = taper::hf::t5::T5;
    let checkpoint = t5.read_config(&config).unwrap();
    let model = taper::config::ModelConfig { block_size: 64, ..checkpoint.model };
    let file = candle_core::safetensors::load(fixture().join("model.safetensors"), &Device::Cpu).unwrap();
    let (tensors, _) = t5.to_taper(file, &model, &config).unwrap();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    Seq2Seq::new(&model, checkpoint.vocab_size, checkpoint.vocab_size, DType::F32, vb).unwrap()
}

fn cases() -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(fixture().join("beams.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&text).unwrap()["cases"].as_array().unwrap().clone()
}

/// The case's generate() settings, read as a generation_config.json: beam options and limits.
fn settings(case: &serde_json::Value) -> (BeamOptions, DecodeLimits) {
    let file = GenerationConfig::from_json(&case["settings"]).unwrap();
    let options = BeamOptions {
        beam_size: file.num_beams.unwrap(),
        length_penalty: file.length_penalty.unwrap_or(1.0),
        early_stopping: file.early_stopping.unwrap_or_default(),
        num_return_sequences: file.num_return_sequences.unwrap_or(1),
    };
    let limits = DecodeLimits { bos: BOS, eos: EOS, max_len: file.max_new_tokens.unwrap(), rules: file.rules };
    (options, limits)
}

fn ids(case: &serde_json::Value, key: &str) -> Vec<u32> {
    case[key].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
}

// T5's ids: <pad> 0 starts the decoder, </s> 1 ends it.
const BOS: u32 = 0;
const EOS: u32 = 1;

#[test]
fn beam_search_returns_transformers_sequences_and_scores() {
    let model = load_t5();
    let (mut checked, mut differ_from_greedy) = (0, 0);
    for case in cases() {
        let source = ids(&case, "input_ids");
        let src = Tensor::from_vec(source.clone(), (1, source.len()), &Device::Cpu).unwrap();
        let memory = model.encode(&src, None, &mut Mode::eval()).unwrap();
        let (options, limits) = settings(&case);
        let greedy = greedy(&model, &memory, limits, true).unwrap().remove(0);
        let ours = if options.beam_size == 1 {
            vec![Hypothesis { tokens: greedy.clone(), ended: true, score: f64::NAN }]
        } else {
            beam_search(&model, &memory, limits, options).unwrap()
        };
        let theirs: Vec<Vec<u32>> = case["sequences"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect())
            .collect();
        let what = format!("source {} with {} (transformers: {})", case["source"], case["settings"], case["texts"]);
        if options.beam_size == 1 {
            // Greedy outputs stop at EOS or the length limit; transformers' may end with EOS.
            let theirs: Vec<u32> = theirs[0].iter().copied().filter(|&t| t != EOS).collect();
            assert_eq!(greedy, theirs, "{what}");
            checked += 1;
            continue;
        }
        let ours_with_eos: Vec<Vec<u32>> =
            ours.iter().map(|h| h.tokens.iter().copied().chain(h.ended.then_some(EOS)).collect()).collect();
        assert_eq!(ours_with_eos, theirs, "{what}");
        for (h, score) in ours.iter().zip(case["scores"].as_array().unwrap()) {
            let score = score.as_f64().unwrap();
            assert!((h.score - score).abs() <= 1e-4 * score.abs().max(1.0), "{what}: score {} vs {score}", h.score);
        }
        differ_from_greedy += (ours[0].tokens != greedy) as usize;
        checked += 1;
    }
    assert_eq!(checked, 16 * 14);
    // The settings matter here: beam search is not greedy decoding in disguise.
    assert!(differ_from_greedy >= 10, "only {differ_from_greedy} of 144 beam outputs differ from greedy decoding");
}

#[test]
fn no_repeat_ngram_size_keeps_every_ngram_unique() {
    let model = load_t5();
    for case in cases().iter().step_by(14) {
        let source = ids(case, "input_ids");
        let src = Tensor::from_vec(source.clone(), (1, source.len()), &Device::Cpu).unwrap();
        let memory = model.encode(&src, None, &mut Mode::eval()).unwrap();
        for n in [1, 2] {
            let rules = OutputRules { no_repeat_ngram_size: n, ..Default::default() };
            let limits = DecodeLimits { bos: BOS, eos: EOS, max_len: 16, rules };
            let beams = beam_search(&model, &memory, limits, BeamOptions { beam_size: 3, ..Default::default() });
            let outputs = [greedy(&model, &memory, limits, true).unwrap().remove(0), beams.unwrap().remove(0).tokens];
            for output in outputs {
                let with_bos: Vec<u32> = std::iter::once(BOS).chain(output.iter().copied()).collect();
                let mut seen: Vec<&[u32]> = with_bos.windows(n).collect();
                let all = seen.len();
                seen.sort();
                seen.dedup();
                assert_eq!(seen.len(), all, "n = {n}: an n-gram repeats in {output:?}");
            }
        }
    }
}

#[test]
fn bad_beam_options_are_refused_by_name() {
    let bad = BeamOptions { beam_size: 2, num_return_sequences: 3, ..Default::default() };
    let err = bad.validate().unwrap_err().to_string();
    assert!(err.contains("num_return_sequences") && err.contains("(2)"), "{err}");
    let err = "sometimes".parse::<EarlyStopping>().unwrap_err().to_string();
    assert!(err.contains("false, true or never") && err.contains("sometimes"), "{err}");
    let err = BeamOptions { length_penalty: f64::NAN, ..Default::default() }.validate().unwrap_err().to_string();
    assert!(err.contains("length penalty"), "{err}");
    // Output limits a user sets: no empty output length, no forced token past the vocabulary.
    let run = DecodeLimits { bos: BOS, eos: EOS, max_len: 16, rules: OutputRules::NONE };
    let err = OutputLimits { max_len: Some(0), ..Default::default() }.over(run, 160).unwrap_err().to_string();
    assert!(err.contains("--max-len"), "{err}");
    let rules = OutputRules { forced_first: Some(500), ..OutputRules::NONE };
    let err = OutputLimits { max_len: None, rules }.over(run, 160).unwrap_err().to_string();
    assert!(err.contains("forced_bos_token_id") && err.contains("500"), "{err}");
}

/// A run that starts from the checkpoint (one step of lr 1e-12: the weights stay as they are)
/// with `generation` as the checkpoint's generation_config.json. Returns the run directory.
fn run_from_checkpoint(dir: &Path, generation: serde_json::Value) -> PathBuf {
    let checkpoint = dir.join("checkpoint");
    std::fs::create_dir(&checkpoint).unwrap();
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture().join(file), checkpoint.join(file)).unwrap();
    }
    std::fs::write(checkpoint.join("generation_config.json"), generation.to_string()).unwrap();
    let numbers = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/numbers");
    let toml = format!(
        "[model]\narch = \"encoder-decoder\"\ninit_from = \"{}\"\nblock_size = 72\n[task]\nkind = \"seq2seq\"\n\
         [data]\npath = \"{}\"\nval_path = \"{}\"\n[optim]\nlr = 1e-12\n\
         [train]\nsteps = 1\nbatch_size = 4\neval_every = 0\n[checkpoint]\ndir = \"{}\"\nevery = 0\n",
        checkpoint.display(),
        numbers.join("train.tsv").display(),
        numbers.join("val.tsv").display(),
        dir.join("run").display()
    );
    let cfg = taper::config::Config::from_toml_str(&toml, &[]).unwrap();
    taper::train::train(cfg, &taper::train::TrainOptions { quiet: true, ..Default::default() }).unwrap();
    dir.join("run")
}

fn taper_generate(run: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_taper"))
        .arg("generate")
        .arg(run)
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap()
}

#[test]
fn taper_generate_decodes_as_the_checkpoints_generation_config_says_and_export_carries_it() {
    let dir = tempfile::tempdir().unwrap();
    let generation = serde_json::json!({
        "decoder_start_token_id": 0, "eos_token_id": 1, "pad_token_id": 0, "num_beams": 4,
        "early_stopping": true, "num_return_sequences": 2, "max_length": 17, "repetition_penalty": 1.0,
    });
    let run = run_from_checkpoint(dir.path(), generation);
    // transformers' outputs for this source with these settings, and with its defaults (greedy).
    let case = |settings: serde_json::Value| {
        cases().into_iter().find(|c| c["source"] == "122699" && c["settings"] == settings).unwrap()["texts"].clone()
    };
    let want = case(serde_json::json!({"max_new_tokens": 16, "num_beams": 4, "length_penalty": 1.0,
        "early_stopping": true, "num_return_sequences": 2}));
    let out = taper_generate(&run, &["--input", "122699"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        want.as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect::<Vec<_>>()
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("generation_config.json says"));
    // A flag wins over the file.
    let want = case(serde_json::json!({"max_new_tokens": 16, "num_beams": 4, "length_penalty": 1.0,
        "early_stopping": false}));
    let out = taper_generate(&run, &["--input", "122699", "--early-stopping", "false", "--num-return-sequences", "1"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), want[0].as_str().unwrap());

    // The export carries the settings back out, with the run's ids.
    let out = dir.path().join("export");
    taper::export::export_hf(&run, "latest", &out, false).unwrap();
    let exported: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("generation_config.json")).unwrap()).unwrap();
    assert_eq!((exported["num_beams"].as_u64(), exported["early_stopping"].as_bool()), (Some(4), Some(true)));
    assert_eq!(exported["decoder_start_token_id"], 0);
}

#[test]
fn a_generation_config_taper_cannot_follow_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_from_checkpoint(dir.path(), serde_json::json!({"num_beams": 4, "repetition_penalty": 1.2}));
    let out = taper_generate(&run, &["--input", "122699"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "decoded although repetition_penalty is not applied");
    assert!(err.contains("generation_config.json") && err.contains("`repetition_penalty` = 1.2"), "{err}");
    let err = GenerationConfig::from_json(&serde_json::json!({"early_stopping": "sometimes"})).unwrap_err();
    assert!(format!("{err:#}").contains("early_stopping"), "{err:#}");
}
