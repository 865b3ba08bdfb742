//! What modelci knows about the libtorch it runs on, and the choice of device.

use crate::config::Device;

/// The libtorch version this binary was built against.
pub const LIBTORCH_VERSION: &str = env!("MODELCI_LIBTORCH_VERSION");
/// The `lib/` folder this binary was linked against and finds at run time (its rpath).
pub const LIBTORCH_LIB: &str = env!("MODELCI_LIBTORCH_LIB");
/// Whether that libtorch has the CUDA libraries.
pub const LIBTORCH_HAS_CUDA: bool = matches!(env!("MODELCI_LIBTORCH_CUDA").as_bytes(), b"yes");

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(
        "train.device = \"{requested}\" asks for CUDA, but this modelci was built against a \
         libtorch without CUDA\nhint: use device = \"cpu\" or \"auto\", or build modelci with \
         LIBTORCH pointing at a CUDA build of libtorch {LIBTORCH_VERSION}"
    )]
    NoCudaLibtorch { requested: Device },
    #[error(
        "train.device = \"{requested}\" asks for CUDA, but no CUDA device is usable (libtorch \
         sees {count})\nhint: check the GPU driver with nvidia-smi, or use device = \"auto\""
    )]
    NoCudaDevice { requested: Device, count: i64 },
    #[error(
        "modelci was built against libtorch {LIBTORCH_VERSION}, but the libtorch it loaded from \
         {} is {loaded}\nhint: rebuild modelci (`cargo clean`, then build) against the libtorch \
         you want, or point LIBTORCH at a libtorch {LIBTORCH_VERSION}",
        folder.display()
    )]
    VersionMismatch { folder: std::path::PathBuf, loaded: String },
}

/// The folder of the `libtorch_cpu` this process has mapped, from `/proc/self/maps` (Linux
/// only; `None` elsewhere or before libtorch is loaded).
pub fn loaded_lib_dir() -> Option<std::path::PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| path.ends_with("/libtorch_cpu.so") || path.contains("/libtorch_cpu.so."))
        .and_then(|path| std::path::Path::new(path).parent().map(std::path::Path::to_path_buf))
}

/// The version a libtorch folder declares: its `build-version` file (the official archives and
/// scripts/libtorch.py write one) or its version header, without a `+cpu`-style suffix.
pub fn declared_version(root: &std::path::Path) -> Option<String> {
    if let Ok(text) = std::fs::read_to_string(root.join("build-version")) {
        return text.split(['+', '\n']).next().map(|version| version.trim().to_string());
    }
    let header = std::fs::read_to_string(root.join("include/torch/headeronly/version.h"))
        .or_else(|_| std::fs::read_to_string(root.join("include/torch/version.h")))
        .ok()?;
    let part = |name: &str| {
        header.lines().find_map(|line| {
            line.strip_prefix(&format!("#define TORCH_VERSION_{name} ")).map(str::trim)
        })
    };
    Some(format!("{}.{}.{}", part("MAJOR")?, part("MINOR")?, part("PATCH")?))
}

/// Checks that the libtorch loaded at run time is the version this binary was built for.
/// Where that cannot be told (no `/proc`, no version file), it passes.
pub fn check_runtime() -> Result<(), DeviceError> {
    // Make sure libtorch is loaded before looking for it.
    let _ = tch::Cuda::is_available();
    let Some(lib) = loaded_lib_dir() else { return Ok(()) };
    let root = lib.parent().unwrap_or(&lib);
    match declared_version(root) {
        Some(loaded) if loaded != LIBTORCH_VERSION => {
            Err(DeviceError::VersionMismatch { folder: lib, loaded })
        }
        _ => Ok(()),
    }
}

/// The device a run uses, and why it was chosen.
#[derive(Debug, Clone)]
pub struct ChosenDevice {
    pub device: tch::Device,
    pub name: String,
    pub reason: &'static str,
}

/// Turns the configured device into a libtorch device, or explains why it cannot be had.
pub fn choose_device(requested: Device) -> Result<ChosenDevice, DeviceError> {
    check_runtime()?;
    let count = tch::Cuda::device_count();
    match requested {
        Device::Cpu => {
            Ok(ChosenDevice { device: tch::Device::Cpu, name: "cpu".into(), reason: "configured" })
        }
        Device::Auto if count > 0 => Ok(ChosenDevice {
            device: tch::Device::Cuda(0),
            name: "cuda:0".into(),
            reason: "auto: a CUDA device is usable",
        }),
        Device::Auto => Ok(ChosenDevice {
            device: tch::Device::Cpu,
            name: "cpu".into(),
            reason: if LIBTORCH_HAS_CUDA {
                "auto: no CUDA device is visible"
            } else {
                "auto: this libtorch has no CUDA"
            },
        }),
        Device::Cuda(_) if !LIBTORCH_HAS_CUDA => Err(DeviceError::NoCudaLibtorch { requested }),
        Device::Cuda(index) if (index as i64) < count => Ok(ChosenDevice {
            device: tch::Device::Cuda(index),
            name: format!("cuda:{index}"),
            reason: "configured",
        }),
        Device::Cuda(_) => Err(DeviceError::NoCudaDevice { requested, count }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loaded_libtorch_is_found_and_is_the_one_built_for() {
        assert!(check_runtime().is_ok());
        let lib = loaded_lib_dir().expect("libtorch_cpu is mapped");
        assert!(lib.join("libtorch_cpu.so").exists(), "{}", lib.display());
        assert_eq!(declared_version(lib.parent().unwrap()).as_deref(), Some(LIBTORCH_VERSION));
    }

    #[test]
    fn versions_are_read_from_build_version_or_the_header() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("build-version"), "2.12.1+cpu\n").unwrap();
        assert_eq!(declared_version(dir.path()).as_deref(), Some("2.12.1"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("include/torch")).unwrap();
        std::fs::write(
            dir.path().join("include/torch/version.h"),
            "#define TORCH_VERSION_MAJOR 2\n#define TORCH_VERSION_MINOR 9\n#define TORCH_VERSION_PATCH 0\n",
        )
        .unwrap();
        assert_eq!(declared_version(dir.path()).as_deref(), Some("2.9.0"));
        let message = DeviceError::VersionMismatch {
            folder: "/opt/libtorch/lib".into(),
            loaded: "2.9.0".into(),
        }
        .to_string();
        assert!(message.contains("built against libtorch 2.13.0"), "{message}");
        assert!(message.contains("/opt/libtorch/lib is 2.9.0"), "{message}");
    }
}
