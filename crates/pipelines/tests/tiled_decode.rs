//! Tiled VAE decoding on the tiny 0.9.1 VAE against diffusers' tiled decode
//! (tests/fixtures/ltx/refs/vae_tiled_0.9.1.*, made by tools/ltx-fixtures/make_tiled_vae_ref.py).

use std::collections::HashMap;
use std::path::PathBuf;

use ltx_gpu::rng::Generator;
use ltx_models::config::read_config;
use ltx_models::ltx::{LtxVae, LtxVaeConfig};
use ltx_models::weights::WeightStore;
use ltx_pipelines::tiled_decode::{decode_tiled, TileConfig, TilePlan, TilingMode};
use tch::{Device, Kind, Tensor};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/ltx")
}

struct Fixture {
    r: HashMap<String, Tensor>,
    meta: serde_json::Value,
}

impl Fixture {
    fn load() -> Self {
        let dir = fixtures().join("refs");
        let r = Tensor::read_safetensors(dir.join("vae_tiled_0.9.1.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
        let meta = serde_json::from_str(
            &std::fs::read_to_string(dir.join("vae_tiled_0.9.1.json")).unwrap(),
        )
        .unwrap();
        Self { r, meta }
    }

    fn int(&self, key: &str) -> i64 {
        self.meta[key]
            .as_i64()
            .unwrap_or_else(|| panic!("{key} in vae_tiled_0.9.1.json"))
    }

    fn config(&self, mode: TilingMode) -> TileConfig {
        let t = &self.meta["tiling"];
        let v = |k: &str| t[k].as_i64().unwrap();
        TileConfig {
            mode,
            tile_sample_height: v("tile_sample_min_height"),
            tile_sample_width: v("tile_sample_min_width"),
            stride_sample_height: v("tile_sample_stride_height"),
            stride_sample_width: v("tile_sample_stride_width"),
            tile_frames: v("tile_sample_min_num_frames"),
            stride_frames: v("tile_sample_stride_num_frames"),
        }
    }
}

fn vae(variant: &str) -> LtxVae {
    let dir = fixtures()
        .join("models")
        .join(format!("ltx-{variant}"))
        .join("vae");
    let cfg: LtxVaeConfig = read_config(&dir.join("config.json")).unwrap();
    let store = WeightStore::from_component_dir(&dir, Kind::Float, Device::Cpu).unwrap();
    let vae = LtxVae::new(&store.root(), cfg).unwrap();
    store.finish().unwrap();
    vae
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// PSNR in dB over the decoder's [-1, 1] range (peak-to-peak 2), as the fixture script computes it.
fn psnr(a: &Tensor, b: &Tensor) -> f64 {
    let mse = (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .square()
        .mean(Kind::Double)
        .double_value(&[]);
    10.0 * (4.0 / mse).log10()
}

/// Decodes with a CPU generator seeded as the fixture's global one (the 0.9.1 decoder injects
/// noise; others ignore it).
fn seeded<T>(seed: i64, f: impl FnOnce(&mut Generator) -> T) -> T {
    let mut g = Generator::new(Device::Cpu, seed as u64).unwrap();
    tch::no_grad(|| f(&mut g))
}

/// Random latents from their own seeded generator.
fn latents(seed: u64, shape: &[i64]) -> Tensor {
    Generator::new(Device::Cpu, seed)
        .unwrap()
        .randn(shape, Kind::Float)
        .unwrap()
}

#[test]
fn plan_makes_the_same_decoder_calls_as_diffusers() {
    let fx = Fixture::load();
    let z = &fx.r["latents"];
    let s = z.size();
    let plan = TilePlan::new(
        [s[2], s[3], s[4]],
        fx.int("temporal_compression_ratio"),
        fx.int("spatial_compression_ratio"),
        &fx.config(TilingMode::DiffusersCompatible),
    )
    .unwrap();
    let ours: Vec<Vec<i64>> = plan
        .tiles()
        .map(|[t, y, x]| {
            vec![
                s[0],
                s[1],
                t.latent.end - t.latent.start,
                y.latent.end - y.latent.start,
                x.latent.end - x.latent.start,
            ]
        })
        .collect();
    let theirs: Vec<Vec<i64>> =
        serde_json::from_value(fx.meta["tiled_decoder_calls"].clone()).unwrap();
    assert_eq!(ours, theirs);
    // At least two tiles along every axis.
    assert!(plan.frames.len() >= 2 && plan.rows.len() >= 2 && plan.cols.len() >= 2);
}

#[test]
fn diffusers_mode_matches_diffusers_tiled_decode() {
    let fx = Fixture::load();
    let vae = vae("0.9.1");
    let cfg = fx.config(TilingMode::DiffusersCompatible);
    let got = seeded(fx.int("tiled_global_seed"), |g| {
        decode_tiled(
            &vae,
            &fx.r["latents"],
            Some(&fx.r["decode_timestep"]),
            Some(g),
            &cfg,
            None,
        )
        .unwrap()
    });
    let want = &fx.r["tiled"];
    assert_eq!(got.kind(), Kind::Float);
    let err = max_abs_diff(&got, want);
    let magnitude = want.abs().max().double_value(&[]);
    eprintln!(
        "diffusers-compatible tiled decode: max abs error {err:.2e}, magnitude {magnitude:.3}"
    );
    // Same arithmetic as diffusers up to float32 rounding: the decoder agrees with diffusers to
    // a few 1e-6 (its own parity test; torch itself moves the VAE by up to 6e-6 between CPU
    // kernels), the blends are convex combinations, so 1e-4 leaves a wide margin.
    assert!(err <= 1e-4, "max abs error {err} (magnitude {magnitude})");
}

#[test]
fn weighted_mode_is_closer_to_the_untiled_decode_than_diffusers() {
    let fx = Fixture::load();
    let vae = vae("0.9.1");
    let z = &fx.r["latents"];
    let t = Some(&fx.r["decode_timestep"]);
    let untiled = seeded(fx.int("untiled_global_seed"), |g| {
        vae.decode(z, t, Some(g)).unwrap()
    });

    // Our untiled decode is diffusers' (the fixture keeps only its statistics).
    let stats = &fx.meta["untiled_stats"];
    let d = untiled.to_kind(Kind::Double);
    let (sum, sum_sq) = (
        d.sum(Kind::Double).double_value(&[]),
        d.square().sum(Kind::Double).double_value(&[]),
    );
    let rel = |a: f64, b: f64| (a - b).abs() / b.abs().max(1.0);
    assert!(
        rel(sum, stats["sum"].as_f64().unwrap()) < 1e-4,
        "untiled sum {sum} vs {}",
        stats["sum"]
    );
    assert!(
        rel(sum_sq, stats["sum_sq"].as_f64().unwrap()) < 1e-5,
        "untiled sum of squares {sum_sq} vs {}",
        stats["sum_sq"]
    );
    let diffusers = &fx.r["tiled"];
    let psnr_diffusers = psnr(diffusers, &untiled);
    let want = fx.meta["psnr_tiled_vs_untiled_db"].as_f64().unwrap();
    assert!(
        (psnr_diffusers - want).abs() < 1e-3,
        "PSNR of diffusers' tiled decode: {psnr_diffusers} here, {want} in Python"
    );

    let weighted = seeded(fx.int("tiled_global_seed"), |g| {
        decode_tiled(&vae, z, t, Some(g), &fx.config(TilingMode::Weighted), None).unwrap()
    });
    assert_eq!(weighted.size(), untiled.size());
    let psnr_weighted = psnr(&weighted, &untiled);
    eprintln!(
        "fixture {:?}: PSNR vs untiled: weighted {psnr_weighted:.2} dB, diffusers {psnr_diffusers:.2} dB",
        z.size()
    );
    assert!(psnr_weighted > psnr_diffusers);
}

/// A larger latent video than the fixture's, where both modes tile along every axis: the
/// diffusers-compatible mode (checked against diffusers above) against the weighted one, with
/// the noise-free 0.9.0 VAE and the noisy 0.9.1 one.
#[test]
fn weighted_mode_beats_diffusers_when_both_tile_every_axis() {
    let z = latents(77, &[1, 8, 5, 4, 5]);
    let cfg = |mode| TileConfig {
        mode,
        tile_sample_height: 96,
        tile_sample_width: 96,
        stride_sample_height: 64,
        stride_sample_width: 64,
        tile_frames: 16,
        stride_frames: 8,
    };
    for variant in ["0.9.0", "0.9.1"] {
        let vae = vae(variant);
        let temb = Tensor::from_slice(&[0.05f32]);
        let t = vae.config().timestep_conditioning.then_some(&temb);
        let untiled = seeded(3, |g| vae.decode(&z, t, Some(g)).unwrap());
        let mut psnrs = Vec::new();
        for mode in [TilingMode::DiffusersCompatible, TilingMode::Weighted] {
            let c = cfg(mode);
            let plan = TilePlan::new([5, 4, 5], 8, 32, &c).unwrap();
            assert!(plan.frames.len() >= 2 && plan.rows.len() >= 2 && plan.cols.len() >= 2);
            let out = seeded(4, |g| decode_tiled(&vae, &z, t, Some(g), &c, None).unwrap());
            assert_eq!(out.size(), untiled.size());
            psnrs.push(psnr(&out, &untiled));
        }
        eprintln!(
            "{variant} {:?}: PSNR vs untiled: weighted {:.2} dB, diffusers {:.2} dB",
            z.size(),
            psnrs[1],
            psnrs[0]
        );
        assert!(psnrs[1] > psnrs[0], "{variant}: {psnrs:?}");
    }
}

#[test]
fn one_tile_is_the_untiled_decode() {
    let fx = Fixture::load();
    let vae = vae("0.9.1");
    // Two latent frames: one 16-frame temporal tile in both modes (diffusers tiles in time as
    // soon as F > 16 / 8), and 64 x 96 px inside one 512 px tile.
    let z = &fx.r["latents"].narrow(2, 0, 2);
    let t = Some(&fx.r["decode_timestep"]);
    let untiled = seeded(5, |g| vae.decode(z, t, Some(g)).unwrap());
    for mode in [TilingMode::Weighted, TilingMode::DiffusersCompatible] {
        let cfg = TileConfig {
            mode,
            ..TileConfig::default()
        };
        let got = seeded(5, |g| {
            decode_tiled(&vae, z, t, Some(g), &cfg, None).unwrap()
        });
        assert!(got.equal(&untiled), "{mode:?}");
    }
}

#[test]
fn batches_decode_like_single_videos() {
    // Weighted mode on a batch of two: each video as if decoded alone (noise-free 0.9.0 VAE).
    let vae = vae("0.9.0");
    let z = latents(78, &[2, 8, 3, 2, 3]);
    let cfg = TileConfig {
        mode: TilingMode::Weighted,
        tile_sample_height: 64,
        tile_sample_width: 64,
        stride_sample_height: 32,
        stride_sample_width: 32,
        tile_frames: 8,
        stride_frames: 8,
    };
    tch::no_grad(|| {
        let both = decode_tiled(&vae, &z, None, None, &cfg, None).unwrap();
        for b in 0..2 {
            let one = decode_tiled(&vae, &z.narrow(0, b, 1), None, None, &cfg, None).unwrap();
            let err = max_abs_diff(&both.narrow(0, b, 1), &one);
            assert!(err < 1e-5, "video {b}: {err}");
        }
    });
}

#[test]
fn rejects_bad_inputs() {
    let vae = vae("0.9.0");
    let cfg = TileConfig::default();
    let z = Tensor::zeros([8, 2, 2, 2], (Kind::Float, Device::Cpu));
    let err = decode_tiled(&vae, &z, None, None, &cfg, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("latents must be [B, C, F, H, W]"), "{err}");
    let bad = TileConfig {
        tile_frames: 4,
        ..cfg
    };
    let z = Tensor::zeros([1, 8, 2, 2, 2], (Kind::Float, Device::Cpu));
    let err = decode_tiled(&vae, &z, None, None, &bad, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tile_frames (4) must not be smaller than stride_frames (8)"),
        "{err}"
    );
}

/// On CUDA (skipped elsewhere): the weighted mode with the tile_accumulate kernel equals the
/// same decode accumulated with tch ops, and the CPU decode up to the GPU's convolutions.
#[test]
fn weighted_mode_on_cuda_uses_the_kernel() {
    let d = match ltx_gpu::cuda::open(0) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("skipped: no CUDA device ({e})");
            return;
        }
    };
    let registry = ltx_gpu::kernels::KernelRegistry::new(d.clone()).unwrap();
    let gpu = Device::Cuda(d.index());
    let dir = fixtures().join("models/ltx-0.9.0/vae");
    let vcfg: LtxVaeConfig = read_config(&dir.join("config.json")).unwrap();
    let store = WeightStore::from_component_dir(&dir, Kind::Float, gpu).unwrap();
    let on_gpu = LtxVae::new(&store.root(), vcfg).unwrap();
    store.finish().unwrap();
    let z = latents(79, &[1, 8, 5, 4, 5]);
    let cfg = TileConfig {
        mode: TilingMode::Weighted,
        tile_sample_height: 96,
        tile_sample_width: 96,
        stride_sample_height: 64,
        stride_sample_width: 64,
        tile_frames: 16,
        stride_frames: 8,
    };
    tch::no_grad(|| {
        let zg = z.to_device(gpu);
        let kernel = decode_tiled(&on_gpu, &zg, None, None, &cfg, Some(&registry)).unwrap();
        let ops = decode_tiled(&on_gpu, &zg, None, None, &cfg, None).unwrap();
        assert_eq!(kernel.device(), gpu);
        let err = max_abs_diff(&kernel.to_device(Device::Cpu), &ops.to_device(Device::Cpu));
        eprintln!("cuda: kernel vs tch accumulation {err:.2e}");
        assert!(err < 1e-5, "{err}");
        let cpu = decode_tiled(&vae("0.9.0"), &z, None, None, &cfg, None).unwrap();
        let err = max_abs_diff(&kernel.to_device(Device::Cpu), &cpu);
        eprintln!("cuda vs cpu: {err:.2e}");
        // Only a gross-error check: cuDNN may use TF32 convolutions (torch's default), which
        // move this random VAE's output by far more than float32 rounding; a misplaced tile
        // would be off by O(1).
        assert!(err < 0.25, "{err}");
    });
}
