//! Two things about the libtorch that torch-sys linked against (it tells us its `lib/` folder):
//!
//! - every binary of this package (modelci, its tests, its benches) gets an rpath to that
//!   folder, so that running them never needs LD_LIBRARY_PATH;
//! - its version and whether it has CUDA become compile-time constants for `modelci doctor`
//!   and the run metadata.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else { return };
    let lib = Path::new(&lib);

    let target = std::env::var("TARGET").unwrap_or_default();
    if !target.contains("windows") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }

    let root = lib.parent().unwrap_or(lib);
    let version = ["include/torch/headeronly/version.h", "include/torch/version.h"]
        .iter()
        .find_map(|header| std::fs::read_to_string(root.join(header)).ok())
        .and_then(|header| {
            let part = |name: &str| {
                header.lines().find_map(|line| {
                    line.strip_prefix(&format!("#define TORCH_VERSION_{name} "))
                        .map(|value| value.trim().to_string())
                })
            };
            Some(format!("{}.{}.{}", part("MAJOR")?, part("MINOR")?, part("PATCH")?))
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=MODELCI_LIBTORCH_VERSION={version}");
    println!("cargo:rustc-env=MODELCI_LIBTORCH_LIB={}", lib.display());

    let has_cuda =
        ["libtorch_cuda.so", "torch_cuda.dll"].iter().any(|name| lib.join(name).exists());
    println!("cargo:rustc-env=MODELCI_LIBTORCH_CUDA={}", if has_cuda { "yes" } else { "no" });
}
