//! Classification metrics from per-sample predictions: pure arithmetic, no libtorch.
//!
//! A class with test samples that is never predicted has precision 0 (scikit-learn's
//! `zero_division=0`), and F1 is 0 when precision and recall are both 0. A class with no test
//! samples has no recall and no F1: they are `null`, never NaN or a made-up 0, and its
//! precision is `null` too unless it was predicted. Macro averages weigh every class with test
//! samples equally; weighted averages weigh them by their support.

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
    /// The most probable classes, best first (the first is `prediction`); for top-k
    /// accuracy. Absent from predictions written by other tools.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top: Vec<usize>,
}

/// How many classes each prediction ranks, and so the k of `top_k_accuracy`.
pub const TOP_K: usize = 5;

/// Confidence bins of the expected calibration error.
pub const CALIBRATION_BINS: usize = 15;

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
    /// The share of samples whose label is among the model's `TOP_K` most probable classes;
    /// absent when there are no more classes than that, or the predictions do not rank them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_5_accuracy: Option<f64>,
    /// Mean cross-entropy over the test set (the log-loss).
    pub loss: f64,
    /// Expected calibration error: over `CALIBRATION_BINS` equal bins of confidence, the
    /// sample-weighted mean gap between accuracy and confidence. 0 is perfectly calibrated.
    pub calibration_error: f64,
    #[serde(rename = "macro")]
    pub macro_average: Scores,
    #[serde(rename = "weighted")]
    pub weighted_average: Scores,
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
    /// `null` when the class has no test samples and was never predicted.
    pub precision: Option<f64>,
    /// `null` when the class has no test samples.
    pub recall: Option<f64>,
    /// `null` when the class has no test samples.
    pub f1: Option<f64>,
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
    let ranked = classes.len() > TOP_K && predictions.iter().all(|p| p.top.len() >= TOP_K);
    let top_5_accuracy = (ranked && !predictions.is_empty()).then(|| {
        let hits = predictions.iter().filter(|p| p.top[..TOP_K].contains(&p.label)).count();
        hits as f64 / total
    });
    let metrics = Metrics {
        accuracy: ratio(correct as f64, total),
        top_5_accuracy,
        loss: ratio(loss_sum, total),
        calibration_error: calibration_error(predictions),
        macro_average,
        weighted_average: weighted(&per_class),
        per_class: classes.iter().cloned().zip(per_class).collect(),
    };
    (metrics, matrix)
}

/// Per-class scores, in class order, and their macro average over the classes with test
/// samples, from a confusion matrix.
pub fn scores_from_confusion(matrix: &ConfusionMatrix) -> (Vec<ClassScores>, Scores) {
    let mut per_class = Vec::with_capacity(matrix.len());
    let mut sums = Scores { precision: 0.0, recall: 0.0, f1: 0.0 };
    let mut supported = 0usize;
    for (index, row) in matrix.iter().enumerate() {
        let true_positives = row[index] as f64;
        let support: u64 = row.iter().sum();
        let predicted: u64 = matrix.iter().map(|row| row[index]).sum();
        if support == 0 {
            let precision = (predicted > 0).then_some(0.0);
            per_class.push(ClassScores { precision, recall: None, f1: None, support });
            continue;
        }
        let precision = ratio(true_positives, predicted as f64);
        let recall = true_positives / support as f64;
        let f1 = ratio(2.0 * precision * recall, precision + recall);
        sums.precision += precision;
        sums.recall += recall;
        sums.f1 += f1;
        supported += 1;
        per_class.push(ClassScores {
            precision: Some(precision),
            recall: Some(recall),
            f1: Some(f1),
            support,
        });
    }
    let count = supported.max(1) as f64;
    let average = Scores {
        precision: sums.precision / count,
        recall: sums.recall / count,
        f1: sums.f1 / count,
    };
    (per_class, average)
}

/// The support-weighted average of the per-class scores.
fn weighted(per_class: &[ClassScores]) -> Scores {
    let total: u64 = per_class.iter().map(|class| class.support).sum();
    let mean = |score: fn(&ClassScores) -> Option<f64>| {
        let sum: f64 =
            per_class.iter().map(|class| score(class).unwrap_or(0.0) * class.support as f64).sum();
        ratio(sum, total as f64)
    };
    Scores {
        precision: mean(|class| class.precision),
        recall: mean(|class| class.recall),
        f1: mean(|class| class.f1),
    }
}

/// The expected calibration error over `CALIBRATION_BINS` equal-width confidence bins.
pub fn calibration_error(predictions: &[Prediction]) -> f64 {
    let mut bins = [(0usize, 0.0f64, 0.0f64); CALIBRATION_BINS];
    for prediction in predictions {
        let confidence = prediction.confidence.clamp(0.0, 1.0);
        let bin = ((confidence * CALIBRATION_BINS as f64) as usize).min(CALIBRATION_BINS - 1);
        bins[bin].0 += 1;
        bins[bin].1 += confidence;
        bins[bin].2 += f64::from(u8::from(prediction.is_correct()));
    }
    let total = predictions.len() as f64;
    bins.iter()
        .filter(|(count, _, _)| *count > 0)
        .map(|(count, confidence, correct)| {
            (*count as f64 / total) * ((correct - confidence) / *count as f64).abs()
        })
        .sum()
}

/// One test sample of a regression model, as written to `predictions.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegressionPrediction {
    /// Identifies the sample across runs: its data row.
    pub id: String,
    /// The true value.
    pub target: f64,
    /// The model's value.
    pub prediction: f64,
    /// The squared error.
    pub loss: f64,
}

/// The metrics of a regression model, in the shape `metrics.json` stores under `"metrics"`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RegressionMetrics {
    /// The mean squared error, the training loss.
    pub loss: f64,
    pub mse: f64,
    pub rmse: f64,
    pub mae: f64,
    /// The coefficient of determination: 1 − (residual sum of squares / total sum of
    /// squares). `null` when the targets do not vary, where it is undefined.
    pub r2: Option<f64>,
}

/// MSE, RMSE, MAE and R² from the predictions.
pub fn regression(predictions: &[RegressionPrediction]) -> RegressionMetrics {
    let count = predictions.len() as f64;
    let squared: f64 = predictions.iter().map(|p| (p.prediction - p.target).powi(2)).sum();
    let absolute: f64 = predictions.iter().map(|p| (p.prediction - p.target).abs()).sum();
    let mean = ratio(predictions.iter().map(|p| p.target).sum(), count);
    let total: f64 = predictions.iter().map(|p| (p.target - mean).powi(2)).sum();
    let mse = ratio(squared, count);
    RegressionMetrics {
        loss: mse,
        mse,
        rmse: mse.sqrt(),
        mae: ratio(absolute, count),
        r2: (total > 0.0).then(|| 1.0 - squared / total),
    }
}

/// `numerator / denominator`, or 0 when the denominator is 0.
fn ratio(numerator: f64, denominator: f64) -> f64 {
    if denominator == 0.0 { 0.0 } else { numerator / denominator }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prediction(label: usize, predicted: usize) -> Prediction {
        Prediction {
            id: String::new(),
            label,
            prediction: predicted,
            confidence: 1.0,
            loss: 0.5,
            top: Vec::new(),
        }
    }

    #[test]
    fn regression_metrics_by_hand() {
        let row = |target, prediction: f64| RegressionPrediction {
            id: String::new(),
            target,
            prediction,
            loss: (prediction - target).powi(2),
        };
        // Targets 1, 2, 3 (mean 2, total sum of squares 2); errors +1, 0, −2.
        let metrics = regression(&[row(1.0, 2.0), row(2.0, 2.0), row(3.0, 1.0)]);
        assert_eq!(metrics.mse, 5.0 / 3.0);
        assert_eq!(metrics.loss, metrics.mse);
        assert!((metrics.rmse - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(metrics.mae, 1.0);
        assert_eq!(metrics.r2, Some(1.0 - 5.0 / 2.0));
        assert_eq!(regression(&[row(4.0, 4.0), row(4.0, 5.0)]).r2, None, "constant targets");
        assert_eq!(regression(&[row(1.0, 1.0), row(3.0, 3.0)]).r2, Some(1.0));
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
        assert_eq!((a.precision, a.recall, a.support), (Some(1.0), Some(2.0 / 3.0), 3));
        assert!((a.f1.unwrap() - 0.8).abs() < 1e-12);
        let b = metrics.per_class["b"];
        assert_eq!((b.precision, b.recall, b.f1), (Some(0.5), Some(0.5), Some(0.5)));
        let c = metrics.per_class["c"];
        assert_eq!((c.precision, c.recall), (Some(0.5), Some(1.0)));
        assert!((c.f1.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        // Weighted by support 3, 2, 1: precision (3·1 + 2·0.5 + 1·0.5) / 6.
        assert!((metrics.weighted_average.precision - 4.5 / 6.0).abs() < 1e-12);
        assert!((metrics.weighted_average.recall - 4.0 / 6.0).abs() < 1e-12, "= accuracy");
        assert_eq!(metrics.top_5_accuracy, None, "three classes: no top-5");
        assert!((metrics.macro_average.precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((metrics.macro_average.recall - (2.0 / 3.0 + 0.5 + 1.0) / 3.0).abs() < 1e-12);
    }

    #[test]
    fn class_never_predicted_scores_zero_not_nan() {
        let predictions = [prediction(0, 0), prediction(1, 0)];
        let classes = ["a", "b"].map(String::from);
        let (metrics, _) = compute(&predictions, &classes);
        let b = metrics.per_class["b"];
        assert_eq!((b.precision, b.recall, b.f1, b.support), (Some(0.0), Some(0.0), Some(0.0), 1));
        assert!(metrics.macro_average.f1.is_finite());
    }

    #[test]
    fn a_class_without_test_samples_is_null_not_zero_and_not_averaged() {
        // Class c has no test samples; b's one sample is predicted as c.
        let predictions = [prediction(0, 0), prediction(0, 0), prediction(1, 2)];
        let classes = ["a", "b", "c"].map(String::from);
        let (metrics, _) = compute(&predictions, &classes);
        let c = metrics.per_class["c"];
        assert_eq!((c.precision, c.recall, c.f1, c.support), (Some(0.0), None, None, 0));
        // Macro over a and b only: recall (1 + 0) / 2.
        assert_eq!(metrics.macro_average.recall, 0.5);
        let json = serde_json::to_value(&metrics).unwrap();
        assert!(json["per_class"]["c"]["recall"].is_null());
        let unpredicted = compute(&[prediction(0, 0)], &["a", "b"].map(String::from)).0;
        assert_eq!(unpredicted.per_class["b"].precision, None);
    }

    #[test]
    fn top_5_accuracy_counts_labels_among_the_five_best() {
        let classes: Vec<String> = (0..7).map(|class| class.to_string()).collect();
        let ranked =
            |label, top: [usize; 5]| Prediction { top: top.to_vec(), ..prediction(label, top[0]) };
        let predictions = [
            ranked(0, [0, 1, 2, 3, 4]),
            ranked(4, [0, 1, 2, 3, 4]),
            ranked(6, [0, 1, 2, 3, 4]),
            ranked(5, [5, 6, 0, 1, 2]),
        ];
        let (metrics, _) = compute(&predictions, &classes);
        assert_eq!(metrics.accuracy, 0.5);
        assert_eq!(metrics.top_5_accuracy, Some(0.75));
    }

    #[test]
    fn calibration_error_is_the_weighted_gap_between_confidence_and_accuracy() {
        let sure = |label, predicted, confidence| Prediction {
            confidence,
            ..prediction(label, predicted)
        };
        // Bin of 0.9: two samples, one right (accuracy 0.5, confidence 0.9, gap 0.4);
        // bin of 0.3: two samples, both wrong (gap 0.3). ECE = 0.5·0.4 + 0.5·0.3.
        let predictions = [sure(0, 0, 0.9), sure(0, 1, 0.9), sure(1, 0, 0.3), sure(1, 0, 0.3)];
        assert!((calibration_error(&predictions) - 0.35).abs() < 1e-12);
        let perfect = [sure(0, 0, 1.0), sure(1, 1, 1.0)];
        assert_eq!(calibration_error(&perfect), 0.0);
        assert_eq!(calibration_error(&[]), 0.0);
    }
}
