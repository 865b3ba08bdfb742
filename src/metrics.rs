//! Classification metrics from per-sample predictions: pure arithmetic, no libtorch.
//!
//! Conventions follow scikit-learn's defaults with `zero_division=0`: a class that is never
//! predicted has precision 0, a class with no samples has recall 0, and F1 is 0 when precision
//! and recall are both 0. Macro averages weigh every class equally.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One test sample's outcome, as written to `predictions.jsonl`, one JSON object per line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// Identifies the sample across runs: its path below the test set's root.
    pub id: String,
    /// The true class index.
    pub label: usize,
    /// The predicted class index.
    pub prediction: usize,
    /// The model's probability for the predicted class.
    pub confidence: f64,
    /// The sample's cross-entropy loss.
    pub loss: f64,
}

impl Prediction {
    pub fn is_correct(&self) -> bool {
        self.label == self.prediction
    }
}

/// The headline metrics, in the shape `metrics.json` stores under `"metrics"`. Gate rules name
/// them by dotted path: `accuracy`, `loss`, `macro.f1`, `per_class.7.recall`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub accuracy: f64,
    /// Mean cross-entropy over the test set.
    pub loss: f64,
    #[serde(rename = "macro")]
    pub macro_average: Scores,
    /// Keyed by class name.
    pub per_class: BTreeMap<String, ClassScores>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClassScores {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// How many test samples have this class as their label.
    pub support: u64,
}

/// Rows are true classes, columns predicted classes.
pub type ConfusionMatrix = Vec<Vec<u64>>;

pub fn confusion_matrix(predictions: &[Prediction], classes: usize) -> ConfusionMatrix {
    let mut matrix = vec![vec![0u64; classes]; classes];
    for prediction in predictions {
        matrix[prediction.label][prediction.prediction] += 1;
    }
    matrix
}

/// Computes every metric from the predictions. `classes` names the class indices.
pub fn compute(predictions: &[Prediction], classes: &[String]) -> (Metrics, ConfusionMatrix) {
    let matrix = confusion_matrix(predictions, classes.len());
    let total = predictions.len() as f64;
    let correct: u64 = (0..classes.len()).map(|class| matrix[class][class]).sum();
    let loss_sum: f64 = predictions.iter().map(|prediction| prediction.loss).sum();
    let (per_class, macro_average) = scores_from_confusion(&matrix);
    let metrics = Metrics {
        accuracy: ratio(correct as f64, total),
        loss: ratio(loss_sum, total),
        macro_average,
        per_class: classes.iter().cloned().zip(per_class).collect(),
    };
    (metrics, matrix)
}

/// Per-class scores, in class order, and their macro average, from a confusion matrix.
pub fn scores_from_confusion(matrix: &ConfusionMatrix) -> (Vec<ClassScores>, Scores) {
    let mut per_class = Vec::with_capacity(matrix.len());
    let mut sums = Scores { precision: 0.0, recall: 0.0, f1: 0.0 };
    for (index, row) in matrix.iter().enumerate() {
        let true_positives = row[index] as f64;
        let support: u64 = row.iter().sum();
        let predicted: u64 = matrix.iter().map(|row| row[index]).sum();
        let precision = ratio(true_positives, predicted as f64);
        let recall = ratio(true_positives, support as f64);
        let f1 = ratio(2.0 * precision * recall, precision + recall);
        sums.precision += precision;
        sums.recall += recall;
        sums.f1 += f1;
        per_class.push(ClassScores { precision, recall, f1, support });
    }
    let count = matrix.len().max(1) as f64;
    let average = Scores {
        precision: sums.precision / count,
        recall: sums.recall / count,
        f1: sums.f1 / count,
    };
    (per_class, average)
}

/// `numerator / denominator`, or 0 when the denominator is 0.
fn ratio(numerator: f64, denominator: f64) -> f64 {
    if denominator == 0.0 { 0.0 } else { numerator / denominator }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prediction(label: usize, predicted: usize) -> Prediction {
        Prediction { id: String::new(), label, prediction: predicted, confidence: 1.0, loss: 0.5 }
    }

    #[test]
    fn hand_computed_three_class_example() {
        // true 0: predicted 0, 0, 1    true 1: predicted 1, 2    true 2: predicted 2
        let predictions = [(0, 0), (0, 0), (0, 1), (1, 1), (1, 2), (2, 2)]
            .map(|(label, predicted)| prediction(label, predicted));
        let classes = ["a", "b", "c"].map(String::from);
        let (metrics, matrix) = compute(&predictions, &classes);

        assert_eq!(matrix, [[2, 1, 0], [0, 1, 1], [0, 0, 1]]);
        assert_eq!(metrics.accuracy, 4.0 / 6.0);
        assert_eq!(metrics.loss, 0.5);
        let a = metrics.per_class["a"];
        assert_eq!((a.precision, a.recall, a.support), (1.0, 2.0 / 3.0, 3));
        assert!((a.f1 - 0.8).abs() < 1e-12);
        let b = metrics.per_class["b"];
        assert_eq!((b.precision, b.recall, b.f1), (0.5, 0.5, 0.5));
        let c = metrics.per_class["c"];
        assert_eq!((c.precision, c.recall), (0.5, 1.0));
        assert!((c.f1 - 2.0 / 3.0).abs() < 1e-12);
        assert!((metrics.macro_average.precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((metrics.macro_average.recall - (2.0 / 3.0 + 0.5 + 1.0) / 3.0).abs() < 1e-12);
    }

    #[test]
    fn class_never_predicted_scores_zero_not_nan() {
        let predictions = [prediction(0, 0), prediction(1, 0)];
        let classes = ["a", "b"].map(String::from);
        let (metrics, _) = compute(&predictions, &classes);
        let b = metrics.per_class["b"];
        assert_eq!((b.precision, b.recall, b.f1, b.support), (0.0, 0.0, 0.0, 1));
        assert!(metrics.macro_average.f1.is_finite());
    }
}
