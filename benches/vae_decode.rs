//! VAE decode microbenchmark (GPU): a 0.9.1-shaped LTX decoder with random bf16 weights at
//! 768×512 and `LTX_BENCH_VAE_FRAMES` frames (default 121), decoded three ways in the same run:
//! untiled (`tch_reference/`), diffusers-compatible tiling (`diffusers_tiled/`: 512 px tiles
//! every 448 px, 16/8 frames, framewise) and our weighted tiling with the accumulate kernel and
//! the fused normalise→uint8 pass (`kernel/`); each ends in the uint8 frames a video is written
//! from. Before the timed runs each method's peak memory and PSNR against the untiled
//! decode (same noise seed) are printed as `memory <id>: N MiB` and `psnr <id>: X dB`. An
//! untiled decode that runs out of memory is reported as such and left out; any other error
//! fails the bench with that error. Without a CUDA device it prints
//! `skipped: no CUDA device (…)` (or fails, where CUDA is required).

mod common;

use std::time::Duration;

use common::{mib, peak_above_start, timed};
use criterion::{criterion_group, criterion_main, Criterion};
use ltx_gpu::kernels::KernelRegistry;
use ltx_models::ltx::single_file::{released_vae_config, VaeLayout};
use ltx_models::ltx::LtxVae;
use ltx_models::weights::WeightStore;
use ltx_pipelines::tiled_decode::{decode_to_u8, TileConfig, TilingMode};
use tch::{Device, Kind, Tensor};

/// PSNR of uint8 frames (peak 255).
fn psnr(a: &Tensor, b: &Tensor) -> f64 {
    let mse = (a.to_kind(Kind::Float) - b.to_kind(Kind::Float))
        .square()
        .mean(Kind::Float)
        .double_value(&[]);
    10.0 * (255.0 * 255.0 / mse).log10()
}

fn vae_bench(c: &mut Criterion) {
    let Some(d) = common::gpu_or_skip() else {
        return;
    };
    let registry = KernelRegistry::new(d.clone())
        .unwrap_or_else(|e| panic!("vae bench: kernel registry: {e}"));
    let registry = Some(&registry);
    let gpu = Device::Cuda(d.index());
    let index = d.index() as i64;
    let frames: i64 = std::env::var("LTX_BENCH_VAE_FRAMES")
        .ok()
        .and_then(|f| f.parse().ok())
        .filter(|f: &i64| *f >= 1 && (f - 1) % 8 == 0)
        .unwrap_or(121);
    let cfg = released_vae_config(VaeLayout::V091);
    tch::manual_seed(0);
    let store = WeightStore::random(Kind::BFloat16, gpu);
    let vae = tch::no_grad(|| LtxVae::new(&store.root(), cfg.clone()))
        .unwrap_or_else(|e| panic!("vae bench: building the VAE: {e}"));
    let (lf, lh, lw) = ((frames - 1) / 8 + 1, 512 / 32, 768 / 32);
    let z = Tensor::randn([1, cfg.latent_channels, lf, lh, lw], (Kind::BFloat16, gpu));
    let t = Tensor::from_slice(&[0.05f32])
        .to_device(gpu)
        .to_kind(Kind::BFloat16);
    let temb = cfg.timestep_conditioning.then_some(&t);
    let name = common::id_name(&d);
    let group_name = format!("vae_decode/{name}");
    let shape = format!("768x512x{frames}");
    let diffusers = TileConfig {
        mode: TilingMode::DiffusersCompatible,
        ..TileConfig::default()
    };
    let weighted = TileConfig::default();
    // Each way ends in the uint8 frames a video is written from (ours fuses that pass).
    // The 0.9.1 decoder's noise: a generator on the GPU, seeded alike for every way.
    let noise = || {
        ltx_gpu::rng::Generator::new(gpu, 1)
            .unwrap_or_else(|e| panic!("vae bench: the decoder's generator: {e}"))
    };
    let untiled = || {
        let mut g = noise();
        tch::no_grad(|| decode_to_u8(&vae, &z, temb, Some(&mut g), None, registry))
    };
    let tiled = |cfg: &TileConfig| {
        let mut g = noise();
        tch::no_grad(|| decode_to_u8(&vae, &z, temb, Some(&mut g), Some(cfg), registry))
            .unwrap_or_else(|e| panic!("vae bench: tiled decode ({:?}): {e}", cfg.mode))
    };

    let (reference, peak) = peak_above_start(&d, || match untiled() {
        Ok(v) => Some(v),
        Err(e) if e.to_string().to_lowercase().contains("out of memory") => {
            println!("memory {group_name}/tch_reference/{shape}: out of memory ({e})");
            None
        }
        Err(e) => panic!("vae bench: untiled decode: {e}"),
    });
    let fits = reference.is_some();
    if fits {
        println!(
            "memory {group_name}/tch_reference/{shape}: {:.1} MiB",
            mib(peak)
        );
    }
    let _ = d.empty_cache();
    for (method, cfg) in [("diffusers_tiled", &diffusers), ("kernel", &weighted)] {
        let (out, peak) = peak_above_start(&d, || tiled(cfg));
        println!("memory {group_name}/{method}/{shape}: {:.1} MiB", mib(peak));
        if let Some(r) = &reference {
            println!(
                "psnr {group_name}/{method}/{shape}: {:.2} dB",
                psnr(&out, r)
            );
        }
        drop(out);
        let _ = d.empty_cache();
    }
    drop(reference);

    let mut group = c.benchmark_group(&group_name);
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    if fits {
        group.bench_function(format!("tch_reference/{shape}"), |b| {
            b.iter_custom(|iters| {
                timed(index, iters, || {
                    drop(untiled().unwrap_or_else(|e| panic!("vae bench: untiled decode: {e}")))
                })
            })
        });
    }
    group.bench_function(format!("diffusers_tiled/{shape}"), |b| {
        b.iter_custom(|iters| timed(index, iters, || drop(tiled(&diffusers))))
    });
    group.bench_function(format!("kernel/{shape}"), |b| {
        b.iter_custom(|iters| timed(index, iters, || drop(tiled(&weighted))))
    });
    group.finish();
}

criterion_group!(benches, vae_bench);
criterion_main!(benches);
