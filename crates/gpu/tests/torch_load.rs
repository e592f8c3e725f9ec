//! `torch_load::load_tensors` on files written by real `torch.save` (torch 2.11,
//! tools/sdxl-fixtures/make_ip_adapter.py): InstantID's `ip-adapter.bin` layout read through
//! libtorch's unpickler, and the legacy and foreign-class files refused with clear errors.

use std::path::PathBuf;

use ltx_gpu::torch_load::load_tensors;
use tch::Kind;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/sdxl/ip")
        .join(name)
}

#[test]
fn ip_adapter_bin_reads_as_dotted_names_with_dtypes_views_and_strides() {
    let t = load_tensors(&fixture("ip-adapter.bin")).unwrap();
    let get = |n: &str| {
        &t.iter()
            .find(|(k, _)| k == n)
            .unwrap_or_else(|| {
                panic!(
                    "{n} missing from {:?}",
                    t.iter().map(|p| &p.0).collect::<Vec<_>>()
                )
            })
            .1
    };
    // 2 layers × 11 Resampler tensors + latents, proj_in/out (w, b), norm_out (w, b) = 29,
    // and 3 to_k_ip/to_v_ip pairs.
    assert_eq!(
        t.iter()
            .filter(|(n, _)| n.starts_with("image_proj."))
            .count(),
        29
    );
    assert_eq!(
        t.iter()
            .filter(|(n, _)| n.starts_with("ip_adapter."))
            .count(),
        6
    );
    // The dicts' order: image_proj first, then ip_adapter 1, 3, 5 with k before v.
    assert!(t[0].0.starts_with("image_proj."));
    let ip: Vec<&str> = t
        .iter()
        .filter(|(n, _)| n.starts_with("ip_adapter."))
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(ip[0], "ip_adapter.1.to_k_ip.weight");
    assert_eq!(ip[5], "ip_adapter.5.to_v_ip.weight");
    // Saved dtypes come through (fp16 where the file has fp16).
    assert_eq!(get("image_proj.latents").kind(), Kind::Half);
    assert_eq!(get("image_proj.latents").size(), [1, 16, 128]);
    assert_eq!(get("image_proj.proj_out.weight").kind(), Kind::Float);
    // Views of one storage, and a transposed (non-contiguous) tensor, keep their values.
    let (k3, v3) = (
        get("ip_adapter.3.to_k_ip.weight"),
        get("ip_adapter.3.to_v_ip.weight"),
    );
    assert_eq!((k3.size(), v3.size()), (vec![64, 48], vec![64, 48]));
    assert!(!k3.equal(v3));
    let v5 = get("ip_adapter.5.to_v_ip.weight");
    assert_eq!(v5.size(), [64, 48]);
    assert!(v5.abs().sum(Kind::Float).double_value(&[]) > 0.0);
}

#[test]
fn legacy_and_foreign_files_are_clear_errors() {
    let e = load_tensors(&fixture("legacy.bin"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("legacy.bin") && e.contains("legacy (pre-zip)"),
        "{e}"
    );
    let e = load_tensors(&fixture("foreign.bin"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("foreign.bin"), "{e}");
    assert!(e.contains("classes other than tensors and dicts"), "{e}");
    let e = load_tensors(&fixture("resampler_ref.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a torch.save file"), "{e}");
}
