//! One error type for face analysis; each variant says what a user can do about it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum FaceError {
    /// No usable ONNX Runtime library: where we looked and how to provide one.
    #[error("ONNX Runtime is not available: {0}")]
    Runtime(String),
    /// The model folder lacks a network, or a file in it cannot be used.
    #[error("face models in {dir}: {problem}")]
    Models { dir: PathBuf, problem: String },
    /// A network failed to load or to run, or gave outputs of an unexpected shape.
    #[error("{model}: {problem}")]
    Inference { model: String, problem: String },
    /// The detector found nothing at the threshold in effect; `image` names the image
    /// ("the image", or which of several: "the pose image", "reference image 2").
    #[error("no face found in {image} (detector threshold {threshold})")]
    NoFace { threshold: f32, image: String },
    /// The upload is not a readable image, or exceeds a limit.
    #[error("image: {0}")]
    Image(String),
    /// An option outside its range (the value and the rule).
    #[error("invalid setting: {0}")]
    Config(String),
}

pub type Result<T, E = FaceError> = std::result::Result<T, E>;
