//! SDXL's CLIP tokenizers and text encoders against transformers 5.23 on the fixtures of
//! `tools/sdxl-fixtures/make_clip.py` (tests/fixtures/sdxl/clip): token ids must be exact for
//! hostile prompts in each tokenizer folder; the tiny random encoders must give transformers'
//! `hidden_states[-2]`, `last_hidden_state` and pooled output in fp32 on the CPU within a max
//! abs error of 1e-4. Here the error is 0 (the same libtorch kernels in the same order); 1e-4
//! on activations of magnitude ~4 leaves room for other CPUs' kernels and summation orders,
//! while a real mistake (activation, norm, mask, pooled position) is off by 1e-2 or more.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ltx_models::config::read_config;
use ltx_models::sdxl::clip::{
    ClipTextConfig, ClipTextModel, ClipTextModelWithProjection, ClipTextOutput,
};
use ltx_models::sdxl::clip_tokenizer::ClipTokenizer;
use tch::{Device, Kind, Tensor};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/sdxl/clip")
}

fn refs() -> HashMap<String, Tensor> {
    let path = fixtures().join("refs/text_encoders.safetensors");
    Tensor::read_safetensors(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

fn tokenizer_refs() -> serde_json::Value {
    let path = fixtures().join("refs/tokenizer.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn check_tokenizer(folder: &str) {
    let r = tokenizer_refs();
    let prompts: Vec<&str> = r["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let want = &r["folders"][folder];
    let tok = ClipTokenizer::from_dir(&fixtures().join(folder)).unwrap();
    assert_eq!(tok.max_length(), 77);
    assert_eq!(tok.bos_token_id(), want["bos_token_id"].as_i64().unwrap());
    assert_eq!(tok.eos_token_id(), want["eos_token_id"].as_i64().unwrap());
    assert_eq!(tok.pad_token_id(), want["pad_token_id"].as_i64().unwrap());
    let got = tok.encode(&prompts).unwrap();
    assert_eq!(got.size(), [prompts.len() as i64, 77]);
    assert_eq!(got.kind(), Kind::Int64);
    for (i, p) in prompts.iter().enumerate() {
        let expected: Vec<i64> = want["input_ids"][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        let row = Vec::<i64>::try_from(got.get(i as i64)).unwrap();
        assert_eq!(row, expected, "{folder}: ids of prompt {i}: {p:?}");
    }
}

#[test]
fn tokenizer_ids_match_transformers() {
    check_tokenizer("tokenizer");
}

#[test]
fn tokenizer_2_ids_match_transformers_with_its_special_bang() {
    check_tokenizer("tokenizer_2");
}

#[test]
fn legacy_tokenizer_2_takes_its_pad_token_from_special_tokens_map() {
    check_tokenizer("tokenizer_2_legacy");
}

#[test]
fn a_photo_of_a_cat_and_the_bang_trap() {
    let one = ClipTokenizer::from_dir(&fixtures().join("tokenizer")).unwrap();
    let two = ClipTokenizer::from_dir(&fixtures().join("tokenizer_2")).unwrap();
    let ids = one.encode_one("a photo of a cat").unwrap();
    assert_eq!(ids[..7], [49406, 320, 1125, 539, 320, 2368, 49407]);
    assert!(ids[7..].iter().all(|&i| i == 49407));
    let ids = two.encode_one("!!!???").unwrap();
    assert_eq!(ids[..6], [49406, 0, 0, 0, 3824, 49407]);
    assert!(ids[6..].iter().all(|&i| i == 0));
    assert_eq!(
        one.encode_one("!!!???").unwrap()[..4],
        [49406, 11194, 3824, 49407]
    );
    // Truncation keeps the end token: 75 content tokens.
    let long = two.encode_one(&"cat ".repeat(200)).unwrap();
    assert_eq!(long.len(), 77);
    assert_eq!(long[76], 49407);
    assert!(long[1..76].iter().all(|&i| i == 2368));
}

#[test]
fn tokenizer_errors_name_the_problem() {
    let tmp = scratch("tok_missing");
    let err = ClipTokenizer::from_dir(&tmp)
        .err()
        .expect("an empty folder must fail");
    assert!(err.to_string().contains("tokenizer_config.json"), "{err}");
    copy_dir(&fixtures().join("tokenizer"), &tmp);
    std::fs::remove_file(tmp.join("merges.txt")).unwrap();
    let err = ClipTokenizer::from_dir(&tmp)
        .err()
        .expect("no merges.txt must fail");
    assert!(err.to_string().contains("merges.txt"), "{err}");
    copy_dir(&fixtures().join("tokenizer_2"), &tmp);
    let cfg = std::fs::read_to_string(tmp.join("tokenizer_config.json")).unwrap();
    std::fs::write(
        tmp.join("tokenizer_config.json"),
        cfg.replace("\"0\": {", "\"7\": {"),
    )
    .unwrap();
    let err = ClipTokenizer::from_dir(&tmp)
        .err()
        .expect("a wrong added-token id must fail");
    assert!(err.to_string().contains("declared as id 7"), "{err}");
}

/// A fresh scratch folder under the target directory.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ltx-sdxl-clip-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Copies the files of `from` (following symlinks) into `to`.
fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

enum Encoder {
    Plain(ClipTextModel),
    Projection(ClipTextModelWithProjection),
}

impl Encoder {
    fn load(name: &str, kind: Kind) -> ltx_models::Result<Self> {
        let dir = fixtures().join(name);
        Ok(if name == "text_encoder" {
            Self::Plain(ClipTextModel::from_dir(&dir, kind, Device::Cpu)?)
        } else {
            Self::Projection(ClipTextModelWithProjection::from_dir(
                &dir,
                kind,
                Device::Cpu,
            )?)
        })
    }

    fn forward(&self, ids: &Tensor) -> ClipTextOutput {
        tch::no_grad(|| match self {
            Self::Plain(m) => m.forward(ids),
            Self::Projection(m) => m.forward(ids),
        })
        .unwrap()
    }
}

/// Max abs errors (penultimate, last, pooled) of `name` on `ids_key` against refs `prefix`.
fn errors(enc: &Encoder, r: &HashMap<String, Tensor>, ids_key: &str, prefix: &str) -> [f64; 3] {
    let out = enc.forward(&r[ids_key]);
    [
        max_abs_diff(
            &out.penultimate_hidden_state,
            &r[&format!("{prefix}.penultimate")],
        ),
        max_abs_diff(
            &out.last_hidden_state,
            &r[&format!("{prefix}.last_hidden_state")],
        ),
        max_abs_diff(&out.pooled, &r[&format!("{prefix}.pooled")]),
    ]
}

#[test]
fn encoders_match_transformers_within_1e_4_in_fp32() {
    let r = refs();
    let cases = [
        ("text_encoder", "input_ids", "text_encoder"),
        ("text_encoder_2", "input_ids", "text_encoder_2"),
        ("text_encoder_2_eos", "input_ids", "text_encoder_2_eos"),
        (
            "text_encoder_2_eos",
            "input_ids_no_eos",
            "text_encoder_2_eos.no_eos",
        ),
    ];
    for (name, ids, prefix) in cases {
        let enc = Encoder::load(name, Kind::Float).unwrap();
        let errs = errors(&enc, &r, ids, prefix);
        eprintln!(
            "{prefix}: max abs error penultimate {:.2e}, last {:.2e}, pooled {:.2e}",
            errs[0], errs[1], errs[2]
        );
        for (e, what) in errs
            .iter()
            .zip(["penultimate", "last_hidden_state", "pooled"])
        {
            assert!(*e <= 1e-4, "{prefix} {what}: max abs error {e}");
        }
    }
}

#[test]
fn the_two_pooling_rules_pick_different_rows() {
    // eos_token_id 2 pools at argmax(ids); 500 at the first 500: row 3 holds both.
    let r = refs();
    let a = &r["text_encoder_2.pooled"];
    let b = &r["text_encoder_2_eos.pooled"];
    assert!(max_abs_diff(&a.get(3), &b.get(3)) > 1e-3);
    let cfg: ClipTextConfig =
        read_config(&fixtures().join("text_encoder_2_eos/config.json")).unwrap();
    assert_eq!(cfg.eos_token_id, 500);
}

#[test]
fn encoders_run_in_bf16_and_fp16() {
    let r = refs();
    for kind in [Kind::BFloat16, Kind::Half] {
        for name in ["text_encoder", "text_encoder_2"] {
            let enc = Encoder::load(name, kind).unwrap();
            let out = enc.forward(&r["input_ids"]);
            assert_eq!(out.last_hidden_state.kind(), kind);
            let want = &r[&format!("{name}.last_hidden_state")];
            let scale = want.abs().max().double_value(&[]);
            let errs = errors(&enc, &r, "input_ids", name);
            eprintln!("{name} {kind:?}: max abs errors {errs:?} (magnitude {scale:.2})");
            // bf16 keeps 8 bits of mantissa: a few 1e-2 relative after three layers.
            for e in errs {
                assert!(
                    e <= 0.05 * scale,
                    "{name} {kind:?}: max abs error {e} (magnitude {scale})"
                );
            }
        }
    }
}

#[test]
fn clip_skip_picks_an_earlier_hidden_state() {
    let r = refs();
    let enc = ClipTextModel::from_dir(&fixtures().join("text_encoder"), Kind::Float, Device::Cpu)
        .unwrap();
    let ids = &r["input_ids"];
    let skip0 = tch::no_grad(|| enc.forward_clip_skip(ids, 0)).unwrap();
    assert!(
        max_abs_diff(
            &skip0.penultimate_hidden_state,
            &r["text_encoder.penultimate"]
        ) <= 1e-4
    );
    let skip1 = tch::no_grad(|| enc.forward_clip_skip(ids, 1)).unwrap();
    assert!(
        max_abs_diff(
            &skip1.penultimate_hidden_state,
            &skip0.penultimate_hidden_state
        ) > 1e-2
    );
    // Three layers: hidden_states has 4 entries, so clip skip 3 (hidden_states[-5]) does not exist.
    assert!(enc.forward_clip_skip(ids, 3).is_err());
}

#[test]
fn bad_input_ids_are_errors() {
    let enc = ClipTextModel::from_dir(&fixtures().join("text_encoder"), Kind::Float, Device::Cpu)
        .unwrap();
    let too_long = Tensor::zeros([1, 78], (Kind::Int64, Device::Cpu));
    let out_of_vocab = Tensor::full([1, 77], 1000, (Kind::Int64, Device::Cpu));
    let negative = Tensor::full([1, 77], -1, (Kind::Int64, Device::Cpu));
    let floats = Tensor::zeros([1, 77], (Kind::Float, Device::Cpu));
    let one_d = Tensor::zeros([77], (Kind::Int64, Device::Cpu));
    for (what, ids) in [
        ("too long", too_long),
        ("out of vocabulary", out_of_vocab),
        ("negative", negative),
        ("floats", floats),
        ("1-D", one_d),
    ] {
        let err = enc
            .forward(&ids)
            .err()
            .unwrap_or_else(|| panic!("{what} ids must fail"));
        assert!(err.to_string().contains("input_ids"), "{what}: {err}");
    }
}

/// A copy of `name` whose model.safetensors went through `edit` (name → tensor).
fn edited_copy(name: &str, tag: &str, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) -> PathBuf {
    let dir = scratch(tag);
    let src = fixtures().join(name);
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let mut tensors = Tensor::read_safetensors(src.join("model.safetensors")).unwrap();
    edit(&mut tensors);
    Tensor::write_safetensors(&tensors, dir.join("model.safetensors")).unwrap();
    dir
}

#[test]
fn a_missing_tensor_is_named() {
    let gone = "encoder.layers.1.mlp.fc1.bias";
    let dir = edited_copy("text_encoder", "missing", |t| t.retain(|(n, _)| n != gone));
    let err = ClipTextModel::from_dir(&dir, Kind::Float, Device::Cpu)
        .err()
        .expect("must fail");
    assert!(err.to_string().contains(gone), "{err}");
}

#[test]
fn a_reshaped_tensor_is_named() {
    let name = "text_projection.weight";
    let dir = edited_copy("text_encoder_2", "reshaped", |t| {
        for (n, x) in t.iter_mut() {
            if n == name {
                *x = x.narrow(0, 0, 20).contiguous();
            }
        }
    });
    let err = ClipTextModelWithProjection::from_dir(&dir, Kind::Float, Device::Cpu)
        .err()
        .expect("must fail");
    assert!(err.to_string().contains(name), "{err}");
}

#[test]
fn an_unexpected_tensor_is_named_and_sdxls_prefixed_layout_loads() {
    let dir = edited_copy("text_encoder", "extra", |t| {
        t.push((
            "surprise.weight".into(),
            Tensor::zeros([3], (Kind::Float, Device::Cpu)),
        ));
    });
    let err = ClipTextModel::from_dir(&dir, Kind::Float, Device::Cpu)
        .err()
        .expect("must fail");
    assert!(err.to_string().contains("surprise.weight"), "{err}");

    // SDXL's own text_encoder/ layout (transformers 4): `text_model.` prefix, position_ids saved.
    let dir = edited_copy("text_encoder", "sdxl_layout", |t| {
        for (n, _) in t.iter_mut() {
            *n = format!("text_model.{n}");
        }
        let ids = Tensor::arange(77, (Kind::Int64, Device::Cpu)).unsqueeze(0);
        t.push(("text_model.embeddings.position_ids".into(), ids));
    });
    let enc = ClipTextModel::from_dir(&dir, Kind::Float, Device::Cpu).unwrap();
    let r = refs();
    let out = tch::no_grad(|| enc.forward(&r["input_ids"])).unwrap();
    assert!(max_abs_diff(&out.last_hidden_state, &r["text_encoder.last_hidden_state"]) <= 1e-4);
}

#[test]
fn a_config_with_unknown_keys_loads_and_a_bad_activation_fails() {
    let dir = scratch("config");
    let src = fixtures().join("text_encoder");
    std::fs::copy(src.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["some_future_option"] = serde_json::json!({"nested": [1, 2, 3]});
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let enc = ClipTextModel::from_dir(&dir, Kind::Float, Device::Cpu).unwrap();
    assert_eq!(enc.config().hidden_act, "quick_gelu");

    cfg["hidden_act"] = "swiglu".into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let err = ClipTextModel::from_dir(&dir, Kind::Float, Device::Cpu)
        .err()
        .expect("must fail");
    assert!(err.to_string().contains("swiglu"), "{err}");
}

#[test]
fn torchscript_exports_match_the_native_encoders() {
    use ltx_models::sdxl::clip::torchscript::ClipTorchScript;
    let r = refs();
    let ids = &r["input_ids"];
    for name in ["text_encoder", "text_encoder_2"] {
        let path = fixtures().join(name).join("model.pt");
        let ts = ClipTorchScript::load(&path, Device::Cpu, Kind::Float).unwrap();
        assert!(ts.parameter_bytes().unwrap() > 0);
        let got = tch::no_grad(|| ts.forward(ids)).unwrap();
        let want = Encoder::load(name, Kind::Float).unwrap().forward(ids);
        let errs = [
            max_abs_diff(
                &got.penultimate_hidden_state,
                &want.penultimate_hidden_state,
            ),
            max_abs_diff(&got.last_hidden_state, &want.last_hidden_state),
            max_abs_diff(&got.pooled, &want.pooled),
        ];
        eprintln!("{name} TorchScript vs native: max abs errors {errs:?}");
        assert!(errs.iter().all(|e| *e <= 1e-4), "{name}: {errs:?}");
    }
    // A module traced in fp32 is refused in bf16, naming both dtypes.
    let path = fixtures().join("text_encoder_2/model.pt");
    let err = ClipTorchScript::load(&path, Device::Cpu, Kind::BFloat16)
        .err()
        .expect("a dtype mismatch must fail");
    assert!(
        err.to_string().contains("Float") && err.to_string().contains("BFloat16"),
        "{err}"
    );
    let not_a_module = fixtures().join("text_encoder/config.json");
    assert!(ClipTorchScript::load(&not_a_module, Device::Cpu, Kind::Float).is_err());
}
