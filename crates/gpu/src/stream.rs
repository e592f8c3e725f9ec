//! torch's CUDA streams, seen from Rust: take one from torch's pool, wrap one that another
//! library created, read torch's current stream, and make a stream current for a scope.
//! Kernels launch on the current stream so they order with torch's own work without syncs.

use std::sync::Arc;

use cudarc::driver::{sys::CUstream, CudaStream};

use crate::cuda::CudaDevice;
use crate::{ffi, GpuError};

/// A stream torch knows about (its identity can be handed back to c10).
#[derive(Debug, Clone, Copy)]
pub struct TorchStream(ffi::ltx_stream);

// SAFETY: a stream handle is an opaque driver object usable from any thread.
unsafe impl Send for TorchStream {}
unsafe impl Sync for TorchStream {}

impl TorchStream {
    /// The raw `cudaStream_t`/`CUstream` (the same handle in the runtime and driver APIs).
    pub fn raw(&self) -> CUstream {
        self.0.raw as CUstream
    }

    pub fn device_index(&self) -> usize {
        self.0.device_index.max(0) as usize
    }

    /// This stream as a cudarc stream for launching kernels. The wrapper does not own it.
    pub fn as_cudarc(&self, device: &CudaDevice) -> Arc<CudaStream> {
        // SAFETY: the stream belongs to the device's primary context (torch's), and torch keeps
        // pool and default streams alive for the whole process; an external stream's owner
        // keeps it alive by the contract of `CudaDevice::wrap_external_stream`.
        unsafe { device.context().wrap_borrowed_stream(self.raw()) }
    }
}

impl PartialEq for TorchStream {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
            && self.0.device_index == other.0.device_index
            && self.0.device_type == other.0.device_type
    }
}

impl CudaDevice {
    /// A stream from torch's pool (round-robin over a fixed set; never destroyed).
    pub fn stream_from_pool(&self, high_priority: bool) -> Result<TorchStream, GpuError> {
        let mut s = ffi::ltx_stream::default();
        let d = self.index() as i32;
        // SAFETY: `s` outlives the call; err buffer handled by ffi::call.
        ffi::call(|e, n| unsafe {
            ffi::ltx_cuda_stream_from_pool(d, high_priority as i32, &mut s, e, n)
        })
        .map_err(GpuError::Cuda)?;
        Ok(TorchStream(s))
    }

    /// Makes a stream created elsewhere (e.g. a cudarc stream) known to torch.
    ///
    /// # Safety
    /// `raw` must be a live stream of this device's primary context, and must outlive every
    /// use of the returned handle.
    pub unsafe fn wrap_external_stream(&self, raw: CUstream) -> Result<TorchStream, GpuError> {
        let mut s = ffi::ltx_stream::default();
        let d = self.index() as i32;
        ffi::call(|e, n| unsafe {
            ffi::ltx_cuda_stream_from_external(raw.cast(), d, &mut s, e, n)
        })
        .map_err(GpuError::Cuda)?;
        Ok(TorchStream(s))
    }

    /// The stream torch currently issues work to on this device (for the calling thread).
    pub fn current_stream(&self) -> Result<TorchStream, GpuError> {
        let mut s = ffi::ltx_stream::default();
        let d = self.index() as i32;
        // SAFETY: `s` outlives the call; err buffer handled by ffi::call.
        ffi::call(|e, n| unsafe { ffi::ltx_cuda_current_stream(d, &mut s, e, n) })
            .map_err(GpuError::Cuda)?;
        Ok(TorchStream(s))
    }

    /// Makes `stream` torch's current stream on its device until the guard drops, then
    /// restores the previous one.
    pub fn use_stream(&self, stream: TorchStream) -> Result<CurrentStreamGuard, GpuError> {
        if stream.device_index() != self.index() {
            return Err(GpuError::InvalidArgument(format!(
                "stream of cuda:{} used on cuda:{}",
                stream.device_index(),
                self.index()
            )));
        }
        let previous = self.current_stream()?;
        set_current(stream)?;
        Ok(CurrentStreamGuard { previous })
    }
}

fn set_current(s: TorchStream) -> Result<(), GpuError> {
    // SAFETY: err buffer handled by ffi::call; the stream came from c10.
    ffi::call(|e, n| unsafe { ffi::ltx_cuda_set_current_stream(s.0, e, n) }).map_err(GpuError::Cuda)
}

/// Restores torch's previous current stream when dropped.
#[must_use = "the stream stops being current when the guard drops"]
pub struct CurrentStreamGuard {
    previous: TorchStream,
}

impl Drop for CurrentStreamGuard {
    fn drop(&mut self) {
        if let Err(e) = set_current(self.previous) {
            tracing::error!("restoring torch's current CUDA stream failed: {e}");
        }
    }
}
