//! `LTXConditionPipeline` against diffusers 0.42.1 (tests/fixtures/ltx/refs/condition_pipeline.*,
//! made by tools/ltx-fixtures/make_condition_pipeline.py) on the tiny 0.9.5-layout model: a
//! frame-0 image with CFG (latents and decoded frames), an extra image at frame 16 plus video
//! conditions with fractional strengths and CFG rescale, a distilled timestep list at guidance
//! 1, no condition, and the refine pass from given latents with denoise_strength 0.4. The same
//! seed gives diffusers' output and leaves the generator where diffusers leaves it. fp32 CPU:
//! latents ≤ 1e-4, frames ≤ 1e-3.

#[path = "../../models/tests/common/mod.rs"]
mod common;

use ltx_gpu::rng::Generators;
use ltx_models::config::read_config;
use ltx_models::ltx::{LtxTransformer, LtxTransformerConfig, LtxVae, LtxVaeConfig};
use ltx_models::scheduler::FlowMatchConfig;
use ltx_models::weights::WeightStore;
use ltx_pipelines::ltx_condition::{
    generate, Condition, ConditionModels, ConditionOutput, ConditionParams, ConditionStage,
    PromptEmbeds,
};
use tch::{Device, Kind, Tensor};

struct Models {
    transformer: LtxTransformer,
    vae: LtxVae,
    scheduler: FlowMatchConfig,
}

fn models() -> Models {
    let dir = common::model_dir("0.9.5");
    let store =
        |c: &str| WeightStore::from_component_dir(&dir.join(c), Kind::Float, Device::Cpu).unwrap();
    let tcfg: LtxTransformerConfig = read_config(&dir.join("transformer/config.json")).unwrap();
    let vcfg: LtxVaeConfig = read_config(&dir.join("vae/config.json")).unwrap();
    let (ts, vs) = (store("transformer"), store("vae"));
    Models {
        transformer: LtxTransformer::new(&ts.root(), tcfg).unwrap(),
        vae: LtxVae::new(&vs.root(), vcfg).unwrap(),
        scheduler: read_config(&dir.join("scheduler/scheduler_config.json")).unwrap(),
    }
}

fn params(meta: &serde_json::Value, args: &serde_json::Value) -> ConditionParams {
    let f = |k: &str, d: f64| args.get(k).and_then(|v| v.as_f64()).unwrap_or(d);
    let d = ConditionParams::default();
    ConditionParams {
        height: meta["height"].as_i64().unwrap(),
        width: meta["width"].as_i64().unwrap(),
        num_frames: args["num_frames"].as_i64().unwrap(),
        steps: args
            .get("num_inference_steps")
            .and_then(|v| v.as_u64())
            .unwrap_or(50) as usize,
        timesteps: args["timesteps"]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_f64().unwrap()).collect()),
        guidance_scale: f("guidance_scale", d.guidance_scale),
        guidance_rescale: f("guidance_rescale", d.guidance_rescale),
        image_cond_noise_scale: f("image_cond_noise_scale", d.image_cond_noise_scale),
        decode_timestep: f("decode_timestep", d.decode_timestep),
        ..d
    }
}

#[test]
fn every_case_equals_diffusers_and_leaves_the_generator_where_diffusers_does() {
    let r = common::refs("condition_pipeline.safetensors");
    let meta = common::json("condition_pipeline.json");
    let m = models();
    let cm = ConditionModels::new(&m.transformer, &m.vae, &m.scheduler);
    let prompt = PromptEmbeds {
        embeds: r["prompt_embeds"].shallow_clone(),
        mask: r["prompt_mask"].shallow_clone(),
    };
    let negative = PromptEmbeds {
        embeds: r["negative_embeds"].shallow_clone(),
        mask: r["negative_mask"].shallow_clone(),
    };
    let conditions_of = |list: &serde_json::Value| -> Vec<Condition> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|c| Condition {
                video: r[&format!("pixels_{}", c["pixels"].as_str().unwrap())].shallow_clone(),
                frame_index: c["frame_index"].as_i64().unwrap(),
                strength: c["strength"].as_f64().unwrap(),
            })
            .collect()
    };
    // The run's generator continues where diffusers' does.
    let check_after = |name: &str, rng: &mut Generators| {
        let after = rng.cpu().randn(&[4], Kind::Float).unwrap();
        assert!(
            after.equal(&r[&format!("{name}_after")]),
            "{name}: the generator's state differs"
        );
    };
    let cases = meta["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 5);
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let p = params(&meta, &c["args"]);
        let frames = c["output"] == "np";
        let output = if frames {
            ConditionOutput::Frames
        } else {
            ConditionOutput::Latents
        };
        let mut rng = Generators::new(c["seed"].as_u64().unwrap()).unwrap();
        let mut steps = 0;
        let got = tch::no_grad(|| {
            generate(
                &cm,
                &prompt,
                Some(&negative),
                &conditions_of(&c["conditions"]),
                None,
                &p,
                &mut rng,
                output,
                &mut |st| {
                    if matches!(st, ConditionStage::Denoising { .. }) {
                        steps += 1;
                    }
                    Ok(())
                },
            )
        })
        .unwrap();
        let want = &r[&format!("{name}_out")];
        let err = common::max_abs_diff(&got, want);
        let tol = if frames { 1e-3 } else { 1e-4 };
        eprintln!("{name}: {steps} steps, max abs error {err:.2e}");
        assert!(err <= tol, "{name}: max abs error {err}");
        check_after(name, &mut rng);
    }

    // The refine pass from the first case's latents.
    let rf = &meta["refine"];
    let p = ConditionParams {
        height: meta["height"].as_i64().unwrap(),
        width: meta["width"].as_i64().unwrap(),
        num_frames: rf["num_frames"].as_i64().unwrap(),
        steps: rf["steps"].as_u64().unwrap() as usize,
        denoise_strength: rf["denoise_strength"].as_f64().unwrap(),
        image_cond_noise_scale: rf["image_cond_noise_scale"].as_f64().unwrap(),
        ..ConditionParams::default()
    };
    let conds = vec![Condition {
        video: r["pixels_img0"].shallow_clone(),
        frame_index: 0,
        strength: 1.0,
    }];
    let mut rng = Generators::new(rf["seed"].as_u64().unwrap()).unwrap();
    let mut steps = 0;
    let got = tch::no_grad(|| {
        generate(
            &cm,
            &prompt,
            Some(&negative),
            &conds,
            Some(&r["image0_cfg_latent_out"]),
            &p,
            &mut rng,
            ConditionOutput::Latents,
            &mut |st| {
                if matches!(st, ConditionStage::Denoising { .. }) {
                    steps += 1;
                }
                Ok(())
            },
        )
    })
    .unwrap();
    assert_eq!(steps, 4, "int(10 × 0.4) steps");
    let err = common::max_abs_diff(&got, &r["refine_out"]);
    eprintln!("refine: max abs error {err:.2e}");
    assert!(err <= 1e-4, "refine: {err}");
    check_after("refine", &mut rng);
}

#[test]
fn bad_inputs_are_clear_errors() {
    let m = models();
    let cm = ConditionModels::new(&m.transformer, &m.vae, &m.scheduler);
    let prompt = PromptEmbeds {
        embeds: Tensor::zeros([1, 4, 32], (Kind::Float, Device::Cpu)),
        mask: Tensor::ones([1, 4], (Kind::Float, Device::Cpu)),
    };
    let p = ConditionParams {
        height: 64,
        width: 96,
        num_frames: 9,
        steps: 1,
        ..ConditionParams::default()
    };
    let run = |conds: &[Condition], p: &ConditionParams, neg: bool| {
        generate(
            &cm,
            &prompt,
            neg.then_some(&prompt),
            conds,
            None,
            p,
            &mut Generators::new(0).unwrap(),
            ConditionOutput::Latents,
            &mut |_| Ok(()),
        )
        .err()
        .unwrap()
        .to_string()
    };
    assert!(run(&[], &p, false).contains("needs the negative prompt"));
    let wrong = Condition {
        video: Tensor::zeros([1, 3, 1, 32, 32], (Kind::Float, Device::Cpu)),
        frame_index: 0,
        strength: 1.0,
    };
    assert!(run(&[wrong], &p, true).contains("must be [1, 3, F, 64, 96]"));
    let late = Condition {
        video: Tensor::zeros([1, 3, 1, 64, 96], (Kind::Float, Device::Cpu)),
        frame_index: 9,
        strength: 1.0,
    };
    assert!(run(&[late], &p, true).contains("frame_index 9 must be in [0, 9)"));
    let odd = ConditionParams {
        width: 100,
        ..p.clone()
    };
    assert!(run(&[], &odd, true).contains("multiples of 32"));
}

/// The text path as the condition pipeline runs it (refs/condition_text.*, made by
/// tools/ltx-fixtures/make_condition_text.py): diffusers' `encode_prompt` with 256 tokens and
/// the mask passed to T5, through the user-facing loader. Masks exact, embeddings ≤ 1e-4.
#[test]
fn the_condition_text_path_equals_diffusers_encode_prompt() {
    let r = common::refs("condition_text.safetensors");
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixtures().join("refs/condition_text.json")).unwrap(),
    )
    .unwrap();
    let opts = ltx_pipelines::LoadOptions {
        device: Device::Cpu,
        dtype: Kind::Float,
    };
    // The pipeline's own tokenizer length (128) is re-padded to 256 for this path.
    let pipe = ltx_pipelines::LtxI2vPipeline::load(&common::model_dir("0.9.5"), opts, 128).unwrap();
    let cases = meta["cases"].as_object().unwrap();
    assert_eq!(cases.len(), 3);
    for (name, case) in cases {
        let (pos, neg) = pipe
            .encode_condition_prompts(
                case["prompt"].as_str().unwrap(),
                case["negative_prompt"].as_str().unwrap(),
                true,
            )
            .unwrap();
        let neg = neg.unwrap();
        for (what, got, want) in [("prompt", &pos, "prompt"), ("negative", &neg, "negative")] {
            let mask = &r[&format!("{name}.{want}_mask")];
            assert!(
                got.mask.to_kind(Kind::Float).equal(mask),
                "{name} {what}: masks differ"
            );
            let err = common::max_abs_diff(&got.embeds, &r[&format!("{name}.{want}_embeds")]);
            assert!(err <= 1e-4, "{name} {what}: embeddings off by {err:e}");
        }
        assert_eq!(pos.embeds.size()[1], 256);
    }
    // Without CFG there is no negative batch.
    let (_, neg) = pipe.encode_condition_prompts("x", "y", false).unwrap();
    assert!(neg.is_none());
}
