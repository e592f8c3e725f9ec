//! LTX-Video as diffusers implements it (`../shared/specs/ltx-video.md`).

pub mod single_file;
pub mod transformer;
pub mod vae;

pub use transformer::{LtxTransformer, LtxTransformerConfig, TransformerInput};
pub use vae::{LtxVae, LtxVaeConfig, Posterior};
