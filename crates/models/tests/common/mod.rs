//! Access to the committed diffusers reference fixtures (tests/fixtures/ltx, made by
//! tools/ltx-fixtures/make_ltx_fixtures.py).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

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
