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

#[derive(Debug, Args)]
pub struct GenerateArgs {
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
    /// Multiple of 32.
    #[arg(long, default_value_t = 512)]
    height: i64,
    /// Multiple of 32.
    #[arg(long, default_value_t = 704)]
    width: i64,
    /// 8k+1 frames (9, 17, …, 161).
    #[arg(long, default_value_t = 161)]
    frames: i64,
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
    /// Frame rate of the output video, also the model's frame-rate conditioning.
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

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            % (1 << 53)
    });
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
        frame_rate: args.fps,
        decode_timestep: args.decode_timestep,
        decode_noise_scale: args.decode_noise_scale,
        max_sequence_length: 128,
    };
    params.validate()?;
    let image = read_image(&args.image)?;
    check_output(&args.output)?;
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
    let start = Instant::now();
    let placement = if tch_device.is_cuda() {
        format!("offload {}", mem.mode)
    } else {
        format!("offload {} is a no-op on the CPU", mem.mode)
    };
    eprintln!(
        "loading {} on {tch_device:?} ({dtype:?}, {placement})",
        args.model
    );
    let max_len = params.max_sequence_length;
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
    let loaded = start.elapsed();

    let tty = std::io::stderr().is_terminal();
    let mut report = |p: Progress| {
        let line = match p {
            Progress::EncodingText => "encoding the prompt".to_string(),
            Progress::EncodingImage => "encoding the image".to_string(),
            Progress::Denoising { step, total } => format!("denoising step {step}/{total}"),
            Progress::Decoding => "decoding the video".to_string(),
        };
        if tty {
            eprint!("\r\x1b[2K{line}");
            let _ = std::io::stderr().flush();
        } else {
            eprintln!("{line}");
        }
    };
    let frames = pipe
        .generate_u8(&image, &params, &mut report, &|| false)?
        .to_device(tch::Device::Cpu);
    if tty {
        eprintln!();
    }
    let info = write_mp4(&frames, args.fps, &args.output)?;
    if let Some(dir) = &args.frames_dir {
        let written = write_pngs(&frames, dir)?;
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
