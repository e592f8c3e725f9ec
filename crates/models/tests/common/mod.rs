//! Access to the committed diffusers reference fixtures (tests/fixtures/ltx, made by
//! tools/ltx-fixtures/make_ltx_fixtures.py).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use ltx_models::ltx::{LtxTransformer, TransformerInput};
use tch::{Kind, Tensor};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/ltx")
}

pub fn model_dir(variant: &str) -> PathBuf {
    fixtures().join("models").join(format!("ltx-{variant}"))
}

pub fn refs(name: &str) -> HashMap<String, Tensor> {
    let path = fixtures().join("refs").join(name);
    Tensor::read_safetensors(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

pub fn json(name: &str) -> serde_json::Value {
    let path = fixtures().join("refs").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// Runs `model` on the inputs of refs/transformer.safetensors and returns (output, expected).
pub fn transformer_on_refs(model: &LtxTransformer) -> (Tensor, Tensor) {
    let r = refs("transformer.safetensors");
    let meta = json("transformer.json");
    let s: Vec<f64> = meta["rope_interpolation_scale"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let out = tch::no_grad(|| {
        model.forward(&TransformerInput {
            hidden_states: &r["hidden_states"],
            encoder_hidden_states: &r["encoder_hidden_states"],
            timestep: &r["timestep"],
            encoder_attention_mask: Some(&r["encoder_attention_mask"]),
            num_frames: meta["num_frames"].as_i64().unwrap(),
            height: meta["height"].as_i64().unwrap(),
            width: meta["width"].as_i64().unwrap(),
            rope_interpolation_scale: [s[0], s[1], s[2]],
            video_coords: None,
        })
    })
    .unwrap();
    (out, r["sample"].shallow_clone())
}
