//! CSV datasets for tabular classification: one row per sample, a label column named in the
//! config, and numeric feature columns (every other column unless the config lists them).
//!
//! Every cell that is missing or not a number is reported, by file, line and column, before
//! anything is trained. Classes are the training labels' distinct values: in numeric order
//! when they are all integers, in text order otherwise. Standardisation, when asked for, is
//! fitted on the training rows only and applied to every set with the same mean and spread.
//! A sample's id is its data row, from 1, zero-padded (`"00042"`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::{Dataset, Listing, Sample};

/// How many bad cells an error lists before it only counts the rest.
const LISTED: usize = 20;

/// `[data]` keys of the `csv` layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CsvConfig {
    /// The label column's header.
    pub label: String,
    /// The feature columns' headers, in order; `None` for every column but the label.
    pub features: Option<Vec<String>>,
    /// Centre and scale each feature by the training rows' mean and standard deviation.
    pub standardize: bool,
    /// Classes from the label column, or a number to predict.
    #[serde(default)]
    pub task: Task,
}

/// What the label column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Class names: the model predicts one of them.
    #[default]
    Classification,
    /// Numbers: the model predicts a value, trained with the mean squared error.
    Regression,
}

/// The per-feature mean and standard deviation fitted on the training rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Standardization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

#[derive(Debug, thiserror::Error)]
pub enum TabularError {
    #[error("cannot read the CSV file {}: {source}", path.display())]
    Read { path: PathBuf, source: csv::Error },
    #[error(
        "{} has no column {column:?} (data.{key})\nhint: its columns are {}",
        path.display(), columns.join(", ")
    )]
    NoColumn { path: PathBuf, column: String, key: &'static str, columns: Vec<String> },
    #[error("{} has no data rows", .0.display())]
    Empty(PathBuf),
    #[error("{} has {} cell(s) that are not numbers:\n{}", path.display(), problems.len(), list(problems))]
    NotNumeric { path: PathBuf, problems: Vec<String> },
    #[error(
        "{} has labels the training set never uses: {}\nhint: train and test need the same \
         classes",
        path.display(), labels.join(", ")
    )]
    UnknownLabels { path: PathBuf, labels: Vec<String> },
}

fn list(problems: &[String]) -> String {
    let mut lines: Vec<String> = problems.iter().take(LISTED).map(|p| format!("  {p}")).collect();
    if problems.len() > LISTED {
        lines.push(format!("  ... and {} more", problems.len() - LISTED));
    }
    lines.join("\n")
}

/// The rows of a CSV file: feature values and label texts.
struct Table {
    features: Vec<Vec<f32>>,
    labels: Vec<String>,
    feature_names: Vec<String>,
}

fn read(path: &Path, config: &CsvConfig) -> Result<Table, TabularError> {
    let error = |source| TabularError::Read { path: path.to_path_buf(), source };
    let mut reader =
        csv::ReaderBuilder::new().trim(csv::Trim::All).from_path(path).map_err(error)?;
    let headers: Vec<String> = reader.headers().map_err(error)?.iter().map(String::from).collect();
    let position = |column: &str, key| {
        headers.iter().position(|header| header == column).ok_or_else(|| TabularError::NoColumn {
            path: path.to_path_buf(),
            column: column.to_string(),
            key,
            columns: headers.clone(),
        })
    };
    let label = position(&config.label, "label")?;
    let feature_names: Vec<String> = match &config.features {
        Some(names) => names.clone(),
        None => headers
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != label)
            .map(|(_, h)| h.clone())
            .collect(),
    };
    let columns = feature_names
        .iter()
        .map(|name| position(name, "features"))
        .collect::<Result<Vec<_>, _>>()?;

    let mut table = Table { features: Vec::new(), labels: Vec::new(), feature_names };
    let mut problems = Vec::new();
    for (index, record) in reader.records().enumerate() {
        let record = record.map_err(error)?;
        // Line numbers count the header as line 1.
        let line = record.position().map_or(index as u64 + 2, |at| at.line());
        let mut row = Vec::with_capacity(columns.len());
        for (&column, name) in columns.iter().zip(&table.feature_names) {
            let cell = record.get(column).unwrap_or("");
            match cell.parse::<f32>() {
                Ok(value) if value.is_finite() => row.push(value),
                _ if cell.is_empty() => {
                    problems.push(format!("line {line}, column {name}: missing"))
                }
                _ => problems.push(format!("line {line}, column {name}: {cell:?} is not a number")),
            }
        }
        let label_text = record.get(label).unwrap_or("").to_string();
        if label_text.is_empty() {
            problems.push(format!("line {line}, column {}: missing label", config.label));
        } else if config.task == Task::Regression
            && !label_text.parse::<f32>().is_ok_and(f32::is_finite)
        {
            problems.push(format!(
                "line {line}, column {}: {label_text:?} is not a number to regress on",
                config.label
            ));
        }
        table.features.push(row);
        table.labels.push(label_text);
    }
    if !problems.is_empty() {
        return Err(TabularError::NotNumeric { path: path.to_path_buf(), problems });
    }
    if table.labels.is_empty() {
        return Err(TabularError::Empty(path.to_path_buf()));
    }
    Ok(table)
}

/// The class names of a training file: its distinct labels, numerically sorted when they are
/// all integers.
pub fn classes(path: &Path, config: &CsvConfig) -> Result<Vec<String>, TabularError> {
    let mut labels = read(path, config)?.labels;
    labels.sort();
    labels.dedup();
    if labels.iter().all(|label| label.parse::<i64>().is_ok()) {
        labels.sort_by_key(|label| label.parse::<i64>().unwrap_or_default());
    }
    Ok(labels)
}

/// The mean and standard deviation of each feature over the training file's rows.
pub fn fit_standardization(
    path: &Path,
    config: &CsvConfig,
) -> Result<Standardization, TabularError> {
    let table = read(path, config)?;
    let count = table.features.len() as f64;
    let width = table.feature_names.len();
    let mut mean = vec![0f64; width];
    for row in &table.features {
        for (sum, value) in mean.iter_mut().zip(row) {
            *sum += f64::from(*value);
        }
    }
    mean.iter_mut().for_each(|sum| *sum /= count);
    let mut variance = vec![0f64; width];
    for row in &table.features {
        for ((sum, value), mean) in variance.iter_mut().zip(row).zip(&mean) {
            *sum += (f64::from(*value) - mean).powi(2) / count;
        }
    }
    Ok(Standardization {
        mean: mean.iter().map(|value| *value as f32).collect(),
        // A constant feature (up to rounding) is only centred.
        std: variance
            .iter()
            .zip(&mean)
            .map(|(variance, mean)| {
                let constant = *variance <= 1e-12 * mean.abs().max(1.0).powi(2);
                if constant { 1.0 } else { variance.sqrt() as f32 }
            })
            .collect(),
    })
}

/// Loads the CSV file at `path` with the class names `classes`, standardised by `scaling`.
pub fn load(
    path: &Path,
    config: &CsvConfig,
    classes: &[String],
    scaling: Option<&Standardization>,
) -> Result<Dataset, TabularError> {
    let table = read(path, config)?;
    let regression = config.task == Task::Regression;
    let mut unknown: Vec<String> = table
        .labels
        .iter()
        .filter(|label| !regression && !classes.contains(label))
        .cloned()
        .collect();
    unknown.sort();
    unknown.dedup();
    if !unknown.is_empty() {
        return Err(TabularError::UnknownLabels { path: path.to_path_buf(), labels: unknown });
    }
    let width = table.feature_names.len();
    let digits = table.labels.len().to_string().len().max(5);
    let mut values = Vec::with_capacity(table.features.len() * width);
    for row in &table.features {
        match scaling {
            Some(scaling) => values.extend(
                row.iter().zip(&scaling.mean).zip(&scaling.std).map(|((v, m), s)| (v - m) / s),
            ),
            None => values.extend_from_slice(row),
        }
    }
    let samples = table
        .labels
        .iter()
        .enumerate()
        .map(|(index, label)| Sample {
            id: format!("{:0digits$}", index + 1),
            // A regression has no classes: every sample is of class 0 of none.
            label: classes.iter().position(|class| class == label).unwrap_or_default(),
        })
        .collect();
    let listing = Listing {
        root: path.to_path_buf(),
        classes: classes.to_vec(),
        samples,
        skipped: Vec::new(),
    };
    let targets = regression.then(|| {
        table.labels.iter().map(|label| label.parse::<f32>().unwrap_or(f32::NAN)).collect()
    });
    Ok(Dataset { listing, pixels: values, shape: [width, 1, 1], skipped_invalid: 0, targets })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(features: Option<&[&str]>, standardize: bool) -> CsvConfig {
        CsvConfig {
            label: "species".into(),
            features: features.map(|names| names.iter().map(|n| n.to_string()).collect()),
            standardize,
            task: Task::Classification,
        }
    }

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.csv");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn rows_become_samples_and_standardisation_uses_the_training_rows() {
        let (_dir, path) = file("length,species,width\n1,b,10\n3,a,10\n5,b,10\n");
        let settings = config(None, true);
        let classes = classes(&path, &settings).unwrap();
        assert_eq!(classes, ["a", "b"]);
        let scaling = fit_standardization(&path, &settings).unwrap();
        assert_eq!(scaling.mean, [3.0, 10.0]);
        assert!((scaling.std[0] - (8.0f32 / 3.0).sqrt()).abs() < 1e-6);
        assert_eq!(scaling.std[1], 1.0, "a constant feature is only centred");
        let dataset = load(&path, &settings, &classes, Some(&scaling)).unwrap();
        assert_eq!(dataset.shape, [2, 1, 1]);
        assert_eq!(dataset.labels(), [1, 0, 1]);
        assert_eq!(dataset.listing.samples[0].id, "00001");
        assert!((dataset.pixels[0] + 1.2247449).abs() < 1e-5);
        assert_eq!(dataset.pixels[1], 0.0);
    }

    #[test]
    fn a_constant_column_stays_constant_despite_rounding() {
        // 0.1 has no exact binary form: the mean of seven of them is not exactly 0.1.
        let rows: String = (0..7).map(|row| format!("{},0.1\n", ["a", "b"][row % 2])).collect();
        let (_dir, path) = file(&format!("species,level\n{rows}"));
        let scaling = fit_standardization(&path, &config(None, true)).unwrap();
        assert_eq!(scaling.std, [1.0]);
    }

    #[test]
    fn integer_labels_sort_as_numbers_and_chosen_features_keep_their_order() {
        let (_dir, path) = file("species,a,b\n10,1,2\n2,3,4\n");
        let settings = config(Some(&["b", "a"]), false);
        assert_eq!(classes(&path, &settings).unwrap(), ["2", "10"]);
        let dataset = load(&path, &settings, &["2".into(), "10".into()], None).unwrap();
        assert_eq!(dataset.pixels, [2.0, 1.0, 4.0, 3.0]);
    }

    #[test]
    fn bad_cells_and_columns_are_reported_by_line_and_column() {
        let (_dir, path) = file("species,a,b\nx,1,\ny,zz,2\n,3,4\n");
        let message = load(&path, &config(None, false), &[], None).unwrap_err().to_string();
        assert!(message.contains("has 3 cell(s) that are not numbers"), "{message}");
        assert!(message.contains("line 2, column b: missing"), "{message}");
        assert!(message.contains("line 3, column a: \"zz\" is not a number"), "{message}");
        assert!(message.contains("line 4, column species: missing label"), "{message}");

        let message = load(&path, &config(Some(&["c"]), false), &[], None).unwrap_err().to_string();
        assert!(message.contains("has no column \"c\" (data.features)"), "{message}");
        assert!(message.contains("its columns are species, a, b"), "{message}");

        let (_dir, path) = file("species,a\nx,1\n");
        let message =
            load(&path, &config(None, false), &["y".into()], None).unwrap_err().to_string();
        assert!(message.contains("labels the training set never uses: x"), "{message}");
    }
}
