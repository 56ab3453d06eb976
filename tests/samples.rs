//! `train.sample_every`: what a GPT generates is written to metrics.jsonl at the scheduled
//! steps (and at the end), from the fixed prompt and seed, so two identical runs write the same
//! samples; the samples draw from their own RNG (training is unchanged); a kind of run that
//! generates nothing refuses the key.

mod common;

use taper::train::{train, TrainOptions};

fn samples(run: &std::path::Path) -> Vec<(u64, Vec<String>)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|r| {
            let texts = r.get("samples")?.as_array()?.iter().map(|s| s.as_str().unwrap().to_string()).collect();
            Some((r["step"].as_u64()?, texts))
        })
        .collect()
}

#[test]
fn samples_are_written_on_schedule_repeatably_and_leave_training_alone() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), &common::pattern_corpus(300));
    let quiet = TrainOptions { quiet: true, ..Default::default() };
    let mut losses = Vec::new();
    let mut all = Vec::new();
    for (i, extra) in
        ["train.sample_every=10 train.sample_tokens=12", "train.sample_every=10 train.sample_tokens=12", ""]
            .iter()
            .enumerate()
    {
        let run_dir = dir.path().join(format!("r{i}"));
        std::fs::create_dir_all(&run_dir).unwrap();
        let cfg = common::tiny_config(&run_dir, &corpus, &format!("train.steps=25 {extra}"));
        losses.push(train(cfg, &quiet).unwrap().losses);
        all.push(samples(&run_dir.join("run")));
    }
    let steps: Vec<u64> = all[0].iter().map(|(s, _)| *s).collect();
    assert_eq!(steps, [10, 20, 25], "every 10 steps and at the end");
    for (_, texts) in &all[0] {
        assert_eq!(texts.len(), 1);
        assert!(texts[0].starts_with('\n') && texts[0].chars().count() == 13, "prompt + 12 tokens: {:?}", texts[0]);
    }
    assert_eq!(all[0], all[1], "the same run samples the same text");
    assert!(all[2].is_empty(), "off by default");
    assert_eq!(losses[0], losses[2], "sampling does not touch the training RNG");
}

#[test]
fn sample_every_is_refused_where_nothing_is_generated() {
    let err = taper::config::Config::from_toml_str(
        "[model]\narch = \"encoder-only\"\nn_layer = 1\nn_head = 2\nd_model = 16\nblock_size = 8\n[task]\nkind = \"masked-lm\"\n\
         [data]\npath = \"c.txt\"\n[train]\nsteps = 1\nbatch_size = 1\nsample_every = 5\n",
        &[],
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("`train.sample_every`"), "{err:#}");
}
