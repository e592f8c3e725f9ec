//! The T5 v1.1 encoder against transformers, on the fixtures' tiny random text encoder.

mod common;

use ltx_models::config::read_config;
use ltx_models::t5::{T5Config, T5Encoder};
use ltx_models::weights::WeightStore;
use tch::{Device, Kind};

#[test]
fn last_hidden_state_matches_transformers_within_1e_4() {
    let r = common::refs("t5.safetensors");
    let dir = common::model_dir("0.9.1").join("text_encoder");
    let cfg: T5Config = read_config(&dir.join("config.json")).unwrap();
    let store = WeightStore::from_component_dir(&dir, Kind::Float, Device::Cpu).unwrap();
    let model = T5Encoder::new(&store.root(), cfg).unwrap();
    store.finish().unwrap();
    let out = tch::no_grad(|| model.forward(&r["input_ids"])).unwrap();
    let err = common::max_abs_diff(&out, &r["last_hidden_state"]);
    let magnitude = r["last_hidden_state"].abs().max().double_value(&[]);
    eprintln!("t5: max abs error {err:.2e}, output magnitude {magnitude:.3}");
    assert!(
        err <= 1e-4,
        "max abs error {err} (output magnitude {magnitude})"
    );
}

#[test]
fn a_torchscript_text_encoder_gives_the_same_embeddings() {
    use ltx_models::text_encoder::TextEncoder;
    let r = common::refs("t5.safetensors");
    let dir = common::fixtures().join("torchscript");
    let path = TextEncoder::torchscript_in(&dir).expect("fixture TorchScript encoder");
    let enc = TextEncoder::load_torchscript(&path, Device::Cpu, Kind::Float).unwrap();
    let out = tch::no_grad(|| enc.forward(&r["input_ids"])).unwrap();
    assert!(common::max_abs_diff(&out, &r["last_hidden_state"]) <= 1e-4);
}
