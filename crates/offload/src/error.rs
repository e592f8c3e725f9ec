#[derive(Debug, thiserror::Error)]
pub enum OffloadError {
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("CUDA: {0}")]
    Gpu(#[from] ltx_gpu::GpuError),
    #[error("CUDA driver: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
    #[error("offload: {0}")]
    Invalid(String),
}

impl From<OffloadError> for ltx_models::ModelError {
    fn from(e: OffloadError) -> Self {
        match e {
            OffloadError::Torch(t) => ltx_models::ModelError::Torch(t),
            other => ltx_models::ModelError::Memory(other.to_string()),
        }
    }
}
