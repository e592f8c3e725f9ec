//! SDXL tiled decoding on the tiny random VAE of tests/fixtures/sdxl/vae
//! (tools/sdxl-fixtures/make_vae.py): both tiling modes against the untiled decode of a smooth
//! latent, the byte output, and the errors.

use std::path::PathBuf;

use ltx_models::sdxl::vae::AutoencoderKl;
use ltx_models::ModelError;
use ltx_pipelines::sdxl_tiled_decode::{
    decode_tiled, decode_to_u8, to_u8, SdxlTileConfig, TilingMode,
};
use tch::{Device, Kind, Tensor};

fn vae() -> AutoencoderKl {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/sdxl/vae/vae");
    AutoencoderKl::from_dir(&dir, Kind::Float, Device::Cpu).unwrap()
}

/// A smooth latent `[b, 4, h, w]`: a few low-frequency sinusoids per channel, amplitude ~1.5.
fn smooth_latent(b: i64, h: i64, w: i64) -> Tensor {
    let opts = (Kind::Float, Device::Cpu);
    let y = Tensor::arange(h, opts).view([1, 1, h, 1]) / h as f64;
    let x = Tensor::arange(w, opts).view([1, 1, 1, w]) / w as f64;
    let c = Tensor::arange(4 * b, opts).view([b, 4, 1, 1]);
    let tau = std::f64::consts::TAU;
    let a = ((&x * 1.3 + &c * 0.4) * tau).sin() * ((&y * 0.9 - &c * 0.25) * tau).cos();
    let bb = ((&x * 0.6 + &y * 0.8 + &c * 0.7) * tau).sin();
    a * 1.0 + bb * 0.5
}

/// PSNR on the [0, 1] image scale (`x·0.5 + 0.5`, unclamped), in dB.
fn psnr(a: &Tensor, b: &Tensor) -> f64 {
    let d = (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)) * 0.5;
    let mse = (&d * &d).mean(Kind::Double).double_value(&[]);
    10.0 * (1.0 / mse).log10()
}

fn max_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

#[test]
fn weighted_tiles_are_closer_to_the_untiled_decode_than_diffusers_tiles() {
    let vae = vae();
    let z = smooth_latent(1, 12, 16);
    tch::no_grad(|| {
        let untiled = vae.decode(&z).unwrap();
        // diffusers' tile for this VAE (32 px = 4 latents, stride 24 px), then a larger one.
        for tile in [32, 64] {
            let cfg = |mode| SdxlTileConfig {
                mode,
                tile_sample_size: tile,
                stride_sample_size: tile - tile / 4,
            };
            let weighted = decode_tiled(&vae, &z, &cfg(TilingMode::Weighted), None).unwrap();
            let diffusers =
                decode_tiled(&vae, &z, &cfg(TilingMode::DiffusersCompatible), None).unwrap();
            assert_eq!(weighted.size(), untiled.size());
            assert_eq!(diffusers.size(), untiled.size());
            let (pw, pd) = (psnr(&weighted, &untiled), psnr(&diffusers, &untiled));
            eprintln!(
                "96x128 image, {tile}-px tiles: PSNR vs untiled: weighted {pw:.2} dB, \
                 diffusers-compatible {pd:.2} dB"
            );
            assert!(
                pw.is_finite() && pd.is_finite(),
                "a mode equals the untiled decode"
            );
            assert!(
                pw > pd,
                "{tile}-px tiles: weighted {pw:.2} dB <= diffusers {pd:.2} dB"
            );
        }
    });
}

#[test]
fn diffusers_mode_is_enable_tiling_and_one_tile_is_the_untiled_decode() {
    let vae = vae();
    tch::no_grad(|| {
        let z = smooth_latent(1, 6, 8);
        for mode in [TilingMode::Weighted, TilingMode::DiffusersCompatible] {
            let cfg = SdxlTileConfig::for_vae(&vae, mode);
            assert_eq!((cfg.tile_sample_size, cfg.stride_sample_size), (32, 24));
        }
        let cfg = SdxlTileConfig::for_vae(&vae, TilingMode::DiffusersCompatible);
        let ours = decode_tiled(&vae, &z, &cfg, None).unwrap();
        assert_eq!(max_err(&ours, &vae.decode_tiled(&z).unwrap()), 0.0);
        // Latents that fit one tile: both modes give the plain decode.
        let small = smooth_latent(1, 4, 4);
        let plain = vae.decode(&small).unwrap();
        for mode in [TilingMode::Weighted, TilingMode::DiffusersCompatible] {
            let cfg = SdxlTileConfig::for_vae(&vae, mode);
            let out = decode_tiled(&vae, &small, &cfg, None).unwrap();
            assert_eq!(max_err(&out, &plain), 0.0, "{mode:?}");
        }
    });
}

#[test]
fn weighted_batches_tile_each_image_alike() {
    let vae = vae();
    let cfg = SdxlTileConfig::for_vae(&vae, TilingMode::Weighted);
    tch::no_grad(|| {
        let z = smooth_latent(2, 6, 9);
        let both = decode_tiled(&vae, &z, &cfg, None).unwrap();
        assert_eq!(both.size(), [2, 3, 48, 72]);
        for i in 0..2 {
            let one = decode_tiled(&vae, &z.narrow(0, i, 1), &cfg, None).unwrap();
            let err = max_err(&both.narrow(0, i, 1), &one);
            assert!(err < 1e-5, "image {i}: {err}");
        }
    });
}

#[test]
fn bytes_round_like_diffusers_pil_output() {
    let vae = vae();
    let z = smooth_latent(1, 10, 13);
    tch::no_grad(|| {
        // Untiled: the float decode, then diffusers' postprocess.
        let plain = decode_to_u8(&vae, &z, None, None).unwrap();
        assert_eq!(plain.size(), [80, 104, 3]);
        let want = to_u8(&vae.decode(&z).unwrap().select(0, 0)).unwrap();
        assert!(plain.equal(&want));
        // Weighted: tile_finalize_u8 against the float weighted decode, rounded.
        let cfg = SdxlTileConfig::for_vae(&vae, TilingMode::Weighted);
        let fused = decode_to_u8(&vae, &z, Some(&cfg), None).unwrap();
        let float = decode_tiled(&vae, &z, &cfg, None).unwrap();
        let want = to_u8(&float.select(0, 0)).unwrap();
        let diff = (fused.to_kind(Kind::Int16) - want.to_kind(Kind::Int16)).abs();
        let off = diff.gt(0).sum(Kind::Int64).int64_value(&[]);
        let max = diff.max().int64_value(&[]);
        eprintln!(
            "weighted bytes vs float path: {off} of {} one level off (max {max})",
            want.numel()
        );
        assert!(
            max <= 1 && off * 1000 <= want.numel() as i64,
            "{off} off, max {max}"
        );
        // diffusers mode: its tiled decode, rounded.
        let cfg = SdxlTileConfig::for_vae(&vae, TilingMode::DiffusersCompatible);
        let bytes = decode_to_u8(&vae, &z, Some(&cfg), None).unwrap();
        let want = to_u8(&vae.decode_tiled(&z).unwrap().select(0, 0)).unwrap();
        assert!(bytes.equal(&want));
    });
}

#[test]
fn bad_inputs_are_errors() {
    let vae = vae();
    let f = |s: &[i64]| Tensor::zeros(s, (Kind::Float, Device::Cpu));
    let weighted = SdxlTileConfig::for_vae(&vae, TilingMode::Weighted);
    let bad_stride = SdxlTileConfig {
        stride_sample_size: 4,
        ..weighted
    };
    let cases: Vec<(&str, ltx_models::Result<Tensor>)> = vec![
        (
            "3 channels",
            decode_tiled(&vae, &f(&[1, 3, 8, 8]), &weighted, None),
        ),
        ("3-D", decode_tiled(&vae, &f(&[4, 8, 8]), &weighted, None)),
        (
            "empty",
            decode_tiled(&vae, &f(&[1, 4, 0, 8]), &weighted, None),
        ),
        (
            "stride below a latent",
            decode_tiled(&vae, &f(&[1, 4, 8, 8]), &bad_stride, None),
        ),
        (
            "batch of 2 to bytes",
            decode_to_u8(&vae, &f(&[2, 4, 8, 8]), None, None),
        ),
    ];
    for (what, r) in cases {
        match r {
            Err(ModelError::InvalidInput(m)) => eprintln!("{what}: {m}"),
            other => panic!(
                "{what}: expected InvalidInput, got {:?}",
                other.map(|t| t.size())
            ),
        }
    }
}
