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
pub mod libs;
pub mod pinned;
pub mod report;
pub mod rng;
pub mod stream;
pub mod torch_load;

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

/// Seeds torch's generators like `tch::manual_seed`, after giving CUDA the chance to load:
/// seeding reaches torch's CUDA hooks, and if they are asked before libtorch_cuda is loaded,
/// torch decides for the whole process that there is no CUDA. Without an NVIDIA driver the
/// check costs nothing.
pub fn manual_seed(seed: i64) {
    if cuda::driver_present() {
        let _ = cuda::runtime();
    }
    tch::manual_seed(seed);
}

/// `dst.copy_(src, non_blocking)` through ATen, on the current stream: tch's `copy_` always
/// blocks, which would put a host synchronisation in every streamed copy. From pinned host
/// memory to a CUDA tensor with `non_blocking`, the copy is queued and this returns at once.
pub fn copy_into(dst: &tch::Tensor, src: &tch::Tensor, non_blocking: bool) -> Result<(), GpuError> {
    let (d, s) = (
        dst.as_ptr() as *mut std::ffi::c_void,
        src.as_ptr() as *const std::ffi::c_void,
    );
    // SAFETY: both are live at::Tensor handles owned by the callers for the whole call; the
    // shim catches every C++ exception.
    ffi::call(|e, n| unsafe { ffi::ltx_tensor_copy_(d, s, i32::from(non_blocking), e, n) })
        .map_err(GpuError::Cuda)
}

#[cfg(test)]
mod copy_tests {
    #[test]
    fn copy_into_writes_the_destination_and_reports_errors() {
        let src = tch::Tensor::from_slice(&[1f32, 2., 3., 4.]);
        let dst = tch::Tensor::zeros([4], (tch::Kind::Float, tch::Device::Cpu));
        super::copy_into(&dst.narrow(0, 1, 2), &src.narrow(0, 0, 2), true).unwrap();
        assert_eq!(Vec::<f32>::try_from(&dst).unwrap(), vec![0., 1., 2., 0.]);
        let wrong = tch::Tensor::zeros([3], (tch::Kind::Float, tch::Device::Cpu));
        let e = super::copy_into(&wrong, &src, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("size"), "{e}");
    }
}
