//! The LTX-Video 0.9.7/0.9.8 latent upsampler and its pipeline against diffusers 0.42.1
//! (tests/fixtures/ltx/refs/upsampler.*, made by tools/ltx-fixtures/make_upsampler_fixture.py):
//! the model's forward for the spatial, temporal and spatio-temporal variants, loaded from the
//! diffusers folder and from original single files, and `LTXLatentUpsamplePipeline`'s
//! normalised output with and without AdaIN and tone mapping. fp32 on the CPU: ≤ 1e-4.

#[path = "../../models/tests/common/mod.rs"]
mod common;

use ltx_models::config::read_config;
use ltx_models::ltx::upsampler::open_upsampler;
use ltx_models::ltx::{LtxUpsamplerConfig, LtxVae, LtxVaeConfig};
use ltx_models::weights::WeightStore;
use ltx_pipelines::latent_upsample::{upsample_latents, UpsampleParams};
use tch::{Device, Kind, Tensor};

const TOL: f64 = 1e-4;

fn vae() -> LtxVae {
    let dir = common::model_dir("0.9.5").join("vae");
    let cfg: LtxVaeConfig = read_config(&dir.join("config.json")).unwrap();
    let store = WeightStore::from_component_dir(&dir, Kind::Float, Device::Cpu).unwrap();
    let vae = LtxVae::new(&store.root(), cfg).unwrap();
    store.finish().unwrap();
    vae
}

fn close(what: &str, got: &Tensor, want: &Tensor) {
    let err = common::max_abs_diff(got, want);
    let magnitude = want.abs().max().double_value(&[]);
    eprintln!("{what}: max abs error {err:.2e}, magnitude {magnitude:.3}");
    assert!(
        err <= TOL,
        "{what}: max abs error {err} (magnitude {magnitude})"
    );
}

/// De-normalised latents, as the model sees them inside the pipeline.
fn raw_latents(vae: &LtxVae, latents: &Tensor) -> Tensor {
    let mean = vae.latents_mean.view([1, -1, 1, 1, 1]);
    let std = vae.latents_std.view([1, -1, 1, 1, 1]);
    latents * std / vae.config().scaling_factor + mean
}

#[test]
fn the_model_equals_diffusers_from_the_folder_and_from_single_files() {
    let r = common::refs("upsampler.safetensors");
    let vae = vae();
    let raw = raw_latents(&vae, &r["latents"]);
    let folder = common::fixtures().join("models/upsampler");
    let (model, params) = open_upsampler(&folder, Kind::Float, Device::Cpu).unwrap();
    assert_eq!(
        *model.config(),
        LtxUpsamplerConfig {
            in_channels: 8,
            mid_channels: 32,
            num_blocks_per_stage: 1,
            ..Default::default()
        }
    );
    assert_eq!(
        params.len(),
        2 + 2 + 8 * 2 + 2 + 2,
        "every tensor is handed out"
    );
    let got = tch::no_grad(|| model.forward(&raw)).unwrap();
    assert_eq!(got.size(), [1, 8, 3, 4, 6]);
    close("folder, spatial", &got, &r["forward_spatial"]);
    for (variant, frames) in [("spatial", 3), ("temporal", 5), ("spatiotemporal", 5)] {
        let file = common::fixtures().join(format!(
            "models/upsampler_{variant}_single_file.safetensors"
        ));
        let (model, _) = open_upsampler(&file, Kind::Float, Device::Cpu).unwrap();
        let got = tch::no_grad(|| model.forward(&raw)).unwrap();
        assert_eq!(got.size()[2], frames, "{variant}: frames");
        close(
            &format!("single file, {variant}"),
            &got,
            &r[&format!("forward_{variant}")],
        );
    }
}

#[test]
fn the_pipeline_equals_diffusers_with_and_without_adain_and_tone_mapping() {
    let r = common::refs("upsampler.safetensors");
    let meta = common::json("upsampler.json");
    let vae = vae();
    let (model, _) = open_upsampler(
        &common::fixtures().join("models/upsampler"),
        Kind::Float,
        Device::Cpu,
    )
    .unwrap();
    let combos = meta["combos"].as_array().unwrap();
    assert_eq!(combos.len(), 4);
    for c in combos {
        let p = UpsampleParams {
            adain_factor: c["adain_factor"].as_f64().unwrap(),
            tone_map_compression_ratio: c["tone_map_compression_ratio"].as_f64().unwrap(),
        };
        let got = upsample_latents(&model, &vae, &r["latents"], &p).unwrap();
        close(
            &format!("pipeline {p:?}"),
            &got,
            &r[c["key"].as_str().unwrap()],
        );
    }
    // The four outputs differ, so each knob is exercised.
    let a = &r["pipeline_adain0.0_tone0.0"];
    for key in ["pipeline_adain1.0_tone0.0", "pipeline_adain1.0_tone0.6"] {
        assert!(
            common::max_abs_diff(a, &r[key]) > 1e-3,
            "{key} equals the plain output"
        );
    }
}

#[test]
fn bad_parameters_and_a_missing_tensor_are_clear_errors() {
    let vae = vae();
    let (model, _) = open_upsampler(
        &common::fixtures().join("models/upsampler"),
        Kind::Float,
        Device::Cpu,
    )
    .unwrap();
    let z = Tensor::zeros([1, 8, 2, 2, 2], (Kind::Float, Device::Cpu));
    let e = upsample_latents(
        &model,
        &vae,
        &z,
        &UpsampleParams {
            tone_map_compression_ratio: 1.5,
            ..Default::default()
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("tone_map_compression_ratio must be in [0, 1], got 1.5"),
        "{e}"
    );
    let wrong = Tensor::zeros([1, 4, 2, 2, 2], (Kind::Float, Device::Cpu));
    let e = model.forward(&wrong).err().unwrap().to_string();
    assert!(e.contains("[B, 8, F, H, W]"), "{e}");
    // The spatio-temporal file's weights under a spatial config: strict loading names the tensor.
    let dir = std::env::temp_dir().join(format!("ltx-upsampler-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        common::fixtures().join("models/upsampler_spatiotemporal_single_file.safetensors"),
        dir.join("diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"in_channels": 8, "mid_channels": 32, "num_blocks_per_stage": 1}"#,
    )
    .unwrap();
    let e = open_upsampler(&dir, Kind::Float, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(e.contains("upsampler.0.weight"), "{e}");
}
