//! Entity precision / recall / F1 against seqeval 1.2.2 (`scripts/seqeval-cases.py` made the
//! cases and the expected values): strict with each scheme, and seqeval's default matching.

use taper::entity_metrics::{EntityCounts, Scheme, Scheme::*};

/// (scheme, true sentences, predicted sentences, [strict P, R, F1, default P, R, F1])
type Case<'a> = (Scheme, &'a str, &'a str, [f64; 6]);

const CASES: [Case; 9] = [
    (Iob1, "B-PER I-PER O O I-LOC | B-LOC I-LOC O | B-PER O O I-PER I-PER O B-PER | I-LOC I-PER O", "O I-LOC I-LOC O I-LOC | B-LOC I-LOC O | B-PER O O I-PER O O B-LOC | I-LOC I-LOC O", [0.4, 0.3333333333333333, 0.3636363636363636, 0.42857142857142855, 0.375, 0.39999999999999997]),
    (Iob1, "I-PER I-LOC I-PER B-LOC | I-LOC I-PER B-LOC B-LOC B-PER B-PER | B-PER O I-LOC B-LOC I-LOC I-PER B-LOC I-PER | I-LOC O O I-LOC I-PER", "I-PER I-LOC I-PER B-LOC | I-LOC I-PER B-LOC B-LOC B-PER B-PER | O B-LOC I-LOC O B-LOC I-PER B-LOC I-PER | O B-LOC O I-LOC I-PER", [1.0, 0.8461538461538461, 0.9166666666666666, 0.8333333333333334, 0.7894736842105263, 0.8108108108108109]),
    (Iob1, "B-LOC B-PER B-PER I-PER I-PER I-PER O B-PER I-PER | I-LOC B-LOC B-PER I-PER I-LOC B-LOC | I-PER B-LOC I-PER B-PER B-PER O B-PER B-PER | B-PER O I-PER I-LOC", "B-LOC B-PER B-PER I-PER B-LOC I-LOC O B-PER I-LOC | I-LOC B-LOC B-PER O I-LOC I-PER | I-PER B-LOC I-PER B-PER B-PER O B-PER B-PER | I-LOC O B-LOC I-PER", [0.5384615384615384, 0.5384615384615384, 0.5384615384615384, 0.5714285714285714, 0.631578947368421, 0.6]),
    (Iob2, "O I-PER I-PER | I-PER B-LOC O B-PER O B-LOC | B-LOC I-PER B-PER I-LOC O B-PER I-LOC B-LOC | I-LOC O I-LOC B-LOC", "O B-LOC I-PER | B-LOC I-LOC O B-PER I-LOC B-PER | I-PER B-PER B-PER I-LOC O I-PER I-LOC B-LOC | I-LOC B-LOC B-LOC B-LOC", [0.4, 0.5, 0.4444444444444445, 0.5882352941176471, 0.6666666666666666, 0.625]),
    (Iob2, "B-PER I-PER B-PER | B-PER I-PER I-LOC I-LOC O | B-LOC O O I-PER B-PER I-PER | I-PER B-LOC O I-PER", "B-PER O B-PER | O I-PER B-PER I-LOC B-LOC | B-LOC O O O B-PER I-PER | B-PER B-PER O I-PER", [0.375, 0.5, 0.42857142857142855, 0.45454545454545453, 0.5, 0.47619047619047616]),
    (Iob2, "B-PER I-LOC B-LOC B-LOC I-LOC I-PER B-PER | B-LOC I-PER I-LOC | I-LOC I-PER I-LOC B-PER I-LOC B-PER I-LOC I-LOC O | I-PER B-PER I-LOC O B-PER B-PER B-PER I-PER I-LOC", "I-LOC I-LOC I-LOC B-LOC O O B-PER | B-LOC I-LOC I-LOC | I-LOC O I-LOC I-LOC B-PER I-PER I-LOC I-LOC I-LOC | B-LOC B-PER B-PER O B-PER B-PER I-PER I-PER O", [0.3333333333333333, 0.2727272727272727, 0.3, 0.3076923076923077, 0.17391304347826086, 0.2222222222222222]),
    (Iobes, "B-LOC E-PER B-LOC I-LOC B-LOC S-PER I-PER B-PER E-LOC | B-LOC I-PER B-LOC E-LOC S-LOC E-LOC | E-LOC I-PER E-PER E-PER B-PER | E-PER O E-PER S-LOC S-PER S-PER O E-LOC", "B-LOC S-LOC B-PER I-PER B-PER S-PER I-PER B-LOC E-LOC | B-LOC I-PER I-LOC E-LOC S-LOC E-LOC | E-LOC I-PER E-PER B-LOC B-PER | E-PER B-PER B-PER I-PER S-PER S-PER O E-LOC", [0.6666666666666666, 0.6666666666666666, 0.6666666666666666, 0.6818181818181818, 0.6521739130434783, 0.6666666666666666]),
    (Iobes, "B-LOC O S-LOC I-PER B-PER | I-LOC O B-LOC I-PER | I-LOC S-LOC I-PER I-LOC S-PER | B-LOC I-LOC E-PER O I-LOC O O", "B-LOC O S-LOC I-PER B-PER | E-LOC S-LOC E-LOC I-LOC | I-PER S-LOC B-LOC I-LOC S-PER | B-LOC I-LOC E-PER I-LOC I-LOC O E-LOC", [0.75, 1.0, 0.8571428571428571, 0.625, 0.6666666666666666, 0.6451612903225806]),
    (Iobes, "S-LOC I-LOC I-PER I-LOC O S-PER B-LOC B-LOC I-LOC | O I-LOC E-PER E-PER S-LOC E-PER | O I-LOC I-PER E-PER | O E-PER E-LOC B-PER", "S-LOC I-LOC I-PER I-LOC O S-PER B-LOC B-LOC I-LOC | O I-LOC E-PER E-PER S-LOC E-LOC | S-PER I-LOC B-LOC E-PER | S-LOC S-LOC E-LOC B-PER", [0.5, 1.0, 0.6666666666666666, 0.7, 0.8235294117647058, 0.7567567567567567]),
];

fn sentences(text: &str) -> Vec<Vec<&str>> {
    text.split(" | ").map(|s| s.split(' ').collect()).collect()
}

#[test]
fn scores_match_seqeval() {
    for (scheme, truth, predicted, expected) in CASES {
        for (strict, want) in [(true, &expected[..3]), (false, &expected[3..])] {
            let mut counts = EntityCounts::default();
            for (t, p) in sentences(truth).iter().zip(sentences(predicted)) {
                counts.add(EntityCounts::of(t, &p, scheme, strict));
            }
            let (p, r, f1) = counts.scores();
            for (got, want) in [p, r, f1].iter().zip(want) {
                assert!(
                    (got - want).abs() < 1e-12,
                    "{scheme:?} strict={strict}: {:?} vs {want:?}\n{truth}\n{predicted}",
                    (p, r, f1)
                );
            }
        }
    }
}

#[test]
fn nothing_predicted_scores_zero_not_nan() {
    let counts = EntityCounts::of(&["B-PER", "O"], &["O", "O"], Iob2, true);
    assert_eq!(counts.scores(), (0.0, 0.0, 0.0));
}
