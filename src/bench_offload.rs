//! `ltx-i2v bench offload` (GPU): the memory modes on an LTX-shaped transformer with random
//! weights, all measured in one run against baselines from the same run:
//!
//! - raw pinned host→device bandwidth (one large `cudaMemcpyAsync`) vs the streamer's copy
//!   pipeline alone (the ring driven through every unit without compute);
//! - one denoising step (one transformer forward at batch 2, i.e. with CFG) in each mode:
//!   `none` (resident), `model` (the whole transformer onloaded, then the step), `sequential`
//!   with prefetch k, and the accelerate-style baseline (each block copied synchronously from
//!   pageable memory before it runs). Time and peak allocated GPU memory for each.
//!
//! Without a CUDA device it prints `skipped: no CUDA device (reason)` and exits 0.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use ltx_gpu::CudaDevice;
use ltx_models::hooks::BlockHooks;
use ltx_models::ltx::{LtxTransformer, LtxTransformerConfig, TransformerInput};
use ltx_models::weights::WeightStore;
use ltx_offload::naive::SyncCopyHooks;
use ltx_offload::weights::{ltx_transformer_unit, CHUNK_BYTES};
use ltx_offload::{OffloadedWeights, Streamer};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

#[derive(Debug, Args)]
pub struct OffloadBench {
    /// Transformer blocks (LTX-2B: 28, 13B: 48).
    #[arg(long, default_value_t = 28)]
    layers: i64,
    /// Hidden size (2B: 2048, 13B: 4096; heads of 64, or 128 at 4096).
    #[arg(long, default_value_t = 2048)]
    dim: i64,
    /// Latent frames × rows × columns (768×512×121 → 16×16×24 = 6144 tokens).
    #[arg(long, default_value = "16x16x24")]
    grid: String,
    /// Batch (2 = classifier-free guidance).
    #[arg(long, default_value_t = 2)]
    batch: i64,
    /// Prefetch depths to run for sequential mode.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    prefetch: Vec<usize>,
    /// Timed repetitions per mode (after one warm-up); the fastest is reported.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// CUDA device index.
    #[arg(long, default_value_t = 0)]
    device: usize,
    /// Also write the rows as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

struct Row {
    mode: String,
    seconds: f64,
    peak_bytes: u64,
    /// The residency manager's estimate of this step's peak (weights on the GPU + the step's
    /// activations), to check the formula against the measured peak.
    estimate_bytes: u64,
    weight_bytes_on_gpu: u64,
    note: String,
}

fn sync(i: usize) {
    tch::Cuda::synchronize(i as i64);
}

/// Fastest of `reps` timed runs of `f` (after one warm-up), synchronised before each stop.
fn time(i: usize, reps: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    f()?;
    sync(i);
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t0 = Instant::now();
        f()?;
        sync(i);
        best = best.min(t0.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn gb(b: u64) -> f64 {
    b as f64 / 1e9
}

pub fn run(b: OffloadBench) -> anyhow::Result<()> {
    let Some(dev) = crate::bench::cuda_or_skip(b.device)? else {
        return Ok(());
    };
    let i = b.device;
    let device = Device::Cuda(i);
    let grid: Vec<i64> = b
        .grid
        .split('x')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("--grid is FxHxW, e.g. 16x16x24")?;
    let [f, h, w] = grid[..] else {
        bail!("--grid is FxHxW, e.g. 16x16x24");
    };
    let head = if b.dim >= 4096 { 128 } else { 64 };
    let cfg = LtxTransformerConfig {
        num_layers: b.layers,
        attention_head_dim: head,
        num_attention_heads: b.dim / head,
        cross_attention_dim: b.dim,
        ..LtxTransformerConfig::default()
    };
    println!(
        "bench offload: cuda:{i} {}, transformer {} blocks × D={} (bf16, random), {} tokens, batch {}",
        dev.name().unwrap_or_default(),
        b.layers,
        b.dim,
        f * h * w,
        b.batch
    );

    // The model on the host, its parameters into a pinned arena.
    let t0 = Instant::now();
    ltx_gpu::manual_seed(0);
    let store = WeightStore::random(Kind::BFloat16, Device::Cpu);
    let mut model = tch::no_grad(|| LtxTransformer::new(&store.root(), cfg.clone()))?;
    let named = store.take_params();
    drop(store);
    let handles: Vec<(String, Tensor)> = named
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    let mut weights = OffloadedWeights::new(named, ltx_transformer_unit, device, CHUNK_BYTES)?;
    let weight_bytes = weights.weight_bytes();
    // What one pass of the ring copies: every unit (the remainder stays on the device).
    let unit_bytes: u64 = (0..weights.num_units())
        .map(|u| weights.unit_bytes(u) as u64)
        .sum();
    println!(
        "weights: {:.2} GB in {} units of {:.1} MB (pinned host arena {:.2} GB), built in {:.1} s",
        gb(weight_bytes),
        weights.num_units(),
        weights.max_unit_bytes() as f64 / 1e6,
        gb(weights.host_bytes()),
        t0.elapsed().as_secs_f64()
    );

    // Inputs.
    let (bs, s) = (b.batch, f * h * w);
    let x = Tensor::randn([bs, s, cfg.in_channels], (Kind::BFloat16, device));
    let text = Tensor::randn([bs, 128, cfg.caption_channels], (Kind::BFloat16, device));
    let mask = Tensor::ones([bs, 128], (Kind::BFloat16, device));
    let timestep = Tensor::full([bs], 500.0, (Kind::Float, device));
    let step = |m: &LtxTransformer| -> anyhow::Result<()> {
        let out = tch::no_grad(|| {
            m.forward(&TransformerInput {
                hidden_states: &x,
                encoder_hidden_states: &text,
                timestep: &timestep,
                encoder_attention_mask: Some(&mask),
                num_frames: f,
                height: h,
                width: w,
                rope_interpolation_scale: [8.0 / 25.0, 32.0, 32.0],
                video_coords: None,
            })
        })?;
        drop(out);
        Ok(())
    };
    let act = ltx_offload::budget::Workload::of(&ltx_offload::budget::Shape {
        batch: bs as u64,
        tokens: s as u64,
        hidden: b.dim as u64,
        text_len: 128,
        text_hidden: 4096,
        frames: 1,
        height: 1,
        width: 1,
        decoder_channels: 1,
        decoder_patch: 1,
        decode_tile: None,
        elem: 2,
    })
    .transformer_activations;
    let peak = |d: &CudaDevice| {
        d.memory_stats()
            .map(|m| m.peak_allocated_bytes)
            .unwrap_or(0)
    };
    let mut rows = Vec::new();

    // Raw bandwidth: a 1 GiB pinned buffer (cudaHostAlloc, as the arena's) to the device in one
    // copy.
    let n = 1i64 << 30;
    let host = ltx_gpu::pinned::empty(n as usize)?;
    anyhow::ensure!(
        ltx_gpu::pinned::is_pinned(&host),
        "the raw-bandwidth buffer is not pinned"
    );
    let on = Tensor::empty([n], (Kind::Uint8, device));
    let raw = time(i, b.reps, || Ok(ltx_gpu::copy_into(&on, &host, true)?))?;
    let raw_gbs = n as f64 / raw / 1e9;
    drop((host, on));

    // none: everything resident.
    weights.onload()?;
    dev.empty_cache()?;
    dev.reset_peak_stats()?;
    let secs = time(i, b.reps, || step(&model))?;
    rows.push(Row {
        mode: "none (resident)".into(),
        seconds: secs,
        peak_bytes: peak(&dev),
        estimate_bytes: weights.device_bytes() + act,
        weight_bytes_on_gpu: weights.device_bytes(),
        note: String::new(),
    });
    let resident = secs;
    weights.offload()?;
    dev.empty_cache()?;

    // model: the whole transformer onloaded (once per generation in the pipeline), then a step.
    dev.reset_peak_stats()?;
    let onload = time(i, b.reps, || {
        weights.onload()?;
        weights.offload()?;
        Ok(())
    })?;
    weights.onload()?;
    let secs = time(i, b.reps, || step(&model))?;
    rows.push(Row {
        mode: "model".into(),
        seconds: secs,
        peak_bytes: peak(&dev),
        estimate_bytes: weights.device_bytes() + act,
        weight_bytes_on_gpu: weights.device_bytes(),
        note: format!(
            "+ {onload:.3} s onload per generation ({:.1} GB/s)",
            gb(weight_bytes) / onload
        ),
    });
    weights.offload()?;
    dev.empty_cache()?;

    // sequential: the ring, copies only (bandwidth), then steps.
    let mut stream_gbs = Vec::new();
    for &k in &b.prefetch {
        let streamer = Arc::new(Streamer::new(weights, k, device)?);
        let units = model.num_blocks();
        let copy_only = time(i, b.reps, || {
            for u in 0..units {
                streamer.before(u)?;
                streamer.after(u)?;
            }
            Ok(())
        })?;
        let copy_gbs = unit_bytes as f64 / copy_only / 1e9;
        stream_gbs.push((k, copy_gbs));
        model.set_block_hooks(Some(streamer.clone()));
        dev.empty_cache()?;
        dev.reset_peak_stats()?;
        let secs = time(i, b.reps, || step(&model))?;
        rows.push(Row {
            mode: format!("sequential k={k}"),
            seconds: secs,
            peak_bytes: peak(&dev),
            estimate_bytes: streamer.device_bytes() + act,
            weight_bytes_on_gpu: streamer.device_bytes(),
            note: format!(
                "{:.2}x resident; ring copies alone {copy_gbs:.1} GB/s",
                secs / resident
            ),
        });
        model.set_block_hooks(None);
        sync(i);
        let s = Arc::into_inner(streamer).context("the streamer is still shared")?;
        weights = s.into_weights()?;
        dev.empty_cache()?;
    }

    // The accelerate-style baseline: pageable host memory, synchronous per-block copies.
    drop(weights);
    let pageable =
        OffloadedWeights::with_pinning(handles, ltx_transformer_unit, device, CHUNK_BYTES, false)?;
    let mut pageable = pageable;
    let max_unit = pageable.max_unit_bytes() as u64;
    let remainder = pageable.onload_remainder(device)?;
    model.set_block_hooks(Some(Arc::new(SyncCopyHooks::new(pageable, device))));
    dev.empty_cache()?;
    dev.reset_peak_stats()?;
    let secs = time(i, b.reps.min(2), || step(&model))?;
    rows.push(Row {
        mode: "naive sync per-block copy".into(),
        seconds: secs,
        peak_bytes: peak(&dev),
        estimate_bytes: remainder.numel() as u64 + max_unit + act,
        weight_bytes_on_gpu: remainder.numel() as u64,
        note: format!(
            "{:.2}x resident (accelerate-style baseline)",
            secs / resident
        ),
    });

    println!();
    println!(
        "{:<28} {:>10} {:>10} {:>12} {:>16}  note",
        "mode", "step s", "peak GB", "estimate GB", "weights on GPU"
    );
    for r in &rows {
        println!(
            "{:<28} {:>10.3} {:>10.2} {:>12.2} {:>13.2} GB  {}",
            r.mode,
            r.seconds,
            gb(r.peak_bytes),
            gb(r.estimate_bytes),
            gb(r.weight_bytes_on_gpu),
            r.note
        );
    }
    println!();
    println!("raw pinned H2D (1 GiB, one copy): {raw_gbs:.1} GB/s");
    for (k, g) in &stream_gbs {
        println!(
            "streamer copy pipeline k={k}: {g:.1} GB/s = {:.0}% of raw",
            100.0 * g / raw_gbs
        );
    }
    if let Some(path) = &b.json {
        let out: Value = json!({
            "device": dev.name().unwrap_or_default(),
            "layers": b.layers, "dim": b.dim, "tokens": s, "batch": bs,
            "weight_bytes": weight_bytes,
            "raw_h2d_gbs": raw_gbs,
            "streamer_gbs": stream_gbs.iter().map(|(k, g)| json!({"prefetch": k, "gbs": g})).collect::<Vec<_>>(),
            "rows": rows.iter().map(|r| json!({
                "mode": r.mode, "seconds": r.seconds, "peak_bytes": r.peak_bytes,
                "estimate_bytes": r.estimate_bytes,
                "weight_bytes_on_gpu": r.weight_bytes_on_gpu, "note": r.note,
            })).collect::<Vec<_>>(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&out)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
