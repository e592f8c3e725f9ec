//! [`InstantIdPipeline`]: the loaded InstantID models with their memory placement and VAE
//! tiling, from a face conditioning and settings to the image's bytes.
//!
//! Memory modes (as InstantX's / diffusers' `enable_model_cpu_offload` orders the components):
//!
//! - `none`: every weight resident on the device;
//! - `model`: the text encoders, then the IdentityNet + UNet + face Resampler, then the VAE, each
//!   onloaded for its stage and offloaded when the next one needs the room;
//! - `sequential`: the UNet's and the IdentityNet's streaming units (each resnet, transformer
//!   and resampler, `block_names()`) streamed through the ring of [`ltx_offload::Streamer`]
//!   while the denoising stage runs, the rest model-offloaded as above.
//!
//! Either offload mode leaves no weight on the device after a generation (the streamers are
//! made when the denoising stage starts and taken apart when it ends).

use std::sync::OnceLock;

use ltx_gpu::kernels::KernelRegistry;
use ltx_models::{ModelError, Result};
use ltx_offload::budget::{ComponentSizes, Workload};
use ltx_offload::weights::{group_sizes, prefix_units};
use ltx_offload::OffloadMode;
use tch::{Device, Kind, Tensor};

use super::face::FaceConditioning;
use super::workload::{instantid_workload, InstantIdShapes};
use super::{to_u8, InstantIdLoadOptions, InstantIdModels, InstantIdParams, InstantIdWeights};
use crate::memory::{Component, Memory, MemoryOptions, MemoryReport};
use crate::sdxl_tiled_decode::{self, SdxlTileConfig, TilingMode};
use crate::Progress;

/// InstantID from a face conditioning to an image, with its weights placed for a device.
pub struct InstantIdPipeline {
    models: InstantIdModels,
    /// Parameter handles until [`InstantIdPipeline::place`] takes them.
    weights: Option<InstantIdWeights>,
    sizes: ComponentSizes,
    memory: Option<Memory>,
    vae_tiling: Option<SdxlTileConfig>,
    /// The CUDA kernels' registry for tiled decoding, made on first use.
    registry: OnceLock<Option<KernelRegistry>>,
}

fn bytes(named: &[(String, Tensor)]) -> u64 {
    group_sizes(named, |_| None).0
}

/// The UNet's parameter handles with its IP weights (bound after loading, so not in the
/// folder's handles), which stream with their `attentions.j` unit.
fn unet_params(models: &InstantIdModels, w: &InstantIdWeights) -> Vec<(String, Tensor)> {
    w.sdxl
        .unet
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .chain(models.unet.ip_params())
        .collect()
}

fn sizes_of(models: &InstantIdModels, w: &InstantIdWeights) -> ComponentSizes {
    let text = bytes(&w.sdxl.text_encoder) + bytes(&w.sdxl.text_encoder_2);
    let (unet, unet_rest, unet_unit) = group_sizes(
        &unet_params(models, w),
        prefix_units(&models.unet.block_names()),
    );
    let (cn, cn_rest, cn_unit) = group_sizes(
        &w.controlnet,
        prefix_units(&models.controlnet.block_names()),
    );
    let resampler = bytes(&models.resampler.params());
    ComponentSizes {
        text_encoder: text,
        transformer: unet + cn + resampler,
        vae: bytes(&w.sdxl.vae),
        upsampler: 0,
        // Sequential: both rings hold k + 1 slots, of the UNet's and the IdentityNet's largest
        // unit; the Resampler is model-offloaded with the stage.
        transformer_remainder: unet_rest + cn_rest + resampler,
        transformer_max_unit: unet_unit + cn_unit,
        // The text encoders are model-offloaded in every mode.
        text_remainder: text,
        text_max_unit: 0,
    }
}

impl InstantIdPipeline {
    /// Loads with `load` (given the options to load with) for `device` in the memory mode of
    /// `mem`: `none`, or any mode on the CPU (where offload is a no-op), loads straight onto
    /// the device; `model` and `sequential` on CUDA load onto the host, then place the weights.
    pub fn load_placed(
        device: Device,
        kind: Kind,
        mem: MemoryOptions,
        load: impl FnOnce(&InstantIdLoadOptions) -> Result<InstantIdModels>,
    ) -> Result<Self> {
        if mem.mode == OffloadMode::None || !device.is_cuda() {
            let models = load(&InstantIdLoadOptions::new(device, kind))?;
            return Self::from_models(
                models,
                device,
                MemoryOptions {
                    mode: OffloadMode::None,
                    ..mem
                },
            );
        }
        let models = load(&InstantIdLoadOptions::new(Device::Cpu, kind))?;
        Self::from_models(models, device, mem)
    }

    /// The pipeline of loaded models, placed for `device` in `mem`'s mode (see
    /// [`Self::place`]; `none` runs where the models were loaded, which must be `device`).
    pub fn from_models(
        mut models: InstantIdModels,
        device: Device,
        mem: MemoryOptions,
    ) -> Result<Self> {
        let weights = models.take_weights().ok_or_else(|| {
            ModelError::Memory("the InstantID models' parameter handles were already taken".into())
        })?;
        if mem.mode == OffloadMode::None && models.device() != device {
            return Err(ModelError::Memory(format!(
                "the InstantID models are on {:?}; without offload they run there, not on \
                 {device:?}",
                models.device()
            )));
        }
        let mut p = Self {
            sizes: sizes_of(&models, &weights),
            models,
            weights: Some(weights),
            memory: None,
            vae_tiling: None,
            registry: OnceLock::new(),
        };
        p.place(device, mem)?;
        Ok(p)
    }

    /// Puts the weights into an offload mode for `device`: master copies in host arenas
    /// (pinned for CUDA), components moved to `device` per stage (`model`), or the UNet and
    /// the IdentityNet streamed unit by unit (`sequential`). `device` may be the CPU (tests:
    /// the same schedule with host buffers as the device). The weights may be anywhere (they
    /// are copied to the host); once placed, a pipeline cannot be placed again.
    pub fn place(&mut self, device: Device, mem: MemoryOptions) -> Result<()> {
        if mem.mode == OffloadMode::None {
            return Ok(());
        }
        let w = self
            .weights
            .take()
            .ok_or_else(|| ModelError::Memory("the weights were already placed".into()))?;
        let m = &mut self.models;
        let unet = unet_params(m, &w);
        let mut memory = Memory::empty(device, mem);
        let text = w.sdxl.text_encoder.into_iter().chain(w.sdxl.text_encoder_2);
        memory.add_model(Component::TextEncoder, text.collect())?;
        if mem.mode == OffloadMode::Sequential {
            let c = Component::Transformer;
            let hooks =
                memory.add_streamed_while_entered(c, unet, prefix_units(&m.unet.block_names()))?;
            m.unet.set_block_hooks(Some(hooks));
            let units = prefix_units(&m.controlnet.block_names());
            let hooks = memory.add_streamed_while_entered(c, w.controlnet, units)?;
            m.controlnet.set_block_hooks(Some(hooks));
        } else {
            memory.add_model(Component::Transformer, unet)?;
            memory.add_model(Component::Transformer, w.controlnet)?;
        }
        memory.add_model(Component::Transformer, m.resampler.params())?;
        memory.add_model(Component::Vae, w.sdxl.vae)?;
        m.device = device;
        self.memory = Some(memory);
        Ok(())
    }

    /// Generates the image `[H, W, 3]` (uint8, RGB, on the CPU) for `face` with `p`: the size
    /// is `p`'s or the keypoint image's floored to 8, the keypoint image Lanczos-resized
    /// (stretched) to it. Reports the stages (text, image: face tokens and control image,
    /// each denoising step, decoding); `cancelled` is asked before each, and a `true` ends the
    /// generation with [`ModelError::Cancelled`]. Whatever happens, no component stays on the
    /// device afterwards (offload modes).
    pub fn generate(
        &mut self,
        face: &FaceConditioning,
        p: &InstantIdParams,
        progress: &mut dyn FnMut(Progress),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Tensor> {
        p.validate()?;
        let size = self.models.output_size(&face.keypoints, p)?;
        let embedding = Tensor::f_from_slice(&face.embedding)?;
        let mut report = crate::reporter(progress, cancelled);
        let out = self.run(&embedding, face, p, size, &mut report);
        let idle = self.idle();
        let out = out?;
        idle?;
        Ok(out)
    }

    fn run(
        &mut self,
        embedding: &Tensor,
        face: &FaceConditioning,
        p: &InstantIdParams,
        size: (i64, i64),
        report: &mut dyn FnMut(Progress) -> Result<()>,
    ) -> Result<Tensor> {
        let memory = &mut self.memory;
        let mut enter = |c: Component| match memory {
            Some(m) => m.enter(c),
            None => Ok(()),
        };
        let latents =
            self.models
                .run_to_latents(embedding, &face.keypoints, p, size, report, &mut enter)?;
        report(Progress::Decoding)?;
        enter(Component::Vae)?;
        let image = tch::no_grad(|| self.decode_u8(&latents))?;
        Ok(image.f_to_device(Device::Cpu)?)
    }

    /// Final latents → bytes `[H, W, 3]`: untiled as [`InstantIdModels::generate`] (diffusers'
    /// PIL rounding), tiled through [`sdxl_tiled_decode::decode_to_u8`].
    fn decode_u8(&self, latents: &Tensor) -> Result<Tensor> {
        let Some(cfg) = &self.vae_tiling else {
            return to_u8(&self.models.decode(latents)?);
        };
        let vae = &self.models.vae;
        let z = vae.unscale_latents(&latents.f_to_kind(vae.compute_kind())?)?;
        sdxl_tiled_decode::decode_to_u8(vae, &z, Some(cfg), self.kernels())
    }

    /// Whatever is on the device after a generation leaves it (offload modes).
    fn idle(&mut self) -> Result<()> {
        match &mut self.memory {
            Some(m) => m.idle(),
            None => Ok(()),
        }
    }

    /// The kernel registry of the pipeline's CUDA device (None on the CPU, or when the kernels
    /// cannot load — tiled decoding then accumulates with tch ops).
    fn kernels(&self) -> Option<&KernelRegistry> {
        self.registry
            .get_or_init(|| match self.models.device() {
                Device::Cuda(i) => ltx_gpu::cuda::open(i)
                    .map_err(ltx_gpu::GpuError::from)
                    .and_then(KernelRegistry::new)
                    .map_err(|e| tracing::warn!("tile kernels unavailable, using tch ops: {e}"))
                    .ok(),
                _ => None,
            })
            .as_ref()
    }

    /// Decodes in tiles with `cfg` from now on (None: untiled); checked against the VAE's
    /// ratio (a stride of at least one latent, a tile no smaller than the stride).
    pub fn set_vae_tiling(&mut self, cfg: Option<SdxlTileConfig>) -> Result<()> {
        if let Some(c) = &cfg {
            let r = self.models.vae.spatial_ratio();
            let (tile, stride) = (c.tile_sample_size, c.stride_sample_size);
            let bad = |m: String| Err(ModelError::InvalidInput(format!("VAE tiling: {m}")));
            if stride < r {
                return bad(format!(
                    "stride_sample_size is {stride}, it must be at least one latent ({r} pixels)"
                ));
            }
            if tile < stride {
                return bad(format!(
                    "tile_sample_size ({tile}) must not be smaller than stride_sample_size \
                     ({stride})"
                ));
            }
        }
        self.vae_tiling = cfg;
        Ok(())
    }

    pub fn vae_tiling(&self) -> Option<&SdxlTileConfig> {
        self.vae_tiling.as_ref()
    }

    /// diffusers' `enable_tiling()` tile for this VAE (1024 px every 768 for SDXL) in `mode`.
    pub fn default_vae_tiling(&self, mode: TilingMode) -> SdxlTileConfig {
        SdxlTileConfig::for_vae(&self.models.vae, mode)
    }

    /// The device memory a generation with `p` needs besides weights, for a keypoint image of
    /// `keypoint_size` `(height, width)` (see [`instantid_workload`]).
    pub fn workload(&self, p: &InstantIdParams, keypoint_size: (usize, usize)) -> Result<Workload> {
        instantid_workload(
            &InstantIdShapes::of_models(&self.models)?,
            self.vae_tiling.as_ref(),
            p,
            keypoint_size,
        )
    }

    /// Weight bytes per component as the residency manager's estimate counts them:
    /// `text_encoder` both CLIP encoders, `transformer` the UNet (with its IP layers), the
    /// IdentityNet and the face Resampler, `vae` the VAE; in sequential mode the streamed
    /// remainder and the largest units of the UNet and IdentityNet together.
    pub fn component_sizes(&self) -> ComponentSizes {
        self.sizes
    }

    /// Where the weights are now.
    pub fn memory_report(&self) -> MemoryReport {
        match &self.memory {
            Some(m) => m.report(),
            None => {
                let on_gpu = self.device().is_cuda();
                let all = self.weight_bytes();
                MemoryReport {
                    mode: None,
                    device_bytes: if on_gpu { all } else { 0 },
                    host_bytes: if on_gpu { 0 } else { all },
                    pinned: false,
                }
            }
        }
    }

    /// Bytes of every weight the pipeline holds.
    pub fn weight_bytes(&self) -> u64 {
        self.models.weight_bytes()
    }

    /// The device generations run on.
    pub fn device(&self) -> Device {
        self.models.device()
    }

    /// The memory mode the weights are placed in (`none` when not placed).
    pub fn mode(&self) -> OffloadMode {
        self.memory.as_ref().map_or(OffloadMode::None, Memory::mode)
    }

    pub fn models(&self) -> &InstantIdModels {
        &self.models
    }

    /// The models, e.g. to set the scheduler ([`InstantIdModels::set_scheduler_config_file`]).
    pub fn models_mut(&mut self) -> &mut InstantIdModels {
        &mut self.models
    }
}
