//! The replaced service's multi-scale flow against diffusers 0.42.1, scaled down
//! (tests/fixtures/ltx/refs/multiscale.*, made by tools/ltx-fixtures/make_multiscale_fixture.py):
//! 96 frames requested at 100×70 (not multiples of 32), pass 1 at 64×32 for 4 steps, the 2×
//! latent upsample, the refine pass at 128×64 (2 of 5 steps), rounded to uint8 and
//! Lanczos-resized. The frames, the frame count (89) and the generator's state afterwards equal
//! diffusers'.

#[path = "../../models/tests/common/mod.rs"]
mod common;

use ltx_gpu::rng::Generators;
use ltx_models::config::read_config;
use ltx_models::ltx::upsampler::open_upsampler;
use ltx_models::ltx::{LtxTransformer, LtxTransformerConfig, LtxVae, LtxVaeConfig};
use ltx_models::scheduler::FlowMatchConfig;
use ltx_models::weights::WeightStore;
use ltx_pipelines::image::RgbImage;
use ltx_pipelines::ltx_condition::{ConditionModels, PromptEmbeds};
use ltx_pipelines::multiscale::{generate_multiscale, MultiscaleParams, MultiscaleStage};
use tch::{Device, Kind};

#[test]
fn the_multiscale_flow_equals_diffusers() {
    let r = common::refs("multiscale.safetensors");
    let meta = common::json("multiscale.json");
    let s = &meta["settings"];
    let dir = common::model_dir("0.9.5");
    let store =
        |c: &str| WeightStore::from_component_dir(&dir.join(c), Kind::Float, Device::Cpu).unwrap();
    let tcfg: LtxTransformerConfig = read_config(&dir.join("transformer/config.json")).unwrap();
    let vcfg: LtxVaeConfig = read_config(&dir.join("vae/config.json")).unwrap();
    let scheduler: FlowMatchConfig =
        read_config(&dir.join("scheduler/scheduler_config.json")).unwrap();
    let (ts, vs) = (store("transformer"), store("vae"));
    let transformer = LtxTransformer::new(&ts.root(), tcfg).unwrap();
    let vae = LtxVae::new(&vs.root(), vcfg).unwrap();
    let (upsampler, _) = open_upsampler(
        &common::fixtures().join("models/upsampler"),
        Kind::Float,
        Device::Cpu,
    )
    .unwrap();
    let m = ConditionModels::new(&transformer, &vae, &scheduler);
    let prompt = PromptEmbeds {
        embeds: r["prompt_embeds"].shallow_clone(),
        mask: r["prompt_mask"].shallow_clone(),
    };
    let negative = PromptEmbeds {
        embeds: r["negative_embeds"].shallow_clone(),
        mask: r["negative_mask"].shallow_clone(),
    };
    let cf = &r["condition_frame"];
    let image = RgbImage {
        width: cf.size()[1] as usize,
        height: cf.size()[0] as usize,
        data: Vec::<u8>::try_from(cf.flatten(0, -1)).unwrap(),
    };
    let p = MultiscaleParams {
        width: s["width"].as_i64().unwrap(),
        height: s["height"].as_i64().unwrap(),
        num_frames: s["num_frames"].as_i64().unwrap(),
        downscale_factor: s["downscale_factor"].as_f64().unwrap(),
        steps_lowres: s["steps_lowres"].as_u64().unwrap() as usize,
        steps_refine: s["steps_refine"].as_u64().unwrap() as usize,
        denoise_strength: s["denoise_strength"].as_f64().unwrap(),
        decode_timestep: s["decode_timestep"].as_f64().unwrap(),
        image_cond_noise_scale: s["image_cond_noise_scale"].as_f64().unwrap(),
        ..MultiscaleParams::default()
    };
    let ((w1, h1), (w2, h2)) = p.pass_sizes().unwrap();
    assert_eq!([w1, h1], [64, 32]);
    assert_eq!([w2, h2], [128, 64]);
    let mut rng = Generators::new(s["seed"].as_u64().unwrap()).unwrap();
    let mut stages = Vec::new();
    let frames = tch::no_grad(|| {
        generate_multiscale(
            &m,
            &upsampler,
            &prompt,
            Some(&negative),
            &image,
            &p,
            &mut rng,
            &mut |st| {
                stages.push(st);
                Ok(())
            },
        )
    })
    .unwrap();
    let after = rng.cpu().randn(&[4], Kind::Float).unwrap();
    assert_eq!(
        frames.size(),
        [89, 70, 100, 3],
        "96 requested frames give 89"
    );
    assert_eq!(p.output_frames(), 89);
    let want = &r["frames"];
    let differ = frames.ne_tensor(want).sum(Kind::Int64).int64_value(&[]);
    let max = common::max_abs_diff(&frames, want);
    eprintln!(
        "multiscale: {differ} of {} bytes differ, max {max}",
        want.numel()
    );
    assert!(
        max <= 1.0 && differ * 1000 <= want.numel() as i64,
        "{differ} bytes differ, max {max}"
    );
    assert!(after.equal(&r["after"]), "the generator's state differs");
    assert_eq!(stages.first(), Some(&MultiscaleStage::LowResPass));
    assert!(stages.contains(&MultiscaleStage::LowRes { step: 1, total: 4 }));
    assert!(stages.contains(&MultiscaleStage::RefinePass));
    assert!(stages.contains(&MultiscaleStage::Upsampling));
    assert_eq!(
        stages
            .iter()
            .filter(|s| matches!(s, MultiscaleStage::Refine { .. }))
            .count(),
        2,
        "int(5 × 0.4) refine steps"
    );
}
