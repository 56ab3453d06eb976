//! `train.eval_batches = "all"`: an evaluation reads every non-overlapping block of the val
//! split once, the last batch short, and its val loss is the mean over all those tokens.

mod common;

use candle_core::{Device, Tensor};
use taper::data::{BatchBuffers, TokenDataset};
use taper::model::Mode;

#[test]
fn the_val_blocks_cover_the_split_once_in_order() {
    // 100 tokens, 20 for val, blocks of 4: (20 - 1) / 4 = 4 blocks, in batches of 3 and 1.
    let data = TokenDataset::new((0..100).collect(), 0.2, 4, std::path::Path::new("t")).unwrap();
    assert_eq!(data.val_blocks(), 4);
    let mut buf = BatchBuffers::default();
    let (first, _) = data.val_block_batch(0, 3, &Device::Cpu, &mut buf).unwrap();
    let (last, targets) = data.val_block_batch(1, 3, &Device::Cpu, &mut buf).unwrap();
    assert_eq!(first.to_vec2::<u32>().unwrap(), [[80, 81, 82, 83], [84, 85, 86, 87], [88, 89, 90, 91]]);
    assert_eq!(last.to_vec2::<u32>().unwrap(), [[92, 93, 94, 95]]);
    assert_eq!(targets.to_vec2::<u32>().unwrap(), [[93, 94, 95, 96]]);
}

#[test]
fn the_whole_split_val_loss_is_the_mean_over_every_block() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::write_corpus(dir.path(), &common::pattern_corpus(300));
    let extra = "train.steps=20 train.eval_every=20 train.eval_batches=\"all\" train.batch_size=5";
    let cfg = common::tiny_config(dir.path(), &corpus, extra);
    let report =
        taper::train::train(cfg.clone(), &taper::train::TrainOptions { quiet: true, ..Default::default() }).unwrap();
    let reported = report.val_loss.unwrap();
    // Recompute from the saved weights and the run's own tokens, one block at a time.
    let run = taper::trained::TrainedGpt::load(&cfg.run_dir(), "latest", "cpu").unwrap();
    let tokens = run.tokenizer.encode(&std::fs::read_to_string(&corpus).unwrap()).unwrap();
    let data = TokenDataset::new(tokens, cfg.data.val_fraction, cfg.model.block_size, &corpus).unwrap();
    let model = &run.model;
    let mut buf = BatchBuffers::default();
    let (mut total, mut count) = (0f64, 0usize);
    for block in 0..data.val_blocks() {
        let (x, y): (Tensor, Tensor) = data.val_block_batch(block, 1, &Device::Cpu, &mut buf).unwrap();
        total += model.loss_sum(&x, &y, &mut Mode::eval()).unwrap().to_scalar::<f32>().unwrap() as f64;
        count += y.elem_count();
    }
    let want = total / count as f64;
    assert!((reported - want).abs() < 1e-5, "reported val loss {reported}, the mean over every block {want}");
}
