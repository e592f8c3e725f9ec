//! Pipelines built from the models: LTX-Video image-to-video and InstantID portraits, with
//! the image preprocessing, memory placement and progress reporting around them.

pub mod condition_run;
pub mod demo;
pub mod image;
pub mod instantid;
pub mod latent_upsample;
pub mod ltx_condition;
pub mod ltx_i2v;
pub mod memory;
pub mod multiscale;
pub mod sdxl_tiled_decode;
pub mod tiled_decode;
pub mod video;
pub mod video_in;

pub use instantid::{analyze_faces, FaceConditioning, InstantIdParams, InstantIdPipeline};
pub use ltx_i2v::{I2vParams, LoadOptions, LtxI2vPipeline, ModelSource, Progress};
pub use ltx_offload::budget::{self, BudgetSpec};
pub use ltx_offload::OffloadMode;
pub use memory::{MemoryOptions, MemoryReport};

/// Progress reports that first ask `cancelled`: a stopped job ends at the next report with
/// [`ltx_models::ModelError::Cancelled`]. Shared by every pipeline.
pub(crate) fn reporter<'a, S>(
    progress: &'a mut dyn FnMut(S),
    cancelled: &'a dyn Fn() -> bool,
) -> impl FnMut(S) -> ltx_models::Result<()> + 'a {
    move |stage| {
        if cancelled() {
            return Err(ltx_models::ModelError::Cancelled);
        }
        progress(stage);
        Ok(())
    }
}
