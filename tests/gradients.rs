//! Every parameter learns: a non-zero gradient reaches each one, for both norm placements and
//! every position scheme (candle-nn's fused LayerNorm/softmax/rope would leave some at zero).
//! And accumulation over micro-batches equals one big batch.

mod common;

use candle_core::{DType, Device, Tensor};
use taper::config::{Kernels, NormPlacement, Positions};
use taper::model::{Gpt, Mode, ParamStore};
use taper::train::accumulate_gradients;

fn batch(b: usize, t: usize, offset: u32) -> (Tensor, Tensor) {
    let ids: Vec<u32> = (0..b * (t + 1)).map(|i| (i as u32 * 5 + offset) % 20).collect();
    let all = Tensor::from_vec(ids, (b, t + 1), &Device::Cpu).unwrap();
    (all.narrow(1, 0, t).unwrap().contiguous().unwrap(), all.narrow(1, 1, t).unwrap().contiguous().unwrap())
}

#[test]
fn every_parameter_gets_a_gradient() {
    for norm in [NormPlacement::Pre, NormPlacement::Post] {
        for positions in [Positions::Learned, Positions::Sinusoidal, Positions::Rope] {
            for (tie, kernels) in [(true, Kernels::Fused), (false, Kernels::Fused), (true, Kernels::Composed)] {
                let mut cfg =
                    common::tiny_config(std::path::Path::new("/tmp"), std::path::Path::new("/tmp/c.txt"), "").model;
                cfg.norm = norm;
                cfg.positions = positions;
                cfg.tie_embeddings = tie;
                cfg.kernels = kernels;
                cfg.dropout = 0.1;
                let params = ParamStore::new();
                let model = Gpt::new(&cfg, 20, DType::F32, params.var_builder(1, &Device::Cpu)).unwrap();
                let (x, y) = batch(3, 10, 0);
                let loss = model.loss_sum(&x, &y, &mut Mode::train(taper::rng::Rng::new(5))).unwrap();
                let grads = loss.backward().unwrap();
                for (name, var) in params.named_vars() {
                    let g = grads
                        .get(var.as_tensor())
                        .unwrap_or_else(|| panic!("{norm:?}/{positions:?}: no gradient for {name}"));
                    let n = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
                    assert!(
                        n > 0.0 && n.is_finite(),
                        "{norm:?}/{positions:?}/tie={tie}/{kernels:?}: gradient of {name} is {n}"
                    );
                }
            }
        }
    }
}

#[test]
fn four_micro_batches_of_one_equal_one_batch_of_four() {
    // No biases: the key-projection bias has an exactly-zero gradient (softmax ignores a
    // constant shift), so it has no scale to compare against.
    let cfg = common::tiny_config(std::path::Path::new("/tmp"), std::path::Path::new("/tmp/c.txt"), "model.bias=false");
    let params = ParamStore::new();
    let model = Gpt::new(&cfg.model, 20, DType::F32, params.var_builder(1, &Device::Cpu)).unwrap();
    let vars: Vec<_> = params.named_vars().into_iter().map(|(_, v)| v).collect();
    let (x, y) = batch(4, 12, 3);
    let tokens = 4 * 12;
    // Each micro-batch's summed loss, divided by the step's total target tokens.
    let loss = |x: &Tensor, y: &Tensor| Ok((model.loss_sum(x, y, &mut Mode::eval())? / tokens as f64)?);
    let (g_whole, loss_whole) = accumulate_gradients(&vars, std::iter::once(loss(&x, &y)), None).unwrap();
    let micro = (0..4).map(|i| loss(&x.narrow(0, i, 1).unwrap(), &y.narrow(0, i, 1).unwrap()));
    let (g_micro, loss_micro) = accumulate_gradients(&vars, micro, None).unwrap();

    let l1 = loss_whole.to_scalar::<f32>().unwrap();
    let l2 = loss_micro.to_scalar::<f32>().unwrap();
    assert!((l1 - l2).abs() < 1e-5, "loss {l1} vs {l2}");
    for ((a, b), (name, _)) in g_whole.iter().zip(&g_micro).zip(params.named_vars()) {
        let (a, b) = (a.as_ref().unwrap(), b.as_ref().unwrap());
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let scale = a.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(scale > 0.0, "{name}: no gradient");
        assert!(diff <= 1e-5 * scale + 1e-8, "{name}: gradients differ by {diff} (largest entry {scale})");
    }
}

#[test]
fn same_seed_same_weights_and_shared_names_match_across_norm_placements() {
    let cfg = common::tiny_config(std::path::Path::new("/tmp"), std::path::Path::new("/tmp/c.txt"), "").model;
    let build = |norm, seed| {
        let mut cfg = cfg.clone();
        cfg.norm = norm;
        let params = ParamStore::new();
        Gpt::new(&cfg, 20, DType::F32, params.var_builder(seed, &Device::Cpu)).unwrap();
        params.detached()
    };
    let pre = build(NormPlacement::Pre, 9);
    let pre_again = build(NormPlacement::Pre, 9);
    let post = build(NormPlacement::Post, 9);
    let other_seed = build(NormPlacement::Pre, 10);
    let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for (name, t) in &pre {
        assert_eq!(values(t), values(&pre_again[name]), "{name}");
        if let Some(p) = post.get(name) {
            assert_eq!(values(t), values(p), "{name} differs between pre-LN and post-LN");
        }
    }
    assert!(pre.contains_key("ln_f.weight") && !post.contains_key("ln_f.weight"));
    assert_ne!(values(&pre["tok_emb.weight"]), values(&other_seed["tok_emb.weight"]));
}
