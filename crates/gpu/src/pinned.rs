//! Page-locked host memory of exactly the size asked for.
//!
//! torch's pinned allocator rounds every allocation up to the next power of two and keeps
//! freed blocks cached for reuse: a 9.5 GB T5-XXL would pin 16 GiB, and an unloaded model's
//! pinned memory would stay taken. These buffers come from `cudaHostAlloc` (through the shim),
//! are exactly `bytes` long, and are freed with `cudaFreeHost` when torch drops their storage,
//! so the bytes we count are the bytes pinned.

use tch::Tensor;

use crate::{cuda, ffi, GpuError};

/// A 1-D uint8 CPU tensor of `bytes` page-locked bytes. Loads CUDA first (nothing may touch
/// torch's CUDA hooks before libtorch_cuda is loaded); fails with the reason when CUDA is not
/// usable.
pub fn empty(bytes: usize) -> Result<Tensor, GpuError> {
    cuda::runtime()?;
    let bytes = i64::try_from(bytes)
        .map_err(|_| GpuError::InvalidArgument(format!("{bytes} bytes is too large")))?;
    let mut out: *mut std::ffi::c_void = std::ptr::null_mut();
    // SAFETY: `out` is a valid out-pointer; the shim catches every C++ exception and frees the
    // allocation itself when it cannot hand out the tensor.
    ffi::call(|e, n| unsafe { ffi::ltx_pinned_empty(bytes, &mut out, e, n) })
        .map_err(GpuError::Cuda)?;
    // SAFETY: on success the shim returns a new heap at::Tensor*, which is what tch's tensor
    // handle is; the Tensor takes ownership and deletes it on drop.
    Ok(unsafe { Tensor::from_ptr(out.cast()) })
}

/// Whether `t`'s memory is page-locked, as torch sees it. Without a usable CUDA nothing is
/// pinned, and torch's CUDA hooks are not touched (touching them before libtorch_cuda is
/// loaded would disable CUDA for the process).
pub fn is_pinned(t: &Tensor) -> bool {
    if cuda::runtime().is_err() {
        return false;
    }
    let mut out = 0;
    let h = t.as_ptr() as *const std::ffi::c_void;
    // SAFETY: `t` is a live tensor handle for the whole call; `out` is a valid out-pointer.
    ffi::call(|e, n| unsafe { ffi::ltx_tensor_is_pinned(h, &mut out, e, n) }).is_ok() && out != 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn without_cuda_nothing_is_pinned_and_pinning_says_why() {
        if super::cuda::runtime().is_ok() {
            return; // a GPU host: tests/gpu.rs covers it
        }
        let t = tch::Tensor::zeros([4], (tch::Kind::Uint8, tch::Device::Cpu));
        assert!(!super::is_pinned(&t));
        let e = super::empty(1024).unwrap_err().to_string();
        assert!(
            e.contains("NVIDIA driver") || e.contains("libtorch_cuda"),
            "{e}"
        );
    }
}
