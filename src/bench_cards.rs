//! `ltx-i2v bench cards` (GPU): the whole image-to-video pipeline with the released LTX-2B
//! shapes (T5-XXL encoder, 2B transformer, 0.9.1 VAE; random bf16 weights) at 768×512×121 on
//! simulated smaller cards — torch's per-process memory fraction caps the allocator at 16 GiB,
//! then 8 GiB — in each memory mode. Per run: whether it completed, total time, seconds per
//! denoising step, and peak GPU memory per stage. The VAE decodes in tiles (weighted mode)
//! in every run: untiled, the full-resolution decode alone needs more than either card.
//! `--flow multiscale` runs the 0.9.7/0.9.8 multi-scale flow instead, with the released 13B
//! shapes (T5-XXL, 13B transformer, 0.9.5+ VAE, the 126 M-parameter latent upsampler) at the
//! replaced service's default size (704×384 from a 16:9 image, 96 frames): seconds per step of
//! each pass, peak memory per stage (`pass1`, `upsample`, `pass2`, `decode`, `resize`).
//! Without a CUDA device it prints `skipped: no CUDA device (reason)` and exits 0 (fails where
//! CUDA is required).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use ltx_gpu::CudaDevice;
use ltx_pipelines::demo::{random_pipeline, random_upsampler, RandomShapes};
use ltx_pipelines::image::RgbImage;
use ltx_pipelines::multiscale::{MultiscaleParams, MultiscaleRequest, MultiscaleStage};
use ltx_pipelines::tiled_decode::TileConfig;
use ltx_pipelines::{I2vParams, LoadOptions, LtxI2vPipeline, MemoryOptions, OffloadMode, Progress};
use serde_json::json;
use tch::{Device, Kind};

/// Which flow `bench cards` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Flow {
    /// Image-to-video with the 2B shapes.
    I2v,
    /// The multi-scale flow with the 13B shapes and the upsampler.
    Multiscale,
}

#[derive(Debug, Args)]
pub struct CardsBench {
    #[arg(long, value_enum, default_value = "i2v")]
    flow: Flow,
    /// Multi-scale: the refine pass's step count (it runs int(this × 0.4)).
    #[arg(long, default_value_t = 5)]
    steps_refine: usize,
    /// Simulated card sizes in GiB.
    #[arg(long, value_delimiter = ',', default_value = "16,8")]
    cards: Vec<f64>,
    /// Modes to run on each card.
    #[arg(long, value_delimiter = ',', default_value = "none,model,sequential")]
    modes: Vec<OffloadMode>,
    #[arg(long, default_value_t = 2)]
    prefetch: usize,
    /// Default 512 (i2v), 384 (multiscale).
    #[arg(long)]
    height: Option<i64>,
    /// Default 768 (i2v), 704 (multiscale).
    #[arg(long)]
    width: Option<i64>,
    /// Default 121 (i2v), 96 (multiscale).
    #[arg(long)]
    frames: Option<i64>,
    /// Denoising steps (multiscale: of the first pass; the per-step time is reported).
    #[arg(long, default_value_t = 2)]
    steps: usize,
    #[arg(long, default_value_t = 0)]
    device: usize,
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

fn stage_name(p: &Progress) -> &'static str {
    match p {
        Progress::EncodingText => "text",
        Progress::EncodingImage => "image",
        Progress::Denoising { .. } => "denoise",
        Progress::Decoding => "decode",
    }
}

pub fn run(b: CardsBench) -> anyhow::Result<()> {
    let Some(dev) = crate::bench::cuda_or_skip(b.device)? else {
        return Ok(());
    };
    let i = b.device;
    let gpu = Device::Cuda(i);
    let (_, total) = dev.mem_info()?;
    let ms = b.flow == Flow::Multiscale;
    let width = b.width.unwrap_or(if ms { 704 } else { 768 });
    let height = b.height.unwrap_or(if ms { 384 } else { 512 });
    let frames = b.frames.unwrap_or(if ms { 96 } else { 121 });
    println!(
        "bench cards: cuda:{i} {} ({:.1} GiB), {}, bf16 random weights, {width}x{height}x{frames}, {} steps, tiled decode",
        dev.name().unwrap_or_default(),
        total as f64 / (1u64 << 30) as f64,
        if ms {
            "multi-scale flow, LTX-13B shapes (T5-XXL, 13B transformer, 0.9.5 VAE, upsampler)"
        } else {
            "LTX-2B shapes (T5-XXL, 2B transformer, 0.9.1 VAE)"
        },
        b.steps
    );
    let image = RgbImage {
        width: width as usize,
        height: height as usize,
        data: (0..width * height * 3).map(|v| (v % 251) as u8).collect(),
    };
    let params = I2vParams {
        prompt: "a red ball bounces on a wooden table".into(),
        height,
        width,
        num_frames: frames,
        steps: b.steps,
        seed: 1,
        ..I2vParams::default()
    };
    let request = MultiscaleRequest {
        prompt: params.prompt.clone(),
        negative_prompt: "worst quality, inconsistent motion, blurry, jittery, distorted".into(),
        seed: 1,
        compress_condition: true,
        params: MultiscaleParams {
            width,
            height,
            num_frames: frames,
            steps_lowres: b.steps,
            steps_refine: b.steps_refine,
            ..MultiscaleParams::default()
        },
    };
    if ms {
        request.params.validate()?;
    }
    let mut rows = Vec::new();
    for &card in &b.cards {
        for &mode in &b.modes {
            let row = if ms {
                one(
                    &dev,
                    gpu,
                    total as f64,
                    card,
                    mode,
                    &b,
                    &RandomShapes::ltx_13b(),
                    true,
                    |pipe, mark| {
                        pipe.generate_multiscale(
                            &image,
                            &request,
                            &mut |s| match s {
                                MultiscaleStage::EncodingText => mark("text", false),
                                MultiscaleStage::LowResPass => mark("pass1", false),
                                MultiscaleStage::RefinePass => mark("pass2", false),
                                MultiscaleStage::LowRes { .. } => mark("pass1", true),
                                MultiscaleStage::Upsampling => mark("upsample", false),
                                MultiscaleStage::Refine { .. } => mark("pass2", true),
                                MultiscaleStage::Decoding => mark("decode", false),
                                MultiscaleStage::Resizing => mark("resize", false),
                            },
                            &|| false,
                        )
                    },
                )
            } else {
                one(
                    &dev,
                    gpu,
                    total as f64,
                    card,
                    mode,
                    &b,
                    &RandomShapes::ltx_2b(),
                    false,
                    |pipe, mark| {
                        pipe.generate(&image, &params, &mut |p| {
                            mark(stage_name(&p), matches!(p, Progress::Denoising { .. }))
                        })
                    },
                )
            };
            let line = match &row {
                Ok(r) => format!(
                    "{card:>5.0} GiB  {:<11} done in {:>7.1} s ({:.2} s/step), peak GiB per stage {}",
                    mode.to_string(),
                    r.seconds,
                    r.step_seconds,
                    r.peaks
                        .iter()
                        .map(|(s, p)| format!("{s} {:.2}", *p as f64 / (1u64 << 30) as f64))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Err(e) => format!("{card:>5.0} GiB  {:<11} failed: {e}", mode.to_string()),
            };
            println!("{line}");
            rows.push(json!({
                "card_gib": card,
                "mode": mode.to_string(),
                "prefetch": b.prefetch,
                "ok": row.is_ok(),
                "seconds": row.as_ref().map(|r| r.seconds).ok(),
                "step_seconds": row.as_ref().map(|r| r.step_seconds).ok(),
                "peak_bytes_per_stage": row.as_ref().map(|r| r.peaks.clone()).ok(),
                "error": row.as_ref().err().map(|e| e.to_string()),
            }));
            let _ = dev.set_memory_fraction(1.0);
            let _ = dev.empty_cache();
        }
    }
    if let Some(path) = &b.json {
        std::fs::write(
            path,
            serde_json::to_string_pretty(&json!({ "rows": rows }))?,
        )
        .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

struct Outcome {
    seconds: f64,
    step_seconds: f64,
    peaks: BTreeMap<&'static str, u64>,
}

/// `mark(stage, is_step)`: a stage begins (a denoising step, when `is_step`).
type Mark<'a> = &'a mut dyn FnMut(&'static str, bool);

#[allow(clippy::too_many_arguments)]
fn one(
    dev: &CudaDevice,
    gpu: Device,
    total: f64,
    card_gib: f64,
    mode: OffloadMode,
    b: &CardsBench,
    shapes: &RandomShapes,
    with_upsampler: bool,
    run: impl FnOnce(&LtxI2vPipeline, Mark<'_>) -> ltx_models::Result<tch::Tensor>,
) -> anyhow::Result<Outcome> {
    let fraction = (card_gib * (1u64 << 30) as f64 / total).min(1.0);
    let mem = MemoryOptions {
        mode,
        prefetch: b.prefetch,
    };
    // Host-resident weights drawn on the GPU (before the cap), then placed for the mode.
    let rng = ltx_models::weights::shared_generator(gpu, 0)?;
    let host = LoadOptions {
        device: if mode == OffloadMode::None {
            gpu
        } else {
            Device::Cpu
        },
        dtype: Kind::BFloat16,
    };
    let mut pipe = random_pipeline(shapes, host, rng.clone(), 128)?;
    if mode != OffloadMode::None {
        pipe.place(gpu, mem)?;
    }
    if with_upsampler {
        // The released upsampler's shape, drawn on the GPU too, placed as the mode places it.
        let (up, params) =
            random_upsampler(ltx_models::ltx::LtxUpsamplerConfig::default(), host, rng)?;
        pipe.set_upsampler(up, params)?;
    }
    pipe.set_vae_tiling(Some(TileConfig::default()))?;
    tch::Cuda::synchronize(gpu_index(gpu));
    let _ = dev.empty_cache();
    dev.set_memory_fraction(fraction)?;
    let _ = dev.reset_peak_stats();
    let peaks: RefCell<BTreeMap<&'static str, u64>> = RefCell::new(BTreeMap::new());
    let current: RefCell<Option<&'static str>> = RefCell::new(None);
    let step_start: RefCell<Option<Instant>> = RefCell::new(None);
    let step_times: RefCell<Vec<f64>> = RefCell::new(Vec::new());
    let close = |name: Option<&'static str>| {
        if let Some(s) = name {
            tch::Cuda::synchronize(gpu_index(gpu));
            let p = dev
                .memory_stats()
                .map(|m| m.peak_allocated_bytes)
                .unwrap_or(0);
            let mut peaks = peaks.borrow_mut();
            let e = peaks.entry(s).or_default();
            *e = (*e).max(p);
            let _ = dev.reset_peak_stats();
        }
    };
    let t0 = Instant::now();
    let out = run(&pipe, &mut |name, is_step| {
        if let Some(t) = step_start.borrow_mut().take() {
            tch::Cuda::synchronize(gpu_index(gpu));
            step_times.borrow_mut().push(t.elapsed().as_secs_f64());
        }
        if is_step {
            *step_start.borrow_mut() = Some(Instant::now());
        }
        let prev = current.borrow_mut().replace(name);
        if prev != Some(name) {
            close(prev);
        }
    });
    let out = out?;
    tch::Cuda::synchronize(gpu_index(gpu));
    close(*current.borrow());
    let seconds = t0.elapsed().as_secs_f64();
    drop(out);
    let steps = step_times.borrow();
    Ok(Outcome {
        seconds,
        step_seconds: steps.iter().sum::<f64>() / steps.len().max(1) as f64,
        peaks: peaks.into_inner(),
    })
}

fn gpu_index(d: Device) -> i64 {
    match d {
        Device::Cuda(i) => i as i64,
        _ => 0,
    }
}
