//! BERT's masking rule, measured on a large sample: 15 % of maskable tokens selected; of
//! those 80 % [MASK], 10 % random, 10 % unchanged; special tokens never selected.

use taper::data::masking::MaskingRule;
use taper::rng::Rng;

#[test]
fn masking_statistics_match_bert() {
    let (cls, sep, mask_id, vocab) = (2u32, 3u32, 4u32, 5000usize);
    let rule = MaskingRule { mask_prob: 0.15, mask_id, vocab_size: vocab, special_ids: vec![0, cls, sep] };
    let mut rng = Rng::new(7);
    let (mut maskable, mut selected, mut masked, mut random, mut kept) = (0usize, 0usize, 0usize, 0usize, 0usize);
    for _ in 0..2000 {
        // [CLS] 98 ordinary tokens [SEP]
        let original: Vec<u32> = std::iter::once(cls)
            .chain((0..98).map(|_| 10 + rng.below(vocab - 10) as u32))
            .chain(std::iter::once(sep))
            .collect();
        let mut ids = original.clone();
        let result = rule.apply(&mut ids, &mut rng);
        maskable += 98;
        assert_eq!(ids[0], cls, "[CLS] was selected");
        assert_eq!(ids[99], sep, "[SEP] was selected");
        for (&position, &label) in result.positions.iter().zip(&result.labels) {
            let p = position as usize;
            assert_eq!(label, original[p], "the label is the original token");
            selected += 1;
            match ids[p] {
                id if id == mask_id => masked += 1,
                id if id == original[p] => kept += 1,
                _ => random += 1,
            }
        }
        let unselected_changed =
            (0..100).filter(|p| !result.positions.contains(&(*p as u32)) && ids[*p] != original[*p]);
        assert_eq!(unselected_changed.count(), 0, "only selected tokens change");
    }
    let share = |n: usize| n as f64 / selected as f64;
    let selected_share = selected as f64 / maskable as f64;
    eprintln!(
        "selected {selected_share:.4}, [MASK] {:.4}, random {:.4}, kept {:.4} of {selected}",
        share(masked),
        share(random),
        share(kept)
    );
    // Binomial standard errors at these counts are about 0.0008 and 0.003; bounds are ~5 of them.
    assert!((selected_share - 0.15).abs() < 0.004, "selected share {selected_share}");
    assert!((share(masked) - 0.8).abs() < 0.015, "[MASK] share {}", share(masked));
    assert!((share(random) - 0.1).abs() < 0.012, "random share {}", share(random));
    assert!((share(kept) - 0.1).abs() < 0.012, "kept share {}", share(kept));
}

#[test]
fn a_batch_always_has_a_target() {
    let rule = MaskingRule { mask_prob: 0.01, mask_id: 4, vocab_size: 50, special_ids: vec![2, 3] };
    for seed in 0..200 {
        let mut ids = vec![2, 20, 21, 3];
        let result = rule.apply(&mut ids, &mut Rng::new(seed));
        assert!(!result.positions.is_empty());
        assert!(result.positions.iter().all(|&p| p == 1 || p == 2));
    }
}
