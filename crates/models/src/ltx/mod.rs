//! LTX-Video as diffusers implements it (`../shared/specs/ltx-video.md`).

pub mod single_file;
pub mod transformer;
pub mod upsampler;
pub mod vae;

pub use transformer::{LtxTransformer, LtxTransformerConfig, TransformerInput};
pub use upsampler::{LtxLatentUpsampler, LtxUpsamplerConfig};
pub use vae::{LtxVae, LtxVaeConfig, Posterior};
