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
