use std::path::PathBuf;

/// Errors while reading configs and weights or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("{path}: tensor {name} has dtype {dtype}, which is not supported")]
    UnsupportedDtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    #[error("missing tensor {name} (the model expects shape {expected:?}) in {source_desc}")]
    MissingTensor {
        name: String,
        expected: Vec<i64>,
        source_desc: String,
    },
    #[error("tensor {name} has shape {found:?} in {source_desc}, the model expects {expected:?}")]
    ShapeMismatch {
        name: String,
        found: Vec<i64>,
        expected: Vec<i64>,
        source_desc: String,
    },
    #[error("unexpected tensor(s) in {source_desc} that the model does not use: {names}")]
    UnexpectedTensors { names: String, source_desc: String },
    #[error("tensor {name} appears in more than one file: {first} and {second}")]
    DuplicateTensor {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("unsupported configuration: {0}")]
    UnsupportedConfig(String),
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Placing weights (offload, streaming) failed.
    #[error("memory system: {0}")]
    Memory(String),
    #[error("cancelled")]
    Cancelled,
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// A random generator's failure (`ltx_gpu::rng`): torch errors stay torch errors, a bad draw
/// request is bad input, and a device without generators (no usable CUDA) is a configuration
/// this machine cannot run.
impl From<ltx_gpu::GpuError> for ModelError {
    fn from(e: ltx_gpu::GpuError) -> Self {
        match e {
            ltx_gpu::GpuError::Torch(t) => Self::Torch(t),
            ltx_gpu::GpuError::InvalidArgument(m) => Self::InvalidInput(m),
            other => Self::UnsupportedConfig(other.to_string()),
        }
    }
}
