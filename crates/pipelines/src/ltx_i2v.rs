//! LTX-Video image-to-video, step for step as diffusers 0.42's `LTXImageToVideoPipeline`:
//! T5 prompt embeddings (CFG order [negative, positive]), the conditioning image encoded and
//! sampled into latent frame 0, per-token timesteps with t = 0 on frame 0, CFG with optional
//! rescale, Euler steps on frames 1.., decode with the decoder's timestep and noise mix.
//!
//! Random draws follow diffusers' order from the job's own CPU generator seeded with `seed`
//! (as diffusers does with a CPU generator): posterior sample, latent noise, decode noise. The
//! 0.9.1 decoder's noise injection draws from a generator on the decoder's device seeded with
//! `decoder_noise_seed` (the reference reseeds torch's global one just before decoding).
//! Nothing is drawn from torch's process-wide generators, so generations on two threads at
//! once each draw what they would draw alone.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ltx_gpu::rng::Generators;
use ltx_models::attention::AttentionBackend;
use ltx_models::config::read_config;
use ltx_models::ltx::{
    single_file, LtxTransformer, LtxTransformerConfig, LtxVae, LtxVaeConfig, TransformerInput,
};
use ltx_models::scheduler::{FlowMatchConfig, FlowMatchSchedule};
use ltx_models::t5::{T5Config, T5Encoder};
use ltx_models::t5_tokenizer::T5Tokenizer;
use ltx_models::text_encoder::TextEncoder;
use ltx_models::weights::WeightStore;
use ltx_models::{ModelError, Result};
use tch::{Device, Kind, Tensor};

use crate::image::RgbImage;
use crate::memory::{Component, ComponentParams, Memory, MemoryOptions, MemoryReport};
use crate::tiled_decode::{decode_tiled, decode_to_u8, TileConfig};
use ltx_offload::budget::{ComponentSizes, Shape, Workload};
use ltx_offload::weights::{group_sizes, ltx_transformer_unit, t5_unit};
use ltx_offload::OffloadMode;

/// Weight bytes of each component and of their streaming units, from the parameter handles
/// (which may come from a shape-only store: the sizes of a model that is not loaded).
pub fn component_sizes(p: &ComponentParams) -> ComponentSizes {
    let (text_encoder, text_remainder, text_max_unit) = group_sizes(&p.text_encoder, t5_unit);
    let (transformer, transformer_remainder, transformer_max_unit) =
        group_sizes(&p.transformer, ltx_transformer_unit);
    let (vae, _, _) = group_sizes(&p.vae, |_| None);
    ComponentSizes {
        text_encoder,
        transformer,
        vae,
        upsampler: 0,
        transformer_remainder,
        transformer_max_unit,
        text_remainder,
        text_max_unit,
    }
}

/// [`LtxI2vPipeline::workload`] from the components' configs alone (no weights needed: the
/// server plans a job before the model is loaded). `dtype` is the weights' and activations'.
pub fn i2v_workload(
    tcfg: &LtxTransformerConfig,
    vcfg: &LtxVaeConfig,
    dtype: Kind,
    tiling: Option<&TileConfig>,
    p: &I2vParams,
) -> Workload {
    let (sr, tr) = (vcfg.spatial_ratio(), vcfg.temporal_ratio());
    let tokens = ((p.num_frames - 1) / tr + 1) * (p.height / sr) * (p.width / sr);
    // The decoder's last stage, before the output is un-patchified: its channel count is the
    // last block's after its upsampler's channel reduction.
    let last = |v: &[i64]| v.first().copied().unwrap_or(1).max(1);
    Workload::of(&Shape {
        batch: if p.cfg() { 2 } else { 1 },
        tokens: tokens as u64,
        hidden: tcfg.inner_dim() as u64,
        text_len: p.max_sequence_length as u64,
        text_hidden: tcfg.caption_channels as u64,
        frames: p.num_frames as u64,
        height: p.height as u64,
        width: p.width as u64,
        decoder_channels: (last(&vcfg.decoder_block_out_channels) / last(&vcfg.upsample_factor))
            as u64,
        decoder_patch: vcfg.patch_size.max(1) as u64,
        decode_tile: tiling.map(|t| {
            [
                t.tile_frames as u64 + 1,
                t.tile_sample_height as u64,
                t.tile_sample_width as u64,
            ]
        }),
        elem: dtype.elt_size_in_bytes() as u64,
    })
}

/// One generation's settings (diffusers' argument names and defaults).
#[derive(Debug, Clone)]
pub struct I2vParams {
    pub prompt: String,
    pub negative_prompt: String,
    pub height: i64,
    pub width: i64,
    pub num_frames: i64,
    pub steps: usize,
    pub guidance_scale: f64,
    pub guidance_rescale: f64,
    pub seed: u64,
    /// Seed of the generator (on the decoder's device) the 0.9.1 decoder's noise injection
    /// draws from.
    pub decoder_noise_seed: u64,
    pub frame_rate: f64,
    pub decode_timestep: f64,
    /// None: equal to `decode_timestep`.
    pub decode_noise_scale: Option<f64>,
    pub max_sequence_length: usize,
}

impl Default for I2vParams {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: String::new(),
            height: 512,
            width: 704,
            num_frames: 161,
            steps: 50,
            guidance_scale: 3.0,
            guidance_rescale: 0.0,
            seed: 0,
            decoder_noise_seed: 0,
            frame_rate: 25.0,
            decode_timestep: 0.0,
            decode_noise_scale: None,
            max_sequence_length: 128,
        }
    }
}

impl I2vParams {
    /// Checks the settings the model cannot work with, naming the value and the rule.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::InvalidInput(m));
        if self.height <= 0 || self.height % 32 != 0 {
            return bad(format!(
                "height must be a positive multiple of 32, got {}",
                self.height
            ));
        }
        if self.width <= 0 || self.width % 32 != 0 {
            return bad(format!(
                "width must be a positive multiple of 32, got {}",
                self.width
            ));
        }
        if self.num_frames < 1 || (self.num_frames - 1) % 8 != 0 {
            return bad(format!(
                "num_frames must be 8k+1 (1, 9, 17, …, 161), got {}",
                self.num_frames
            ));
        }
        if self.steps == 0 {
            return bad("steps must be at least 1".into());
        }
        if !(self.guidance_scale.is_finite() && self.guidance_scale >= 0.0) {
            return bad(format!(
                "guidance_scale must be a finite number ≥ 0, got {}",
                self.guidance_scale
            ));
        }
        if !(0.0..=1.0).contains(&self.guidance_rescale) {
            return bad(format!(
                "guidance_rescale must be in [0, 1], got {}",
                self.guidance_rescale
            ));
        }
        if !(self.frame_rate.is_finite() && self.frame_rate > 0.0) {
            return bad(format!("frame_rate must be > 0, got {}", self.frame_rate));
        }
        Ok(())
    }

    fn cfg(&self) -> bool {
        self.guidance_scale > 1.0
    }
}

/// Where a generation is; reported before each stage starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Progress {
    EncodingText,
    EncodingImage,
    Denoising { step: usize, total: usize },
    Decoding,
}

/// Precision and placement of the loaded components.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    pub device: Device,
    pub dtype: Kind,
}

/// Where a pipeline's weights came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    Folder(PathBuf),
    /// The built-in tiny model with random weights: its output is noise.
    Demo,
}

impl std::fmt::Display for ModelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Folder(p) => write!(f, "{}", p.display()),
            Self::Demo => f.write_str("demo (tiny model with random weights: the output is noise)"),
        }
    }
}

/// The loaded components of an LTX-Video image-to-video pipeline.
pub struct Components {
    pub tokenizer: T5Tokenizer,
    pub text_encoder: TextEncoder,
    pub transformer: LtxTransformer,
    pub vae: LtxVae,
    pub scheduler: FlowMatchConfig,
    /// Bytes of all weights the components hold (on `LoadOptions::device`).
    pub weight_bytes: u64,
    /// The modules' parameter handles, for placing them later (offload modes).
    pub params: ComponentParams,
}

pub struct LtxI2vPipeline {
    pub(crate) tokenizer: T5Tokenizer,
    pub(crate) text_encoder: TextEncoder,
    pub(crate) transformer: LtxTransformer,
    pub(crate) vae: LtxVae,
    pub(crate) scheduler: FlowMatchConfig,
    pub(crate) opts: LoadOptions,
    source: ModelSource,
    pub(crate) weight_bytes: u64,
    /// Parameter handles until [`LtxI2vPipeline::place`] takes them.
    params: Option<ComponentParams>,
    pub(crate) sizes: ComponentSizes,
    /// Offload modes: where the weights are, switched per stage.
    pub(crate) memory: Option<Mutex<Memory>>,
    /// The multi-scale flow's latent upsampler, once attached (placed by `memory` too).
    pub(crate) upsampler: Option<ltx_models::ltx::LtxLatentUpsampler>,
    /// Tiled VAE decoding (None: the whole video at once).
    pub(crate) vae_tiling: Option<TileConfig>,
    /// The CUDA kernels' registry for tiled decoding, made on first use.
    registry: std::sync::OnceLock<Option<ltx_gpu::kernels::KernelRegistry>>,
    /// The attention backend its generations run with (None: the calling thread's).
    attention: Option<AttentionBackend>,
}

fn component<T>(
    dir: &Path,
    name: &str,
    opts: LoadOptions,
    bytes: &mut u64,
    params: &mut Vec<(String, Tensor)>,
    build: impl FnOnce(&WeightStore) -> Result<T>,
) -> Result<T> {
    let store = WeightStore::from_component_dir(&dir.join(name), opts.dtype, opts.device)?;
    let model = build(&store)?;
    store.finish()?;
    *bytes += store.loaded_bytes();
    *params = store.take_params();
    Ok(model)
}

/// `text_encoder/`: a TorchScript export if the folder has one (see
/// [`TextEncoder::torchscript_in`]), else T5 from its config and safetensors.
fn load_text_encoder(
    dir: &Path,
    opts: LoadOptions,
    bytes: &mut u64,
    params: &mut Vec<(String, Tensor)>,
) -> Result<TextEncoder> {
    let folder = dir.join("text_encoder");
    if let Some(ts) = TextEncoder::torchscript_in(&folder) {
        tracing::info!(path = %ts.display(), "TorchScript text encoder");
        let te = TextEncoder::load_torchscript(&ts, opts.device, opts.dtype)?;
        *bytes += te.torchscript_bytes().unwrap_or(0);
        *params = te.torchscript_params()?;
        return Ok(te);
    }
    let cfg: T5Config = read_config(&folder.join("config.json"))?;
    component(dir, "text_encoder", opts, bytes, params, |s| {
        T5Encoder::new(&s.root(), cfg)
    })
    .map(TextEncoder::T5)
}

impl LtxI2vPipeline {
    /// Loads a diffusers-format LTX-Video folder (`model_index.json`, `tokenizer/`,
    /// `text_encoder/`, `transformer/`, `vae/`, `scheduler/`).
    pub fn load(dir: &Path, opts: LoadOptions, max_sequence_length: usize) -> Result<Self> {
        let index: serde_json::Value = read_config(&dir.join("model_index.json"))?;
        let class = index
            .get("_class_name")
            .and_then(|c| c.as_str())
            .unwrap_or("");
        if !matches!(
            class,
            "LTXImageToVideoPipeline" | "LTXPipeline" | "LTXConditionPipeline"
        ) {
            return Err(ModelError::UnsupportedConfig(format!(
                "{}: _class_name {class:?} is not an LTX-Video pipeline",
                dir.join("model_index.json").display()
            )));
        }
        let tr_cfg: LtxTransformerConfig = read_config(&dir.join("transformer/config.json"))?;
        let vae_cfg: LtxVaeConfig = read_config(&dir.join("vae/config.json"))?;
        let scheduler: FlowMatchConfig = read_config(&dir.join("scheduler/scheduler_config.json"))?;
        scheduler.validate()?;
        let mut bytes = 0;
        let mut params = ComponentParams::default();
        let parts = Components {
            tokenizer: T5Tokenizer::from_dir(&dir.join("tokenizer"), max_sequence_length)?,
            text_encoder: load_text_encoder(dir, opts, &mut bytes, &mut params.text_encoder)?,
            transformer: component(
                dir,
                "transformer",
                opts,
                &mut bytes,
                &mut params.transformer,
                |s| LtxTransformer::new(&s.root(), tr_cfg),
            )?,
            vae: component(dir, "vae", opts, &mut bytes, &mut params.vae, |s| {
                LtxVae::new(&s.root(), vae_cfg)
            })?,
            scheduler,
            weight_bytes: bytes,
            params,
        };
        Ok(Self::from_components(
            parts,
            opts,
            ModelSource::Folder(dir.to_path_buf()),
        ))
    }

    /// Like [`LtxI2vPipeline::load`], with the transformer and the VAE taken from an original
    /// single-file checkpoint (`ltx-video-2b-v0.9.x.safetensors`; configs read off its weights)
    /// and the tokenizer, text encoder and scheduler from the diffusers folder `dir`.
    pub fn load_with_single_file(
        dir: &Path,
        checkpoint: &Path,
        opts: LoadOptions,
        max_sequence_length: usize,
    ) -> Result<Self> {
        let scheduler: FlowMatchConfig = read_config(&dir.join("scheduler/scheduler_config.json"))?;
        scheduler.validate()?;
        let (tr_store, tr_cfg) =
            single_file::open_transformer(checkpoint, opts.dtype, opts.device, None)?;
        let transformer = LtxTransformer::new(&tr_store.root(), tr_cfg)?;
        tr_store.finish()?;
        let (vae_store, vae_cfg, layout) =
            single_file::open_vae(checkpoint, opts.dtype, opts.device, None)?;
        tracing::info!(?layout, "single-file VAE layout");
        let vae = LtxVae::new(&vae_store.root(), vae_cfg)?;
        vae_store.finish()?;
        let mut bytes = tr_store.loaded_bytes() + vae_store.loaded_bytes();
        let mut params = ComponentParams {
            transformer: tr_store.take_params(),
            vae: vae_store.take_params(),
            ..ComponentParams::default()
        };
        let text_encoder = load_text_encoder(dir, opts, &mut bytes, &mut params.text_encoder)?;
        let parts = Components {
            tokenizer: T5Tokenizer::from_dir(&dir.join("tokenizer"), max_sequence_length)?,
            text_encoder,
            transformer,
            vae,
            scheduler,
            weight_bytes: bytes,
            params,
        };
        Ok(Self::from_components(
            parts,
            opts,
            ModelSource::Folder(checkpoint.to_path_buf()),
        ))
    }

    pub fn from_components(c: Components, opts: LoadOptions, source: ModelSource) -> Self {
        Self {
            tokenizer: c.tokenizer,
            text_encoder: c.text_encoder,
            transformer: c.transformer,
            vae: c.vae,
            scheduler: c.scheduler,
            opts,
            source,
            weight_bytes: c.weight_bytes,
            sizes: component_sizes(&c.params),
            params: Some(c.params),
            memory: None,
            upsampler: None,
            vae_tiling: None,
            registry: std::sync::OnceLock::new(),
            attention: None,
        }
    }

    /// Runs every generation from now on with attention backend `b`, whichever thread calls
    /// it (as if under [`ltx_models::attention::scoped`]); until set, a generation uses the
    /// calling thread's backend.
    pub fn set_attention(&mut self, b: AttentionBackend) {
        self.attention = Some(b);
    }

    /// The backend a generation started now on this thread runs with.
    pub fn attention(&self) -> AttentionBackend {
        self.attention
            .unwrap_or_else(ltx_models::attention::backend)
    }

    /// This pipeline's backend for the calling thread until the guard drops (nothing when it
    /// has none of its own).
    pub(crate) fn attention_scope(&self) -> Option<ltx_models::attention::Guard> {
        self.attention.map(ltx_models::attention::scoped)
    }

    /// Decodes in tiles with `cfg` from now on (None: untiled). The settings are checked
    /// against the VAE's compression ratios.
    pub fn set_vae_tiling(&mut self, cfg: Option<TileConfig>) -> Result<()> {
        if let Some(c) = &cfg {
            let v = self.vae.config();
            c.validate(v.temporal_ratio(), v.spatial_ratio())?;
        }
        self.vae_tiling = cfg;
        Ok(())
    }

    pub fn vae_tiling(&self) -> Option<&TileConfig> {
        self.vae_tiling.as_ref()
    }

    /// The kernel registry of the pipeline's CUDA device (None on the CPU, or when the kernels
    /// cannot load — tiled decoding then accumulates with tch ops).
    pub(crate) fn kernels(&self) -> Option<&ltx_gpu::kernels::KernelRegistry> {
        self.registry
            .get_or_init(|| match self.opts.device {
                Device::Cuda(i) => ltx_gpu::cuda::open(i)
                    .map_err(ltx_gpu::GpuError::from)
                    .and_then(ltx_gpu::kernels::KernelRegistry::new)
                    .map_err(|e| tracing::warn!("tile kernels unavailable, using tch ops: {e}"))
                    .ok(),
                _ => None,
            })
            .as_ref()
    }

    /// Weight bytes of each component and of their streaming units (for the residency
    /// manager's estimates).
    pub fn component_sizes(&self) -> ComponentSizes {
        self.sizes
    }

    /// The device memory a generation with `p` needs besides weights (see
    /// [`ltx_offload::budget`] for the formula).
    pub fn workload(&self, p: &I2vParams) -> Workload {
        i2v_workload(
            self.transformer.config(),
            self.vae.config(),
            self.opts.dtype,
            self.vae_tiling.as_ref(),
            p,
        )
    }

    /// Loads with `load` (a folder, a single file, the demo) for `device` in the memory mode
    /// of `mem`: `none`, or any mode on the CPU (where offload is a no-op), loads straight onto
    /// the device; `model` and `sequential` on CUDA load onto the host, then
    /// [`LtxI2vPipeline::place`] the weights.
    pub fn load_placed(
        device: Device,
        dtype: Kind,
        mem: MemoryOptions,
        load: impl FnOnce(LoadOptions) -> Result<Self>,
    ) -> Result<Self> {
        if mem.mode == OffloadMode::None || !device.is_cuda() {
            return load(LoadOptions { device, dtype });
        }
        let mut p = load(LoadOptions {
            device: Device::Cpu,
            dtype,
        })?;
        p.place(device, mem)?;
        Ok(p)
    }

    /// Puts a pipeline loaded on the CPU into an offload mode for `device`: master copies in
    /// host arenas (pinned for CUDA), components moved to `device` per stage (`model`) or the
    /// transformer and T5 streamed block by block (`sequential`). `device` may be the CPU
    /// (tests: the same schedule with a host buffer as the device).
    pub fn place(&mut self, device: Device, mem: MemoryOptions) -> Result<()> {
        if mem.mode == OffloadMode::None {
            return Ok(());
        }
        if self.opts.device != Device::Cpu {
            return Err(ModelError::Memory(format!(
                "offload needs a pipeline loaded on the CPU, this one is on {:?}",
                self.opts.device
            )));
        }
        let params = self
            .params
            .take()
            .ok_or_else(|| ModelError::Memory("the weights were already placed".into()))?;
        let text_streamable = matches!(self.text_encoder, TextEncoder::T5(_));
        let (memory, streamers) = Memory::new(params, device, mem, text_streamable)?;
        if let Some(s) = streamers.transformer {
            self.transformer.set_block_hooks(Some(s));
        }
        if let (Some(s), TextEncoder::T5(t5)) = (streamers.text_encoder, &mut self.text_encoder) {
            t5.set_block_hooks(Some(s));
        }
        self.memory = Some(Mutex::new(memory));
        self.opts.device = device;
        Ok(())
    }

    /// Where the weights are now.
    pub fn memory_report(&self) -> MemoryReport {
        match &self.memory {
            Some(m) => m.lock().unwrap_or_else(|p| p.into_inner()).report(),
            None => MemoryReport {
                mode: None,
                device_bytes: if self.opts.device.is_cuda() {
                    self.weight_bytes
                } else {
                    0
                },
                host_bytes: if self.opts.device.is_cuda() {
                    0
                } else {
                    self.weight_bytes
                },
                pinned: false,
            },
        }
    }

    /// Model offload: makes `c` the component on the device (no-op without a memory mode).
    pub(crate) fn enter(&self, c: Component) -> Result<()> {
        match &self.memory {
            Some(m) => m.lock().unwrap_or_else(|p| p.into_inner()).enter(c),
            None => Ok(()),
        }
    }

    /// After a generation, whatever happened: no component stays on the device.
    pub(crate) fn idle(&self) -> Result<()> {
        match &self.memory {
            Some(m) => m.lock().unwrap_or_else(|p| p.into_inner()).idle(),
            None => Ok(()),
        }
    }

    pub fn source(&self) -> &ModelSource {
        &self.source
    }

    /// Bytes of the weights the pipeline holds, all on [`LtxI2vPipeline::device`].
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// The dtype of its weights and activations.
    pub fn dtype(&self) -> Kind {
        self.opts.dtype
    }

    pub fn device(&self) -> tch::Device {
        self.opts.device
    }

    /// `[B, C, F, H, W]` → `[B, F·H·W, C]` (token order f, h, w).
    fn pack(x: &Tensor) -> Result<Tensor> {
        Ok(x.f_flatten(2, 4)?.f_transpose(1, 2)?)
    }

    fn unpack(x: &Tensor, f: i64, h: i64, w: i64) -> Result<Tensor> {
        let b = x.size()[0];
        Ok(x.f_transpose(1, 2)?.f_reshape([b, -1, f, h, w])?)
    }

    /// The prompt embeddings and masks, `[negative, positive]` with CFG.
    fn encode_text(&self, p: &I2vParams) -> Result<(Tensor, Tensor)> {
        let embed = |text: &str| -> Result<(Tensor, Tensor)> {
            let tokens = self.tokenizer.encode(&[text])?;
            let ids = tokens.input_ids.f_to_device(self.opts.device)?;
            let e = self
                .text_encoder
                .forward(&ids)?
                .f_to_kind(self.opts.dtype)?;
            Ok((e, tokens.attention_mask.f_to_device(self.opts.device)?))
        };
        let (pos, pos_mask) = embed(&p.prompt)?;
        if !p.cfg() {
            return Ok((pos, pos_mask));
        }
        let (neg, neg_mask) = embed(&p.negative_prompt)?;
        Ok((
            Tensor::f_cat(&[neg, pos], 0)?,
            Tensor::f_cat(&[neg_mask, pos_mask], 0)?,
        ))
    }

    /// Generates `[F, H, W, 3]` float frames in [0, 1].
    pub fn generate(
        &self,
        image: &RgbImage,
        p: &I2vParams,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Tensor> {
        self.generate_cancellable(image, p, progress, &|| false)
    }

    /// Like [`LtxI2vPipeline::generate`]; `cancelled` is asked before each stage and each
    /// denoising step, and a `true` ends the generation with [`ModelError::Cancelled`].
    pub fn generate_cancellable(
        &self,
        image: &RgbImage,
        p: &I2vParams,
        progress: &mut dyn FnMut(Progress),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Tensor> {
        self.generate_as(image, p, progress, cancelled, false)
    }

    /// Like [`LtxI2vPipeline::generate_cancellable`], as uint8 frames `[F, H, W, 3]` for
    /// writing videos and images: at float32, the bytes `frames_to_u8` makes of the float
    /// frames. With weighted VAE tiling the decoded canvas goes straight to bytes (one fused
    /// pass on CUDA), which at bf16/fp16 skips the float output's rounding to the decoder's
    /// dtype (see [`crate::tiled_decode::decode_to_u8`]).
    pub fn generate_u8(
        &self,
        image: &RgbImage,
        p: &I2vParams,
        progress: &mut dyn FnMut(Progress),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Tensor> {
        self.generate_as(image, p, progress, cancelled, true)
    }

    fn generate_as(
        &self,
        image: &RgbImage,
        p: &I2vParams,
        progress: &mut dyn FnMut(Progress),
        cancelled: &dyn Fn() -> bool,
        as_u8: bool,
    ) -> Result<Tensor> {
        p.validate()?;
        let mut report = crate::reporter(progress, cancelled);
        let _attention = self.attention_scope();
        let out = tch::no_grad(|| self.run(image, p, &mut report, as_u8));
        // Whatever happened, no component stays on the device between generations.
        let idle = self.idle();
        let out = out?;
        idle?;
        Ok(out)
    }

    fn run(
        &self,
        image: &RgbImage,
        p: &I2vParams,
        progress: &mut dyn FnMut(Progress) -> Result<()>,
        as_u8: bool,
    ) -> Result<Tensor> {
        let vcfg = self.vae.config();
        let (sr, tr) = (vcfg.spatial_ratio(), vcfg.temporal_ratio());
        let (f, h, w) = ((p.num_frames - 1) / tr + 1, p.height / sr, p.width / sr);
        let channels = self.transformer.config().in_channels;
        let dev = self.opts.device;

        progress(Progress::EncodingText)?;
        self.enter(Component::TextEncoder)?;
        let (text, text_mask) = self.encode_text(p)?;

        progress(Progress::EncodingImage)?;
        self.enter(Component::Vae)?;
        // The job's own generators, as `torch.manual_seed(seed)` would seed torch's: every
        // draw on the CPU (diffusers' CPU generator), then moved.
        let mut rng = Generators::new(p.seed)?;
        let posterior = self.vae.encode(
            &image
                .to_pixels(p.width, p.height, self.opts.dtype, dev)?
                .f_unsqueeze(2)?,
        )?;
        let sample = posterior.sample(rng.cpu())?;
        // Copies, not views: a view would keep the VAE's device copy alive while it is offloaded.
        let (mean, std) = self.vae.latent_stats(dev)?;
        let init = ((sample.f_to_kind(Kind::Float)? - &mean) * vcfg.scaling_factor / &std)
            .f_repeat([1, 1, f, 1, 1])?;
        let mask = Tensor::f_zeros([1, 1, f, h, w], (Kind::Float, dev))?;
        let _ = mask.f_narrow(2, 0, 1)?.f_fill_(1.0)?;
        let noise = rng
            .cpu()
            .randn_to(&[1, channels, f, h, w], Kind::Float, dev)?;
        let latents = &init * &mask + noise * (mask.f_neg()? + 1.0);
        let mut latents = Self::pack(&latents)?;
        let mut token_mask = Self::pack(&mask)?.f_squeeze_dim(-1)?;
        if p.cfg() {
            token_mask = Tensor::f_cat(&[&token_mask, &token_mask], 0)?;
        }

        let schedule = FlowMatchSchedule::ltx(&self.scheduler, p.steps, (f * h * w) as usize)?;
        let rope_scale = [tr as f64 / p.frame_rate, sr as f64, sr as f64];
        let keep = token_mask.f_neg()? + 1.0;
        self.enter(Component::Transformer)?;
        for (i, &t) in schedule.timesteps.iter().enumerate() {
            progress(Progress::Denoising {
                step: i + 1,
                total: p.steps,
            })?;
            let x_in = if p.cfg() {
                Tensor::f_cat(&[&latents, &latents], 0)?
            } else {
                latents.shallow_clone()
            };
            let x_in = x_in.f_to_kind(self.opts.dtype)?;
            let timestep = &keep * f64::from(t);
            let mut v = self
                .transformer
                .forward(&TransformerInput {
                    hidden_states: &x_in,
                    encoder_hidden_states: &text,
                    timestep: &timestep,
                    encoder_attention_mask: Some(&text_mask),
                    num_frames: f,
                    height: h,
                    width: w,
                    rope_interpolation_scale: rope_scale,
                    video_coords: None,
                })?
                .f_to_kind(Kind::Float)?;
            if p.cfg() {
                let parts = v.f_chunk(2, 0)?;
                let (uncond, cond) = (&parts[0], &parts[1]);
                v = uncond + (cond - uncond) * p.guidance_scale;
                if p.guidance_rescale > 0.0 {
                    let std_of = |t: &Tensor| t.f_std_correction([1i64, 2].as_slice(), 1, true);
                    let rescaled = &v * (std_of(cond)? / std_of(&v)?);
                    v = rescaled * p.guidance_rescale + v * (1.0 - p.guidance_rescale);
                }
            }
            let v = Self::unpack(&v, f, h, w)?;
            let x = Self::unpack(&latents, f, h, w)?;
            let stepped = schedule.step(i, &v.f_narrow(2, 1, f - 1)?, &x.f_narrow(2, 1, f - 1)?)?;
            latents = Self::pack(&Tensor::f_cat(&[x.f_narrow(2, 0, 1)?, stepped], 2)?)?;
        }

        progress(Progress::Decoding)?;
        self.enter(Component::Vae)?;
        let z = Self::unpack(&latents, f, h, w)?;
        let mut z = (z * &std / vcfg.scaling_factor + &mean).f_to_kind(self.opts.dtype)?;
        let temb = if vcfg.timestep_conditioning {
            let noise = rng.cpu().randn_to(&z.size(), z.kind(), dev)?;
            let dns = p.decode_noise_scale.unwrap_or(p.decode_timestep) as f32;
            // (1 − dns) in float32, as diffusers computes it from a float32 tensor.
            z = &z * f64::from(1.0f32 - dns) + noise * f64::from(dns);
            Some(
                Tensor::from_slice(&[p.decode_timestep as f32])
                    .f_to_device(dev)?
                    .f_to_kind(z.kind())?,
            )
        } else {
            None
        };
        // The decoder's noise (0.9.1): the decoder device's generator seeded with
        // `decoder_noise_seed`, as the reference reseeds torch's before decoding.
        let mut decoder_rng = Generators::new(p.decoder_noise_seed)?;
        let noise = crate::tiled_decode::noise_for(&self.vae, &mut decoder_rng, dev)?;
        if as_u8 {
            return decode_to_u8(
                &self.vae,
                &z,
                temb.as_ref(),
                noise,
                self.vae_tiling.as_ref(),
                self.kernels(),
            );
        }
        let video = match &self.vae_tiling {
            Some(cfg) => decode_tiled(&self.vae, &z, temb.as_ref(), noise, cfg, self.kernels())?,
            None => self.vae.decode(&z, temb.as_ref(), noise)?,
        };
        let frames = (video.f_to_kind(Kind::Float)? * 0.5 + 0.5).f_clamp(0.0, 1.0)?;
        Ok(frames
            .f_select(0, 0)?
            .f_permute([1, 2, 3, 0])?
            .f_contiguous()?)
    }
}
