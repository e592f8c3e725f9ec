//! Models implemented with tch, with PyTorch's parameter names so that diffusers-format weights
//! load as they are. Every module is built by [`weights::Vb`] from named tensors: a missing,
//! unexpected or wrongly shaped tensor is an error naming it.

pub mod attention;
pub mod config;
mod error;
pub mod hooks;
pub mod ltx;
pub mod nn;
pub mod scheduler;
pub mod sdxl;
pub mod t5;
pub mod t5_tokenizer;
pub mod text_encoder;
pub mod weights;

pub use error::ModelError;

pub type Result<T> = std::result::Result<T, ModelError>;
