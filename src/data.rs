//! Datasets in the image-folder layout: one sub-folder per class, named after it, holding that
//! class's images, as torchvision's `ImageFolder` reads them.
//!
//! Loading happens in two steps so that bad data is found before any training starts:
//! [`scan`] lists every image and class, then [`decode`] reads them all into one normalised
//! pixel buffer, collecting every file that fails rather than stopping at the first.
//!
//! Hidden entries (names starting with `.`) are skipped at every level, so `.DS_Store`,
//! `.ipynb_checkpoints` or a `.git` folder never become classes or samples. Files whose
//! extension is not an image format are skipped and counted. Images keep their first
//! `channels` channels after conversion: an alpha channel is dropped, not blended.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;

use crate::config::{Color, DataConfig};

/// Extensions read as images, compared without regard to case.
const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "bmp", "gif", "webp"];

/// How many failing files an error lists before it only counts the rest.
const LISTED_PROBLEMS: usize = 20;

/// The images of one dataset, found on disk but not yet decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub root: PathBuf,
    /// Class names in sorted order; a sample's label is an index into this.
    pub classes: Vec<String>,
    pub samples: Vec<Sample>,
    /// Files skipped because their extension is not an image format.
    pub skipped: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The path below the dataset root with `/` separators, e.g. `3/00012.png`. It identifies
    /// the sample across runs, in the predictions file.
    pub id: String,
    pub label: usize,
}

/// A decoded dataset: every image resized and normalised, in one `[n, channels, height, width]`
/// buffer, in the order of `listing.samples`.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub listing: Listing,
    pub pixels: Vec<f32>,
    /// Channels, height, width of one image.
    pub shape: [usize; 3],
    /// Images that failed to decode and were left out (only with `data.skip_invalid`).
    pub skipped_invalid: usize,
    /// A regression's target of each sample, in order; `None` for classification.
    pub targets: Option<Vec<f32>>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.listing.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.listing.samples.is_empty()
    }

    pub fn labels(&self) -> Vec<i64> {
        self.listing.samples.iter().map(|sample| sample.label as i64).collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(
        "dataset folder {} does not exist\nhint: paths in modelci.toml are relative to the \
         folder that holds it",
        .0.display()
    )]
    Missing(PathBuf),
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{} is not valid UTF-8; rename it so that its sample id can be written", .0.display())]
    NotUtf8(PathBuf),
    #[error(
        "{} has no class folders\nhint: the image-folder layout wants one sub-folder per class, \
         e.g. {}/cat/001.png",
        .0.display(), .0.display()
    )]
    NoClasses(PathBuf),
    #[error("class folders with no images: {}", list_paths(.0))]
    EmptyClasses(Vec<PathBuf>),
    #[error("{} image(s) could not be decoded:\n{}", .0.len(), list_problems(.0))]
    Undecodable(Vec<(PathBuf, String)>),
    #[error(
        "the test set's classes differ from the training set's\n  train ({}): {}\n  test ({}): \
         {}\nhint: both folders need the same class sub-folders",
        train_root.display(), train.join(", "), test_root.display(), test.join(", ")
    )]
    ClassMismatch { train_root: PathBuf, train: Vec<String>, test_root: PathBuf, test: Vec<String> },
}

fn list_paths(paths: &[PathBuf]) -> String {
    paths.iter().map(|path| path.display().to_string()).collect::<Vec<_>>().join(", ")
}

fn list_problems(problems: &[(PathBuf, String)]) -> String {
    let mut lines: Vec<String> = problems
        .iter()
        .take(LISTED_PROBLEMS)
        .map(|(path, reason)| format!("  {}: {reason}", path.display()))
        .collect();
    if problems.len() > LISTED_PROBLEMS {
        lines.push(format!("  ... and {} more", problems.len() - LISTED_PROBLEMS));
    }
    lines.join("\n")
}

fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.as_encoded_bytes().first() == Some(&b'.')
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io { path: path.to_path_buf(), source }
}

/// Entries of `dir` that are not hidden, sorted by name.
fn visible_entries(dir: &Path) -> Result<Vec<(String, PathBuf, std::fs::FileType)>, DataError> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name();
        if is_hidden(&name) {
            continue;
        }
        let path = entry.path();
        let name = name.into_string().map_err(|_| DataError::NotUtf8(path.clone()))?;
        // Follow symbolic links, so a linked class folder or image counts as what it points to.
        let file_type = std::fs::metadata(&path).map_err(io_error(&path))?.file_type();
        entries.push((name, path, file_type));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(entries)
}

/// Lists the classes and images under `root`. A class folder without images is an error,
/// unless `allow_empty` (`data.skip_invalid`): the class is then kept, with no samples.
pub fn scan(root: &Path, allow_empty: bool) -> Result<Listing, DataError> {
    if !root.is_dir() {
        return Err(DataError::Missing(root.to_path_buf()));
    }
    let mut listing =
        Listing { root: root.to_path_buf(), classes: vec![], samples: vec![], skipped: vec![] };
    let mut empty = Vec::new();
    for (name, path, file_type) in visible_entries(root)? {
        if !file_type.is_dir() {
            listing.skipped.push(path);
            continue;
        }
        let label = listing.classes.len();
        let before = listing.samples.len();
        collect_images(&path, &name, label, &mut listing)?;
        if listing.samples.len() == before {
            empty.push(path);
        }
        listing.classes.push(name);
    }
    if listing.classes.is_empty() {
        return Err(DataError::NoClasses(root.to_path_buf()));
    }
    if !empty.is_empty() && !allow_empty {
        return Err(DataError::EmptyClasses(empty));
    }
    Ok(listing)
}

/// Adds the images below `dir`, in sorted order, sub-folders included.
fn collect_images(
    dir: &Path,
    id_prefix: &str,
    label: usize,
    listing: &mut Listing,
) -> Result<(), DataError> {
    for (name, path, file_type) in visible_entries(dir)? {
        let id = format!("{id_prefix}/{name}");
        if file_type.is_dir() {
            collect_images(&path, &id, label, listing)?;
        } else if has_image_extension(&name) {
            listing.samples.push(Sample { id, label });
        } else {
            listing.skipped.push(path);
        }
    }
    Ok(())
}

fn has_image_extension(name: &str) -> bool {
    Path::new(name).extension().and_then(|extension| extension.to_str()).is_some_and(|extension| {
        IMAGE_EXTENSIONS.iter().any(|known| extension.eq_ignore_ascii_case(known))
    })
}

/// Checks that two listings share one class map, as training and evaluation must.
pub fn check_same_classes(train: &Listing, test: &Listing) -> Result<(), DataError> {
    if train.classes == test.classes {
        return Ok(());
    }
    Err(DataError::ClassMismatch {
        train_root: train.root.clone(),
        train: train.classes.clone(),
        test_root: test.root.clone(),
        test: test.classes.clone(),
    })
}

/// Decodes, resizes and normalises every image of `listing`. `on_image` is called once per
/// image, for progress reporting. An image that fails to decode is an error, or with
/// `data.skip_invalid` is left out and returned with the reason.
pub fn decode(
    listing: Listing,
    config: &DataConfig,
    on_image: &(dyn Fn() + Sync),
) -> Result<(Dataset, Vec<(PathBuf, String)>), DataError> {
    let [height, width] = output_size(config);
    let channels = config.color.channels();
    let plane = height as usize * width as usize;
    let image_len = channels * plane;

    // Decoding is most of the loading time: every core decodes, each image into its own slot.
    let mut pixels = vec![0f32; listing.samples.len() * image_len];
    let problems: Vec<(PathBuf, String)> = {
        use rayon::prelude::*;
        pixels
            .par_chunks_exact_mut(image_len)
            .zip(listing.samples.par_iter())
            .filter_map(|(out, sample)| {
                let path = listing.root.join(&sample.id);
                let decoded = decode_one(&path, config, out);
                on_image();
                decoded.err().map(|reason| (path, reason))
            })
            .collect()
    };
    let shape = [channels, height as usize, width as usize];
    if problems.is_empty() {
        return Ok((
            Dataset { listing, pixels, shape, skipped_invalid: 0, targets: None },
            problems,
        ));
    }
    if !config.skip_invalid {
        return Err(DataError::Undecodable(problems));
    }
    // Leave the failed images out: their samples and their slots in the pixel buffer.
    let failed: std::collections::HashSet<&Path> =
        problems.iter().map(|(path, _)| path.as_path()).collect();
    let mut kept_samples = Vec::with_capacity(listing.samples.len() - problems.len());
    let mut kept_pixels = Vec::with_capacity(kept_samples.capacity() * image_len);
    for (sample, image) in listing.samples.iter().zip(pixels.chunks_exact(image_len)) {
        if !failed.contains(listing.root.join(&sample.id).as_path()) {
            kept_samples.push(sample.clone());
            kept_pixels.extend_from_slice(image);
        }
    }
    let skipped_invalid = problems.len();
    let listing = Listing { samples: kept_samples, ..listing };
    Ok((Dataset { listing, pixels: kept_pixels, shape, skipped_invalid, targets: None }, problems))
}

/// The `[height, width]` the model sees: the centre crop, or else the resized size.
pub fn output_size(config: &DataConfig) -> [u32; 2] {
    config.center_crop.unwrap_or(config.image_size)
}

/// Resizes an image to `data.image_size` (bilinear) and takes its `data.center_crop`.
pub fn prepare(mut image: image::DynamicImage, config: &DataConfig) -> image::DynamicImage {
    let [height, width] = config.image_size;
    if image.width() != width || image.height() != height {
        image = image.resize_exact(width, height, FilterType::Triangle);
    }
    if let Some([crop_height, crop_width]) = config.center_crop {
        let (left, top) = ((width - crop_width) / 2, (height - crop_height) / 2);
        image = image.crop_imm(left, top, crop_width, crop_height);
    }
    image
}

/// Decodes one image into `out`, laid out channel by channel.
fn decode_one(path: &Path, config: &DataConfig, out: &mut [f32]) -> Result<(), String> {
    let reader = image::ImageReader::open(path).map_err(|error| error.to_string())?;
    let reader = reader.with_guessed_format().map_err(|error| error.to_string())?;
    let image = prepare(reader.decode().map_err(|error| error.to_string())?, config);
    let [height, width] = output_size(config);
    let plane = height as usize * width as usize;
    let interleaved: Vec<f32> = match config.color {
        Color::Grayscale => image.to_luma32f().into_raw(),
        Color::Rgb => image.to_rgb32f().into_raw(),
    };
    let channels = config.color.channels();
    for (index, value) in interleaved.iter().enumerate() {
        let channel = index % channels;
        let normalised = (value - config.mean[channel]) / config.std[channel];
        out[channel * plane + index / channels] = normalised;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path, bytes: &[u8]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    fn png(path: &Path, value: u8) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        image::GrayImage::from_pixel(2, 2, image::Luma([value])).save(path).unwrap();
    }

    fn config() -> DataConfig {
        DataConfig {
            train: PathBuf::new(),
            test: PathBuf::new(),
            sources: Vec::new(),
            layout: crate::config::Layout::ImageFolder,
            skip_invalid: false,
            color: Color::Grayscale,
            image_size: [2, 2],
            center_crop: None,
            mean: vec![0.5],
            std: vec![0.5],
            csv: None,
        }
    }

    #[test]
    fn scan_sorts_classes_and_skips_hidden_entries() {
        let dir = tempfile::tempdir().unwrap();
        png(&dir.path().join("b/1.png"), 0);
        png(&dir.path().join("a/2.PNG"), 0);
        png(&dir.path().join("a/nested/3.png"), 0);
        touch(&dir.path().join("a/.DS_Store"), b"junk");
        png(&dir.path().join(".ipynb_checkpoints/4.png"), 0);
        png(&dir.path().join("b/.hidden/5.png"), 0);
        touch(&dir.path().join("b/notes.txt"), b"not an image");

        let listing = scan(dir.path(), false).unwrap();
        assert_eq!(listing.classes, ["a", "b"]);
        let ids: Vec<_> = listing.samples.iter().map(|s| (s.id.as_str(), s.label)).collect();
        assert_eq!(ids, [("a/2.PNG", 0), ("a/nested/3.png", 0), ("b/1.png", 1)]);
        assert_eq!(listing.skipped, [dir.path().join("b/notes.txt")]);
    }

    #[test]
    fn empty_class_folder_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        png(&dir.path().join("a/1.png"), 0);
        std::fs::create_dir_all(dir.path().join("b")).unwrap();
        let error = scan(dir.path(), false).unwrap_err().to_string();
        assert!(error.contains(&dir.path().join("b").display().to_string()), "{error}");
    }

    #[test]
    fn decode_normalises_and_names_every_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        png(&dir.path().join("a/white.png"), 255);
        png(&dir.path().join("a/black.png"), 0);
        let listing = scan(dir.path(), false).unwrap();
        let (dataset, _) = decode(listing, &config(), &|| {}).unwrap();
        // black.png sorts first: (0 - 0.5) / 0.5 = -1, then white: (1 - 0.5) / 0.5 = 1.
        assert_eq!(dataset.pixels, [-1.0, -1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0]);

        touch(&dir.path().join("a/broken.png"), b"\x89PNG\r\n\x1a\nnot really");
        touch(&dir.path().join("a/empty.png"), b"");
        let listing = scan(dir.path(), false).unwrap();
        let error = decode(listing, &config(), &|| {}).unwrap_err().to_string();
        assert!(error.starts_with("2 image(s) could not be decoded"), "{error}");
        assert!(error.contains("broken.png"), "{error}");
        assert!(error.contains("empty.png"), "{error}");
    }

    /// Decodes the one image of a folder holding `name` under class `a`.
    fn decode_single(dir: &Path, color: Color) -> Vec<f32> {
        let channels = color.channels();
        let config = DataConfig {
            color,
            image_size: [1, 2],
            mean: vec![0.0; channels],
            std: vec![1.0; channels],
            ..config()
        };
        decode(scan(dir, false).unwrap(), &config, &|| {}).unwrap().0.pixels
    }

    #[test]
    fn every_png_colour_type_converts_to_the_configured_channels() {
        let folder = |write: &dyn Fn(&Path)| {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("a")).unwrap();
            write(&dir.path().join("a/1.png"));
            dir
        };
        // Two pixels: red, then white. Grayscale uses the Rec. 709 luma weights.
        let rgb = folder(&|path| {
            image::RgbImage::from_raw(2, 1, vec![255, 0, 0, 255, 255, 255])
                .unwrap()
                .save(path)
                .unwrap()
        });
        let reference = decode_single(rgb.path(), Color::Grayscale);
        assert!((reference[0] - 0.2126).abs() < 0.01, "{reference:?}");
        assert!((reference[1] - 1.0).abs() < 1e-6, "{reference:?}");

        // RGBA: the alpha channel is dropped, whatever it is.
        let rgba = folder(&|path| {
            image::RgbaImage::from_raw(2, 1, vec![255, 0, 0, 0, 255, 255, 255, 7])
                .unwrap()
                .save(path)
                .unwrap()
        });
        assert_eq!(decode_single(rgba.path(), Color::Grayscale), reference);
        assert_eq!(decode_single(rgba.path(), Color::Rgb), decode_single(rgb.path(), Color::Rgb));

        // A palette image: the same colours by index.
        let palette = folder(&|path| {
            let mut encoder = png::Encoder::new(std::fs::File::create(path).unwrap(), 2, 1);
            encoder.set_color(png::ColorType::Indexed);
            encoder.set_palette(vec![255, 0, 0, 255, 255, 255]);
            encoder.write_header().unwrap().write_image_data(&[0, 1]).unwrap();
        });
        assert_eq!(decode_single(palette.path(), Color::Grayscale), reference);

        // 16-bit grayscale: full scale is 1.0, and an RGB model gets it on every channel.
        let deep = folder(&|path| {
            image::ImageBuffer::<image::Luma<u16>, _>::from_raw(2, 1, vec![0u16, 65535])
                .unwrap()
                .save(path)
                .unwrap()
        });
        assert_eq!(decode_single(deep.path(), Color::Grayscale), [0.0, 1.0]);
        assert_eq!(decode_single(deep.path(), Color::Rgb), [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]);
    }

    #[test]
    fn jpeg_bmp_gif_and_webp_decode_like_png() {
        // A white pixel and a black one survive every format, lossy JPEG included (within a
        // few levels).
        let image = image::RgbImage::from_raw(2, 1, vec![255, 255, 255, 0, 0, 0]).unwrap();
        for extension in ["png", "jpg", "bmp", "gif", "webp"] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("a")).unwrap();
            image.save(dir.path().join(format!("a/1.{extension}"))).unwrap();
            let pixels = decode_single(dir.path(), Color::Grayscale);
            assert!(
                (pixels[0] - 1.0).abs() < 0.05 && pixels[1].abs() < 0.05,
                "{extension}: {pixels:?}"
            );
        }
    }

    #[test]
    fn the_centre_crop_is_taken_after_resizing() {
        let dir = tempfile::tempdir().unwrap();
        // A 4×4 image whose centre 2×2 is white and whose border is black.
        let mut image = image::GrayImage::new(4, 4);
        for (x, y) in [(1, 1), (1, 2), (2, 1), (2, 2)] {
            image.put_pixel(x, y, image::Luma([255]));
        }
        std::fs::create_dir_all(dir.path().join("a")).unwrap();
        image.save(dir.path().join("a/1.png")).unwrap();
        let config = DataConfig { image_size: [4, 4], center_crop: Some([2, 2]), ..config() };
        let (dataset, _) = decode(scan(dir.path(), false).unwrap(), &config, &|| {}).unwrap();
        assert_eq!(dataset.shape, [1, 2, 2]);
        assert_eq!(dataset.pixels, [1.0; 4], "only the white centre is left");
    }

    #[test]
    fn images_are_resized_to_the_configured_size() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a")).unwrap();
        image::GrayImage::from_pixel(5, 3, image::Luma([255]))
            .save(dir.path().join("a/x.png"))
            .unwrap();
        let (dataset, _) = decode(scan(dir.path(), false).unwrap(), &config(), &|| {}).unwrap();
        assert_eq!(dataset.shape, [1, 2, 2]);
        assert_eq!(dataset.pixels, [1.0; 4]);
    }
}
