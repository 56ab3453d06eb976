//! Accuracy and macro-F1 against scikit-learn 1.x (`accuracy_score`, `f1_score(average="macro",
//! labels=range(n), zero_division=0)`); the expected values were computed with it.

use taper::classification_metrics::classification_scores;

/// (predictions, labels, number of labels, accuracy, macro-F1)
type Case<'a> = (&'a [u32], &'a [u32], usize, f64, f64);

#[test]
fn scores_match_scikit_learn() {
    let cases: [Case; 3] = [
        (&[0, 1, 1, 1, 2, 0, 2, 2], &[0, 0, 1, 1, 2, 2, 2, 0], 3, 0.625, 0.6222222222222222),
        (&[0, 0, 0, 0], &[0, 0, 0, 1], 2, 0.75, 0.42857142857142855),
        (&[0, 1, 0, 1], &[0, 1, 0, 1], 3, 1.0, 0.6666666666666666),
    ];
    for (predictions, labels, n, accuracy, macro_f1) in cases {
        let s = classification_scores(predictions, labels, n).unwrap();
        assert!((s.accuracy - accuracy).abs() < 1e-12 && (s.macro_f1 - macro_f1).abs() < 1e-12, "{s:?}");
    }
    assert!(classification_scores(&[0], &[0, 1], 2).is_err());
    assert!(classification_scores(&[3], &[0], 2).is_err());
}
