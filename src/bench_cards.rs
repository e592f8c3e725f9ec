//! `ltx-i2v bench cards` (GPU): the whole image-to-video pipeline with the released LTX-2B
//! shapes (T5-XXL encoder, 2B transformer, 0.9.1 VAE; random bf16 weights) at 768×512×121 on
//! simulated smaller cards — torch's per-process memory fraction caps the allocator at 16 GiB,
//! then 8 GiB — in each memory mode. Per run: whether it completed, total time, seconds per
//! denoising step, and peak GPU memory per stage. The VAE decodes in tiles (weighted mode)
//! in every run: untiled, the full-resolution decode alone needs more than either card.
//! Without a CUDA device it prints `skipped: no CUDA device (reason)` and exits 0.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use ltx_gpu::CudaDevice;
use ltx_pipelines::demo::{random_pipeline, RandomShapes};
use ltx_pipelines::image::RgbImage;
use ltx_pipelines::tiled_decode::TileConfig;
use ltx_pipelines::{I2vParams, LoadOptions, MemoryOptions, OffloadMode, Progress};
use serde_json::json;
use tch::{Device, Kind};

#[derive(Debug, Args)]
pub struct CardsBench {
    /// Simulated card sizes in GiB.
    #[arg(long, value_delimiter = ',', default_value = "16,8")]
    cards: Vec<f64>,
    /// Modes to run on each card.
    #[arg(long, value_delimiter = ',', default_value = "none,model,sequential")]
    modes: Vec<OffloadMode>,
    #[arg(long, default_value_t = 2)]
    prefetch: usize,
    #[arg(long, default_value_t = 512)]
    height: i64,
    #[arg(long, default_value_t = 768)]
    width: i64,
    #[arg(long, default_value_t = 121)]
    frames: i64,
    /// Denoising steps (the per-step time is reported).
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
    println!(
        "bench cards: cuda:{i} {} ({:.1} GiB), LTX-2B shapes (T5-XXL, 2B transformer, 0.9.1 VAE), bf16 random weights, {}x{}x{}, {} steps, tiled decode",
        dev.name().unwrap_or_default(),
        total as f64 / (1u64 << 30) as f64,
        b.width,
        b.height,
        b.frames,
        b.steps
    );
    let image = RgbImage {
        width: b.width as usize,
        height: b.height as usize,
        data: (0..b.width * b.height * 3)
            .map(|v| (v % 251) as u8)
            .collect(),
    };
    let params = I2vParams {
        prompt: "a red ball bounces on a wooden table".into(),
        height: b.height,
        width: b.width,
        num_frames: b.frames,
        steps: b.steps,
        seed: 1,
        ..I2vParams::default()
    };
    let mut rows = Vec::new();
    for &card in &b.cards {
        for &mode in &b.modes {
            let row = one(&dev, gpu, total as f64, card, mode, &b, &image, &params);
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

#[allow(clippy::too_many_arguments)]
fn one(
    dev: &CudaDevice,
    gpu: Device,
    total: f64,
    card_gib: f64,
    mode: OffloadMode,
    b: &CardsBench,
    image: &RgbImage,
    params: &I2vParams,
) -> anyhow::Result<Outcome> {
    let fraction = (card_gib * (1u64 << 30) as f64 / total).min(1.0);
    let mem = MemoryOptions {
        mode,
        prefetch: b.prefetch,
    };
    ltx_gpu::manual_seed(0);
    // Host-resident weights drawn on the GPU (before the cap), then placed for the mode.
    let host = LoadOptions {
        device: if mode == OffloadMode::None {
            gpu
        } else {
            Device::Cpu
        },
        dtype: Kind::BFloat16,
    };
    let mut pipe = random_pipeline(&RandomShapes::ltx_2b(), host, Some(gpu), 128)?;
    if mode != OffloadMode::None {
        pipe.place(gpu, mem)?;
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
    let out = pipe.generate(image, params, &mut |p| {
        let name = stage_name(&p);
        if let Some(t) = step_start.borrow_mut().take() {
            tch::Cuda::synchronize(gpu_index(gpu));
            step_times.borrow_mut().push(t.elapsed().as_secs_f64());
        }
        if matches!(p, Progress::Denoising { .. }) {
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
