//! SDXL's VAE (`AutoencoderKL`) against diffusers 0.42.1 on the tiny random model of
//! `tools/sdxl-fixtures/make_vae.py` (tests/fixtures/sdxl/vae).
//!
//! Tolerance: float32 on the CPU, max abs error ≤ 1e-4 against outputs of magnitude ~3. The same
//! libtorch kernels run on both sides; what remains is summation-order rounding (≈1e-6 here), so
//! 1e-4 passes with a wide margin and still fails on any wrong layer, epsilon or blend weight.

use std::path::{Path, PathBuf};

use ltx_models::config::read_config;
use ltx_models::sdxl::vae::{AutoencoderKl, AutoencoderKlConfig};
use ltx_models::ModelError;
use tch::{Device, Kind, Tensor};

const TOL: f64 = 1e-4;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/sdxl/vae")
}

fn refs() -> std::collections::HashMap<String, Tensor> {
    Tensor::read_safetensors(fixtures().join("refs.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

fn meta() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("refs.json")).unwrap()).unwrap()
}

fn load(kind: Kind) -> AutoencoderKl {
    AutoencoderKl::from_dir(&fixtures().join("vae"), kind, Device::Cpu).unwrap()
}

fn max_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

fn compare(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    let err = max_err(got, want);
    let magnitude = want.abs().max().double_value(&[]);
    eprintln!("sdxl vae {what}: max abs error {err:.2e} (magnitude {magnitude:.3})");
    assert!(err <= tol, "{what}: max abs error {err} > {tol}");
}

#[test]
fn config_and_scaling_come_from_config_json() {
    let vae = load(Kind::Float);
    let c = vae.config();
    assert_eq!(c.scaling_factor, 0.13025);
    assert!(c.force_upcast && c.shift_factor.is_none() && c.latents_mean.is_none());
    assert_eq!(vae.spatial_ratio(), 8);
    let t = vae.diffusers_tiling();
    let m = meta();
    assert_eq!(
        t.tile_sample_min_size,
        m["tile_sample_min_size"].as_i64().unwrap()
    );
    assert_eq!(
        t.tile_latent_min_size,
        m["tile_latent_min_size"].as_i64().unwrap()
    );
    assert_eq!(
        t.tile_overlap_factor,
        m["tile_overlap_factor"].as_f64().unwrap()
    );
    // SDXL's pipeline: latents / scaling_factor before decoding; img2img multiplies back.
    let z = Tensor::randn([1, 4, 2, 2], (Kind::Float, Device::Cpu));
    let unscaled = vae.unscale_latents(&z).unwrap();
    assert!(max_err(&unscaled, &(&z / 0.13025)) < 1e-6);
    assert!(max_err(&vae.scale_latents(&unscaled).unwrap(), &z) < 1e-6);
}

#[test]
fn decode_matches_diffusers() {
    let r = refs();
    let vae = load(Kind::Float);
    assert_eq!(vae.compute_kind(), Kind::Float);
    let out = tch::no_grad(|| vae.decode(&r["decode_latents"])).unwrap();
    compare("decode", &out, &r["decoded"], TOL);
}

#[test]
fn encode_matches_diffusers() {
    let r = refs();
    let vae = load(Kind::Float);
    let post = tch::no_grad(|| vae.encode(&r["image"])).unwrap();
    compare("posterior mean", &post.mean, &r["posterior_mean"], TOL);
    compare("posterior mode", &post.mode(), &r["posterior_mean"], TOL);
    compare(
        "posterior logvar",
        &post.logvar,
        &r["posterior_logvar"],
        TOL,
    );
    compare(
        "posterior std",
        &post.std().unwrap(),
        &r["posterior_std"],
        TOL,
    );
    // A CPU generator seeded as the fixture's torch.Generator("cpu").
    let seed = meta()["posterior_sample_seed"].as_u64().unwrap();
    let mut rng = ltx_gpu::rng::Generator::new(Device::Cpu, seed).unwrap();
    let sample = post.sample(&mut rng).unwrap();
    compare("posterior sample", &sample, &r["posterior_sample"], TOL);
}

#[test]
fn tiled_decode_matches_diffusers_enable_tiling() {
    let r = refs();
    let vae = load(Kind::Float);
    tch::no_grad(|| {
        for case in ["a", "b"] {
            let z = &r[&format!("tiled_latents_{case}")];
            let t = vae.diffusers_tiling();
            assert!(t.tiles(z.size()[2], z.size()[3]), "case {case} must tile");
            let out = vae.decode_tiled(z).unwrap();
            compare(
                &format!("tiled decode {case}"),
                &out,
                &r[&format!("tiled_{case}")],
                TOL,
            );
            // Tiling changes the result: the reference is not the untiled decode.
            let untiled = vae.decode(z).unwrap();
            assert!(
                max_err(&untiled, &out) > 1e-2,
                "case {case}: tiles not seen"
            );
        }
        // Latents that fit one tile (4×5 > 4 wide does tile; 4×4 does not): the plain decode.
        let small = r["decode_latents"].narrow(3, 0, 4);
        let tiled = vae.decode_tiled(&small).unwrap();
        assert_eq!(max_err(&tiled, &vae.decode(&small).unwrap()), 0.0);
    });
}

#[test]
fn float16_weights_decode_upcast_like_diffusers() {
    let r = refs();
    let vae = load(Kind::Half);
    assert_eq!(vae.weight_kind(), Kind::Half);
    assert_eq!(vae.compute_kind(), Kind::Float, "force_upcast");
    let out = tch::no_grad(|| vae.decode(&r["decode_latents"])).unwrap();
    assert_eq!(out.kind(), Kind::Float);
    compare(
        "float16 weights, upcast decode",
        &out,
        &r["decoded_upcast"],
        TOL,
    );
    // The float16 rounding of the weights is there: not the float32 model's output.
    assert!(max_err(&out, &r["decoded"]) > 1e-6);
    // Computing in float16 is still possible, on request.
    let half = tch::no_grad(|| vae.decode_in(&r["decode_latents"], Kind::Half)).unwrap();
    assert_eq!(half.kind(), Kind::Half);
    let err = max_err(&half, &r["decoded_upcast"]);
    eprintln!("sdxl vae float16 compute vs upcast: max abs error {err:.2e}");
    assert!(err < 0.05, "float16 compute: {err}");
}

#[test]
fn bfloat16_runs_close_to_float32() {
    let r = refs();
    let vae = load(Kind::BFloat16);
    assert_eq!(
        vae.compute_kind(),
        Kind::BFloat16,
        "upcast is for float16 only"
    );
    let out = tch::no_grad(|| vae.decode(&r["decode_latents"])).unwrap();
    assert_eq!(out.kind(), Kind::BFloat16);
    let err = max_err(&out, &r["decoded"]);
    let mean = (out.to_kind(Kind::Double) - r["decoded"].to_kind(Kind::Double))
        .abs()
        .mean(Kind::Double)
        .double_value(&[]);
    eprintln!("sdxl vae bf16 decode vs fp32 diffusers: max {err:.3}, mean {mean:.4}");
    assert!(out.isfinite().all().int64_value(&[]) == 1);
    assert!(mean < 0.05 && err < 0.5, "bf16 max {err} mean {mean}");
    let post = tch::no_grad(|| vae.encode(&r["image"])).unwrap();
    assert_eq!(post.mean.kind(), Kind::BFloat16);
    assert!(max_err(&post.mean, &r["posterior_mean"]) < 0.2);
}

/// A temporary folder, removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

/// A copy of the fixture model with `edit` applied to its tensors and `config` to its config.
fn tampered(
    name: &str,
    edit: impl FnOnce(&mut Vec<(String, Tensor)>),
    config: impl FnOnce(&mut serde_json::Value),
) -> TempDir {
    let dir = std::env::temp_dir().join(format!("sdxl-vae-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = fixtures().join("vae");
    let mut tensors =
        Tensor::read_safetensors(src.join("diffusion_pytorch_model.safetensors")).unwrap();
    edit(&mut tensors);
    Tensor::write_safetensors(&tensors, dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    config(&mut cfg);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    TempDir(dir)
}

fn load_err(dir: &Path) -> String {
    let e = AutoencoderKl::from_dir(dir, Kind::Float, Device::Cpu)
        .err()
        .expect("loading must fail");
    e.to_string()
}

#[test]
fn a_removed_or_reshaped_tensor_fails_naming_it() {
    let name = "decoder.up_blocks.1.resnets.2.conv1.weight";
    let dir = tampered("removed", |t| t.retain(|(n, _)| n != name), |_| {});
    let e = load_err(&dir);
    assert!(e.contains("missing tensor") && e.contains(name), "{e}");

    let name = "encoder.mid_block.attentions.0.to_q.weight";
    let dir = tampered(
        "reshaped",
        |t| {
            for (n, v) in t.iter_mut() {
                if n == name {
                    *v = v.narrow(0, 0, 8).contiguous();
                }
            }
        },
        |_| {},
    );
    let e = load_err(&dir);
    assert!(e.contains(name) && e.contains("[8, 16]"), "{e}");

    let dir = tampered(
        "extra",
        |t| {
            t.push((
                "decoder.spare.weight".into(),
                Tensor::zeros([2], (Kind::Float, Device::Cpu)),
            ))
        },
        |_| {},
    );
    let e = load_err(&dir);
    assert!(
        e.contains("unexpected") && e.contains("decoder.spare.weight"),
        "{e}"
    );

    // use_post_quant_conv false: the file's post_quant_conv is then unexpected.
    let dir = tampered(
        "no-pqc",
        |_| {},
        |c| c["use_post_quant_conv"] = false.into(),
    );
    let e = load_err(&dir);
    assert!(e.contains("post_quant_conv.weight"), "{e}");
}

#[test]
fn a_config_with_unknown_keys_loads() {
    let dir = tampered(
        "unknown-keys",
        |_| {},
        |c| {
            c["some_future_field"] = serde_json::json!({"nested": [1, 2, 3]});
            c["_use_default_values"] = serde_json::json!(["shift_factor"]);
        },
    );
    let cfg: AutoencoderKlConfig = read_config(&dir.join("config.json")).unwrap();
    assert_eq!(cfg.block_out_channels, vec![8, 16, 16, 16]);
    let vae = AutoencoderKl::from_dir(&dir, Kind::Float, Device::Cpu).unwrap();
    let r = refs();
    let out = tch::no_grad(|| vae.decode(&r["decode_latents"])).unwrap();
    compare(
        "decode (config with unknown keys)",
        &out,
        &r["decoded"],
        TOL,
    );
}

#[test]
fn unsupported_configs_are_refused() {
    for (edit, needle) in [
        (serde_json::json!({"norm_num_groups": 3}), "norm_num_groups"),
        (serde_json::json!({"act_fn": "tanh"}), "act_fn"),
        (
            serde_json::json!({"up_block_types": ["UpDecoderBlock2D", "AttnUpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]}),
            "AttnUpDecoderBlock2D",
        ),
        (
            serde_json::json!({"latents_mean": [0.0, 1.0]}),
            "latents_mean",
        ),
    ] {
        let mut cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixtures().join("vae/config.json")).unwrap(),
        )
        .unwrap();
        for (k, v) in edit.as_object().unwrap() {
            cfg[k] = v.clone();
        }
        let cfg: AutoencoderKlConfig = serde_json::from_value(cfg).unwrap();
        let e = cfg.validate().unwrap_err();
        assert!(matches!(e, ModelError::UnsupportedConfig(_)), "{e}");
        assert!(e.to_string().contains(needle), "{e}");
    }
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let vae = load(Kind::Float);
    let f = |s: &[i64]| Tensor::zeros(s, (Kind::Float, Device::Cpu));
    let cases: Vec<(&str, ltx_models::Result<Tensor>)> = vec![
        ("latents with 3 channels", vae.decode(&f(&[1, 3, 4, 4]))),
        ("3-D latents", vae.decode(&f(&[4, 4, 4]))),
        ("empty latents", vae.decode(&f(&[1, 4, 0, 4]))),
        ("tiled, 5 channels", vae.decode_tiled(&f(&[1, 5, 9, 9]))),
        (
            "integer dtype",
            vae.decode_in(&f(&[1, 4, 2, 2]), Kind::Int64),
        ),
        (
            "image with 4 channels",
            vae.encode(&f(&[1, 4, 16, 16])).map(|p| p.mean),
        ),
        (
            "odd image height",
            vae.encode(&f(&[1, 3, 17, 16])).map(|p| p.mean),
        ),
        (
            "width not a multiple of 8",
            vae.encode(&f(&[1, 3, 16, 12])).map(|p| p.mean),
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
    let mut t = vae.diffusers_tiling();
    t.tile_latent_min_size = 1;
    let e = vae
        .decode_tiled_with(&f(&[1, 4, 3, 3]), &t, Kind::Float)
        .unwrap_err();
    assert!(e.to_string().contains("cannot tile"), "{e}");
}
