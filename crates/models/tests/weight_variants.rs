//! Which files `WeightStore::from_component_dir[_variant]` opens in a component folder, as
//! diffusers chooses them: plain files by default, a variant (`fp16`) when asked for or when it
//! is all the folder has, single or sharded.

use std::path::{Path, PathBuf};

use ltx_models::weights::WeightStore;
use tch::{Device, Kind, Tensor};

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir(tag: &str) -> Dir {
    let p = std::env::temp_dir().join(format!("ltx-variants-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    Dir(p)
}

/// A file holding `w` filled with `value` in `kind`.
fn weights(path: &Path, name: &str, value: f64, kind: Kind) {
    let t = Tensor::full([2, 3], value, (kind, Device::Cpu));
    Tensor::write_safetensors(&[(name, t)], path).unwrap();
}

fn index(path: &Path, map: &[(&str, &str)]) {
    let m: serde_json::Map<String, serde_json::Value> = map
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
        .collect();
    std::fs::write(path, serde_json::json!({ "weight_map": m }).to_string()).unwrap();
}

fn value(store: &WeightStore, name: &str) -> f64 {
    store
        .root()
        .get(name, &[2, 3])
        .unwrap()
        .double_value(&[0, 0])
}

#[test]
fn plain_by_default_the_variant_when_asked_or_when_it_is_all_there_is() {
    let open = |d: &Path, v: Option<&str>| {
        WeightStore::from_component_dir_variant(d, v, Kind::Float, Device::Cpu).unwrap()
    };
    // Both: plain unless fp16 is asked for.
    let both = dir("both");
    weights(
        &both.0.join("diffusion_pytorch_model.safetensors"),
        "w",
        1.0,
        Kind::Float,
    );
    weights(
        &both.0.join("diffusion_pytorch_model.fp16.safetensors"),
        "w",
        2.0,
        Kind::Half,
    );
    assert_eq!(value(&open(&both.0, None), "w"), 1.0);
    assert_eq!(value(&open(&both.0, Some("fp16")), "w"), 2.0);
    // Asking for a variant the folder lacks falls back to the plain files.
    assert_eq!(value(&open(&both.0, Some("bf16")), "w"), 1.0);

    // Only the fp16 file (an fp16-only download): it loads without asking.
    let only = dir("only");
    weights(&only.0.join("model.fp16.safetensors"), "w", 3.0, Kind::Half);
    let s = WeightStore::from_component_dir(&only.0, Kind::Float, Device::Cpu).unwrap();
    assert_eq!(value(&s, "w"), 3.0);

    // Sharded fp16 only: diffusers' variant index name.
    let sharded = dir("sharded");
    weights(
        &sharded
            .0
            .join("diffusion_pytorch_model.fp16-00001-of-00002.safetensors"),
        "a",
        4.0,
        Kind::Half,
    );
    weights(
        &sharded
            .0
            .join("diffusion_pytorch_model.fp16-00002-of-00002.safetensors"),
        "b",
        5.0,
        Kind::Half,
    );
    index(
        &sharded
            .0
            .join("diffusion_pytorch_model.safetensors.index.fp16.json"),
        &[
            (
                "a",
                "diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
            ),
            (
                "b",
                "diffusion_pytorch_model.fp16-00002-of-00002.safetensors",
            ),
        ],
    );
    let s = WeightStore::from_component_dir(&sharded.0, Kind::Float, Device::Cpu).unwrap();
    assert_eq!((value(&s, "a"), value(&s, "b")), (4.0, 5.0));
    s.finish().unwrap();
    // A plain sharded index wins over a variant by default.
    weights(
        &sharded.0.join("plain-1.safetensors"),
        "a",
        6.0,
        Kind::Float,
    );
    index(
        &sharded
            .0
            .join("diffusion_pytorch_model.safetensors.index.json"),
        &[("a", "plain-1.safetensors")],
    );
    assert_eq!(value(&open(&sharded.0, None), "a"), 6.0);
    assert_eq!(value(&open(&sharded.0, Some("fp16")), "a"), 4.0);
}
