//! Everything between ltx-i2v and the GPU: which device to use, loading libtorch's CUDA
//! library at run time, the C++ shim over c10's CUDA API (allocator statistics, streams),
//! and the hand-written CUDA kernels (compiled with NVRTC or nvcc, launched with cudarc on
//! torch's current stream).
//!
//! Nothing here assumes the build host or the run host has a GPU: every CUDA path is behind
//! [`cuda::runtime`], which explains exactly what is missing when CUDA is not usable.

pub mod cuda;
pub mod device;
mod error;
mod ffi;
pub mod kernels;
pub mod report;
pub mod stream;

pub use cuda::{CudaDevice, CudaUnavailable, MemoryStats};
pub use device::DeviceSpec;
pub use error::GpuError;

/// Version of the libtorch headers this binary was compiled against.
pub fn torch_version() -> &'static str {
    // SAFETY: returns a pointer to a static NUL-terminated string literal.
    unsafe { std::ffi::CStr::from_ptr(ffi::ltx_torch_version()) }
        .to_str()
        .unwrap_or("unknown")
}
