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
