//! The whole InstantID pipeline from a face photo against InstantX's: insightface's
//! FaceAnalysis (antelopev2-layout graphs of tests/fixtures/face/antelopev2), InstantX's
//! draw_kps and InstantX's pipeline (diffusers 0.42.1's StableDiffusionXLControlNetPipeline with
//! the face path) on the tiny random SDXL set of tests/fixtures/sdxl/instantid, CPU generator,
//! fixed seed, CFG on; made by tools/sdxl-fixtures/make_instantid_pipeline.py. Ours:
//! [`analyze_faces`] on the same photos, then [`InstantIdPipeline::generate`]. Two cases: a
//! photo alone (its keypoint image resized from 300×400 to 64×80), and the largest of five
//! faces with another photo's keypoints (pose) and a third photo's face averaged in.
//!
//! Tolerances:
//! - the keypoint image: identical (same boxes and keypoints as insightface, draw_kps
//!   reproduced pixel for pixel — crates/face's parity tests);
//! - the embedding: ≤ 1e-4 relative to its norm. ONNX Runtime is the same library, but our
//!   alignment matrix is fitted in double where skimage fits in float32, so a few crop pixels
//!   differ by one level (crates/face measured ≤ 1.9e-5 relative; here measured 0: these
//!   photos' crops come out identical);
//! - the image in [0, 1]: ≤ 1e-3, the bound. Given the same embedding and keypoint
//!   image our loop matches InstantX's to ~1e-6 (tests/instantid_loop.rs); here the embedding's
//!   ~1e-5 difference also goes through the Resampler, 3 Euler steps and a random VAE
//!   decode that amplifies latent differences (latents ÷ 0.13025); 1e-3 is a quarter of a
//!   byte level, so a wrong face, keypoint, average or resize shows up far above it (measured
//!   1.0e-6 and 9.5e-7);
//! - the bytes from `generate`: within 1 level of InstantX's (a value near a rounding
//!   boundary may round the other way; measured 0 and 1) and equal to our float image rounded.

use std::path::PathBuf;
use std::sync::Mutex;

use ltx_face::{AnalysisOptions, FaceAnalysis};
use ltx_pipelines::image::RgbImage;
use ltx_pipelines::instantid::{
    analyze_faces, to_u8, InstantIdModels, InstantIdParams, InstantIdPaths, InstantIdPipeline,
};
use ltx_pipelines::MemoryOptions;
use serde_json::Value;
use tch::{Device, Kind, Tensor};

const EMBEDDING_RELATIVE: f64 = 1e-4;
const IMAGE: f64 = 1e-3;

/// Generations draw from torch's one global CPU generator: one at a time.
static GENERATOR: Mutex<()> = Mutex::new(());

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture() -> PathBuf {
    repo().join("tests/fixtures/sdxl/instantid_pipeline")
}

fn photo(name: &str) -> RgbImage {
    let bytes = std::fs::read(repo().join("tests/fixtures/face/images").join(name)).unwrap();
    ltx_face::decode_image(&bytes, u64::MAX).unwrap().into()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

fn params(c: &Value) -> InstantIdParams {
    let f = |k: &str| c[k].as_f64().unwrap();
    InstantIdParams {
        prompt: c["prompt"].as_str().unwrap().into(),
        negative_prompt: c["negative_prompt"].as_str().map(str::to_string),
        height: c["height"].as_i64(),
        width: c["width"].as_i64(),
        steps: c["steps"].as_u64().unwrap() as usize,
        guidance_scale: f("guidance_scale"),
        controlnet_conditioning_scale: f("controlnet_conditioning_scale"),
        ip_adapter_scale: f("ip_adapter_scale"),
        seed: c["seed"].as_u64().unwrap(),
        ..InstantIdParams::default()
    }
}

#[test]
fn whole_pipeline_from_the_photo_matches_instantx() {
    let _g = GENERATOR.lock().unwrap_or_else(|p| p.into_inner());
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("refs.json")).unwrap())
            .unwrap();
    let refs: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(fixture().join("refs.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let models = repo().join("tests/fixtures/sdxl/instantid");
    let paths = InstantIdPaths::from_checkpoints(&models.join("sdxl"), &models);
    let mut pipe =
        InstantIdPipeline::load_placed(Device::Cpu, Kind::Float, MemoryOptions::default(), |o| {
            InstantIdModels::load(&paths, o)
        })
        .unwrap();
    let face_models = repo().join("tests/fixtures/face/antelopev2");
    let mut fa = FaceAnalysis::new(&face_models, AnalysisOptions::default()).unwrap();
    let cases = meta["cases"].as_object().unwrap();
    assert_eq!(cases.len(), 2);
    for (name, c) in cases {
        let r = |k: &str| refs[&format!("{name}.{k}")].shallow_clone();
        let face = photo(c["face"].as_str().unwrap());
        let pose = c["pose"].as_str().map(photo);
        let references: Vec<RgbImage> = c["references"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| photo(v.as_str().unwrap()))
            .collect();
        let cond = analyze_faces(&mut fa, &face, pose.as_ref(), &references).unwrap();
        assert_eq!(cond.references_used, references.len(), "{name}");

        let kps = image::open(fixture().join(format!("{name}.kps.png")))
            .unwrap()
            .to_rgb8();
        assert_eq!(
            (cond.keypoints.width, cond.keypoints.height),
            (kps.width() as usize, kps.height() as usize),
            "{name}: keypoint image size"
        );
        assert!(
            cond.keypoints.data == kps.as_raw().as_slice(),
            "{name}: keypoint images differ"
        );

        let embedding = Tensor::from_slice(&cond.embedding);
        let want = r("embedding");
        let rel = max_abs_diff(&embedding, &want) / want.norm().double_value(&[]);
        assert!(
            rel <= EMBEDDING_RELATIVE,
            "{name}: embedding off by {rel:e} relative"
        );

        let p = params(c);
        let float = pipe
            .models_mut()
            .generate_float(&embedding, &cond.keypoints, &p, &mut |_| {}, &|| false)
            .unwrap();
        let d = max_abs_diff(&float, &r("image"));
        assert!(d <= IMAGE, "{name}: image off by {d:e}");

        let bytes = pipe.generate(&cond, &p, &mut |_| {}, &|| false).unwrap();
        assert!(
            bytes.equal(&to_u8(&float).unwrap()),
            "{name}: generate differs from its float image"
        );
        let levels = max_abs_diff(&bytes, &r("image_u8"));
        assert!(levels <= 1.0, "{name}: bytes off by {levels} levels");
        println!("{name}: embedding {rel:.1e} relative, image {d:.1e}, bytes ≤ {levels} level");
    }
}
