//! SDXL single-file checkpoints: tests/fixtures/sdxl/single_file/sdxl_tiny.safetensors holds a
//! tiny random SDXL under the original names, written by tools/sdxl-fixtures/make_single_file.py
//! and proven there with diffusers 0.42.1's own conversion (its converters and
//! `StableDiffusionXLPipeline.from_single_file(file, config=folder)` give back the folder's
//! weights bit for bit). Here every component built from the file must equal the one built from
//! the folder's weights bit for bit, and reproduce the outputs of diffusers' single-file
//! components (float32 on the CPU: max abs error ≤ 1e-5, measured 0 to above 1e-6 by the CPU, for the VAE and the
//! encoders; ≤ 5e-5, measured 2.4e-6 and 1.24e-5 on two CPUs, for the UNet, see [`TOL_UNET`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ltx_models::config::read_config;
use ltx_models::sdxl::clip::{ClipTextModel, ClipTextModelWithProjection};
use ltx_models::sdxl::single_file::SdxlSingleFile;
use ltx_models::sdxl::unet::{UNet2DConditionModel, UNetInput};
use ltx_models::sdxl::vae::AutoencoderKl;
use ltx_models::weights::{Vb, WeightStore};
use ltx_models::Result;
use tch::{Device, Kind, Tensor};

/// The VAE and the text encoders: 1e-6 measured 0 on one CPU; on an AMD EPYC machine the
/// bigG encoder's penultimate state moved past 1e-6 (the CPU's summation order), so 1e-5.
const TOL: f64 = 1e-5;
/// The UNet's output (magnitude 2.5) moves by 2.4e-6 against diffusers' with bit-identical
/// weights: summation order (diffusers itself moves by 6.7e-6 when only the inputs' memory
/// alignment changes). Misplaced weights are caught bit for bit by
/// `every_component_equals_the_folders_bit_for_bit`. On an AMD EPYC machine the same test
/// measured 1.24e-5 (the CPU's kernels pick another summation order), so the bound is 5e-5:
/// 2e-5 relative to the output, still far below what one misplaced weight moves.
const TOL_UNET: f64 = 5e-5;
const CPU: Device = Device::Cpu;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/sdxl/single_file")
}

fn folder() -> PathBuf {
    fixtures().join("folder")
}

fn file() -> PathBuf {
    fixtures().join("sdxl_tiny.safetensors")
}

fn open() -> SdxlSingleFile {
    SdxlSingleFile::open(&file(), &folder()).unwrap()
}

fn meta() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("refs.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn refs() -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixtures().join("refs.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

/// Builds a module from `store`, checks no tensor is left over, and returns its parameters.
fn params<T>(
    store: WeightStore,
    build: impl FnOnce(&Vb<'_>) -> Result<T>,
) -> HashMap<String, Tensor> {
    build(&store.root()).unwrap();
    store.finish().unwrap();
    store.take_params().into_iter().collect()
}

fn assert_bit_exact(what: &str, got: &HashMap<String, Tensor>, want: &HashMap<String, Tensor>) {
    let mut names: Vec<&String> = want.keys().collect();
    names.sort();
    assert_eq!(got.len(), want.len(), "{what}: parameter count");
    for name in names {
        let (g, w) = (&got[name], &want[name]);
        assert_eq!((g.size(), g.kind()), (w.size(), w.kind()), "{what}: {name}");
        assert!(g.equal(w), "{what}: {name} differs");
    }
    eprintln!("{what}: {} tensors bit-exact", want.len());
}

fn folder_store(component: &str) -> WeightStore {
    WeightStore::from_component_dir(&folder().join(component), Kind::Float, CPU).unwrap()
}

#[test]
fn every_component_equals_the_folders_bit_for_bit() {
    let sf = open();
    let counts = &meta()["folder_tensors"];

    let unet = |vb: &Vb<'_>| UNet2DConditionModel::new(vb, sf.unet_config().clone());
    let got = params(sf.unet_weights(Kind::Float, CPU).unwrap(), unet);
    assert_bit_exact("unet", &got, &params(folder_store("unet"), unet));
    assert_eq!(got.len() as u64, counts["unet"].as_u64().unwrap());

    let vae = |vb: &Vb<'_>| AutoencoderKl::new(vb, sf.vae_config().clone());
    let got = params(sf.vae_weights(Kind::Float, CPU).unwrap(), vae);
    assert_bit_exact("vae", &got, &params(folder_store("vae"), vae));
    assert_eq!(got.len() as u64, counts["vae"].as_u64().unwrap());

    let te = |vb: &Vb<'_>| ClipTextModel::new(vb, sf.text_encoder_config().clone());
    let mut got = params(sf.text_encoder_weights(Kind::Float, CPU).unwrap(), te);
    // The file's int64 buffer (shape-checked, unused, as in transformers); the folder has none.
    let ids = got.remove("text_model.embeddings.position_ids").unwrap();
    assert!(ids.equal(&Tensor::arange(77, (Kind::Float, CPU)).unsqueeze(0)));
    assert_bit_exact(
        "text_encoder",
        &got,
        &params(folder_store("text_encoder"), te),
    );

    let te2 =
        |vb: &Vb<'_>| ClipTextModelWithProjection::new(vb, sf.text_encoder_2_config().clone());
    let got = params(sf.text_encoder_2_weights(Kind::Float, CPU).unwrap(), te2);
    assert_bit_exact(
        "text_encoder_2",
        &got,
        &params(folder_store("text_encoder_2"), te2),
    );
    assert_eq!(got.len() as u64, counts["text_encoder_2"].as_u64().unwrap());
}

/// The fixture with its header padded by one byte: every tensor starts at an odd offset, so the
/// VAE and OpenCLIP stores copy instead of viewing the file (libtorch views need alignment).
#[test]
fn misaligned_tensors_are_copied_and_load_the_same() {
    let bytes = std::fs::read(file()).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut shifted = (n as u64 + 1).to_le_bytes().to_vec();
    shifted.extend_from_slice(&bytes[8..8 + n]);
    shifted.push(b' ');
    shifted.extend_from_slice(&bytes[8 + n..]);
    let dir = std::env::temp_dir().join(format!("sdxl-single-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("misaligned.safetensors");
    std::fs::write(&path, shifted).unwrap();

    let (sf, aligned) = (SdxlSingleFile::open(&path, &folder()).unwrap(), open());
    let vae = |vb: &Vb<'_>| AutoencoderKl::new(vb, sf.vae_config().clone());
    assert_bit_exact(
        "vae (misaligned)",
        &params(sf.vae_weights(Kind::Float, CPU).unwrap(), vae),
        &params(aligned.vae_weights(Kind::Float, CPU).unwrap(), vae),
    );
    let te2 =
        |vb: &Vb<'_>| ClipTextModelWithProjection::new(vb, sf.text_encoder_2_config().clone());
    assert_bit_exact(
        "text_encoder_2 (misaligned)",
        &params(sf.text_encoder_2_weights(Kind::Float, CPU).unwrap(), te2),
        &params(folder_store("text_encoder_2"), te2),
    );
}

fn max_err(what: &str, got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.size(), want.size(), "{what}: shape");
    let err = (got.to_kind(Kind::Double) - want.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[]);
    let magnitude = want.abs().max().double_value(&[]);
    eprintln!("{what}: max abs error {err:.2e} (magnitude {magnitude:.3})");
    err
}

#[test]
fn components_reproduce_diffusers_single_file_outputs() {
    let (sf, r) = (open(), refs());
    tch::no_grad(|| {
        let unet = sf.unet(Kind::Float, CPU).unwrap();
        let out = unet
            .forward(&UNetInput {
                sample: &r["sample"],
                timestep: &r["timestep"],
                encoder_hidden_states: &r["encoder_hidden_states"],
                text_embeds: &r["text_embeds"],
                time_ids: &r["time_ids"],
                down_block_additional_residuals: None,
                mid_block_additional_residual: None,
            })
            .unwrap();
        assert!(max_err("unet", &out, &r["unet_out"]) <= TOL_UNET);

        let vae = sf.vae(Kind::Float, CPU).unwrap();
        let decoded = vae.decode(&r["latents"]).unwrap();
        assert!(max_err("vae decode", &decoded, &r["decoded"]) <= TOL);

        let ids = &r["input_ids"];
        let one = sf
            .text_encoder(Kind::Float, CPU)
            .unwrap()
            .forward(ids)
            .unwrap();
        assert!(
            max_err(
                "te penultimate",
                &one.penultimate_hidden_state,
                &r["te_penultimate"]
            ) <= TOL
        );
        assert!(max_err("te pooled", &one.pooled, &r["te_pooled"]) <= TOL);
        let two = sf
            .text_encoder_2(Kind::Float, CPU)
            .unwrap()
            .forward(ids)
            .unwrap();
        assert!(
            max_err(
                "te2 penultimate",
                &two.penultimate_hidden_state,
                &r["te2_penultimate"]
            ) <= TOL
        );
        assert!(max_err("te2 text_embeds", &two.pooled, &r["te2_text_embeds"]) <= TOL);
    });
}

#[test]
fn every_tensor_is_claimed_by_a_component_or_a_known_non_weight() {
    let sf = open();
    let m = meta();
    let stores = [
        sf.unet_weights(Kind::Float, CPU).unwrap(),
        sf.vae_weights(Kind::Float, CPU).unwrap(),
        sf.text_encoder_weights(Kind::Float, CPU).unwrap(),
        sf.text_encoder_2_weights(Kind::Float, CPU).unwrap(),
    ];
    let names: Vec<usize> = stores.iter().map(|s| s.names().count()).collect();
    let per = &m["file_tensors_per_prefix"];
    let n = |k: &str| per[k].as_u64().unwrap() as usize;
    // The fused in_proj tensors become three each; logit_scale is the one OpenCLIP non-weight.
    let fused = m["fused_in_proj"].as_u64().unwrap() as usize;
    assert_eq!(
        names,
        [
            n("unet"),
            n("vae"),
            n("text_encoder"),
            n("text_encoder_2") - 1 + 2 * fused
        ]
    );
    let non_weights = m["non_weights"].as_array().unwrap().len();
    let claimed = n("unet") + n("vae") + n("text_encoder") + n("text_encoder_2");
    assert_eq!(
        claimed + non_weights - 1,
        m["file_tensors"].as_u64().unwrap() as usize
    );
}

#[test]
fn weights_convert_to_the_requested_dtype() {
    let sf = open();
    let te2 =
        |vb: &Vb<'_>| ClipTextModelWithProjection::new(vb, sf.text_encoder_2_config().clone());
    let float = params(sf.text_encoder_2_weights(Kind::Float, CPU).unwrap(), te2);
    let half = params(sf.text_encoder_2_weights(Kind::Half, CPU).unwrap(), te2);
    let want: HashMap<String, Tensor> = float
        .iter()
        .map(|(n, t)| (n.clone(), t.to_kind(Kind::Half)))
        .collect();
    assert_bit_exact("text_encoder_2 (float16)", &half, &want);
    let vae = sf.vae(Kind::BFloat16, CPU).unwrap();
    assert_eq!(vae.weight_kind(), Kind::BFloat16);
    assert!(error_of(sf.vae(Kind::Int64, CPU)).contains("Int64"));
}

/// The fixture's tensors, edited by `edit`, written to a temporary file.
fn edited(tag: &str, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) -> PathBuf {
    let mut tensors = Tensor::read_safetensors(file()).unwrap();
    edit(&mut tensors);
    let dir = std::env::temp_dir().join(format!("sdxl-single-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{tag}.safetensors"));
    Tensor::write_safetensors(&tensors, &path).unwrap();
    path
}

fn without(tag: &str, key: &str) -> PathBuf {
    edited(tag, |t| {
        let before = t.len();
        t.retain(|(n, _)| n != key);
        assert_eq!(t.len(), before - 1, "{key} not in the fixture");
    })
}

fn with(tag: &str, key: &str, tensor: Tensor) -> PathBuf {
    edited(tag, |t| t.push((key.to_string(), tensor)))
}

fn error_of<T>(r: Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn assert_names(msg: &str, needle: &str) {
    eprintln!("{msg}");
    assert!(msg.contains(needle), "{needle:?} not in: {msg}");
}

/// Builds one component, for the error.
type Build = fn(&SdxlSingleFile) -> Result<()>;

#[test]
fn a_removed_tensor_is_named() {
    let cases: [(&str, &str, Build); 4] = [
        (
            "model.diffusion_model.output_blocks.2.2.conv.weight",
            "up_blocks.0.upsamplers.0.conv.weight",
            |sf| sf.unet(Kind::Float, CPU).map(drop),
        ),
        (
            "first_stage_model.decoder.mid.attn_1.q.weight",
            "decoder.mid_block.attentions.0.to_q.weight",
            |sf| sf.vae(Kind::Float, CPU).map(drop),
        ),
        (
            "conditioner.embedders.0.transformer.text_model.final_layer_norm.bias",
            "text_model.final_layer_norm.bias",
            |sf| sf.text_encoder(Kind::Float, CPU).map(drop),
        ),
        (
            "conditioner.embedders.1.model.transformer.resblocks.7.attn.in_proj_weight",
            "text_model.encoder.layers.7.self_attn.q_proj.weight",
            |sf| sf.text_encoder_2(Kind::Float, CPU).map(drop),
        ),
    ];
    for (i, (key, name, build)) in cases.iter().enumerate() {
        let path = without(&format!("removed-{i}"), key);
        let sf = SdxlSingleFile::open(&path, &folder()).unwrap();
        let msg = error_of(build(&sf));
        assert_names(&msg, &format!("missing tensor {name}"));
        assert_names(&msg, &path.display().to_string());
    }
}

#[test]
fn an_unknown_tensor_is_named() {
    for (i, key) in [
        "model.diffusion_model.input_blocks.1.2.weight",
        "first_stage_model.encoder.mid.attn_2.q.weight",
        "conditioner.embedders.1.model.attn_mask",
        "cond_stage_model.transformer.text_model.final_layer_norm.bias",
    ]
    .iter()
    .enumerate()
    {
        let path = with(
            &format!("unknown-{i}"),
            key,
            Tensor::zeros([2], (Kind::Float, CPU)),
        );
        let msg = error_of(SdxlSingleFile::open(&path, &folder()));
        assert_names(&msg, &format!("{key} [2]"));
    }
    // A key that maps to a name no parameter has: the component's strict build names it.
    let path = with(
        "unused",
        "model.diffusion_model.input_blocks.1.0.in_layers.0.extra",
        Tensor::zeros([2], (Kind::Float, CPU)),
    );
    let sf = SdxlSingleFile::open(&path, &folder()).unwrap();
    let msg = error_of(sf.unet(Kind::Float, CPU));
    assert_names(&msg, "down_blocks.0.resnets.0.norm1.extra");
    // Known non-weight entries are accepted and ignored.
    let path = edited("non-weights", |t| {
        t.push(("model_ema.decay".into(), Tensor::from(0.9999f32)));
        t.push((
            "alphas_cumprod".into(),
            Tensor::ones([1000], (Kind::Float, CPU)),
        ));
    });
    SdxlSingleFile::open(&path, &folder())
        .unwrap()
        .unet(Kind::Float, CPU)
        .unwrap();
}

fn shapes_file(tag: &str, keys: &[(&str, &[i64])]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sdxl-single-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{tag}.safetensors"));
    let tensors: Vec<(String, Tensor)> = keys
        .iter()
        .map(|(k, s)| (k.to_string(), Tensor::zeros(*s, (Kind::Half, CPU))))
        .collect();
    Tensor::write_safetensors(&tensors, &path).unwrap();
    path
}

fn refusal(path: &Path) -> String {
    error_of(SdxlSingleFile::open(path, &folder()))
}

#[test]
fn other_model_types_are_refused_naming_what_was_found() {
    let sd15 = shapes_file(
        "sd15",
        &[
            (
                "model.diffusion_model.output_blocks.11.0.skip_connection.weight",
                &[320, 640, 1, 1],
            ),
            (
                "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight",
                &[77, 768],
            ),
        ],
    );
    assert_names(&refusal(&sd15), "`v1` (Stable Diffusion 1.x)");
    let refiner = shapes_file(
        "refiner",
        &[(
            "conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias",
            &[1280],
        )],
    );
    assert_names(&refusal(&refiner), "`xl_refiner`");
    let sd3 = shapes_file(
        "sd3",
        &[
            (
                "model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias",
                &[9216],
            ),
            ("model.diffusion_model.pos_embed", &[1, 36864, 1536]),
        ],
    );
    assert_names(&refusal(&sd3), "`sd3`");
    let other = shapes_file("other", &[("weight", &[1])]);
    assert_names(&refusal(&other), "fall back to `v1`");

    // The fixture with a 9-channel conv_in is an SDXL inpainting file.
    let inpaint = edited("inpaint", |t| {
        let conv_in = t
            .iter_mut()
            .find(|(n, _)| n == "model.diffusion_model.input_blocks.0.0.weight")
            .unwrap();
        conv_in.1 = Tensor::zeros([4, 9, 3, 3], (Kind::Float, CPU));
    });
    let msg = refusal(&inpaint);
    assert_names(&msg, "`xl_inpaint`");
    assert_names(&msg, "not an SDXL base single-file checkpoint");
}

#[test]
fn configs_come_from_the_folder() {
    let sf = open();
    let unet: serde_json::Value = read_config(&folder().join("unet/config.json")).unwrap();
    assert_eq!(sf.unet_config().block_out_channels, [4, 8, 8]);
    assert_eq!(unet["layers_per_block"], 2);
    assert_eq!(sf.vae_config().scaling_factor, 0.13025);
    assert_eq!(sf.text_encoder_config().hidden_size, 8);
    assert_eq!(sf.text_encoder_2_config().projection_dim, 12);
    // A folder without a component config is an I/O error naming the file.
    let empty = std::env::temp_dir().join(format!("sdxl-single-file-empty-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let msg = error_of(SdxlSingleFile::open(&file(), &empty));
    assert_names(&msg, "unet/config.json");
}
