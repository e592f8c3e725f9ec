//! `ltx-i2v instantid`: one InstantID portrait from a face photo and a prompt, written as a
//! PNG. Every input is checked (files, images, settings, the face analysis) before any model
//! loads; progress on stderr (one updating line on a terminal).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use ltx_face::{AnalysisOptions, FaceAnalysis, FaceDevice, SessionOptions};
use ltx_gpu::DeviceSpec;
use ltx_models::sdxl::schedulers::SUPPORTED_SCHEDULERS;
use ltx_pipelines::image::RgbImage;
use ltx_pipelines::instantid::demo::{demo_face_models_dir, demo_instantid};
use ltx_pipelines::instantid::{
    analyze_faces, to_rgb_image, InstantIdModels, InstantIdParams, InstantIdPaths,
    InstantIdPipeline,
};
use ltx_pipelines::{MemoryOptions, OffloadMode, Progress};

use crate::generate::{status_line, Dtype};

#[derive(Args, Debug)]
pub struct InstantIdArgs {
    /// An SDXL diffusers folder (model_index.json, unet/, vae/, text_encoder/, …), or `demo`:
    /// the built-in tiny random SDXL, IdentityNet and face adapter (its portraits are noise).
    #[arg(long, env = "INSTANTID_MODEL", default_value = "demo")]
    pub model: String,
    /// InstantX's IdentityNet folder (`checkpoints/ControlNetModel`); required with a model.
    #[arg(long, env = "INSTANTID_CONTROLNET")]
    pub controlnet: Option<PathBuf>,
    /// InstantX's `ip-adapter.bin` (or its `.safetensors` conversion); required with a model.
    #[arg(long, env = "INSTANTID_IP_ADAPTER")]
    pub ip_adapter: Option<PathBuf>,
    /// The face model folder (antelopev2); default with the demo model: its own tiny graphs,
    /// which find one face in any image.
    #[arg(long, env = "INSTANTID_FACE_MODELS")]
    pub face_models: Option<PathBuf>,
    /// The face photo (PNG, JPEG or WebP): its largest face gives the identity and, without
    /// --pose-image, the keypoints.
    #[arg(long)]
    pub face_image: PathBuf,
    /// A photo whose largest face's keypoints drive the IdentityNet (the head's position).
    #[arg(long)]
    pub pose_image: Option<PathBuf>,
    /// More photos of the same person, their embeddings averaged in (repeatable, at most 4).
    #[arg(long = "reference-image")]
    pub reference_images: Vec<PathBuf>,
    #[arg(long)]
    pub prompt: String,
    /// Unset: SDXL's zero negative.
    #[arg(long)]
    pub negative_prompt: Option<String>,
    /// Output width, a multiple of 8 (default: the keypoint image's, floored to 8).
    #[arg(long)]
    pub width: Option<i64>,
    /// Output height, a multiple of 8 (default: the keypoint image's, floored to 8).
    #[arg(long)]
    pub height: Option<i64>,
    #[arg(long, default_value_t = 30)]
    pub steps: usize,
    #[arg(long, default_value_t = 5.0)]
    pub guidance: f64,
    #[arg(long, default_value_t = 0.8)]
    pub ip_adapter_scale: f64,
    #[arg(long, default_value_t = 0.8)]
    pub controlnet_scale: f64,
    /// Another scheduler than the model's: EulerDiscreteScheduler,
    /// EulerAncestralDiscreteScheduler, DPMSolverMultistepScheduler or DDIMScheduler.
    #[arg(long)]
    pub scheduler: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, env = "INSTANTID_DEVICE", default_value = "auto")]
    pub device: DeviceSpec,
    /// Weight precision (default: fp32 on the CPU, bf16 on CUDA).
    #[arg(long, value_enum)]
    pub dtype: Option<Dtype>,
    /// Largest photo accepted, in pixels (checked before decoding).
    #[arg(long, env = "LTX_MAX_INPUT_PIXELS", default_value_t = 16_777_216)]
    pub max_input_pixels: u64,
    /// The PNG to write.
    #[arg(short, long)]
    pub output: PathBuf,
}

fn read_image(path: &Path, what: &str, max_pixels: u64) -> anyhow::Result<RgbImage> {
    let bytes =
        std::fs::read(path).with_context(|| format!("{what} {}: cannot read", path.display()))?;
    let img = ltx_face::decode_image(&bytes, max_pixels)
        .with_context(|| format!("{what} {}", path.display()))?;
    Ok(img.into())
}

/// The model paths, or `None` for the demo family; a bad combination names the flags.
fn paths(args: &InstantIdArgs) -> anyhow::Result<Option<InstantIdPaths>> {
    if args.model == "demo" {
        if args.controlnet.is_some() || args.ip_adapter.is_some() {
            bail!("--controlnet and --ip-adapter go with --model DIR: the demo model has its own");
        }
        return Ok(None);
    }
    let sdxl = PathBuf::from(&args.model);
    if sdxl.is_file() {
        bail!(
            "--model {}: a single file; the InstantID loader takes an SDXL diffusers folder \
             (model_index.json, unet/, vae/, text_encoder/, …)",
            sdxl.display()
        );
    }
    if !sdxl.join("model_index.json").is_file() {
        bail!("--model {}: no model_index.json there", sdxl.display());
    }
    let (Some(controlnet), Some(ip_adapter)) = (&args.controlnet, &args.ip_adapter) else {
        bail!("--model DIR needs --controlnet DIR and --ip-adapter FILE (InstantX's checkpoints)");
    };
    if !controlnet.join("config.json").is_file() {
        bail!(
            "--controlnet {}: no config.json there",
            controlnet.display()
        );
    }
    if !ip_adapter.is_file() {
        bail!("--ip-adapter {}: not a file", ip_adapter.display());
    }
    if args.face_models.is_none() {
        bail!("--model DIR needs --face-models DIR (antelopev2: scrfd_10g_bnkps.onnx, glintr100.onnx)");
    }
    Ok(Some(InstantIdPaths {
        sdxl,
        controlnet: controlnet.clone(),
        ip_adapter: ip_adapter.clone(),
    }))
}

fn params(args: &InstantIdArgs) -> anyhow::Result<InstantIdParams> {
    for (flag, v) in [("--width", args.width), ("--height", args.height)] {
        if let Some(v) = v {
            if v < 8 || v % 8 != 0 {
                bail!("{flag} must be a positive multiple of 8 (the SDXL VAE), got {v}");
            }
        }
    }
    if let Some(s) = &args.scheduler {
        if !SUPPORTED_SCHEDULERS.contains(&s.as_str()) {
            bail!(
                "--scheduler must be one of {}, got {s:?}",
                SUPPORTED_SCHEDULERS.join(", ")
            );
        }
    }
    if args.reference_images.len() > 4 {
        bail!(
            "at most 4 --reference-image, got {}",
            args.reference_images.len()
        );
    }
    let p = InstantIdParams {
        prompt: args.prompt.clone(),
        negative_prompt: args.negative_prompt.clone(),
        height: args.height,
        width: args.width,
        steps: args.steps,
        guidance_scale: args.guidance,
        controlnet_conditioning_scale: args.controlnet_scale,
        ip_adapter_scale: args.ip_adapter_scale,
        seed: args.seed,
        ..InstantIdParams::default()
    };
    p.validate()?;
    Ok(p)
}

pub fn run(args: InstantIdArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    // Everything that can be wrong with the request, before any model loads.
    let paths = paths(&args)?;
    let p = params(&args)?;
    match args.output.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("png") => {}
        _ => bail!(
            "-o {}: the portrait is a PNG (name it .png)",
            args.output.display()
        ),
    }
    if let Some(dir) = args.output.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            bail!(
                "-o {}: the folder {} does not exist",
                args.output.display(),
                dir.display()
            );
        }
    }
    let max = args.max_input_pixels;
    let face = read_image(&args.face_image, "--face-image", max)?;
    let pose = args
        .pose_image
        .as_deref()
        .map(|p| read_image(p, "--pose-image", max))
        .transpose()?;
    let references = args
        .reference_images
        .iter()
        .map(|p| read_image(p, "--reference-image", max))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let face_dir = match &args.face_models {
        Some(d) => d.clone(),
        None => demo_face_models_dir()?,
    };
    let tty = std::io::stderr().is_terminal();
    status_line(tty, "analysing the faces");
    let mut fa = FaceAnalysis::new(
        &face_dir,
        AnalysisOptions {
            session: SessionOptions {
                device: FaceDevice::Cpu,
                threads: ltx_face::runtime::default_threads(),
            },
            ..AnalysisOptions::default()
        },
    )
    .with_context(|| format!("the face models in {}", face_dir.display()))?;
    let conditioning = analyze_faces(&mut fa, &face, pose.as_ref(), &references)?;
    drop(fa);
    if tty {
        eprintln!();
    }
    if conditioning.faces_found > 1 {
        eprintln!(
            "note: {} faces in --face-image: the largest gives the identity",
            conditioning.faces_found
        );
    }

    let device = args.device.resolve()?.tch_device();
    let dtype = Dtype::kind_on(args.dtype, device);
    let mem = MemoryOptions {
        mode: if device.is_cuda() {
            OffloadMode::Model
        } else {
            OffloadMode::None
        },
        prefetch: 2,
    };
    eprintln!(
        "loading InstantID ({}) on {device:?} ({dtype:?})",
        paths.as_ref().map_or_else(
            || "demo: random weights, the portrait is noise".into(),
            |p| p.sdxl.display().to_string()
        )
    );
    let mut pipe = InstantIdPipeline::load_placed(device, dtype, mem, |opts| match &paths {
        Some(p) => InstantIdModels::load(p, opts),
        None => demo_instantid(opts),
    })?;
    if let Some(class) = &args.scheduler {
        let mut config = pipe.models().scheduler_config().clone();
        config["_class_name"] = serde_json::Value::from(class.as_str());
        let file =
            std::env::temp_dir().join(format!("ltx-i2v-scheduler-{}.json", std::process::id()));
        std::fs::write(&file, config.to_string())?;
        let set = pipe.models_mut().set_scheduler_config_file(&file);
        let _ = std::fs::remove_file(&file);
        set?;
    }
    let loaded = start.elapsed();
    let image = pipe.generate(
        &conditioning,
        &p,
        &mut |p| {
            status_line(
                tty,
                &match p {
                    Progress::EncodingText => "encoding the prompt".to_string(),
                    Progress::EncodingImage => "encoding the face".to_string(),
                    Progress::Denoising { step, total } => format!("denoising step {step}/{total}"),
                    Progress::Decoding => "decoding the portrait".to_string(),
                },
            )
        },
        &|| false,
    )?;
    if tty {
        eprintln!();
    }
    let image = to_rgb_image(&image)?;
    let (w, h) = image.dimensions();
    image
        .save_with_format(&args.output, image::ImageFormat::Png)
        .with_context(|| format!("writing {}", args.output.display()))?;
    println!(
        "wrote {} ({w}x{h}) in {:.1}s (loading {:.1}s); seed {}; {} face(s) found",
        args.output.display(),
        start.elapsed().as_secs_f64(),
        loaded.as_secs_f64(),
        args.seed,
        conditioning.faces_found,
    );
    Ok(())
}
