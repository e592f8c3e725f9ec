//! Loading SDXL + InstantID model sets from the folders users have, on the tiny random set of
//! tests/fixtures/sdxl/instantid (tools/sdxl-fixtures/make_instantid_loop.py): a diffusers SDXL
//! folder whose text encoders ship only fp16 variant files, InstantX's `ControlNetModel/` and
//! `ip-adapter.bin`. Folders that are not SDXL, lack a component, or whose parts do not fit
//! together are refused with errors naming what is wrong.

use std::path::PathBuf;

use ltx_models::sdxl::folder::{
    check_controlnet_fits, load_controlnet, ModelIndex, SdxlDtypes, SdxlFolder, SdxlLoadOptions,
};
use ltx_models::sdxl::ip_adapter::read_ip_adapter;
use ltx_models::sdxl::ip_bind::{bind_ip_adapter, load_face_adapter};
use ltx_models::sdxl::unet::{ControlNetModel, UNet2DConditionModel};
use ltx_models::ModelError;
use tch::{Device, Kind, Tensor};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/sdxl")
}

fn instantid() -> PathBuf {
    fixtures().join("instantid")
}

fn sdxl() -> PathBuf {
    instantid().join("sdxl")
}

fn f32_cpu() -> SdxlLoadOptions {
    SdxlLoadOptions::new(Device::Cpu, Kind::Float)
}

/// A scratch folder removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("ltx-sdxl-folder-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// An SDXL folder made of links to the fixture's components, minus `skip`, with
    /// model_index.json written by `index`.
    fn sdxl_links(tag: &str, skip: &[&str], index: impl FnOnce(&mut serde_json::Value)) -> Self {
        let s = Self::new(tag);
        let root = sdxl().canonicalize().unwrap();
        for name in [
            "tokenizer",
            "tokenizer_2",
            "text_encoder",
            "text_encoder_2",
            "unet",
            "vae",
            "scheduler",
        ] {
            if !skip.contains(&name) {
                std::os::unix::fs::symlink(root.join(name), s.0.join(name)).unwrap();
            }
        }
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(root.join("model_index.json")).unwrap())
                .unwrap();
        index(&mut v);
        std::fs::write(s.0.join("model_index.json"), v.to_string()).unwrap();
        s
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn err_text<T>(r: ltx_models::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn param<'a>(params: &'a [(String, Tensor)], name: &str) -> &'a Tensor {
    &params
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no parameter {name}"))
        .1
}

#[test]
fn the_sdxl_folder_loads_with_its_fp16_only_text_encoders() {
    let f = SdxlFolder::load(&sdxl(), &f32_cpu()).unwrap();
    assert_eq!(f.index.class_name, "StableDiffusionXLPipeline");
    assert!(f.index.force_zeros_for_empty_prompt);
    assert_eq!(f.unet.kind(), Kind::Float);
    assert_eq!(f.vae.weight_kind(), Kind::Float);
    assert_eq!(f.text_encoder.config().hidden_size, 4);
    assert_eq!(f.text_encoder_2.config().hidden_size, 6);
    assert_eq!(f.tokenizer_2.pad_token_id(), 0, "tokenizer_2 pads with '!'");
    assert_eq!(
        f.scheduler_config["_class_name"].as_str(),
        Some("EulerDiscreteScheduler")
    );
    // The fp16 file's values, widened: every one is a float16 number.
    // transformers 5 saves a CLIPTextModel without the `text_model.` prefix.
    let emb = param(&f.params.text_encoder, "embeddings.token_embedding.weight");
    assert_eq!(emb.kind(), Kind::Float);
    assert_eq!(emb.size(), [49408, 4]);
    let round_trip = emb.to_kind(Kind::Half).to_kind(Kind::Float);
    assert!(emb.equal(&round_trip));
    let total: u64 = [
        &f.params.text_encoder,
        &f.params.text_encoder_2,
        &f.params.unet,
        &f.params.vae,
    ]
    .iter()
    .flat_map(|p| p.iter())
    .map(|(_, t)| (t.numel() * 4) as u64)
    .sum();
    assert_eq!(f.weight_bytes, total);
}

/// SDXL base 1.0's model_index.json as published (RealVisXL_V5.0's differs only in the
/// `_diffusers_version` and the `[null, null]` image encoder entries diffusers adds).
const SDXL_BASE_INDEX: &str = r#"{
  "_class_name": "StableDiffusionXLPipeline",
  "_diffusers_version": "0.19.0.dev0",
  "force_zeros_for_empty_prompt": true,
  "add_watermarker": null,
  "scheduler": ["diffusers", "EulerDiscreteScheduler"],
  "text_encoder": ["transformers", "CLIPTextModel"],
  "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
  "tokenizer": ["transformers", "CLIPTokenizer"],
  "tokenizer_2": ["transformers", "CLIPTokenizer"],
  "unet": ["diffusers", "UNet2DConditionModel"],
  "vae": ["diffusers", "AutoencoderKL"]
}"#;

#[test]
fn sdxl_base_layout_with_its_other_formats_loads() {
    // The hub repo also holds ONNX / OpenVINO / Flax exports and vae_1_0/ beside the
    // safetensors; they are not read.
    let s = Scratch::sdxl_links("base", &["unet"], |_| {});
    std::fs::write(s.0.join("model_index.json"), SDXL_BASE_INDEX).unwrap();
    let unet_src = sdxl().join("unet").canonicalize().unwrap();
    let unet = s.0.join("unet");
    std::fs::create_dir(&unet).unwrap();
    for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
        std::os::unix::fs::symlink(unet_src.join(f), unet.join(f)).unwrap();
    }
    for f in [
        "diffusion_flax_model.msgpack",
        "openvino_model.xml",
        "model.onnx",
    ] {
        std::fs::write(unet.join(f), b"not read").unwrap();
    }
    for d in ["vae_1_0", "vae_decoder", "vae_encoder"] {
        std::fs::create_dir(s.0.join(d)).unwrap();
        std::fs::write(s.0.join(d).join("model.onnx"), b"not read").unwrap();
    }
    let f = SdxlFolder::load(&s.0, &f32_cpu()).unwrap();
    assert!(f.index.force_zeros_for_empty_prompt);
    assert_eq!(
        f.index.components.len(),
        7,
        "add_watermarker is a setting, not a component"
    );
    let mut opts = f32_cpu();
    opts.variant = Some("fp16".into());
    SdxlFolder::load(&s.0, &opts).unwrap();
}

#[test]
fn a_variant_is_preferred_where_a_component_has_it() {
    let s = Scratch::sdxl_links("variant", &["vae"], |_| {});
    let vae_src = sdxl().join("vae").canonicalize().unwrap();
    let vae = s.0.join("vae");
    std::fs::create_dir(&vae).unwrap();
    std::fs::copy(vae_src.join("config.json"), vae.join("config.json")).unwrap();
    let plain = vae_src.join("diffusion_pytorch_model.safetensors");
    std::os::unix::fs::symlink(&plain, vae.join("diffusion_pytorch_model.safetensors")).unwrap();
    // The fp16 variant holds other numbers (halved), so the test sees which file loaded.
    let halved: Vec<(String, Tensor)> = Tensor::read_safetensors(&plain)
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n, (t * 0.5).to_kind(Kind::Half)))
        .collect();
    Tensor::write_safetensors(
        &halved,
        vae.join("diffusion_pytorch_model.fp16.safetensors"),
    )
    .unwrap();
    let name = "decoder.conv_out.weight";
    let expect = |n: &str| {
        halved
            .iter()
            .find(|(k, _)| k == n)
            .unwrap()
            .1
            .shallow_clone()
    };

    let mut opts = f32_cpu();
    opts.variant = Some("fp16".into());
    let with = SdxlFolder::load(&s.0, &opts).unwrap();
    assert!(param(&with.params.vae, name).equal(&expect(name).to_kind(Kind::Float)));
    // Components without the variant (unet, here) load their plain files.
    let plain_unet = SdxlFolder::load(&sdxl(), &f32_cpu()).unwrap();
    let unet_name = "conv_in.weight";
    assert!(param(&with.params.unet, unet_name).equal(param(&plain_unet.params.unet, unet_name)));

    let without = SdxlFolder::load(&s.0, &f32_cpu()).unwrap();
    assert!(param(&without.params.vae, name).equal(param(&plain_unet.params.vae, name)));
    assert!(!param(&without.params.vae, name).equal(param(&with.params.vae, name)));
}

#[test]
fn float16_loads_the_vae_in_float32_when_it_must_upcast() {
    let f = SdxlFolder::load(&sdxl(), &SdxlLoadOptions::new(Device::Cpu, Kind::Half)).unwrap();
    assert_eq!(f.unet.kind(), Kind::Half);
    assert_eq!(f.vae.weight_kind(), Kind::Float, "force_upcast");
    let mut opts = SdxlLoadOptions::new(Device::Cpu, Kind::Half);
    opts.dtypes = SdxlDtypes {
        vae: Some(Kind::Half),
        ..opts.dtypes
    };
    let f = SdxlFolder::load(&sdxl(), &opts).unwrap();
    assert_eq!(f.vae.weight_kind(), Kind::Half);
    assert_eq!(
        f.vae.compute_kind(),
        Kind::Float,
        "decoded in float32 all the same"
    );
}

#[test]
fn a_missing_component_folder_is_named() {
    let s = Scratch::sdxl_links("missing", &["vae"], |_| {});
    let msg = err_text(SdxlFolder::load(&s.0, &f32_cpu()));
    assert!(
        msg.contains("vae") && msg.contains("no vae/ component"),
        "{msg}"
    );

    let s = Scratch::sdxl_links("null", &[], |v| {
        v["text_encoder"] = serde_json::json!([null, null])
    });
    let msg = err_text(SdxlFolder::load(&s.0, &f32_cpu()));
    assert!(msg.contains("text_encoder is null"), "{msg}");

    let s = Scratch::sdxl_links("noindex", &[], |_| {});
    std::fs::remove_file(s.0.join("model_index.json")).unwrap();
    let msg = err_text(SdxlFolder::load(&s.0, &f32_cpu()));
    assert!(msg.contains("model_index.json"), "{msg}");
}

#[test]
fn a_folder_that_is_not_sdxl_is_refused() {
    for class in ["StableDiffusionPipeline", "LTXImageToVideoPipeline", ""] {
        let s = Scratch::sdxl_links("class", &[], |v| v["_class_name"] = class.into());
        let msg = err_text(ModelIndex::read(&s.0));
        assert!(
            msg.contains(&format!("{class:?}")) && msg.contains("StableDiffusionXLPipeline"),
            "{msg}"
        );
    }
    let s = Scratch::sdxl_links("unetclass", &[], |v| {
        v["unet"] = serde_json::json!(["diffusers", "UNet2DModel"])
    });
    let msg = err_text(SdxlFolder::load(&s.0, &f32_cpu()));
    assert!(msg.contains("unet is a UNet2DModel"), "{msg}");
    // The other SDXL pipeline classes share the layout.
    for class in [
        "StableDiffusionXLControlNetPipeline",
        "StableDiffusionXLInstantIDPipeline",
    ] {
        let s = Scratch::sdxl_links("ok", &[], |v| v["_class_name"] = class.into());
        assert_eq!(ModelIndex::read(&s.0).unwrap().class_name, class);
    }
}

#[test]
fn components_whose_sizes_do_not_fit_are_refused() {
    // The UNet of make_unet.py's fixture attends to 24-wide text; these encoders give 4 + 6.
    let s = Scratch::sdxl_links("sizes", &["unet"], |_| {});
    let other = fixtures().join("unet/unet").canonicalize().unwrap();
    std::os::unix::fs::symlink(other, s.0.join("unet")).unwrap();
    let msg = err_text(SdxlFolder::load(&s.0, &f32_cpu()));
    assert!(
        msg.contains("give 10-wide") && msg.contains("[24]"),
        "{msg}"
    );

    let f = SdxlFolder::load(&sdxl(), &f32_cpu()).unwrap();
    let cn = load_controlnet(
        &instantid().join("ControlNetModel"),
        None,
        Kind::Float,
        Device::Cpu,
    )
    .unwrap();
    check_controlnet_fits(&cn.model, &f.unet, 10).unwrap();
    let msg = err_text(check_controlnet_fits(&cn.model, &f.unet, 12));
    assert!(msg.contains("face tokens' width 12"), "{msg}");
    let foreign = ControlNetModel::from_dir(
        &fixtures().join("unet/controlnet"),
        Kind::Float,
        Device::Cpu,
    )
    .unwrap();
    let msg = err_text(check_controlnet_fits(&foreign, &f.unet, 10));
    assert!(msg.contains("down blocks"), "{msg}");
    let msg = err_text(load_controlnet(
        &instantid().join("nope"),
        None,
        Kind::Float,
        Device::Cpu,
    ));
    assert!(msg.contains("ControlNetModel"), "{msg}");
}

fn unet() -> UNet2DConditionModel {
    SdxlFolder::load(&sdxl(), &f32_cpu()).unwrap().unet
}

#[test]
fn the_face_adapter_binds_to_the_unet_in_processor_order() {
    let mut u = unet();
    let (resampler, bytes) = load_face_adapter(
        &instantid().join("ip-adapter.bin"),
        &mut u,
        Kind::Float,
        Device::Cpu,
    )
    .unwrap();
    assert_eq!(resampler.shape().queries, 4);
    assert_eq!(u.ip_num_tokens(), Some(4));
    assert!(bytes > 0);
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(instantid().join("refs.json")).unwrap())
            .unwrap();
    let names: Vec<String> = u
        .ip_attention_layers()
        .into_iter()
        .map(|s| s.name)
        .collect();
    let want: Vec<String> = meta["ip_layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, want);
    // Layer n's weights are the file's entry n.
    let file = read_ip_adapter(&instantid().join("ip-adapter.bin")).unwrap();
    let params = u.ip_params();
    for (slot, layer) in u.ip_attention_layers().iter().zip(&file.layers) {
        let k = param(&params, &format!("{}.to_k_ip.weight", slot.name));
        assert!(k.equal(&layer.to_k_ip), "{}", slot.name);
    }
}

#[test]
fn an_ip_file_that_does_not_fit_the_unet_is_refused_naming_the_layer() {
    let path = instantid().join("ip-adapter.bin");
    let mut u = unet();
    let mut file = read_ip_adapter(&path).unwrap();
    let resampler = file.resampler(Kind::Float, Device::Cpu).unwrap();
    let last = file.layers.pop().unwrap();
    let msg = err_text(bind_ip_adapter(&mut u, &file, &resampler, "short.bin"));
    let missing = u.ip_attention_layers().pop().unwrap();
    assert!(
        msg.contains("short.bin")
            && msg.contains("21 ip_adapter weight pairs")
            && msg.contains(&missing.name),
        "{msg}"
    );
    assert_eq!(u.ip_num_tokens(), None, "nothing was installed");
    file.layers.push(last);

    let q = file.layers[1].to_k_ip.size();
    file.layers[1].to_v_ip = Tensor::zeros([q[0] + 1, q[1]], (Kind::Float, Device::Cpu));
    let e = bind_ip_adapter(&mut u, &file, &resampler, "shape.bin").unwrap_err();
    let slot = &u.ip_attention_layers()[1];
    match &e {
        ModelError::ShapeMismatch { name, found, .. } => {
            assert!(name.contains("ip_adapter.3.to_v_ip.weight") && name.contains(&slot.name));
            assert_eq!(found, &vec![q[0] + 1, q[1]]);
        }
        other => panic!("{other}"),
    }
    assert_eq!(u.ip_num_tokens(), None);

    // make_ip_adapter.py's file: 3 pairs and a 48-wide Resampler.
    let msg = err_text(load_face_adapter(
        &fixtures().join("ip/ip-adapter.bin"),
        &mut u,
        Kind::Float,
        Device::Cpu,
    ));
    assert!(
        msg.contains("48-wide face tokens") && msg.contains("10-wide"),
        "{msg}"
    );
}

#[test]
fn the_index_keeps_force_zeros_from_the_file() {
    let s = Scratch::sdxl_links("zeros", &[], |v| {
        v["force_zeros_for_empty_prompt"] = false.into()
    });
    assert!(!ModelIndex::read(&s.0).unwrap().force_zeros_for_empty_prompt);
    let s = Scratch::sdxl_links("nozeros", &[], |v| {
        v.as_object_mut()
            .unwrap()
            .remove("force_zeros_for_empty_prompt");
    });
    assert!(ModelIndex::read(&s.0).unwrap().force_zeros_for_empty_prompt);
}
