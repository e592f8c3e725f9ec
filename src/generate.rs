//! `ltx-i2v generate`: one image-to-video generation from the command line. Every input is
//! checked before any model loads, so a typo costs nothing.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use ltx_gpu::DeviceSpec;
use ltx_pipelines::demo::demo_pipeline;
use ltx_pipelines::image::RgbImage;
use ltx_pipelines::video::{write_mp4, write_pngs};
use ltx_pipelines::{I2vParams, LtxI2vPipeline, MemoryOptions, ModelSource, OffloadMode, Progress};
use tch::Kind;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Dtype {
    Fp32,
    Bf16,
    Fp16,
}

impl Dtype {
    /// The precision asked for, else fp32 on the CPU and bf16 on CUDA.
    pub(crate) fn kind_on(asked: Option<Dtype>, device: tch::Device) -> Kind {
        match asked {
            Some(Dtype::Fp32) => Kind::Float,
            Some(Dtype::Bf16) => Kind::BFloat16,
            Some(Dtype::Fp16) => Kind::Half,
            None if device == tch::Device::Cpu => Kind::Float,
            None => Kind::BFloat16,
        }
    }
}

/// Which flow `generate` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PipelineKind {
    /// LTXImageToVideoPipeline: the image as frame 0 (0.9.0–0.9.5 models).
    I2v,
    /// The 0.9.7/0.9.8 multi-scale flow: a low-resolution LTXConditionPipeline pass, the 2×
    /// latent upsampler (--upsampler), a refine pass, a resize to --width x --height.
    Multiscale,
    /// LTXConditionPipeline once (0.9.5+ models): --image at frame 0 and/or --condition
    /// images and videos at any frame with a strength.
    Condition,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// i2v, multiscale or condition (default: multiscale when --upsampler is given, else i2v).
    #[arg(long, value_enum)]
    pub(crate) pipeline: Option<PipelineKind>,
    /// The latent upsampler for the multi-scale flow: a diffusers folder (or the upscaler
    /// repo with latent_upsampler/), an original .safetensors file, or `demo` (tiny, random).
    #[arg(long, env = "LTX_UPSAMPLER")]
    pub(crate) upsampler: Option<String>,
    /// Multi-scale: the first pass runs at int(size × this), floored to multiples of 32.
    #[arg(long, default_value_t = 2.0 / 3.0)]
    pub(crate) downscale_factor: f64,
    /// Multi-scale: the refine pass's step count (it runs int(this × --denoise-strength)).
    #[arg(long, default_value_t = 15)]
    pub(crate) steps_refine: usize,
    /// Multi-scale: how much of the refine schedule runs, in [0, 1] (default 0.4).
    #[arg(long)]
    pub(crate) denoise_strength: Option<f64>,
    /// Noise on hard conditions per step (default: 0.025 for the multi-scale refine pass, whose
    /// first pass keeps 0.15; 0.15 for condition, as diffusers).
    #[arg(long)]
    pub(crate) image_cond_noise_scale: Option<f64>,
    /// Condition / multi-scale first pass: a custom timestep list, comma-separated and strictly
    /// decreasing (e.g. the distilled models' 1000,993,987,981,975,909,725,0.03); the pass
    /// runs these instead of --steps.
    #[arg(long, value_name = "LIST")]
    pub(crate) timesteps: Option<String>,
    /// Multi-scale: the refine pass's timestep list (e.g. 1000,909,725,421,0).
    #[arg(long, value_name = "LIST")]
    pub(crate) timesteps_refine: Option<String>,
    /// Condition: an image or a video (an .mp4 or a folder of frames) starting at output frame
    /// FRAME, holding with STRENGTH in [0, 1] (default 1). Repeatable.
    #[arg(long = "condition", value_name = "IMAGE_OR_VIDEO@FRAME[:STRENGTH]")]
    pub(crate) conditions: Vec<String>,
    /// Multi-scale: pass the image through a one-frame H.264 video first, as the model was
    /// trained on compressed video.
    #[arg(long, env = "LTX_CONDITION_COMPRESSION", default_value_t = true, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub(crate) condition_compression: bool,
    /// The model's frame-rate conditioning (default: 25 for multi-scale, --fps for i2v).
    #[arg(long)]
    pub(crate) frame_rate: Option<f64>,
    /// A diffusers-format LTX-Video folder (with model_index.json), or `demo` for the built-in
    /// tiny model with random weights (its output is noise).
    #[arg(long, env = "LTX_MODEL")]
    pub(crate) model: String,
    /// An original single-file checkpoint (ltx-video-2b-v0.9.x.safetensors) for the transformer
    /// and the VAE; --model then supplies the tokenizer, text encoder and scheduler.
    #[arg(long)]
    pub(crate) checkpoint: Option<PathBuf>,
    /// The first frame: a PNG, JPEG or WebP image (resized to --width x --height); for
    /// condition, the same as --condition IMAGE@0:1 (optional there).
    #[arg(long)]
    pub(crate) image: Option<PathBuf>,
    #[arg(long)]
    pub(crate) prompt: String,
    #[arg(long, default_value = "")]
    pub(crate) negative_prompt: String,
    /// Multiple of 32 (i2v); any size (multiscale).
    #[arg(long, default_value_t = 512)]
    pub(crate) height: i64,
    /// Multiple of 32 (i2v); any size (multiscale).
    #[arg(long, default_value_t = 704)]
    pub(crate) width: i64,
    /// 8k+1 frames for i2v (9, 17, …, 161); multiscale takes any count and makes
    /// 8·((n − 1)/8) + 1 (96 → 89), as diffusers does.
    #[arg(long, default_value_t = 161)]
    pub(crate) frames: i64,
    /// Denoising steps (multiscale: of the low-resolution pass).
    #[arg(long, default_value_t = 50)]
    pub(crate) steps: usize,
    /// Classifier-free guidance scale (> 1 enables CFG).
    #[arg(long, default_value_t = 3.0)]
    pub(crate) guidance: f64,
    /// CFG rescale φ in [0, 1].
    #[arg(long, default_value_t = 0.0)]
    pub(crate) guidance_rescale: f64,
    /// Random seed; a random one is chosen (and printed) when absent.
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// Frame rate of the output video (i2v: also the model's conditioning unless --frame-rate).
    #[arg(long, default_value_t = 25.0)]
    pub(crate) fps: f64,
    /// Decoder timestep for 0.9.1+ VAEs (docs recommend 0.05).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) decode_timestep: f64,
    /// Decode noise scale for 0.9.1+ VAEs (default: equal to --decode-timestep; docs recommend 0.025).
    #[arg(long)]
    pub(crate) decode_noise_scale: Option<f64>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, env = "LTX_DEVICE", default_value = "auto")]
    pub(crate) device: DeviceSpec,
    /// Weight and activation precision (default: fp32 on the CPU, bf16 on CUDA).
    #[arg(long, value_enum)]
    pub(crate) dtype: Option<Dtype>,
    /// Model CPU offload: each component moves to the GPU only while it runs.
    #[arg(long, env = "LTX_ENABLE_CPU_OFFLOAD", default_value_t = true, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub(crate) cpu_offload: bool,
    /// Sequential CPU offload: transformer and T5 blocks streamed from pinned host memory
    /// (wins over --cpu-offload).
    #[arg(long, env = "LTX_ENABLE_SEQUENTIAL_CPU_OFFLOAD", default_value_t = false, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub(crate) sequential_cpu_offload: bool,
    /// Attention backend: sdpa, sliced or math (unset: --attention-slicing decides).
    #[arg(long, env = "LTX_ATTENTION")]
    pub(crate) attention: Option<String>,
    /// The original attention-slicing switch: sliced attention when --attention is unset.
    #[arg(long, env = "LTX_ENABLE_ATTENTION_SLICING", default_value_t = false, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub(crate) attention_slicing: bool,
    /// Decode the video in overlapping tiles (the original VAE-tiling switch).
    #[arg(long, env = "LTX_ENABLE_VAE_TILING", default_value_t = false, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub(crate) vae_tiling: bool,
    /// Tiled decode: weighted (feathered) or diffusers (diffusers' enable_tiling() exactly).
    #[arg(long, env = "LTX_VAE_TILING_MODE", default_value = "weighted")]
    pub(crate) vae_tiling_mode: String,
    /// Tiled decode: tile size and stride in output pixels.
    #[arg(long, env = "LTX_VAE_TILE_SIZE", default_value_t = 512)]
    pub(crate) vae_tile_size: i64,
    #[arg(long, env = "LTX_VAE_TILE_STRIDE", default_value_t = 448)]
    pub(crate) vae_tile_stride: i64,
    /// Sequential offload: blocks copied ahead of the one computing.
    #[arg(long, env = "LTX_OFFLOAD_PREFETCH", default_value_t = 2)]
    pub(crate) offload_prefetch: usize,
    /// The MP4 to write (H.264, yuv420p).
    #[arg(short, long)]
    pub(crate) output: PathBuf,
    /// Also write every frame as a PNG into this folder.
    #[arg(long)]
    pub(crate) frames_dir: Option<PathBuf>,
}

pub(crate) fn read_image(path: &Path) -> anyhow::Result<RgbImage> {
    let img = image::ImageReader::open(path)
        .with_context(|| format!("cannot read image {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("cannot read image {}", path.display()))?
        .decode()
        .with_context(|| {
            format!(
                "{} is not a readable PNG, JPEG or WebP image",
                path.display()
            )
        })?
        .to_rgb8();
    Ok(img.into())
}

pub(crate) fn check_output(path: &Path) -> anyhow::Result<()> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.is_dir() {
        bail!("output folder {} does not exist", parent.display());
    }
    if path.is_dir() {
        bail!(
            "output {} is a folder; give a file name such as out.mp4",
            path.display()
        );
    }
    Ok(())
}

/// Checks the model arguments, sets the attention backend, resolves the device and loads the
/// pipeline placed in the memory mode the flags ask for.
pub(crate) fn load_pipeline(args: &GenerateArgs, max_len: usize) -> anyhow::Result<LtxI2vPipeline> {
    let model_dir = (args.model != "demo").then(|| PathBuf::from(&args.model));
    if let Some(dir) = &model_dir {
        if !dir.join("model_index.json").is_file() {
            bail!(
                "{} is not a diffusers model folder (no model_index.json); use a folder or `demo`",
                dir.display()
            );
        }
    }
    match (&args.checkpoint, &model_dir) {
        (Some(_), None) => bail!(
            "--checkpoint needs --model DIR (a diffusers folder for the tokenizer, text encoder and scheduler), not demo"
        ),
        (Some(file), Some(_)) if !file.is_file() => {
            bail!("checkpoint {} does not exist", file.display())
        }
        _ => {}
    }

    let backend = ltx_models::attention::AttentionBackend::from_settings(
        args.attention.as_deref(),
        args.attention_slicing,
    )
    .map_err(anyhow::Error::msg)?;
    let tiling = if args.vae_tiling {
        use ltx_pipelines::tiled_decode::{TileConfig, TilingMode};
        let mode = match args.vae_tiling_mode.as_str() {
            "weighted" => TilingMode::Weighted,
            "diffusers" => TilingMode::DiffusersCompatible,
            other => bail!("--vae-tiling-mode {other:?}: expected weighted or diffusers"),
        };
        Some(TileConfig {
            mode,
            tile_sample_height: args.vae_tile_size,
            tile_sample_width: args.vae_tile_size,
            stride_sample_height: args.vae_tile_stride,
            stride_sample_width: args.vae_tile_stride,
            ..TileConfig::default()
        })
    } else {
        None
    };
    let device = args.device.resolve()?;
    let tch_device = device.tch_device();
    let dtype = Dtype::kind_on(args.dtype, tch_device);
    let mem = MemoryOptions {
        mode: OffloadMode::from_switches(args.cpu_offload, args.sequential_cpu_offload),
        prefetch: args.offload_prefetch,
    };
    let placement = if tch_device.is_cuda() {
        format!("offload {}", mem.mode)
    } else {
        format!("offload {} is a no-op on the CPU", mem.mode)
    };
    eprintln!(
        "loading {} on {tch_device:?} ({dtype:?}, {placement})",
        args.model
    );
    let pipe = LtxI2vPipeline::load_placed(tch_device, dtype, mem, |opts| {
        match (&model_dir, &args.checkpoint) {
            (Some(dir), Some(file)) => {
                LtxI2vPipeline::load_with_single_file(dir, file, opts, max_len)
            }
            (Some(dir), None) => LtxI2vPipeline::load(dir, opts, max_len),
            (None, _) => demo_pipeline(opts, max_len),
        }
    })?;
    let mut pipe = pipe;
    pipe.set_vae_tiling(tiling)?;
    // The pipeline's own backend: its generations run with it on whichever thread.
    pipe.set_attention(backend);
    if pipe.source() == &ModelSource::Demo {
        eprintln!("note: the demo model has random weights: the video will be noise");
    }
    Ok(pipe)
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            % (1 << 53)
    });
    let kind = args.pipeline.unwrap_or(if args.upsampler.is_some() {
        PipelineKind::Multiscale
    } else {
        PipelineKind::I2v
    });
    match kind {
        PipelineKind::Multiscale => return crate::generate_flows::run_multiscale(args, seed),
        PipelineKind::Condition => return crate::generate_flows::run_condition(args, seed),
        PipelineKind::I2v => {}
    }
    crate::generate_flows::refuse_unused(&args, kind)?;
    let Some(image_path) = &args.image else {
        bail!("--pipeline i2v needs --image (the first frame)");
    };
    let params = I2vParams {
        prompt: args.prompt.clone(),
        negative_prompt: args.negative_prompt.clone(),
        height: args.height,
        width: args.width,
        num_frames: args.frames,
        steps: args.steps,
        guidance_scale: args.guidance,
        guidance_rescale: args.guidance_rescale,
        seed,
        decoder_noise_seed: seed,
        frame_rate: args.frame_rate.unwrap_or(args.fps),
        decode_timestep: args.decode_timestep,
        decode_noise_scale: args.decode_noise_scale,
        max_sequence_length: 128,
    };
    params.validate()?;
    let image = read_image(image_path)?;
    check_output(&args.output)?;
    let start = Instant::now();
    let pipe = load_pipeline(&args, params.max_sequence_length)?;
    let loaded = start.elapsed();

    let tty = std::io::stderr().is_terminal();
    let frames = pipe
        .generate_u8(&image, &params, &mut |p| report(tty, p), &|| false)?
        .to_device(tch::Device::Cpu);
    if tty {
        eprintln!();
    }
    write_outputs(&args, &frames, args.fps, seed, &pipe, start, loaded)
}

/// The progress of the I2V and condition pipelines, on stderr.
pub(crate) fn report(tty: bool, p: Progress) {
    status_line(
        tty,
        &match p {
            Progress::EncodingText => "encoding the prompt".to_string(),
            Progress::EncodingImage => "encoding the image".to_string(),
            Progress::Denoising { step, total } => format!("denoising step {step}/{total}"),
            Progress::Decoding => "decoding the video".to_string(),
        },
    )
}

/// One updating line on a terminal, one line each otherwise.
pub(crate) fn status_line(tty: bool, line: &str) {
    if tty {
        eprint!("\r\x1b[2K{line}");
        let _ = std::io::stderr().flush();
    } else {
        eprintln!("{line}");
    }
}

pub(crate) fn write_outputs(
    args: &GenerateArgs,
    frames: &tch::Tensor,
    fps: f64,
    seed: u64,
    pipe: &LtxI2vPipeline,
    start: Instant,
    loaded: std::time::Duration,
) -> anyhow::Result<()> {
    let info = write_mp4(frames, fps, &args.output)?;
    if let Some(dir) = &args.frames_dir {
        let written = write_pngs(frames, dir)?;
        eprintln!("wrote {} PNG frames to {}", written.len(), dir.display());
    }
    println!(
        "wrote {} ({} frames, {}x{}, {} fps, {} bytes) in {:.1}s (loading {:.1}s); seed {seed}; model {}",
        args.output.display(),
        info.frames,
        info.width,
        info.height,
        info.fps,
        info.bytes,
        start.elapsed().as_secs_f64(),
        loaded.as_secs_f64(),
        pipe.source(),
    );
    Ok(())
}
