//! What `LTXConditionPipeline` (diffusers 0.42.1) adds to the ported models, against
//! tests/fixtures/ltx/refs/condition_parts.* (tools/ltx-fixtures/make_condition_parts.py):
//! T5 with the padding mask, the transformer with explicit `video_coords` and per-token
//! timesteps, the schedule (linear-quadratic, custom lists, shift and shift_terminal, the
//! denoise-strength trim) and the per-token Euler step. fp32 on the CPU: models ≤ 1e-4, the
//! schedule and the step bit-exact (the same float32 operations in the same order).

mod common;

use ltx_models::config::read_config;
use ltx_models::ltx::{LtxTransformer, LtxTransformerConfig, TransformerInput};
use ltx_models::scheduler::{ConditionSchedule, FlowMatchConfig};
use ltx_models::t5::{T5Config, T5Encoder};
use ltx_models::weights::WeightStore;
use tch::{Device, Kind, Tensor};

fn load<T: serde::de::DeserializeOwned>(component: &str) -> (T, WeightStore) {
    let dir = common::model_dir("0.9.5").join(component);
    let cfg: T = read_config(&dir.join("config.json")).unwrap();
    (
        cfg,
        WeightStore::from_component_dir(&dir, Kind::Float, Device::Cpu).unwrap(),
    )
}

#[test]
fn t5_with_the_padding_mask_equals_transformers() {
    let r = common::refs("condition_parts.safetensors");
    let (cfg, store) = load::<T5Config>("text_encoder");
    let t5 = T5Encoder::new(&store.root(), cfg).unwrap();
    let (masked, unmasked) = tch::no_grad(|| {
        (
            t5.forward_masked(&r["t5_ids"], Some(&r["t5_mask"]))
                .unwrap(),
            t5.forward(&r["t5_ids"]).unwrap(),
        )
    });
    let err = common::max_abs_diff(&masked, &r["t5_masked"]);
    assert!(err <= 1e-4, "masked: {err}");
    assert!(common::max_abs_diff(&unmasked, &r["t5_unmasked"]) <= 1e-4);
    // The mask matters: the masked and unmasked outputs differ.
    assert!(common::max_abs_diff(&masked, &unmasked) > 1e-3);
}

#[test]
fn the_transformer_with_video_coords_and_per_token_timesteps_equals_diffusers() {
    let r = common::refs("condition_parts.safetensors");
    let (cfg, store) = load::<LtxTransformerConfig>("transformer");
    let model = LtxTransformer::new(&store.root(), cfg).unwrap();
    let out = tch::no_grad(|| {
        model.forward(&TransformerInput {
            hidden_states: &r["tr_hidden"],
            encoder_hidden_states: &r["tr_text"],
            timestep: &r["tr_timestep"],
            encoder_attention_mask: Some(&r["tr_text_mask"]),
            // Ignored with explicit coordinates (18 tokens are no 1x1x1 grid).
            num_frames: 1,
            height: 1,
            width: 1,
            rope_interpolation_scale: [1.0, 1.0, 1.0],
            video_coords: Some(&r["tr_video_coords"]),
        })
    })
    .unwrap();
    let err = common::max_abs_diff(&out, &r["tr_sample"]);
    eprintln!("transformer with video_coords: max abs error {err:.2e}");
    assert!(err <= 1e-4, "{err}");
    let bad = Tensor::zeros([2, 3, 5], (Kind::Float, Device::Cpu));
    let e = model
        .forward(&TransformerInput {
            hidden_states: &r["tr_hidden"],
            encoder_hidden_states: &r["tr_text"],
            timestep: &r["tr_timestep"],
            encoder_attention_mask: None,
            num_frames: 1,
            height: 1,
            width: 1,
            rope_interpolation_scale: [1.0, 1.0, 1.0],
            video_coords: Some(&bad),
        })
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("video_coords [2, 3, 5] must be [2, 3, 18]"),
        "{e}"
    );
}

fn vec(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t).unwrap()
}

#[test]
fn schedules_equal_diffusers_bit_for_bit() {
    let r = common::refs("condition_parts.safetensors");
    let meta = common::json("condition_parts.json");
    let cases = meta["schedules"].as_array().unwrap();
    assert_eq!(cases.len(), 8);
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let cfg: FlowMatchConfig = serde_json::from_value(c["config"].clone()).unwrap();
        let custom: Option<Vec<f64>> = c["timesteps"]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_f64().unwrap()).collect());
        let s = ConditionSchedule::new(
            &cfg,
            c["steps"].as_u64().unwrap() as usize,
            custom.as_deref(),
            c["denoise_strength"].as_f64().unwrap(),
        )
        .unwrap();
        assert_eq!(
            s.timesteps,
            vec(&r[&format!("sched_{name}_timesteps")]),
            "{name}: timesteps"
        );
        assert_eq!(
            s.sigmas,
            vec(&r[&format!("sched_{name}_sigmas")]),
            "{name}: sigmas"
        );
        assert_eq!(
            s.latent_sigma,
            c["latent_sigma"].as_f64().map(|v| v as f32),
            "{name}: latent_sigma"
        );
    }
    // The replaced service's pass 2: 6 of 15 steps from sigma 0.90870535.
    let s = ConditionSchedule::new(&FlowMatchConfig::default(), 15, None, 0.4).unwrap();
    assert_eq!(s.timesteps.len(), 6);
    assert_eq!(s.latent_sigma, Some(0.908_705_35));
}

#[test]
fn the_per_token_step_equals_diffusers_bit_for_bit() {
    let r = common::refs("condition_parts.safetensors");
    let s = ConditionSchedule::new(&FlowMatchConfig::default(), 15, None, 0.4).unwrap();
    let got = s
        .step_per_token(&r["step_tt"], &r["step_v"], &r["step_x"])
        .unwrap();
    assert!(
        got.equal(&r["step_out"]),
        "max diff {}",
        common::max_abs_diff(&got, &r["step_out"])
    );
}

#[test]
fn bad_schedules_are_clear_errors() {
    let cfg = FlowMatchConfig::default();
    let e = |r: ltx_models::Result<ConditionSchedule>| r.err().unwrap().to_string();
    assert!(e(ConditionSchedule::new(&cfg, 10, None, 1.5))
        .contains("denoise_strength must be in [0, 1], got 1.5"));
    assert!(e(ConditionSchedule::new(&cfg, 0, None, 1.0)).contains("at least 1"));
    assert!(e(ConditionSchedule::new(&cfg, 3, Some(&[]), 1.0)).contains("at least one value"));
    let dynamic = FlowMatchConfig {
        use_dynamic_shifting: true,
        ..FlowMatchConfig::default()
    };
    assert!(e(ConditionSchedule::new(&dynamic, 10, None, 1.0)).contains("use_dynamic_shifting"));
}
