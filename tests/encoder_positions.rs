//! Encoders (BERT-shaped) with taper's other positions: rotary, ALiBi (symmetric), T5's
//! bidirectional bias, Shaw's relative embeddings, none. Padding never moves a real token's
//! output, positions do matter (a permuted input changes it, except with none), a masked-lm
//! run of each learns and resumes from its own bert_config.json, and the Hugging Face export
//! (learned positions only) refuses them, naming the key.

mod common;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use taper::config::{Kernels, NormPlacement};
use taper::hf::bert::BertConfig;
use taper::model::encoder::{Encoder, EncoderVocab};
use taper::model::{Mode, ParamStore};
use taper::train::{train, TrainOptions};

const POSITIONS: [&str; 5] = ["rope", "alibi", "t5", "shaw", "none"];

fn encoder(positions: &str, kernels: Kernels) -> Encoder {
    let dir = Path::new("/tmp");
    let extra = format!(
        "model.arch=encoder-only model.norm=post model.positions={positions} task.kind=masked-lm model.init_std=0.3"
    );
    let cfg = common::tiny_config(dir, &dir.join("c.txt"), &extra).model;
    let bert = BertConfig::from_model_config(&cfg, 30);
    assert!(bert.taper_positions.is_some());
    let cfg = taper::config::ModelConfig { norm: NormPlacement::Post, kernels, ..cfg };
    let vocab = EncoderVocab { tokens: 30, token_types: bert.type_vocab_size };
    Encoder::new(&cfg, vocab, DType::F32, ParamStore::new().var_builder(3, &Device::Cpu)).unwrap()
}

fn ids(rows: &[&[u32]]) -> Tensor {
    let flat: Vec<u32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_vec(flat, (rows.len(), rows[0].len()), &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn padding_hides_and_positions_matter_for_every_kind() {
    for positions in POSITIONS {
        for kernels in [Kernels::Fused, Kernels::Composed] {
            let model = encoder(positions, kernels);
            let alone = model.forward(&ids(&[&[5, 9, 2, 7]]), None, None, &mut Mode::eval()).unwrap();
            let padded_ids = ids(&[&[5, 9, 2, 7, 0, 0, 0]]);
            let keep = ids(&[&[1, 1, 1, 1, 0, 0, 0]]);
            let padded = model.forward(&padded_ids, None, Some(&keep), &mut Mode::eval()).unwrap();
            let diff = max_diff(&padded.narrow(1, 0, 4).unwrap(), &alone);
            assert!(diff < 1e-5, "{positions} ({kernels:?}): padding moved real tokens by {diff}");
            // The first token's output, with the others' order reversed.
            let reordered = model.forward(&ids(&[&[5, 7, 2, 9]]), None, None, &mut Mode::eval()).unwrap();
            let moved = max_diff(&reordered.narrow(1, 0, 1).unwrap(), &alone.narrow(1, 0, 1).unwrap());
            match positions {
                "none" => assert!(moved < 1e-5, "without positions the order is invisible: {moved}"),
                _ => assert!(moved > 1e-4, "{positions} ({kernels:?}): the order changed nothing ({moved})"),
            }
        }
    }
}

#[test]
fn masked_lm_runs_with_each_kind_learn_resume_and_refuse_the_hf_export() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), &common::pattern_corpus(400));
    for positions in ["rope", "t5"] {
        let run_dir = dir.path().join(positions);
        std::fs::create_dir_all(&run_dir).unwrap();
        let extra = format!(
            "model.arch=encoder-only model.norm=post model.positions={positions} task.kind=masked-lm \
             tokenizer.kind=wordpiece tokenizer.vocab_size=60 train.steps=120 checkpoint.every=60 train.eval_every=0"
        );
        let cfg = common::tiny_config(&run_dir, &corpus, &extra);
        let quiet = TrainOptions { quiet: true, ..Default::default() };
        let report = train(cfg.clone(), &quiet).unwrap();
        let (first, last) = (report.losses[0].1, report.losses.last().unwrap().1);
        assert!(last < first - 0.5, "{positions}: masked-lm loss {first} -> {last}");
        let run = run_dir.join("run");
        let saved = std::fs::read_to_string(run.join("bert_config.json")).unwrap();
        assert!(saved.contains("taper_positions"), "{saved}");
        let resumed = TrainOptions { resume: true, quiet: true, ..Default::default() };
        let more =
            taper::config::Config { train: taper::config::TrainConfig { steps: 130, ..cfg.train.clone() }, ..cfg };
        train(more, &resumed).unwrap();
        let err = taper::export::export_hf(&run, "latest", &dir.path().join("x"), false).unwrap_err();
        assert!(format!("{err:#}").contains(&format!("`model.positions = \"{positions}\"`")), "{err:#}");
    }
}
