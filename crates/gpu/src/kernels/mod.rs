//! The hand-written CUDA kernels (`kernels/*.cu`): sources embedded at build time (with PTX
//! when `nvcc` was on the build host's PATH), compiled with NVRTC on first use otherwise, and
//! cached per (architecture, source hash) in memory and on disk.

pub mod attention;
mod registry;
pub mod tile_accumulate;

pub use registry::{compile, nvrtc_status, KernelRegistry, NvrtcStatus};

/// One `kernels/*.cu` file after build.rs inlined `abi.h` into it.
#[derive(Debug)]
pub struct KernelSource {
    /// File stem, e.g. `tile_accumulate`.
    pub name: &'static str,
    pub source: &'static str,
    /// (`compute_XY`, PTX) pairs nvcc produced at build time; empty without nvcc.
    pub precompiled: &'static [(&'static str, &'static str)],
}

/// Every kernel source in the repository.
pub static KERNELS: &[KernelSource] = include!(concat!(env!("OUT_DIR"), "/kernel_table.rs"));

/// Architectures CI compiles every kernel for (A100, L40/Ada, H100/H200).
pub const CI_ARCHS: &[&str] = &["compute_80", "compute_89", "compute_90"];

pub fn source(name: &str) -> Option<&'static KernelSource> {
    KERNELS.iter().find(|k| k.name == name)
}
