use std::net::IpAddr;
use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args};
use ltx_gpu::DeviceSpec;
use serde::{Deserialize, Serialize};

use crate::ServerError;

/// `ltx-i2v serve` settings: every field is a flag and an environment variable.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct ServeConfig {
    /// Address to listen on (0.0.0.0 to accept connections from other machines).
    #[arg(long, env = "LTX_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// TCP port to listen on.
    #[arg(long, env = "LTX_PORT", default_value_t = 8000)]
    pub port: u16,

    /// Device for the LTX-Video family: cpu, cuda, cuda:N or auto.
    #[arg(long = "ltx-device", env = "LTX_DEVICE", default_value = "auto")]
    pub ltx_device: DeviceSpec,

    /// A diffusers-format LTX-Video folder; without one the server serves the built-in demo
    /// model (random weights: its videos are noise).
    #[arg(long = "ltx-model", env = "LTX_MODEL")]
    pub ltx_model: Option<PathBuf>,

    /// The latent upsampler of the multi-scale flow (`POST /i2v`): the upscaler repo, a
    /// diffusers `latent_upsampler` folder or an original .safetensors file. Without it
    /// `/i2v` answers 503, except with the demo model (which has a tiny one).
    #[arg(long = "ltx-upsampler", env = "LTX_UPSAMPLER")]
    pub ltx_upsampler: Option<PathBuf>,

    /// `POST /i2v`: pass the condition image through a one-frame H.264 video first, as the
    /// diffusers docs do for LTX-Video 0.9.7+ (the model was trained on compressed video).
    #[arg(long = "ltx-condition-compression", env = "LTX_CONDITION_COMPRESSION", default_value_t = true, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub ltx_condition_compression: bool,

    /// Where finished videos are written.
    #[arg(long, env = "LTX_OUTPUT_DIR", default_value = "outputs")]
    pub output_dir: PathBuf,

    /// Jobs that may wait for each device's worker; more get 429.
    #[arg(long, env = "LTX_QUEUE_SIZE", default_value_t = 16)]
    pub queue_size: usize,

    /// Longest a `?wait=true` request waits for its video before answering 202.
    #[arg(long, env = "LTX_WAIT_TIMEOUT_S", default_value_t = 600)]
    pub wait_timeout_s: u64,

    /// Model CPU offload for LTX-Video (the original service's switch): whole components
    /// move to the GPU while they run. A no-op on the CPU device.
    #[arg(long, env = "LTX_ENABLE_CPU_OFFLOAD", default_value_t = true, action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub ltx_enable_cpu_offload: bool,

    /// Sequential CPU offload for LTX-Video: weights streamed layer by layer; wins over
    /// LTX_ENABLE_CPU_OFFLOAD. A no-op on the CPU device.
    #[arg(long, env = "LTX_ENABLE_SEQUENTIAL_CPU_OFFLOAD", default_value_t = false, action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub ltx_enable_sequential_cpu_offload: bool,

    /// Sequential offload: transformer/T5 blocks copied ahead of the one computing (the ring
    /// of GPU slots holds this + 1 blocks).
    #[arg(long, env = "LTX_OFFLOAD_PREFETCH", default_value_t = 2)]
    pub ltx_offload_prefetch: usize,

    /// Attention backend: sdpa (torch's), sliced (memory linear in the sequence: the tensor-core
    /// kernel on CUDA, chunked on the CPU) or math (the reference). Unset: see
    /// LTX_ENABLE_ATTENTION_SLICING.
    #[arg(long, env = "LTX_ATTENTION")]
    pub ltx_attention: Option<String>,

    /// The original service's attention-slicing switch: `true` selects the sliced backend
    /// when LTX_ATTENTION is unset.
    #[arg(long, env = "LTX_ENABLE_ATTENTION_SLICING", default_value_t = false, action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub ltx_enable_attention_slicing: bool,

    /// The original service's VAE-tiling switch: decode the video in overlapping tiles, so the
    /// decoder never holds the whole video's activations (the residency manager also turns it
    /// on for a job whose decode would not fit the budget).
    #[arg(long, env = "LTX_ENABLE_VAE_TILING", default_value_t = false, action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub ltx_enable_vae_tiling: bool,

    /// How tiles are combined: weighted (feathered, closest to the untiled decode) or diffusers
    /// (diffusers' enable_tiling() exactly).
    #[arg(long, env = "LTX_VAE_TILING_MODE", default_value = "weighted")]
    pub ltx_vae_tiling_mode: String,

    /// Tile size in output pixels (height and width).
    #[arg(long, env = "LTX_VAE_TILE_SIZE", default_value_t = 512)]
    pub ltx_vae_tile_size: i64,

    /// Distance between tile starts in output pixels (tile size − overlap).
    #[arg(long, env = "LTX_VAE_TILE_STRIDE", default_value_t = 448)]
    pub ltx_vae_tile_stride: i64,

    /// GPU memory LTX-Video's jobs may count on, the other family's weights on the same device
    /// included: `auto` (free memory plus torch's cache, minus 1 GiB), a fraction of the device
    /// (`0.8`) or a size (`12GiB`). When the other family's weights and a job's estimated peak
    /// exceed it, the other family leaves the device; a job that still does not fit runs in a
    /// more frugal offload mode.
    #[arg(long, env = "LTX_VRAM_BUDGET", default_value = "auto")]
    pub ltx_vram_budget: String,

    /// Host memory the server process may hold (its resident memory): `auto` (what it holds
    /// at start-up plus half of the memory available then), a fraction of the machine's memory
    /// (`0.5`) or a size (`16GiB`). A job whose estimated peak exceeds it runs with tiled
    /// decoding (and chunked attention) if that fits, else is refused with 422 at submission.
    /// The residency manager keeps an evicted family's weights in host memory only while they
    /// fit it (else it unloads them), and on the CPU device unloads the least recently used
    /// family when a job and the other family's weights would not fit it together.
    #[arg(long, env = "LTX_HOST_BUDGET", default_value = "auto")]
    pub ltx_host_budget: String,

    /// A done job's video is kept this many seconds, then deleted (its id then answers 410).
    #[arg(long, env = "LTX_RESULT_MAX_AGE_S", default_value_t = 24 * 3600)]
    pub result_max_age_s: u64,

    /// The output folder's videos are kept under this many bytes, oldest deleted first (the
    /// newest is always kept).
    #[arg(long, env = "LTX_RESULT_MAX_BYTES", default_value_t = 10 << 30)]
    pub result_max_bytes: u64,

    /// On SIGTERM/SIGINT, how long the running job gets to reach a step boundary.
    #[arg(long, env = "LTX_SHUTDOWN_GRACE_S", default_value_t = 30)]
    pub shutdown_grace_s: u64,

    #[command(flatten)]
    #[serde(flatten)]
    pub instantid: crate::config_instantid::InstantIdConfig,

    #[command(flatten)]
    #[serde(flatten)]
    pub limits: Limits,
}

/// What a request may ask for; a request beyond a limit gets a 4xx naming it.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct Limits {
    /// Largest request body in bytes.
    #[arg(long, env = "LTX_MAX_BODY_BYTES", default_value_t = 32 << 20)]
    pub max_body_bytes: usize,
    /// Largest output width and height in pixels.
    #[arg(long, env = "LTX_MAX_SIDE", default_value_t = 1280)]
    pub max_side: i64,
    /// Largest output width × height.
    #[arg(long, env = "LTX_MAX_PIXELS", default_value_t = 1280 * 720)]
    pub max_pixels: i64,
    #[arg(long, env = "LTX_MAX_FRAMES", default_value_t = 257)]
    pub max_frames: i64,
    #[arg(long, env = "LTX_MAX_STEPS", default_value_t = 100)]
    pub max_steps: usize,
    /// Longest prompt (and negative prompt) in characters.
    #[arg(long, env = "LTX_MAX_PROMPT_CHARS", default_value_t = 2000)]
    pub max_prompt_chars: usize,
    /// Largest input image width × height (before it is resized).
    #[arg(long, env = "LTX_MAX_INPUT_PIXELS", default_value_t = 4096 * 4096)]
    pub max_input_pixels: u64,
}

impl ServeConfig {
    /// Rejects settings that cannot work together, naming both.
    pub fn check(&self) -> Result<(), ServerError> {
        let bad = |m: String| Err(ServerError::Config(m));
        if self.queue_size == 0 {
            return bad("--queue-size (LTX_QUEUE_SIZE) must be at least 1".into());
        }
        if let Err(e) = self.attention_backend() {
            return bad(format!("--ltx-attention (LTX_ATTENTION): {e}"));
        }
        if let Err(e) = self.tile_config() {
            return bad(e);
        }
        if let Err(e) = self.ltx_vram_budget.parse::<ltx_pipelines::BudgetSpec>() {
            return bad(format!("--ltx-vram-budget (LTX_VRAM_BUDGET): {e}"));
        }
        if let Err(e) = self.ltx_host_budget.parse::<ltx_pipelines::BudgetSpec>() {
            return bad(format!("--ltx-host-budget (LTX_HOST_BUDGET): {e}"));
        }
        if self.result_max_age_s == 0 {
            return bad("--result-max-age-s (LTX_RESULT_MAX_AGE_S) must be at least 1".into());
        }
        if self.limits.max_pixels > self.limits.max_side * self.limits.max_side {
            return bad(format!(
                "--max-pixels ({}) exceeds --max-side² ({}): lower one of them",
                self.limits.max_pixels,
                self.limits.max_side * self.limits.max_side
            ));
        }
        if let Some(dir) = &self.ltx_model {
            if !dir.join("model_index.json").is_file() {
                return bad(format!(
                    "--ltx-model (LTX_MODEL) {}: no model_index.json there",
                    dir.display()
                ));
            }
        }
        if let Some(p) = &self.ltx_upsampler {
            if !p.exists() {
                return bad(format!(
                    "--ltx-upsampler (LTX_UPSAMPLER) {} does not exist",
                    p.display()
                ));
            }
        }
        self.instantid.check().map_err(ServerError::Config)
    }

    /// The memory mode the offload switches ask for.
    pub fn ltx_offload(&self) -> ltx_pipelines::OffloadMode {
        ltx_pipelines::OffloadMode::from_switches(
            self.ltx_enable_cpu_offload,
            self.ltx_enable_sequential_cpu_offload,
        )
    }

    /// The tiling settings (used when tiling is on, by the switch or the residency manager).
    pub fn tile_config(&self) -> Result<ltx_pipelines::tiled_decode::TileConfig, String> {
        use ltx_pipelines::tiled_decode::{TileConfig, TilingMode};
        let mode = match self.ltx_vae_tiling_mode.trim().to_ascii_lowercase().as_str() {
            "weighted" => TilingMode::Weighted,
            "diffusers" => TilingMode::DiffusersCompatible,
            other => {
                return Err(format!(
                    "--ltx-vae-tiling-mode (LTX_VAE_TILING_MODE) {other:?}: expected weighted or diffusers"
                ))
            }
        };
        if self.ltx_vae_tile_stride < 32 || self.ltx_vae_tile_stride > self.ltx_vae_tile_size {
            return Err(format!(
                "--ltx-vae-tile-stride ({}) must be in [32, --ltx-vae-tile-size ({})]",
                self.ltx_vae_tile_stride, self.ltx_vae_tile_size
            ));
        }
        Ok(TileConfig {
            mode,
            tile_sample_height: self.ltx_vae_tile_size,
            tile_sample_width: self.ltx_vae_tile_size,
            stride_sample_height: self.ltx_vae_tile_stride,
            stride_sample_width: self.ltx_vae_tile_stride,
            ..TileConfig::default()
        })
    }

    /// The attention backend the settings select.
    pub fn attention_backend(&self) -> Result<ltx_models::attention::AttentionBackend, String> {
        ltx_models::attention::AttentionBackend::from_settings(
            self.ltx_attention.as_deref(),
            self.ltx_enable_attention_slicing,
        )
    }

    pub fn retention(&self) -> crate::retention::Retention {
        crate::retention::Retention {
            max_age_s: self.result_max_age_s,
            max_bytes: self.result_max_bytes,
        }
    }
}
