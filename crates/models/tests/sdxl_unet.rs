//! SDXL's UNet, the IdentityNet (ControlNet) and InstantID's IP-Adapter attention against
//! diffusers 0.42.1 / InstantX on the tiny random models of tests/fixtures/sdxl/unet (made by
//! tools/sdxl-fixtures/make_unet.py), loaded through the loader users' weights go through.
//!
//! Tolerance: max abs error ≤ 1e-4 in float32 on the CPU, for each output. The operations are
//! diffusers' own, on the same libtorch, so here the results are bit-identical (measured 0);
//! the margin is for other thread counts, CPUs and attention backends (sliced / math: 1.2e-6),
//! whose summation orders differ. Outputs are of magnitude ~2–11.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ltx_models::hooks::BlockHooks;
use ltx_models::sdxl::unet::{
    ControlNetConfig, ControlNetInput, ControlNetModel, ControlNetOutput, UNet2DConditionConfig,
    UNet2DConditionModel, UNetInput,
};
use ltx_models::weights::WeightStore;
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-4;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/sdxl/unet")
}

fn read(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

fn refs() -> HashMap<String, Tensor> {
    read(&fixtures().join("refs.safetensors"))
}

fn meta() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("refs.json")).unwrap()).unwrap()
}

fn unet() -> UNet2DConditionModel {
    UNet2DConditionModel::from_dir(&fixtures().join("unet"), Kind::Float, Device::Cpu).unwrap()
}

fn controlnet() -> ControlNetModel {
    ControlNetModel::from_dir(&fixtures().join("controlnet"), Kind::Float, Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

fn assert_close(name: &str, got: &Tensor, want: &Tensor) {
    let err = max_abs_diff(got, want);
    let magnitude = want.abs().max().double_value(&[]);
    eprintln!("{name}: max abs error {err:.2e} (magnitude {magnitude:.3})");
    assert!(err <= TOLERANCE, "{name}: max abs error {err}");
}

/// `[text, face]` tokens, as InstantID passes them to the UNet.
fn text_and_face(r: &HashMap<String, Tensor>) -> Tensor {
    Tensor::cat(&[&r["text"], &r["face"]], 1)
}

fn run_unet(
    model: &UNet2DConditionModel,
    r: &HashMap<String, Tensor>,
    timestep: &Tensor,
    context: &Tensor,
    residuals: Option<(&[Tensor], &Tensor)>,
) -> Tensor {
    tch::no_grad(|| {
        model.forward(&UNetInput {
            sample: &r["sample"],
            timestep,
            encoder_hidden_states: context,
            text_embeds: &r["text_embeds"],
            time_ids: &r["time_ids"],
            down_block_additional_residuals: residuals.map(|x| x.0),
            mid_block_additional_residual: residuals.map(|x| x.1),
        })
    })
    .unwrap()
}

fn run_controlnet(
    model: &ControlNetModel,
    r: &HashMap<String, Tensor>,
    guess_mode: bool,
) -> ControlNetOutput {
    tch::no_grad(|| {
        model.forward(&ControlNetInput {
            sample: &r["sample"],
            timestep: &r["timestep"],
            encoder_hidden_states: &r["face"],
            text_embeds: &r["text_embeds"],
            time_ids: &r["time_ids"],
            controlnet_cond: &r["controlnet_cond"],
            conditioning_scale: meta()["conditioning_scale"].as_f64().unwrap(),
            guess_mode,
        })
    })
    .unwrap()
}

fn reference_residuals(r: &HashMap<String, Tensor>) -> (Vec<Tensor>, Tensor) {
    let down = (0..9)
        .map(|i| r[&format!("cn_down_{i}")].shallow_clone())
        .collect();
    (down, r["cn_mid"].shallow_clone())
}

/// The fixture's IP weights in the order `ip_attention_layers` lists, by their `{n}` names.
fn ip_weights(model: &UNet2DConditionModel) -> Vec<(Tensor, Tensor)> {
    let w = read(&fixtures().join("ip_adapter.safetensors"));
    model
        .ip_attention_layers()
        .iter()
        .map(|s| {
            let k = &w[&format!("{}.to_k_ip.weight", s.n)];
            let v = &w[&format!("{}.to_v_ip.weight", s.n)];
            (k.shallow_clone(), v.shallow_clone())
        })
        .collect()
}

fn ip_unet() -> UNet2DConditionModel {
    let mut model = unet();
    let w = ip_weights(&model);
    let tokens = meta()["num_tokens"].as_i64().unwrap();
    model.set_ip_adapter(w, tokens).unwrap();
    model
}

#[test]
fn unet_matches_diffusers() {
    let r = refs();
    let model = unet();
    assert_eq!(model.num_down_residuals(), 9);
    assert_close(
        "unet plain",
        &run_unet(&model, &r, &r["timestep"], &r["text"], None),
        &r["unet_plain"],
    );
    // Latent sides not divisible by 4: the up blocks resize to the skips' sizes.
    let odd = tch::no_grad(|| {
        model.forward(&UNetInput {
            sample: &r["odd_sample"],
            timestep: &r["timesteps"].narrow(0, 0, 1),
            encoder_hidden_states: &r["text"].narrow(0, 0, 1),
            text_embeds: &r["text_embeds"].narrow(0, 0, 1),
            time_ids: &r["time_ids"].narrow(0, 0, 1),
            down_block_additional_residuals: None,
            mid_block_additional_residual: None,
        })
    })
    .unwrap();
    assert_close("unet 6×10 latents", &odd, &r["unet_odd"]);
}

#[test]
fn controlnet_matches_diffusers() {
    let r = refs();
    let model = controlnet();
    for (guess, prefix) in [(false, "cn"), (true, "cn_guess")] {
        let out = run_controlnet(&model, &r, guess);
        assert_eq!(out.down_block_res_samples.len(), 9);
        for (i, t) in out.down_block_res_samples.iter().enumerate() {
            assert_close(
                &format!("{prefix}_down_{i}"),
                t,
                &r[&format!("{prefix}_down_{i}")],
            );
        }
        assert_close(
            &format!("{prefix}_mid"),
            &out.mid_block_res_sample,
            &r[&format!("{prefix}_mid")],
        );
    }
}

#[test]
fn unet_adds_controlnet_residuals_like_diffusers() {
    let r = refs();
    let model = unet();
    let (down, mid) = reference_residuals(&r);
    let out = run_unet(&model, &r, &r["timesteps"], &r["text"], Some((&down, &mid)));
    assert_close("unet + reference residuals", &out, &r["unet_cn"]);
    // Chained: our ControlNet's residuals into our UNet.
    let cn = run_controlnet(&controlnet(), &r, false);
    let out = run_unet(
        &model,
        &r,
        &r["timesteps"],
        &r["text"],
        Some((&cn.down_block_res_samples, &cn.mid_block_res_sample)),
    );
    assert_close("unet + our residuals", &out, &r["unet_cn"]);
}

#[test]
fn ip_adapter_matches_instantx() {
    let r = refs();
    let mut model = ip_unet();
    assert_eq!(model.ip_scale(), 0.5, "InstantID's scale at load");
    model.set_ip_scale(meta()["ip_scale"].as_f64().unwrap());
    let context = text_and_face(&r);
    assert_close(
        "unet + IP",
        &run_unet(&model, &r, &r["timestep"], &context, None),
        &r["unet_ip"],
    );
    let (down, mid) = reference_residuals(&r);
    let out = run_unet(&model, &r, &r["timestep"], &context, Some((&down, &mid)));
    assert_close(
        "unet + IP + residuals (an InstantID step)",
        &out,
        &r["unet_ip_cn"],
    );
}

#[test]
fn ip_scale_zero_is_text_attention_and_clearing_restores_plain_sdxl() {
    let r = refs();
    let mut model = ip_unet();
    model.set_ip_scale(0.0);
    let out = run_unet(&model, &r, &r["timestep"], &text_and_face(&r), None);
    assert_close("IP at scale 0 = text tokens only", &out, &r["unet_plain"]);
    model.clear_ip_adapter();
    assert_eq!(model.ip_num_tokens(), None);
    let out = run_unet(&model, &r, &r["timestep"], &r["text"], None);
    assert_close("IP cleared", &out, &r["unet_plain"]);
}

#[test]
fn ip_layers_follow_the_attn_processors_order() {
    let model = unet();
    let want = meta()["ip_layers"].as_array().unwrap().clone();
    let got = model.ip_attention_layers();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.n as u64, w["n"].as_u64().unwrap());
        assert_eq!(g.name, w["name"].as_str().unwrap());
        assert_eq!(g.query_dim, w["query_dim"].as_i64().unwrap(), "{}", g.name);
        assert_eq!(g.cross_dim, w["cross_dim"].as_i64().unwrap(), "{}", g.name);
    }
    let names: Vec<String> = model.ip_params().into_iter().map(|(n, _)| n).collect();
    assert!(names.is_empty(), "no IP weights before set_ip_adapter");
    let names: Vec<String> = ip_unet().ip_params().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names.len(), 2 * want.len());
    assert_eq!(
        names[1],
        format!("{}.to_v_ip.weight", want[0]["name"].as_str().unwrap())
    );
}

/// SDXL base's and InstantID's configs as released, built without memory: parameter counts
/// and IP layers equal diffusers' (refs.json, also spec §1 / §1.2).
#[test]
fn released_configs_build_with_diffusers_parameter_counts() {
    let m = meta();
    let released = fixtures().join("released");
    let store = WeightStore::shapes_only(Kind::Half);
    let cfg: UNet2DConditionConfig =
        ltx_models::config::read_config(&released.join("unet_config.json")).unwrap();
    let sdxl = UNet2DConditionModel::new(&store.root(), cfg).unwrap();
    assert_eq!(
        store.loaded_bytes() / 2,
        m["released"]["unet_params"].as_u64().unwrap()
    );
    assert_eq!(store.loaded_bytes() / 2, 2_567_463_684);
    assert_eq!(sdxl.num_down_residuals(), 9);
    assert_eq!(sdxl.num_blocks(), 32);

    let slots = sdxl.ip_attention_layers();
    let want = m["released"]["unet_ip_layers"].as_array().unwrap();
    assert_eq!(slots.len(), 70);
    for (s, w) in slots.iter().zip(want) {
        assert_eq!(
            (s.n as u64, s.name.as_str()),
            (w["n"].as_u64().unwrap(), w["name"].as_str().unwrap())
        );
        assert_eq!(
            [s.query_dim, s.cross_dim],
            [w["query_dim"].as_i64().unwrap(), 2048]
        );
    }
    assert_eq!(slots.last().unwrap().n, 139);
    assert!(slots[60].name.starts_with("mid_block.") && slots[59].name.starts_with("up_blocks.1."));

    let store = WeightStore::shapes_only(Kind::Half);
    let cfg: ControlNetConfig =
        ltx_models::config::read_config(&released.join("identitynet_config.json")).unwrap();
    ControlNetModel::new(&store.root(), cfg).unwrap();
    assert_eq!(
        store.loaded_bytes() / 2,
        m["released"]["identitynet_params"].as_u64().unwrap()
    );
    assert_eq!(store.loaded_bytes() / 2, 1_251_014_160);
}

#[test]
fn wrong_ip_count_or_shape_is_refused_naming_the_layer() {
    let mut model = unet();
    let mut w = ip_weights(&model);
    let slots = model.ip_attention_layers();
    w.pop();
    let err = model.set_ip_adapter(w, 4).unwrap_err().to_string();
    assert!(
        err.contains(&slots.last().unwrap().name) && err.contains("16 "),
        "{err}"
    );

    let mut w = ip_weights(&model);
    let bad = &slots[3];
    w[3].1 = Tensor::zeros(
        [bad.query_dim, bad.cross_dim + 1],
        (Kind::Float, Device::Cpu),
    );
    let err = model.set_ip_adapter(w, 4).unwrap_err().to_string();
    assert!(
        err.contains(&bad.name) && err.contains(&format!("{}.to_v_ip.weight", bad.n)),
        "{err}"
    );
    assert!(
        err.contains(&format!("[{}, {}]", bad.query_dim, bad.cross_dim + 1)),
        "{err}"
    );
    assert!(
        err.contains(&format!("[{}, {}]", bad.query_dim, bad.cross_dim)),
        "{err}"
    );
    assert_eq!(model.ip_num_tokens(), None, "a refused set changes nothing");

    // With IP weights the context must hold text tokens before the image tokens.
    let r = refs();
    let model = ip_unet();
    let err = tch::no_grad(|| {
        model.forward(&UNetInput {
            sample: &r["sample"],
            timestep: &r["timestep"],
            encoder_hidden_states: &r["face"],
            text_embeds: &r["text_embeds"],
            time_ids: &r["time_ids"],
            down_block_additional_residuals: None,
            mid_block_additional_residual: None,
        })
    })
    .unwrap_err();
    assert!(err.to_string().contains("image tokens"), "{err}");
}

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "sdxl-unet-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A copy of fixture folder `name` with tensors edited (None drops one) and the config
/// passed through `config`.
fn edited(
    name: &str,
    edit: impl Fn(&str, Tensor) -> Option<Tensor>,
    config: impl Fn(&mut serde_json::Value),
) -> TempDir {
    let src = fixtures().join(name);
    let out = TempDir::new();
    let file = "diffusion_pytorch_model.safetensors";
    let mut tensors: Vec<(String, Tensor)> = Tensor::read_safetensors(src.join(file))
        .unwrap()
        .into_iter()
        .filter_map(|(n, t)| edit(&n, t).map(|t| (n, t)))
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Tensor::write_safetensors(&tensors, out.0.join(file)).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    config(&mut cfg);
    std::fs::write(out.0.join("config.json"), cfg.to_string()).unwrap();
    out
}

fn keep(_: &str, t: Tensor) -> Option<Tensor> {
    Some(t)
}

fn unet_error(dir: &TempDir) -> String {
    match UNet2DConditionModel::from_dir(&dir.0, Kind::Float, Device::Cpu) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("loading must fail"),
    }
}

#[test]
fn removed_reshaped_or_extra_tensors_fail_naming_them() {
    let gone = "up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_k.weight";
    let err = unet_error(&edited("unet", |n, t| (n != gone).then_some(t), |_| {}));
    assert!(err.contains(gone) && err.contains("missing"), "{err}");

    let reshaped = "down_blocks.2.resnets.0.conv_shortcut.weight";
    let err = unet_error(&edited(
        "unet",
        |n, t| Some(if n == reshaped { t.narrow(0, 0, 8) } else { t }),
        |_| {},
    ));
    assert!(err.contains(reshaped) && err.contains("shape"), "{err}");

    let err = unet_error(&edited(
        "unet",
        |n, t| {
            Some(if n == "conv_in.bias" {
                Tensor::cat(&[&t, &t], 0)
            } else {
                t
            })
        },
        |_| {},
    ));
    assert!(err.contains("conv_in.bias"), "{err}");

    let extra = edited("controlnet", keep, |_| {});
    let mut tensors: Vec<(String, Tensor)> =
        Tensor::read_safetensors(extra.0.join("diffusion_pytorch_model.safetensors")).unwrap();
    tensors.push((
        "controlnet_down_blocks.9.weight".into(),
        Tensor::zeros([1], (Kind::Float, Device::Cpu)),
    ));
    Tensor::write_safetensors(
        &tensors,
        extra.0.join("diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    let err = ControlNetModel::from_dir(&extra.0, Kind::Float, Device::Cpu)
        .err()
        .expect("an unused tensor must fail")
        .to_string();
    assert!(
        err.contains("controlnet_down_blocks.9.weight") && err.contains("unexpected"),
        "{err}"
    );

    let gone = "controlnet_cond_embedding.blocks.5.bias";
    let dir = edited("controlnet", |n, t| (n != gone).then_some(t), |_| {});
    let err = ControlNetModel::from_dir(&dir.0, Kind::Float, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains(gone), "{err}");
}

#[test]
fn configs_with_unknown_keys_load_and_unsupported_ones_are_named() {
    let r = refs();
    let add_unknown = |c: &mut serde_json::Value| {
        c["a_key_from_a_future_diffusers"] = serde_json::json!({"nested": [1, 2]});
        c["reverse_transformer_layers_per_block"] = serde_json::Value::Null;
    };
    let dir = edited("unet", keep, add_unknown);
    let model = UNet2DConditionModel::from_dir(&dir.0, Kind::Float, Device::Cpu).unwrap();
    assert_close(
        "unet, unknown keys",
        &run_unet(&model, &r, &r["timestep"], &r["text"], None),
        &r["unet_plain"],
    );
    let dir = edited("controlnet", keep, add_unknown);
    ControlNetModel::from_dir(&dir.0, Kind::Float, Device::Cpu).unwrap();

    let dir = edited("unet", keep, |c| c["class_embed_type"] = "timestep".into());
    assert!(unet_error(&dir).contains("class_embed_type"));
    let dir = edited("unet", keep, |c| {
        c["attention_head_dim"] = serde_json::json!([1, 2])
    });
    assert!(unet_error(&dir).contains("attention_head_dim"));
    let dir = edited("unet", keep, |c| {
        c["attention_head_dim"] = serde_json::json!([1, 5, 4])
    });
    assert!(unet_error(&dir).contains("12 channels do not split into 5"));
}

#[derive(Default)]
struct Recorder(Mutex<Vec<(bool, usize)>>);

impl BlockHooks for Recorder {
    fn before(&self, block: usize) -> ltx_models::Result<()> {
        self.0.lock().unwrap().push((true, block));
        Ok(())
    }
    fn after(&self, block: usize) -> ltx_models::Result<()> {
        self.0.lock().unwrap().push((false, block));
        Ok(())
    }
}

#[test]
fn block_hooks_run_around_every_unit_in_order() {
    let r = refs();
    let mut model = unet();
    let hooks = Arc::new(Recorder::default());
    model.set_block_hooks(Some(hooks.clone()));
    let names = model.block_names();
    assert_eq!(
        names.first().map(String::as_str),
        Some("down_blocks.0.resnets.0")
    );
    assert!(names.contains(&"mid_block.attentions.0".to_string()));
    assert_eq!(
        names.last().map(String::as_str),
        Some("up_blocks.2.resnets.2")
    );
    let _ = run_unet(&model, &r, &r["timestep"], &r["text"], None);
    let want: Vec<(bool, usize)> = (0..names.len())
        .flat_map(|i| [(true, i), (false, i)])
        .collect();
    assert_eq!(*hooks.0.lock().unwrap(), want);

    let mut cn = controlnet();
    let hooks = Arc::new(Recorder::default());
    cn.set_block_hooks(Some(hooks.clone()));
    let _ = run_controlnet(&cn, &r, false);
    assert_eq!(hooks.0.lock().unwrap().len(), 2 * cn.num_blocks());
    assert_eq!(cn.block_names(), names[..cn.num_blocks()].to_vec());
}

#[test]
fn bad_inputs_are_errors() {
    let r = refs();
    let model = unet();
    let wrong_width = Tensor::zeros([2, 7, 5], (Kind::Float, Device::Cpu));
    let run = |sample: &Tensor, ctx: &Tensor, ids: &Tensor, res: Option<(&[Tensor], &Tensor)>| {
        tch::no_grad(|| {
            model.forward(&UNetInput {
                sample,
                timestep: &r["timestep"],
                encoder_hidden_states: ctx,
                text_embeds: &r["text_embeds"],
                time_ids: ids,
                down_block_additional_residuals: res.map(|x| x.0),
                mid_block_additional_residual: res.map(|x| x.1),
            })
        })
        .unwrap_err()
        .to_string()
    };
    let e = run(
        &r["sample"].narrow(1, 0, 3),
        &r["text"],
        &r["time_ids"],
        None,
    );
    assert!(e.contains("sample"), "{e}");
    let e = run(&r["sample"], &wrong_width, &r["time_ids"], None);
    assert!(e.contains("encoder_hidden_states"), "{e}");
    let e = run(
        &r["sample"],
        &r["text"],
        &r["time_ids"].narrow(1, 0, 5),
        None,
    );
    assert!(e.contains("time_ids"), "{e}");
    let (down, mid) = reference_residuals(&r);
    let e = run(
        &r["sample"],
        &r["text"],
        &r["time_ids"],
        Some((&down[..8], &mid)),
    );
    assert!(e.contains("8 down-block residuals"), "{e}");
    let e = run(
        &r["sample"],
        &r["text"],
        &r["time_ids"],
        Some((&down, &down[0])),
    );
    assert!(e.contains("mid-block residual"), "{e}");

    let cn = controlnet();
    let small = r["controlnet_cond"].narrow(2, 0, 32);
    let e = tch::no_grad(|| {
        cn.forward(&ControlNetInput {
            sample: &r["sample"],
            timestep: &r["timestep"],
            encoder_hidden_states: &r["face"],
            text_embeds: &r["text_embeds"],
            time_ids: &r["time_ids"],
            controlnet_cond: &small,
            conditioning_scale: 1.0,
            guess_mode: false,
        })
    })
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("controlnet_cond"), "{e}");
}

/// bf16 / fp16 (the store's kind) run the whole InstantID step — ControlNet residuals, IP
/// tokens, UNet — and stay near the float32 reference: ≤ 5% of the output's magnitude (the
/// inputs are float32 and cast by the models).
#[test]
fn half_precision_runs_an_instantid_step() {
    let r = refs();
    let m = meta();
    for kind in [Kind::BFloat16, Kind::Half] {
        let cn =
            ControlNetModel::from_dir(&fixtures().join("controlnet"), kind, Device::Cpu).unwrap();
        let mut model =
            UNet2DConditionModel::from_dir(&fixtures().join("unet"), kind, Device::Cpu).unwrap();
        let w = ip_weights(&model);
        model
            .set_ip_adapter(w, m["num_tokens"].as_i64().unwrap())
            .unwrap();
        model.set_ip_scale(m["ip_scale"].as_f64().unwrap());
        let res = run_controlnet(&cn, &r, false);
        assert_eq!(res.mid_block_res_sample.kind(), kind);
        let context = text_and_face(&r);
        let out = run_unet(
            &model,
            &r,
            &r["timestep"],
            &context,
            Some((&res.down_block_res_samples, &res.mid_block_res_sample)),
        );
        assert_eq!(out.kind(), kind);
        let want = &r["unet_ip_cn"];
        let err = max_abs_diff(&out, want);
        let magnitude = want.abs().max().double_value(&[]);
        eprintln!("{kind:?} InstantID step: max abs error {err:.2e} (magnitude {magnitude:.3})");
        assert!(err <= 0.05 * magnitude, "{kind:?}: {err}");
    }
}

/// Every attention call (text and image branches) goes through the process-wide backend:
/// `sliced` and `math` give diffusers' result too. (Other tests running meanwhile see the
/// switch; all backends agree within the tolerance.)
#[test]
fn attention_backends_agree_on_an_ip_step() {
    use ltx_models::attention::{set_backend, AttentionBackend};
    let r = refs();
    let mut model = ip_unet();
    model.set_ip_scale(meta()["ip_scale"].as_f64().unwrap());
    let context = text_and_face(&r);
    for b in [AttentionBackend::Sliced, AttentionBackend::Math] {
        set_backend(b);
        let out = run_unet(&model, &r, &r["timestep"], &context, None);
        set_backend(AttentionBackend::Sdpa);
        assert_close(&format!("unet + IP, {b} attention"), &out, &r["unet_ip"]);
    }
}

/// The worker thread owns the models: they must be `Send` (a compile-time check).
#[test]
fn models_can_move_to_the_worker_thread() {
    fn send<T: Send + 'static>(_: &T) {}
    send(&unet());
    send(&controlnet());
}
