//! Config parsing and validation: every bad input is an error that names what is wrong.

mod common;

use taper::config::{Config, NormPlacement};

fn base() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/configs/gpt-shakespeare-char.toml")).unwrap()
}

fn error_of(text: &str, overrides: &[&str]) -> String {
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    format!("{:#}", Config::from_toml_str(text, &overrides).unwrap_err())
}

#[test]
fn shipped_configs_parse() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/configs");
    let mut count = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Config::load(&path, &[]).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            count += 1;
        }
    }
    assert!(count >= 5, "expected the default config and the GPT-2 presets");
}

#[test]
fn typo_in_a_key_names_it_and_lists_the_valid_ones() {
    let text = base().replace("warmup_steps = 100", "warmup_step = 100");
    let err = error_of(&text, &[]);
    assert!(err.contains("warmup_step"), "{err}");
    assert!(err.contains("warmup_steps") && err.contains("min_lr"), "valid keys listed: {err}");
}

#[test]
fn unknown_section_is_rejected() {
    let err = error_of(&format!("{}\n[trainer]\nsteps = 3\n", base()), &[]);
    assert!(err.contains("trainer"), "{err}");
}

#[test]
fn load_error_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, base().replace("n_head = 4", "n_heads = 4")).unwrap();
    let err = format!("{:#}", Config::load(&path, &[]).unwrap_err());
    assert!(err.contains("bad.toml") && err.contains("n_heads"), "{err}");
}

#[test]
fn overrides_set_values_of_any_type() {
    let config = Config::from_toml_str(
        &base(),
        &["model.norm=post".into(), "schedule.warmup_steps=0".into(), "optim.betas=[0.9, 0.95]".into()],
    )
    .unwrap();
    assert_eq!(config.model.norm, NormPlacement::Post);
    assert_eq!(config.schedule.warmup_steps, 0);
    assert_eq!(config.optim.betas, [0.9, 0.95]);
}

#[test]
fn override_of_an_unknown_key_is_rejected() {
    let err = error_of(&base(), &["model.n_layers=3"]);
    assert!(err.contains("n_layers") && err.contains("n_layer"), "{err}");
}

#[test]
fn bad_enum_value_lists_the_choices() {
    let err = error_of(&base(), &["model.norm=middle"]);
    assert!(err.contains("middle") && err.contains("pre") && err.contains("post"), "{err}");
}

#[test]
fn heads_must_divide_width() {
    let err = error_of(&base(), &["model.n_head=5"]);
    assert!(err.contains("n_head") && err.contains("d_model"), "{err}");
}

#[test]
fn warmup_longer_than_run_is_rejected() {
    let err = error_of(&base(), &["schedule.warmup_steps=5000"]);
    assert!(err.contains("warmup_steps") && err.contains("train.steps"), "{err}");
}

#[test]
fn bad_device_is_rejected() {
    let err = error_of(&base(), &["train.device=tpu"]);
    assert!(err.contains("tpu"), "{err}");
}

#[test]
fn resolved_config_round_trips() {
    let config = Config::from_toml_str(&base(), &[]).unwrap();
    let again = Config::from_toml_str(&config.to_toml_string().unwrap(), &[]).unwrap();
    assert_eq!(config, again);
}

#[test]
fn no_evaluation_batches_is_rejected_while_evaluation_is_on() {
    let err = error_of(&base(), &["train.eval_batches=0"]);
    assert!(err.contains("train.eval_batches") && err.contains("eval_every = 0"), "{err}");
    Config::from_toml_str(&base(), &["train.eval_batches=0".into(), "train.eval_every=0".into()]).unwrap();
}

#[test]
fn an_error_in_a_set_override_names_the_override_not_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("good.toml");
    std::fs::write(&path, base()).unwrap();
    for (item, says) in [("model.n_head=x", "expected usize"), ("train.steps=0", "at least 1")] {
        let err = format!("{:#}", Config::load(&path, &[item.to_string(), "train.seed=3".into()]).unwrap_err());
        assert!(err.starts_with(&format!("in --set {item}:")) && err.contains(says), "{err}");
        assert!(!err.contains("good.toml"), "the file is not to blame: {err}");
    }
    // An error in the file itself keeps its line, even with overrides.
    std::fs::write(&path, base().replace("n_head = 4", "n_head = \"four\"")).unwrap();
    let err = format!("{:#}", Config::load(&path, &["train.seed=3".into()]).unwrap_err());
    assert!(err.contains("good.toml") && err.contains("line"), "{err}");
}

#[test]
fn task_keys_belong_to_their_kind() {
    let err = error_of(&base(), &["task.mask_prob=0.2"]);
    assert!(err.contains("in --set task.mask_prob=0.2") && err.contains("mask_prob"), "{err}");
    let err = error_of(&base(), &["task.kind=masked-lm", "task.pooling=mean", "model.arch=encoder-only"]);
    assert!(err.contains("pooling") && err.contains("mask_prob"), "valid keys listed: {err}");
    // The resolved config holds the kind's keys only, and reads back the same.
    let config = Config::from_toml_str(&base(), &[]).unwrap();
    let text = config.to_toml_string().unwrap();
    assert!(text.contains("kind = \"causal-lm\"") && !text.contains("pooling"), "{text}");
    assert_eq!(Config::from_toml_str(&text, &[]).unwrap(), config);
    // A [task] table as taper wrote it before (every kind's keys, at their defaults) still reads.
    let old = "\n[task]\nkind = \"causal-lm\"\ntext_column = \"text\"\nlabel_column = \"label\"\npooling = \"cls\"\n\
               mask_prob = 0.15\nsource_column = \"source\"\ntarget_column = \"target\"\nlabel_smoothing = 0.0\n";
    assert_eq!(Config::from_toml_str(&(base() + old), &[]).unwrap(), config);
}

#[test]
fn eval_batches_takes_a_count_or_all() {
    use taper::config::EvalBatches;
    let all = Config::from_toml_str(&base(), &["train.eval_batches=\"all\"".into()]).unwrap();
    assert_eq!(all.train.eval_batches, EvalBatches::All);
    let again = Config::from_toml_str(&all.to_toml_string().unwrap(), &[]).unwrap();
    assert_eq!(again.train.eval_batches, EvalBatches::All);
    let some = Config::from_toml_str(&base(), &["train.eval_batches=7".into()]).unwrap();
    assert_eq!(some.train.eval_batches, EvalBatches::Sampled(7));
    let err = error_of(&base(), &["train.eval_batches=\"most\""]);
    assert!(err.contains("eval_batches") && err.contains("\"all\""), "{err}");
}

#[test]
fn a_tokenizer_short_of_its_vocab_size_is_said_with_the_shortfall() {
    let cfg = Config::from_toml_str(&base(), &["tokenizer.kind=\"bpe\"".into(), "tokenizer.vocab_size=50257".into()])
        .unwrap();
    let note = cfg.tokenizer.shortfall(22_911).unwrap();
    assert!(note.contains("22911 of tokenizer.vocab_size = 50257") && note.contains("27346 fewer rows"), "{note}");
    assert_eq!(cfg.tokenizer.shortfall(50_257), None);
}
