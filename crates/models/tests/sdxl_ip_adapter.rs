//! InstantID's face adapter through the user-facing loader: `ip-adapter.bin` written by real
//! `torch.save` (tools/sdxl-fixtures/make_ip_adapter.py; fp16 and fp32 tensors, shared
//! storages, a non-contiguous tensor), its `.safetensors` conversion, and the Resampler
//! against the reference forward of the spec (§1.2). fp32 CPU: max abs error ≤ 1e-4 (the
//! reference is float32 on the same stored values; the attention's softmax(q·kᵀ/8) equals
//! InstantX's (q·s)(k·s)ᵀ up to float rounding, ~1e-6).

use std::path::PathBuf;

use ltx_models::sdxl::ip_adapter::read_ip_adapter;
use ltx_models::sdxl::resampler::ResamplerShape;
use tch::{Device, Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/sdxl/ip")
        .join(name)
}

fn reference() -> (Tensor, Tensor) {
    let r: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(fixture("resampler_ref.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    (r["embeds"].shallow_clone(), r["out"].shallow_clone())
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

struct Tmp(PathBuf);
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn tmp(tag: &str) -> Tmp {
    Tmp(std::env::temp_dir().join(format!("ltx-ip-{tag}-{}.safetensors", std::process::id())))
}

#[test]
fn the_resampler_of_ip_adapter_bin_equals_the_reference_with_its_shape_read_from_the_file() {
    let file = read_ip_adapter(&fixture("ip-adapter.bin")).unwrap();
    assert_eq!(file.layers.len(), 3);
    assert_eq!(
        file.layers.iter().map(|l| l.index).collect::<Vec<_>>(),
        [1, 3, 5]
    );
    assert_eq!(file.layers[1].to_k_ip.size(), [64, 48]);
    let res = file.resampler(Kind::Float, Device::Cpu).unwrap();
    assert_eq!(
        *res.shape(),
        ResamplerShape {
            dim: 128,
            heads: 2,
            depth: 2,
            queries: 16,
            embedding_dim: 32,
            output_dim: 48,
            ff_dim: 512,
        }
    );
    let (emb, want) = reference();
    let got = tch::no_grad(|| res.forward(&emb)).unwrap();
    let err = max_abs(&got, &want);
    eprintln!("Resampler fp32 max abs error {err:e}");
    assert!(err <= 1e-4, "Resampler off by {err:e}");
    // The CFG negative is Resampler(0), which is not zero.
    assert!(got.get(0).abs().max().double_value(&[]) > 0.1);
    // bf16 runs and stays near (bf16 has 8 bits of mantissa).
    let bf = file.resampler(Kind::BFloat16, Device::Cpu).unwrap();
    let got_bf = tch::no_grad(|| bf.forward(&emb)).unwrap();
    assert_eq!(got_bf.kind(), Kind::BFloat16);
    let err_bf = max_abs(&got_bf, &want);
    assert!(err_bf < 0.1, "bf16 Resampler off by {err_bf}");
    // Bad input is an error, not a panic.
    let e = res.forward(&Tensor::zeros([1, 1, 31], (Kind::Float, Device::Cpu)));
    assert!(e.err().unwrap().to_string().contains("[B, N, 32]"));
}

type Named = Vec<(String, Tensor)>;

/// The tensors of the .bin, flattened with their prefixes, optionally edited.
fn flat(edit: impl Fn(&mut Named)) -> Named {
    let mut t = ltx_gpu::torch_load::load_tensors(&fixture("ip-adapter.bin")).unwrap();
    for (_, v) in t.iter_mut() {
        *v = v.contiguous();
    }
    edit(&mut t);
    t
}

fn write(tag: &str, named: &[(String, Tensor)]) -> Tmp {
    let p = tmp(tag);
    Tensor::write_safetensors(named, &p.0).unwrap();
    p
}

#[test]
fn the_safetensors_conversion_loads_the_same_and_broken_files_name_the_problem() {
    let p = write("ok", &flat(|_| {}));
    let file = read_ip_adapter(&p.0).unwrap();
    let (emb, want) = reference();
    let got = tch::no_grad(|| {
        file.resampler(Kind::Float, Device::Cpu)
            .unwrap()
            .forward(&emb)
    })
    .unwrap();
    assert!(max_abs(&got, &want) <= 1e-4);

    let err = |tag: &str, edit: &dyn Fn(&mut Named)| -> String {
        let p = write(tag, &flat(edit));
        let e = match read_ip_adapter(&p.0) {
            Err(e) => e,
            Ok(f) => match f.resampler(Kind::Float, Device::Cpu) {
                Err(e) => e,
                Ok(_) => panic!("{tag}: accepted"),
            },
        };
        e.to_string()
    };
    let drop_named = |n: &'static str| move |t: &mut Named| t.retain(|(k, _)| k != n);
    let e = err("no-v", &drop_named("ip_adapter.3.to_v_ip.weight"));
    assert!(e.contains("ip_adapter.3 needs both"), "{e}");
    let e = err("gap", &|t| {
        t.retain(|(k, _)| !k.starts_with("ip_adapter.3."))
    });
    assert!(e.contains("found 5 where 3 belongs"), "{e}");
    let e = err("stray", &|t| {
        t.push((
            "unet.extra".into(),
            Tensor::zeros([1], (Kind::Float, Device::Cpu)),
        ))
    });
    assert!(e.contains("unet.extra"), "{e}");
    let e = err("missing-ff", &drop_named("image_proj.layers.1.1.3.weight"));
    assert!(e.contains("layers.1.1.3.weight"), "{e}");
    let e = err("extra-proj", &|t| {
        t.push((
            "image_proj.layers.0.0.extra".into(),
            Tensor::zeros([2], (Kind::Float, Device::Cpu)),
        ))
    });
    assert!(e.contains("layers.0.0.extra"), "{e}");
    let e = err("reshaped", &|t| {
        for (k, v) in t.iter_mut() {
            if k == "image_proj.layers.0.0.to_out.weight" {
                *v = Tensor::zeros([128, 64], (Kind::Float, Device::Cpu));
            }
        }
    });
    assert!(e.contains("layers.0.0.to_out.weight"), "{e}");
    let e = read_ip_adapter(&fixture("legacy.bin"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("legacy (pre-zip)"), "{e}");
}
