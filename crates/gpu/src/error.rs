use crate::cuda::CudaUnavailable;

/// Errors of the GPU layer. CUDA being absent is [`GpuError::CudaUnavailable`], which says
/// exactly what is missing; nothing in this crate panics on a machine without a GPU.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("invalid device {input:?}: expected one of cpu, cuda, cuda:N (N = 0, 1, …), auto")]
    InvalidDevice { input: String },
    #[error(transparent)]
    CudaUnavailable(#[from] CudaUnavailable),
    #[error("CUDA call failed: {0}")]
    Cuda(String),
    #[error("NVRTC is not available: {0}")]
    NvrtcUnavailable(String),
    #[error("kernel {kernel} failed to compile for {arch}:\n{log}")]
    KernelCompile {
        kernel: String,
        arch: String,
        log: String,
    },
    #[error("unknown kernel {0:?}")]
    UnknownKernel(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

impl From<cudarc::driver::DriverError> for GpuError {
    fn from(e: cudarc::driver::DriverError) -> Self {
        GpuError::Cuda(e.to_string())
    }
}
