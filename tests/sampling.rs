//! Example-based data draws: a hold-out that is disjoint, seeded and order-keeping, and epochs
//! that visit every example exactly once.

use taper::data::sampling::{hold_out, EpochSampler};

#[test]
fn hold_out_is_disjoint_seeded_and_keeps_file_order() {
    let path = std::path::Path::new("data.tsv");
    let mut a: Vec<u32> = (0..100).collect();
    let val = hold_out(&mut a, 0.2, 7, "pairs", path).unwrap();
    assert_eq!((a.len(), val.len()), (80, 20));
    assert!(a.windows(2).all(|w| w[0] < w[1]) && val.windows(2).all(|w| w[0] < w[1]));
    assert!(val.iter().all(|v| !a.contains(v)));
    let mut b: Vec<u32> = (0..100).collect();
    assert_eq!(hold_out(&mut b, 0.2, 7, "pairs", path).unwrap(), val, "same seed, same split");
    let mut c: Vec<u32> = (0..100).collect();
    assert_ne!(hold_out(&mut c, 0.2, 8, "pairs", path).unwrap(), val);
    let err = hold_out(&mut vec![1u32], 0.5, 7, "pairs", path).unwrap_err().to_string();
    assert!(err.contains("data.tsv has 1 pairs") && err.contains("data.val_path"), "{err}");
}

#[test]
fn an_epoch_visits_every_example_once() {
    // 10 examples, batches of 4 over 2 micro-batches: steps 0-4 cover epochs 0-3 exactly.
    let sampler = EpochSampler::new(3, 10);
    let mut seen = Vec::new();
    for step in 0..5 {
        for micro in 0..2 {
            seen.extend(sampler.batch(step, micro, 2, 4));
        }
    }
    // A pure function of (seed, step, micro): a fresh sampler (a resumed run) agrees.
    assert_eq!(EpochSampler::new(3, 10).batch(3, 1, 2, 4), seen[28..32]);
    for epoch in seen.chunks(10) {
        let mut sorted = epoch.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
    }
    assert_ne!(seen[..10], seen[10..20], "each epoch has its own order");
}

#[test]
fn sampling_from_an_empty_vocabulary_is_an_error() {
    let opts = taper::generate::SamplingOptions::default();
    let err = taper::generate::sample(&[], &opts, &mut taper::rng::Rng::new(1)).unwrap_err().to_string();
    assert!(err.contains("empty vocabulary"), "{err}");
    let greedy = taper::generate::SamplingOptions { temperature: 0.0, ..opts };
    assert_eq!(taper::generate::sample(&[0.0, 3.0, 1.0], &greedy, &mut taper::rng::Rng::new(1)).unwrap(), 1);
}

#[test]
fn sampling_options_that_cannot_sample_are_refused() {
    let opts = taper::generate::SamplingOptions::default();
    for temperature in [f64::NAN, f64::INFINITY, -0.5] {
        let err = taper::generate::SamplingOptions { temperature, ..opts.clone() }.validate().unwrap_err();
        assert!(err.to_string().contains("--temperature"), "{temperature}: {err}");
    }
    for top_p in [f64::NAN, 0.0, 1.5] {
        let err = taper::generate::SamplingOptions { top_p: Some(top_p), ..opts.clone() }.validate().unwrap_err();
        assert!(err.to_string().contains("--top-p"), "{top_p}: {err}");
    }
    assert!(opts.validate().is_ok());
}
