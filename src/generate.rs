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

/// Which flow `generate` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PipelineKind {
    /// LTXImageToVideoPipeline: the image as frame 0 (0.9.0–0.9.5 models).
    I2v,
    /// The 0.9.7/0.9.8 multi-scale flow: a low-resolution LTXConditionPipeline pass, the 2×
    /// latent upsampler (--upsampler), a refine pass, a resize to --width x --height.
    Multiscale,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// i2v or multiscale (default: multiscale when --upsampler is given, else i2v).
    #[arg(long, value_enum)]
    pipeline: Option<PipelineKind>,
    /// The latent upsampler for the multi-scale flow: a diffusers folder (or the upscaler
    /// repo with latent_upsampler/), an original .safetensors file, or `demo` (tiny, random).
    #[arg(long, env = "LTX_UPSAMPLER")]
    upsampler: Option<String>,
    /// Multi-scale: the first pass runs at int(size × this), floored to multiples of 32.
    #[arg(long, default_value_t = 2.0 / 3.0)]
    downscale_factor: f64,
    /// Multi-scale: the refine pass's step count (it runs int(this × --denoise-strength)).
    #[arg(long, default_value_t = 15)]
    steps_refine: usize,
    /// Multi-scale: how much of the refine schedule runs, in [0, 1].
    #[arg(long, default_value_t = 0.4)]
    denoise_strength: f64,
    /// Multi-scale: the refine pass's noise on the condition frame (the first pass keeps 0.15).
    #[arg(long, default_value_t = 0.025)]
    image_cond_noise_scale: f64,
    /// Multi-scale: pass the image through a one-frame H.264 video first, as the model was
    /// trained on compressed video.
    #[arg(long, env = "LTX_CONDITION_COMPRESSION", default_value_t = true, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    condition_compression: bool,
    /// The model's frame-rate conditioning (default: 25 for multi-scale, --fps for i2v).
    #[arg(long)]
    frame_rate: Option<f64>,
    /// A diffusers-format LTX-Video folder (with model_index.json), or `demo` for the built-in
    /// tiny model with random weights (its output is noise).
    #[arg(long, env = "LTX_MODEL")]
    model: String,
    /// An original single-file checkpoint (ltx-video-2b-v0.9.x.safetensors) for the transformer
    /// and the VAE; --model then supplies the tokenizer, text encoder and scheduler.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// The first frame: a PNG, JPEG or WebP image (resized to --width x --height).
    #[arg(long)]
    image: PathBuf,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value = "")]
    negative_prompt: String,
    /// Multiple of 32 (i2v); any size (multiscale).
    #[arg(long, default_value_t = 512)]
    height: i64,
    /// Multiple of 32 (i2v); any size (multiscale).
    #[arg(long, default_value_t = 704)]
    width: i64,
    /// 8k+1 frames for i2v (9, 17, …, 161); multiscale takes any count and makes
    /// 8·((n − 1)/8) + 1 (96 → 89), as diffusers does.
    #[arg(long, default_value_t = 161)]
    frames: i64,
    /// Denoising steps (multiscale: of the low-resolution pass).
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Classifier-free guidance scale (> 1 enables CFG).
    #[arg(long, default_value_t = 3.0)]
    guidance: f64,
    /// CFG rescale φ in [0, 1].
    #[arg(long, default_value_t = 0.0)]
    guidance_rescale: f64,
    /// Random seed; a random one is chosen (and printed) when absent.
    #[arg(long)]
    seed: Option<u64>,
    /// Frame rate of the output video (i2v: also the model's conditioning unless --frame-rate).
    #[arg(long, default_value_t = 25.0)]
    fps: f64,
    /// Decoder timestep for 0.9.1+ VAEs (docs recommend 0.05).
    #[arg(long, default_value_t = 0.0)]
    decode_timestep: f64,
    /// Decode noise scale for 0.9.1+ VAEs (default: equal to --decode-timestep; docs recommend 0.025).
    #[arg(long)]
    decode_noise_scale: Option<f64>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, env = "LTX_DEVICE", default_value = "auto")]
    device: DeviceSpec,
    /// Weight and activation precision (default: fp32 on the CPU, bf16 on CUDA).
    #[arg(long, value_enum)]
    dtype: Option<Dtype>,
    /// Model CPU offload: each component moves to the GPU only while it runs.
    #[arg(long, env = "LTX_ENABLE_CPU_OFFLOAD", default_value_t = true, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    cpu_offload: bool,
    /// Sequential CPU offload: transformer and T5 blocks streamed from pinned host memory
    /// (wins over --cpu-offload).
    #[arg(long, env = "LTX_ENABLE_SEQUENTIAL_CPU_OFFLOAD", default_value_t = false, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    sequential_cpu_offload: bool,
    /// Attention backend: sdpa, sliced or math (unset: --attention-slicing decides).
    #[arg(long, env = "LTX_ATTENTION")]
    attention: Option<String>,
    /// The original attention-slicing switch: sliced attention when --attention is unset.
    #[arg(long, env = "LTX_ENABLE_ATTENTION_SLICING", default_value_t = false, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    attention_slicing: bool,
    /// Decode the video in overlapping tiles (the original VAE-tiling switch).
    #[arg(long, env = "LTX_ENABLE_VAE_TILING", default_value_t = false, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    vae_tiling: bool,
    /// Tiled decode: weighted (feathered) or diffusers (diffusers' enable_tiling() exactly).
    #[arg(long, env = "LTX_VAE_TILING_MODE", default_value = "weighted")]
    vae_tiling_mode: String,
    /// Tiled decode: tile size and stride in output pixels.
    #[arg(long, env = "LTX_VAE_TILE_SIZE", default_value_t = 512)]
    vae_tile_size: i64,
    #[arg(long, env = "LTX_VAE_TILE_STRIDE", default_value_t = 448)]
    vae_tile_stride: i64,
    /// Sequential offload: blocks copied ahead of the one computing.
    #[arg(long, env = "LTX_OFFLOAD_PREFETCH", default_value_t = 2)]
    offload_prefetch: usize,
    /// The MP4 to write (H.264, yuv420p).
    #[arg(short, long)]
    output: PathBuf,
    /// Also write every frame as a PNG into this folder.
    #[arg(long)]
    frames_dir: Option<PathBuf>,
}

fn read_image(path: &Path) -> anyhow::Result<RgbImage> {
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

fn check_output(path: &Path) -> anyhow::Result<()> {
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
fn load_pipeline(args: &GenerateArgs, max_len: usize) -> anyhow::Result<LtxI2vPipeline> {
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
    ltx_models::attention::set_backend(backend);
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
    let dtype = match args.dtype {
        Some(Dtype::Fp32) => Kind::Float,
        Some(Dtype::Bf16) => Kind::BFloat16,
        Some(Dtype::Fp16) => Kind::Half,
        None if tch_device == tch::Device::Cpu => Kind::Float,
        None => Kind::BFloat16,
    };
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
    if kind == PipelineKind::Multiscale {
        return run_multiscale(args, seed);
    }
    if args.upsampler.is_some() {
        bail!("--upsampler is for --pipeline multiscale");
    }
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
    let image = read_image(&args.image)?;
    check_output(&args.output)?;
    let start = Instant::now();
    let pipe = load_pipeline(&args, params.max_sequence_length)?;
    let loaded = start.elapsed();

    let tty = std::io::stderr().is_terminal();
    let mut report = |p: Progress| {
        status_line(
            tty,
            &match p {
                Progress::EncodingText => "encoding the prompt".to_string(),
                Progress::EncodingImage => "encoding the image".to_string(),
                Progress::Denoising { step, total } => format!("denoising step {step}/{total}"),
                Progress::Decoding => "decoding the video".to_string(),
            },
        )
    };
    let frames = pipe
        .generate_u8(&image, &params, &mut report, &|| false)?
        .to_device(tch::Device::Cpu);
    if tty {
        eprintln!();
    }
    write_outputs(&args, &frames, args.fps, seed, &pipe, start, loaded)
}

/// One updating line on a terminal, one line each otherwise.
fn status_line(tty: bool, line: &str) {
    if tty {
        eprint!("\r\x1b[2K{line}");
        let _ = std::io::stderr().flush();
    } else {
        eprintln!("{line}");
    }
}

fn write_outputs(
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

/// `--pipeline multiscale`: the 0.9.7/0.9.8 flow with the upsampler.
fn run_multiscale(args: GenerateArgs, seed: u64) -> anyhow::Result<()> {
    use ltx_pipelines::multiscale::{MultiscaleParams, MultiscaleRequest, MultiscaleStage};
    let params = MultiscaleParams {
        width: args.width,
        height: args.height,
        num_frames: args.frames,
        downscale_factor: args.downscale_factor,
        steps_lowres: args.steps,
        steps_refine: args.steps_refine,
        denoise_strength: args.denoise_strength,
        decode_timestep: args.decode_timestep,
        image_cond_noise_scale: args.image_cond_noise_scale,
        guidance_scale: args.guidance,
        frame_rate: args.frame_rate.unwrap_or(25.0),
    };
    params.validate()?;
    let upsampler = match args.upsampler.as_deref() {
        Some("demo") => None,
        Some(path) => {
            let p = PathBuf::from(path);
            if !p.exists() {
                bail!("upsampler {} does not exist", p.display());
            }
            Some(p)
        }
        None if args.model == "demo" => None,
        None => bail!("--pipeline multiscale needs --upsampler (a folder or .safetensors file)"),
    };
    if args.checkpoint.is_some() {
        bail!("--checkpoint is for --pipeline i2v");
    }
    let image = read_image(&args.image)?;
    check_output(&args.output)?;
    if params.output_frames() != params.num_frames {
        eprintln!(
            "note: {} frames requested; the model makes 8k+1, so the video has {} (as diffusers)",
            params.num_frames,
            params.output_frames()
        );
    }
    let start = Instant::now();
    let mut pipe = load_pipeline(&args, ltx_pipelines::multiscale::CONDITION_TOKENS)?;
    match &upsampler {
        Some(path) => pipe.load_upsampler(path)?,
        None => ltx_pipelines::demo::attach_demo_upsampler(&mut pipe)?,
    }
    let loaded = start.elapsed();
    let request = MultiscaleRequest {
        prompt: args.prompt.clone(),
        negative_prompt: args.negative_prompt.clone(),
        seed,
        compress_condition: args.condition_compression,
        params,
    };
    let tty = std::io::stderr().is_terminal();
    let mut report = |s: MultiscaleStage| {
        status_line(
            tty,
            &match s {
                MultiscaleStage::EncodingText => "encoding the prompt".to_string(),
                MultiscaleStage::LowResPass => {
                    "low-resolution pass: encoding the image".to_string()
                }
                MultiscaleStage::RefinePass => "refine pass: encoding the image".to_string(),
                MultiscaleStage::LowRes { step, total } => {
                    format!("low-resolution pass, step {step}/{total}")
                }
                MultiscaleStage::Upsampling => "upsampling the latents".to_string(),
                MultiscaleStage::Refine { step, total } => {
                    format!("refine pass, step {step}/{total}")
                }
                MultiscaleStage::Decoding => "decoding the video".to_string(),
                MultiscaleStage::Resizing => "resizing the frames".to_string(),
            },
        )
    };
    let frames = pipe.generate_multiscale(&image, &request, &mut report, &|| false)?;
    if tty {
        eprintln!();
    }
    write_outputs(&args, &frames, args.fps, seed, &pipe, start, loaded)
}
