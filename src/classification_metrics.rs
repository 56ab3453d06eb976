//! Accuracy and macro-F1 of a classifier's predictions, as scikit-learn computes them
//! (`f1_score(average="macro", labels=all, zero_division=0)`): every label of the label set
//! counts, a label that is never predicted and never true scores 0.

use anyhow::{bail, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassificationScores {
    pub accuracy: f64,
    pub macro_f1: f64,
}

/// Scores `predictions` against `labels`, both ids in `0..num_labels`.
pub fn classification_scores(predictions: &[u32], labels: &[u32], num_labels: usize) -> Result<ClassificationScores> {
    if predictions.len() != labels.len() || labels.is_empty() {
        bail!("{} predictions for {} labels", predictions.len(), labels.len());
    }
    let (mut tp, mut fp, mut fn_) = (vec![0usize; num_labels], vec![0usize; num_labels], vec![0usize; num_labels]);
    let mut correct = 0;
    for (&p, &y) in predictions.iter().zip(labels) {
        let (p, y) = (p as usize, y as usize);
        if p >= num_labels || y >= num_labels {
            bail!("label id {} is outside the {num_labels} labels", p.max(y));
        }
        if p == y {
            correct += 1;
            tp[y] += 1;
        } else {
            fp[p] += 1;
            fn_[y] += 1;
        }
    }
    let f1: f64 = (0..num_labels)
        .map(|c| {
            let denominator = 2 * tp[c] + fp[c] + fn_[c];
            if denominator == 0 {
                0.0
            } else {
                2.0 * tp[c] as f64 / denominator as f64
            }
        })
        .sum();
    Ok(ClassificationScores { accuracy: correct as f64 / labels.len() as f64, macro_f1: f1 / num_labels as f64 })
}
