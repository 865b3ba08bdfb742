//! IDX datasets, the format MNIST is distributed in: a folder holding an image file and a label
//! file, raw or gzip-compressed.
//!
//! ```text
//! <folder>/images-idx3-ubyte[.gz]   0x00 0x00 0x08 0x03, then u32 count, rows, columns
//!                                   (big-endian), then count × rows × columns bytes
//! <folder>/labels-idx1-ubyte[.gz]   0x00 0x00 0x08 0x01, then u32 count, then count bytes
//! ```
//!
//! Both headers are checked against the file's length and against each other, and every
//! error names the file. Classes are the distinct label values of the training set, in
//! numeric order, named by their value (`"0"` to `"9"` for MNIST); a sample's id is its
//! position in the file, zero-padded (`"00042"`).

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::config::{Color, DataConfig};
use crate::data::{Dataset, Listing, Sample};

const IMAGES: &str = "images-idx3-ubyte";
const LABELS: &str = "labels-idx1-ubyte";

#[derive(Debug, thiserror::Error)]
pub enum IdxError {
    #[error(
        "{} has no {name} (nor {name}.gz)\nhint: data.layout = \"idx\" wants a folder holding \
         {IMAGES} and {LABELS}, raw or gzip-compressed",
        folder.display()
    )]
    Missing { folder: PathBuf, name: &'static str },
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{} is not an IDX file of the expected kind: {reason}", path.display())]
    Malformed { path: PathBuf, reason: String },
    #[error(
        "{} holds {images} images but {} holds {labels} labels; they must pair up one to one",
        images_path.display(), labels_path.display()
    )]
    CountMismatch { images_path: PathBuf, images: usize, labels_path: PathBuf, labels: usize },
    #[error(
        "IDX images have one channel, but data.color = \"rgb\"\nhint: set data.color = \
         \"grayscale\" for an IDX dataset"
    )]
    NotGrayscale,
    #[error(
        "{} has labels the training set never uses: {}\nhint: train and test need the same \
         classes",
        path.display(), labels.join(", ")
    )]
    UnknownLabels { path: PathBuf, labels: Vec<String> },
}

/// The file `name` in `folder`, or its `.gz` sibling, decompressed.
fn read(folder: &Path, name: &'static str) -> Result<(PathBuf, Vec<u8>), IdxError> {
    for candidate in [folder.join(name), folder.join(format!("{name}.gz"))] {
        let bytes = match std::fs::read(&candidate) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(IdxError::Io { path: candidate, source }),
        };
        if bytes.starts_with(&[0x1f, 0x8b]) {
            let mut raw = Vec::new();
            flate2::read::MultiGzDecoder::new(&bytes[..])
                .read_to_end(&mut raw)
                .map_err(|source| IdxError::Io { path: candidate.clone(), source })?;
            return Ok((candidate, raw));
        }
        return Ok((candidate, bytes));
    }
    Err(IdxError::Missing { folder: folder.to_path_buf(), name })
}

/// The dimensions of an unsigned-byte IDX file with `dimensions` axes, and its data, checked
/// against the file's length.
fn parse<'a>(
    path: &Path,
    bytes: &'a [u8],
    dimensions: usize,
) -> Result<(Vec<usize>, &'a [u8]), IdxError> {
    let malformed = |reason: String| IdxError::Malformed { path: path.to_path_buf(), reason };
    let header = 4 + 4 * dimensions;
    if bytes.len() < header {
        return Err(malformed(format!("{} bytes is shorter than its header", bytes.len())));
    }
    if bytes[..2] != [0, 0] {
        return Err(malformed(format!(
            "magic number {:02x?} does not start with 00 00",
            &bytes[..4]
        )));
    }
    if bytes[2] != 0x08 {
        return Err(malformed(format!(
            "element type 0x{:02x}; only unsigned bytes (0x08) are read",
            bytes[2]
        )));
    }
    if bytes[3] as usize != dimensions {
        return Err(malformed(format!("{} dimensions, expected {dimensions}", bytes[3])));
    }
    let sizes: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|chunk| u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) as usize)
        .collect();
    let expected = sizes.iter().try_fold(1usize, |product, size| product.checked_mul(*size));
    let data = &bytes[header..];
    if expected != Some(data.len()) {
        return Err(malformed(format!(
            "its header promises {} bytes of data ({}) but {} follow",
            expected.map_or("too many".to_string(), |n| n.to_string()),
            sizes.iter().map(ToString::to_string).collect::<Vec<_>>().join(" × "),
            data.len()
        )));
    }
    Ok((sizes, data))
}

/// A checked IDX folder: its images' size, pixels and labels.
struct Raw {
    images_path: PathBuf,
    labels_path: PathBuf,
    rows: usize,
    columns: usize,
    pixels: Vec<u8>,
    labels: Vec<u8>,
}

fn read_folder(folder: &Path) -> Result<Raw, IdxError> {
    let (images_path, images) = read(folder, IMAGES)?;
    let (labels_path, labels) = read(folder, LABELS)?;
    let (image_sizes, pixels) = parse(&images_path, &images, 3)?;
    let (label_sizes, label_bytes) = parse(&labels_path, &labels, 1)?;
    if image_sizes[0] != label_sizes[0] {
        return Err(IdxError::CountMismatch {
            images: image_sizes[0],
            labels: label_sizes[0],
            images_path,
            labels_path,
        });
    }
    Ok(Raw {
        rows: image_sizes[1],
        columns: image_sizes[2],
        pixels: pixels.to_vec(),
        labels: label_bytes.to_vec(),
        images_path,
        labels_path,
    })
}

/// The class names of a training folder: its distinct labels in numeric order.
pub fn classes(folder: &Path) -> Result<Vec<u8>, IdxError> {
    let (labels_path, labels) = read(folder, LABELS)?;
    let (_, labels) = parse(&labels_path, &labels, 1)?;
    let mut values = labels.to_vec();
    values.sort_unstable();
    values.dedup();
    Ok(values)
}

/// Loads the IDX folder `folder` with the class values `classes` (from the training set),
/// resized to `config.image_size` and normalised.
pub fn load(folder: &Path, classes: &[u8], config: &DataConfig) -> Result<Dataset, IdxError> {
    if config.color != Color::Grayscale {
        return Err(IdxError::NotGrayscale);
    }
    let raw = read_folder(folder)?;
    let unknown: Vec<String> = {
        let mut values: Vec<u8> =
            raw.labels.iter().copied().filter(|label| !classes.contains(label)).collect();
        values.sort_unstable();
        values.dedup();
        values.iter().map(ToString::to_string).collect()
    };
    if !unknown.is_empty() {
        return Err(IdxError::UnknownLabels { path: raw.labels_path, labels: unknown });
    }

    let [height, width] = crate::data::output_size(config).map(|size| size as usize);
    let (mean, std) = (config.mean[0], config.std[0]);
    let count = raw.labels.len();
    let digits = count.max(1).to_string().len().max(5);
    let mut pixels = Vec::with_capacity(count * height * width);
    for image in raw.pixels.chunks_exact(raw.rows * raw.columns) {
        let as_stored = config.center_crop.is_none()
            && [raw.rows, raw.columns] == config.image_size.map(|size| size as usize);
        let scaled: Vec<f32> = if as_stored {
            image.iter().map(|value| f32::from(*value) / 255.0).collect()
        } else {
            let buffer =
                image::GrayImage::from_raw(raw.columns as u32, raw.rows as u32, image.to_vec())
                    .ok_or_else(|| IdxError::Malformed {
                        path: raw.images_path.clone(),
                        reason: "an image does not fill its rows and columns".into(),
                    })?;
            crate::data::prepare(image::DynamicImage::ImageLuma8(buffer), config)
                .to_luma32f()
                .into_raw()
        };
        pixels.extend(scaled.into_iter().map(|value| (value - mean) / std));
    }
    let samples = raw
        .labels
        .iter()
        .enumerate()
        .map(|(index, label)| Sample {
            id: format!("{index:0digits$}"),
            label: classes.iter().position(|class| class == label).unwrap_or_default(),
        })
        .collect();
    let listing = Listing {
        root: folder.to_path_buf(),
        classes: classes.iter().map(ToString::to_string).collect(),
        samples,
        skipped: Vec::new(),
    };
    Ok(Dataset { listing, pixels, shape: [1, height, width], skipped_invalid: 0, targets: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(dimensions: &[u32], data: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0, 0, 0x08, dimensions.len() as u8];
        for size in dimensions {
            bytes.extend_from_slice(&size.to_be_bytes());
        }
        bytes.extend_from_slice(data);
        bytes
    }

    fn config(size: [u32; 2]) -> DataConfig {
        DataConfig {
            train: PathBuf::new(),
            test: PathBuf::new(),
            sources: Vec::new(),
            layout: crate::config::Layout::Idx,
            skip_invalid: false,
            color: Color::Grayscale,
            image_size: size,
            center_crop: None,
            mean: vec![0.0],
            std: vec![1.0],
            csv: None,
        }
    }

    fn folder(images: &[u8], labels: &[u8], gzip: bool) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in [(IMAGES, images), (LABELS, labels)] {
            if gzip {
                use std::io::Write;
                let mut encoder =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                encoder.write_all(bytes).unwrap();
                std::fs::write(dir.path().join(format!("{name}.gz")), encoder.finish().unwrap())
                    .unwrap();
            } else {
                std::fs::write(dir.path().join(name), bytes).unwrap();
            }
        }
        dir
    }

    #[test]
    fn raw_and_gzip_folders_load_the_same_samples() {
        // Three 2×2 images labelled 7, 3, 7.
        let images = idx(&[3, 2, 2], &[0, 255, 0, 255, 51, 51, 51, 51, 255, 255, 255, 255]);
        let labels = idx(&[3], &[7, 3, 7]);
        for gzip in [false, true] {
            let dir = folder(&images, &labels, gzip);
            let classes = classes(dir.path()).unwrap();
            assert_eq!(classes, [3, 7]);
            let dataset = load(dir.path(), &classes, &config([2, 2])).unwrap();
            assert_eq!(dataset.listing.classes, ["3", "7"]);
            assert_eq!(dataset.labels(), [1, 0, 1]);
            assert_eq!(dataset.listing.samples[2].id, "00002");
            assert_eq!(&dataset.pixels[..4], &[0.0, 1.0, 0.0, 1.0]);
            assert!((dataset.pixels[4] - 0.2).abs() < 1e-6);
        }
    }

    #[test]
    fn damaged_files_are_named_with_what_is_wrong() {
        let images = idx(&[2, 2, 2], &[0; 8]);
        let labels = idx(&[2], &[1, 2]);
        let error = |images: &[u8], labels: &[u8]| {
            let dir = folder(images, labels, false);
            let classes = classes(dir.path()).unwrap_or_else(|_| vec![1, 2]);
            load(dir.path(), &classes, &config([2, 2])).err().unwrap().to_string()
        };
        let message = error(&images[..images.len() - 1], &labels);
        assert!(message.contains(IMAGES), "{message}");
        assert!(message.contains("promises 8 bytes of data (2 × 2 × 2) but 7 follow"), "{message}");
        let mut wrong_type = images.clone();
        wrong_type[2] = 0x0d;
        assert!(error(&wrong_type, &labels).contains("element type 0x0d"));
        assert!(error(&images, &idx(&[2, 1], &[1, 2])).contains("2 dimensions, expected 1"));
        let message = error(&images, &idx(&[3], &[1, 2, 2]));
        assert!(message.contains("holds 2 images but"), "{message}");
        assert!(message.contains("holds 3 labels"), "{message}");

        let dir = tempfile::tempdir().unwrap();
        let message = classes(dir.path()).unwrap_err().to_string();
        assert!(
            message.contains("has no labels-idx1-ubyte (nor labels-idx1-ubyte.gz)"),
            "{message}"
        );
    }

    #[test]
    fn test_labels_outside_the_training_classes_are_an_error() {
        let dir = folder(&idx(&[1, 1, 1], &[0]), &idx(&[1], &[9]), false);
        let message = load(dir.path(), &[0, 1], &config([1, 1])).unwrap_err().to_string();
        assert!(message.contains("labels the training set never uses: 9"), "{message}");
    }

    #[test]
    fn images_of_another_size_are_resized() {
        let dir = folder(&idx(&[1, 4, 4], &[255; 16]), &idx(&[1], &[0]), false);
        let dataset = load(dir.path(), &[0], &config([2, 2])).unwrap();
        assert_eq!(dataset.shape, [1, 2, 2]);
        assert!(dataset.pixels.iter().all(|value| (value - 1.0).abs() < 1e-6));
    }
}
