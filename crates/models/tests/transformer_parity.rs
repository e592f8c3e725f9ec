//! The LTX transformer against diffusers: per-token timesteps, a padded text mask, the tiny
//! random model from the fixtures loaded through the same loader users' weights go through.

mod common;

use ltx_models::config::read_config;
use ltx_models::ltx::{LtxTransformer, LtxTransformerConfig};
use ltx_models::weights::WeightStore;
use tch::{Device, Kind, Tensor};

fn load(variant: &str) -> (WeightStore, LtxTransformerConfig) {
    let dir = common::model_dir(variant).join("transformer");
    let cfg: LtxTransformerConfig = read_config(&dir.join("config.json")).unwrap();
    (
        WeightStore::from_component_dir(&dir, Kind::Float, Device::Cpu).unwrap(),
        cfg,
    )
}

#[test]
fn output_matches_diffusers_within_1e_4() {
    let (store, cfg) = load("0.9.1");
    let model = LtxTransformer::new(&store.root(), cfg).unwrap();
    store.finish().unwrap();
    let (out, want) = common::transformer_on_refs(&model);
    let err = common::max_abs_diff(&out, &want);
    let magnitude = want.abs().max().double_value(&[]);
    eprintln!("transformer: max abs error {err:.2e}, output magnitude {magnitude:.3}");
    assert!(
        err <= 1e-4,
        "max abs error {err} (output magnitude {magnitude})"
    );
}

fn copy_with(dir: &std::path::Path, edit: impl Fn(&str, Tensor) -> Option<Tensor>) -> tempdir::Dir {
    let out = tempdir::Dir::new();
    let src = dir.join("diffusion_pytorch_model.safetensors");
    let tensors: Vec<(String, Tensor)> = Tensor::read_safetensors(&src)
        .unwrap()
        .into_iter()
        .filter_map(|(n, t)| edit(&n, t).map(|t| (n, t)))
        .collect();
    Tensor::write_safetensors(
        &tensors,
        out.path().join("diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    out
}

mod tempdir {
    pub struct Dir(std::path::PathBuf);
    impl Dir {
        pub fn new() -> Self {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "ltx-weights-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
        pub fn path(&self) -> &std::path::Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn load_error(dir: &std::path::Path, cfg: LtxTransformerConfig) -> String {
    let store = WeightStore::from_component_dir(dir, Kind::Float, Device::Cpu).unwrap();
    match LtxTransformer::new(&store.root(), cfg) {
        Err(e) => e.to_string(),
        Ok(_) => store.finish().expect_err("loading must fail").to_string(),
    }
}

#[test]
fn a_missing_tensor_is_named_with_its_expected_shape() {
    let (_, cfg) = load("0.9.1");
    let src = common::model_dir("0.9.1").join("transformer");
    let name = "transformer_blocks.1.attn2.to_k.weight";
    let dir = copy_with(&src, |n, t| (n != name).then_some(t));
    let err = load_error(dir.path(), cfg);
    assert!(
        err.contains(&format!(
            "missing tensor {name} (the model expects shape [32, 32])"
        )),
        "{err}"
    );
}

#[test]
fn a_reshaped_tensor_is_named_with_both_shapes() {
    let (_, cfg) = load("0.9.1");
    let src = common::model_dir("0.9.1").join("transformer");
    let name = "transformer_blocks.0.ff.net.0.proj.weight";
    let dir = copy_with(&src, |n, t| {
        Some(if n == name { t.narrow(0, 0, 64) } else { t })
    });
    let err = load_error(dir.path(), cfg);
    assert!(
        err.contains(&format!("tensor {name} has shape [64, 32]"))
            && err.contains("the model expects [128, 32]"),
        "{err}"
    );
}

#[test]
fn an_unexpected_tensor_is_named() {
    let (_, cfg) = load("0.9.1");
    let src = common::model_dir("0.9.1").join("transformer");
    let dir = copy_with(&src, |_, t| Some(t));
    let path = dir.path().join("diffusion_pytorch_model.safetensors");
    let mut tensors = Tensor::read_safetensors(&path).unwrap();
    tensors.push((
        "transformer_blocks.2.attn1.to_q.weight".into(),
        Tensor::zeros([32, 32], (Kind::Float, Device::Cpu)),
    ));
    Tensor::write_safetensors(&tensors, &path).unwrap();
    let err = load_error(dir.path(), cfg);
    assert!(
        err.contains("unexpected tensor(s)")
            && err.contains("transformer_blocks.2.attn1.to_q.weight [32, 32]"),
        "{err}"
    );
}

#[test]
fn sharded_weights_with_an_index_load_like_a_single_file() {
    let (_, cfg) = load("0.9.1");
    let src = common::model_dir("0.9.1").join("transformer/diffusion_pytorch_model.safetensors");
    let dir = tempdir::Dir::new();
    let tensors = Tensor::read_safetensors(&src).unwrap();
    let (a, b): (Vec<_>, Vec<_>) = tensors
        .into_iter()
        .partition(|(n, _)| n.starts_with("transformer_blocks.0."));
    let mut map = serde_json::Map::new();
    for (shard, part) in [
        ("diffusion_pytorch_model-00001-of-00002.safetensors", &a),
        ("diffusion_pytorch_model-00002-of-00002.safetensors", &b),
    ] {
        Tensor::write_safetensors(part, dir.path().join(shard)).unwrap();
        for (n, _) in part.iter() {
            map.insert(n.clone(), serde_json::Value::String(shard.into()));
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
    std::fs::write(
        dir.path()
            .join("diffusion_pytorch_model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let store = WeightStore::from_component_dir(dir.path(), Kind::Float, Device::Cpu).unwrap();
    assert_eq!(store.paths().count(), 2);
    let model = LtxTransformer::new(&store.root(), cfg).unwrap();
    store.finish().unwrap();
    let (out, want) = common::transformer_on_refs(&model);
    assert!(common::max_abs_diff(&out, &want) <= 1e-4);
}
