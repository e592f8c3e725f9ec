//! InstantID (InstantX's `StableDiffusionXLInstantIDPipeline`) on SDXL: the models as users
//! have them — an SDXL diffusers folder (SDXL base 1.0, RealVisXL, …), InstantX's
//! `ControlNetModel/` (the IdentityNet) and `ip-adapter.bin` (the face Resampler and the
//! decoupled cross-attention weights) — and one generation from a face embedding and a
//! keypoint image, step for step as `../shared/specs/instantid.md` §3 describes it:
//!
//! - [`InstantIdModels`] — the loaded components (this file);
//! - [`params`] — a generation's settings, validated;
//! - `run` — the conditioning (prompt, face tokens, control image, time ids), the denoising
//!   loop, the decode;
//! - [`face`] — [`analyze_faces`]: the face image (and optional pose and reference images)
//!   through the face crate into a [`FaceConditioning`] (raw ArcFace embedding, keypoint image);
//! - [`pipeline`] — [`InstantIdPipeline`]: the models with their memory placement (none /
//!   model / sequential) and VAE tiling, a face conditioning in, the image's bytes out;
//! - [`workload`] — the device-memory estimate from the configs ([`instantid_workload`]).

pub mod demo;
pub mod face;
pub mod params;
pub mod pipeline;
mod run;
pub mod workload;

use std::path::{Path, PathBuf};

use ltx_models::sdxl::clip::{ClipTextModel, ClipTextModelWithProjection};
use ltx_models::sdxl::clip_tokenizer::ClipTokenizer;
use ltx_models::sdxl::folder::{
    check_controlnet_fits, load_controlnet, read_scheduler_config, SdxlFolder, SdxlLoadOptions,
    SdxlParams,
};
use ltx_models::sdxl::ip_bind::load_face_adapter;
use ltx_models::sdxl::resampler::Resampler;
use ltx_models::sdxl::unet::{ControlNetModel, UNet2DConditionModel};
use ltx_models::sdxl::vae::AutoencoderKl;
use ltx_models::Result;
use serde_json::Value;
use tch::{Device, Kind, Tensor};

pub use face::{analyze_faces, FaceConditioning};
pub use params::InstantIdParams;
pub use pipeline::InstantIdPipeline;
pub use run::{to_rgb_image, to_u8, Conditioning, PromptEmbeds, StepState};
pub use workload::{instantid_workload, InstantIdShapes};

/// Where the three parts of an InstantID model set are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstantIdPaths {
    /// The SDXL diffusers folder (with `model_index.json`).
    pub sdxl: PathBuf,
    /// The IdentityNet folder (`config.json` + `diffusion_pytorch_model.safetensors`).
    pub controlnet: PathBuf,
    /// `ip-adapter.bin`, or its `.safetensors` conversion.
    pub ip_adapter: PathBuf,
}

impl InstantIdPaths {
    /// InstantX's layout: `checkpoints/ControlNetModel/` and `checkpoints/ip-adapter.bin`.
    pub fn from_checkpoints(sdxl: &Path, checkpoints: &Path) -> Self {
        Self {
            sdxl: sdxl.to_path_buf(),
            controlnet: checkpoints.join("ControlNetModel"),
            ip_adapter: checkpoints.join("ip-adapter.bin"),
        }
    }
}

/// Where and in which dtypes the components load.
#[derive(Debug, Clone, PartialEq)]
pub struct InstantIdLoadOptions {
    /// The SDXL folder's components (device, dtypes, diffusers variant).
    pub sdxl: SdxlLoadOptions,
    /// The IdentityNet's dtype.
    pub controlnet: Kind,
    /// The face Resampler's dtype (InstantX casts it to the UNet's).
    pub face_adapter: Kind,
}

impl InstantIdLoadOptions {
    /// `kind` everywhere (the VAE in float32 when `kind` is float16 and its config sets
    /// `force_upcast`), on `device`, plain weight files.
    pub fn new(device: Device, kind: Kind) -> Self {
        Self {
            sdxl: SdxlLoadOptions::new(device, kind),
            controlnet: kind,
            face_adapter: kind,
        }
    }
}

/// The parameter handles of every component, for placing them later (offload modes).
pub struct InstantIdWeights {
    pub sdxl: SdxlParams,
    pub controlnet: Vec<(String, Tensor)>,
}

/// The loaded InstantID components, the IP weights bound to the UNet's attn2 layers.
pub struct InstantIdModels {
    pub tokenizer: ClipTokenizer,
    pub tokenizer_2: ClipTokenizer,
    pub text_encoder: ClipTextModel,
    pub text_encoder_2: ClipTextModelWithProjection,
    pub unet: UNet2DConditionModel,
    pub controlnet: ControlNetModel,
    pub resampler: Resampler,
    pub vae: AutoencoderKl,
    scheduler_config: Value,
    force_zeros_for_empty_prompt: bool,
    device: Device,
    text_kind: Kind,
    controlnet_kind: Kind,
    weight_bytes: u64,
    weights: Option<InstantIdWeights>,
}

impl InstantIdModels {
    /// Loads the SDXL folder, the IdentityNet and the face adapter, binds the adapter to the
    /// UNet and checks that the parts fit together (see [`SdxlFolder::check_sizes`] and
    /// [`check_controlnet_fits`]).
    pub fn load(paths: &InstantIdPaths, opts: &InstantIdLoadOptions) -> Result<Self> {
        let device = opts.sdxl.device;
        let mut sdxl = SdxlFolder::load(&paths.sdxl, &opts.sdxl)?;
        let cn = load_controlnet(
            &paths.controlnet,
            opts.sdxl.variant.as_deref(),
            opts.controlnet,
            device,
        )?;
        let (resampler, face_bytes) =
            load_face_adapter(&paths.ip_adapter, &mut sdxl.unet, opts.face_adapter, device)?;
        check_controlnet_fits(&cn.model, &sdxl.unet, resampler.shape().output_dim)?;
        tracing::info!(
            sdxl = %paths.sdxl.display(),
            class = %sdxl.index.class_name,
            ip_layers = sdxl.unet.ip_attention_layers().len(),
            face_tokens = resampler.shape().queries,
            "InstantID models loaded"
        );
        Ok(Self {
            tokenizer: sdxl.tokenizer,
            tokenizer_2: sdxl.tokenizer_2,
            text_encoder: sdxl.text_encoder,
            text_encoder_2: sdxl.text_encoder_2,
            unet: sdxl.unet,
            controlnet: cn.model,
            resampler,
            vae: sdxl.vae,
            scheduler_config: sdxl.scheduler_config,
            force_zeros_for_empty_prompt: sdxl.index.force_zeros_for_empty_prompt,
            device,
            text_kind: opts.sdxl.dtypes.text_encoder_2,
            controlnet_kind: opts.controlnet,
            weight_bytes: sdxl.weight_bytes + cn.bytes + face_bytes,
            weights: Some(InstantIdWeights {
                sdxl: sdxl.params,
                controlnet: cn.params,
            }),
        })
    }

    /// Uses the scheduler of `scheduler_config.json` at `path` from now on (e.g. Euler
    /// ancestral instead of the folder's Euler); it must be one [`SdxlScheduler`] implements.
    ///
    /// [`SdxlScheduler`]: ltx_models::sdxl::schedulers::SdxlScheduler
    pub fn set_scheduler_config_file(&mut self, path: &Path) -> Result<()> {
        self.scheduler_config = read_scheduler_config(path)?;
        Ok(())
    }

    /// The scheduler config each generation starts a fresh scheduler from.
    pub fn scheduler_config(&self) -> &Value {
        &self.scheduler_config
    }

    /// Whether a missing negative prompt gives zero negative embeddings (model_index.json).
    pub fn force_zeros_for_empty_prompt(&self) -> bool {
        self.force_zeros_for_empty_prompt
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Bytes of all weights held (text encoders, UNet with IP layers, IdentityNet, Resampler,
    /// VAE).
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// The parameter handles, once (for a memory system that places the weights).
    pub fn take_weights(&mut self) -> Option<InstantIdWeights> {
        self.weights.take()
    }
}
