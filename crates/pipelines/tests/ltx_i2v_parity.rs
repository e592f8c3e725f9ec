//! The whole image-to-video pipeline against diffusers' `LTXImageToVideoPipeline` on the tiny
//! models of every VAE layout: same seed, same draw order, frames within 1e-3 in [0, 1].

use std::collections::HashMap;
use std::path::PathBuf;

use ltx_pipelines::image::RgbImage;
use ltx_pipelines::ltx_i2v::LoadOptions;
use ltx_pipelines::{I2vParams, LtxI2vPipeline, Progress};
use tch::{Device, Kind, Tensor};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/ltx")
}

fn refs(name: &str) -> (HashMap<String, Tensor>, serde_json::Value) {
    let dir = fixtures().join("refs");
    let tensors = Tensor::read_safetensors(dir.join(format!("{name}.safetensors")))
        .unwrap()
        .into_iter()
        .collect();
    let meta =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap())
            .unwrap();
    (tensors, meta)
}

fn image_of(t: &Tensor) -> RgbImage {
    let s = t.size();
    RgbImage {
        height: s[0] as usize,
        width: s[1] as usize,
        data: Vec::<u8>::try_from(t.flatten(0, -1)).unwrap(),
    }
}

fn check(name: &str) {
    let (_, meta) = refs(name);
    let variant = meta["variant"].as_str().unwrap();
    check_with(
        name,
        &fixtures().join("models").join(format!("ltx-{variant}")),
    );
}

fn check_with(name: &str, dir: &std::path::Path) {
    let (r, meta) = refs(name);
    let call = &meta["call"];
    let pipe = LtxI2vPipeline::load(
        dir,
        LoadOptions {
            device: Device::Cpu,
            dtype: Kind::Float,
        },
        128,
    )
    .unwrap();
    let p = I2vParams {
        prompt: call["prompt"].as_str().unwrap().into(),
        negative_prompt: call["negative_prompt"].as_str().unwrap_or("").into(),
        height: call["height"].as_i64().unwrap(),
        width: call["width"].as_i64().unwrap(),
        num_frames: call["num_frames"].as_i64().unwrap(),
        steps: call["num_inference_steps"].as_u64().unwrap() as usize,
        guidance_scale: call["guidance_scale"].as_f64().unwrap(),
        guidance_rescale: call["guidance_rescale"].as_f64().unwrap_or(0.0),
        seed: meta["generator_seed"].as_u64().unwrap(),
        decoder_noise_seed: meta["global_seed"].as_u64().unwrap_or(0),
        frame_rate: call["frame_rate"].as_f64().unwrap(),
        decode_timestep: call["decode_timestep"].as_f64().unwrap_or(0.0),
        decode_noise_scale: call["decode_noise_scale"].as_f64(),
        max_sequence_length: 128,
    };
    let mut stages = Vec::new();
    let frames = pipe
        .generate(&image_of(&r["image"]), &p, &mut |s| stages.push(s))
        .unwrap();
    let want = &r["frames"];
    assert_eq!(frames.size(), want.size());
    let err = (&frames - want).abs().max().double_value(&[]);
    let spread = want.std(true).double_value(&[]);
    eprintln!("pipeline {name}: max abs error {err:.2e} on frames in [0, 1] (std {spread:.3})");
    assert!(err <= 1e-3, "pipeline {name}: max abs error {err}");
    assert_eq!(stages.first(), Some(&Progress::EncodingText));
    assert_eq!(stages.last(), Some(&Progress::Decoding));
    assert!(stages.contains(&Progress::Denoising {
        step: p.steps,
        total: p.steps
    }));
}

#[test]
fn pipeline_0_9_0_matches_diffusers() {
    check("pipeline_0.9.0");
}

#[test]
fn pipeline_0_9_0_three_steps_matches_diffusers() {
    check("pipeline_0.9.0_steps3");
}

#[test]
fn pipeline_0_9_1_with_rescale_and_decode_noise_matches_diffusers() {
    check("pipeline_0.9.1");
}

#[test]
fn pipeline_0_9_5_matches_diffusers() {
    check("pipeline_0.9.5");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let dest = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &dest);
        } else {
            std::fs::copy(&path, &dest).unwrap();
        }
    }
}

#[test]
fn pipeline_with_a_torchscript_text_encoder_matches_diffusers() {
    let dir = std::env::temp_dir().join(format!("ltx-ts-pipeline-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(&fixtures().join("models/ltx-0.9.0"), &dir);
    let te = dir.join("text_encoder");
    std::fs::remove_dir_all(&te).unwrap();
    std::fs::create_dir_all(&te).unwrap();
    std::fs::copy(
        fixtures().join("torchscript/text_encoder.pt"),
        te.join("text_encoder.pt"),
    )
    .unwrap();
    check_with("pipeline_0.9.0", &dir);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn lanczos_resize_matches_pillow_exactly() {
    let dir = fixtures().join("refs");
    let r: HashMap<String, Tensor> = Tensor::read_safetensors(dir.join("resize.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    let names: Vec<&String> = r.keys().collect();
    let (input, output) = (&r["image"], &r["resized"]);
    let got = image_of(input).resize_lanczos(output.size()[1] as usize, output.size()[0] as usize);
    assert_eq!(got, image_of(output), "tensors in the fixture: {names:?}");
}

#[test]
fn invalid_settings_are_refused_with_the_rule() {
    for (p, msg) in [
        (
            I2vParams {
                height: 500,
                ..I2vParams::default()
            },
            "height must be a positive multiple of 32, got 500",
        ),
        (
            I2vParams {
                width: 0,
                ..I2vParams::default()
            },
            "width must be a positive multiple of 32, got 0",
        ),
        (
            I2vParams {
                num_frames: 10,
                ..I2vParams::default()
            },
            "num_frames must be 8k+1",
        ),
        (
            I2vParams {
                steps: 0,
                ..I2vParams::default()
            },
            "steps must be at least 1",
        ),
        (
            I2vParams {
                guidance_rescale: 1.5,
                ..I2vParams::default()
            },
            "guidance_rescale must be in [0, 1]",
        ),
    ] {
        let err = p.validate().unwrap_err().to_string();
        assert!(err.contains(msg), "{err}");
    }
}
