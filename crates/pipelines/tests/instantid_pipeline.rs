//! `InstantIdPipeline` and `analyze_faces`:
//!
//! - face conditioning from images (tests/fixtures/face: tiny random antelopev2-shaped graphs,
//!   synthetic photos, insightface's results in reference.json) equals the face crate's own
//!   analysis and insightface's numbers; a pose image changes only the keypoints; references
//!   average; an image without a face is refused naming it. Needs the ONNX Runtime library
//!   `scripts/setup.sh` provisions (or `LTX_ONNXRUNTIME`);
//! - a generation from a face conditioning holding the loop fixture's inputs reproduces
//!   InstantX's image (tests/instantid_loop.rs's reference and tolerance: bytes within one
//!   level) and equals `InstantIdModels::generate` bit for bit;
//! - cancellation, the workload estimate from the configs, VAE tiling settings.
//!
//! The memory modes are tests/instantid_memory.rs.

mod instantid_common;

use std::path::PathBuf;

use instantid_common::{generator, max_abs_diff, paths, Case};
use ltx_face::{decode_image, draw_kps, largest_face, AnalysisOptions, FaceAnalysis, FaceError};
use ltx_models::sdxl::folder::SdxlDtypes;
use ltx_models::ModelError;
use ltx_pipelines::image::RgbImage;
use ltx_pipelines::instantid::{
    analyze_faces, instantid_workload, InstantIdModels, InstantIdPipeline, InstantIdShapes,
};
use ltx_pipelines::sdxl_tiled_decode::{SdxlTileConfig, TilingMode};
use ltx_pipelines::{MemoryOptions, OffloadMode, Progress};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

fn face_fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/face")
}

fn photo(name: &str) -> RgbImage {
    let bytes = std::fs::read(face_fixtures().join(name)).unwrap();
    decode_image(&bytes, 1 << 24).unwrap().into()
}

fn analysis() -> FaceAnalysis {
    FaceAnalysis::new(
        &face_fixtures().join("antelopev2"),
        AnalysisOptions::default(),
    )
    .expect("the fixture graphs load (ONNX Runtime from scripts/setup.sh or LTX_ONNXRUNTIME)")
}

fn reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(face_fixtures().join("reference.json")).unwrap())
        .unwrap()
}

/// insightface's embedding of InstantID's face in `name`.
fn insightface_embedding(r: &Value, name: &str) -> Vec<f32> {
    let e = &r["images"][name];
    let pick = e["instantid_face"].as_u64().unwrap() as usize;
    e["faces"][pick]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

fn relative_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let d: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    let n: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    (d / n).sqrt()
}

#[test]
fn face_conditioning_is_the_face_crates_analysis_of_the_largest_face() {
    let r = reference();
    let mut fa = analysis();
    for name in ["portrait", "group", "large"] {
        let bytes = std::fs::read(face_fixtures().join(format!("images/{name}.png"))).unwrap();
        let raw = decode_image(&bytes, 1 << 24).unwrap();
        let img = RgbImage::from(raw.clone());
        let c = analyze_faces(&mut fa, &img, None, &[]).unwrap();
        // The face crate's own analysis of the same image.
        let own = fa.analyze(&raw).unwrap();
        let pick = largest_face(&own).unwrap();
        assert_eq!(c.embedding, own[pick].embedding, "{name}: embedding");
        assert_eq!(c.faces_found, own.len(), "{name}");
        assert_eq!(
            c.faces_found,
            r["images"][name]["faces"].as_array().unwrap().len()
        );
        assert_eq!(c.references_used, 0);
        // insightface's numbers (the face crate's parity tolerance).
        let err = relative_l2(&c.embedding, &insightface_embedding(&r, name));
        assert!(
            err <= 1e-4,
            "{name}: embedding differs by {err:e} (relative)"
        );
        // InstantID's keypoint image, at the image's own size.
        assert_eq!(
            (c.keypoints.width, c.keypoints.height),
            (img.width, img.height)
        );
        assert_eq!(
            c.keypoints,
            photo(&format!("kps/{name}.png")),
            "{name}: keypoint image"
        );
    }
}

#[test]
fn a_pose_image_changes_only_the_keypoints_and_references_average() {
    let mut fa = analysis();
    let face = photo("images/portrait.png");
    let alone = analyze_faces(&mut fa, &face, None, &[]).unwrap();

    let pose = photo("images/large.png");
    let posed = analyze_faces(&mut fa, &face, Some(&pose), &[]).unwrap();
    assert_eq!(
        posed.embedding, alone.embedding,
        "the identity is the face image's"
    );
    assert_eq!(posed.faces_found, alone.faces_found);
    assert_eq!((posed.keypoints.width, posed.keypoints.height), (800, 600));
    assert_eq!(
        posed.keypoints,
        photo("kps/large.png"),
        "the pose image's largest face"
    );
    let pose_faces = fa
        .analyze(&image::RgbImage::from_raw(800, 600, pose.data.clone()).unwrap())
        .unwrap();
    let k = pose_faces[largest_face(&pose_faces).unwrap()].kps;
    assert_eq!(posed.keypoints, RgbImage::from(draw_kps(800, 600, &k)));

    let group = photo("images/group.png");
    let other = analyze_faces(&mut fa, &group, None, &[]).unwrap();
    let both = analyze_faces(&mut fa, &face, None, std::slice::from_ref(&group)).unwrap();
    assert_eq!(both.references_used, 1);
    assert_eq!(
        both.keypoints, alone.keypoints,
        "references add no keypoints"
    );
    for ((m, a), b) in both
        .embedding
        .iter()
        .zip(&alone.embedding)
        .zip(&other.embedding)
    {
        let want = ((f64::from(*a) + f64::from(*b)) / 2.0) as f32;
        assert_eq!(*m, want);
    }
    assert!(
        relative_l2(&both.embedding, &alone.embedding) > 1e-3,
        "the reference counts"
    );
    let three = analyze_faces(&mut fa, &face, None, &[group.clone(), group]).unwrap();
    assert_eq!(three.references_used, 2);
    for ((m, a), b) in three
        .embedding
        .iter()
        .zip(&alone.embedding)
        .zip(&other.embedding)
    {
        let want = ((f64::from(*a) + 2.0 * f64::from(*b)) / 3.0) as f32;
        assert!(
            (m - want).abs() <= 1e-6 * want.abs().max(1.0),
            "{m} vs {want}"
        );
    }
}

#[test]
fn an_image_without_a_face_is_refused_naming_it() {
    let mut fa = analysis();
    let face = photo("images/portrait.png");
    let none = photo("images/noface.png");
    let cases: [(Option<&RgbImage>, Vec<RgbImage>, &RgbImage, &str); 3] = [
        (None, vec![], &none, "the face image"),
        (Some(&none), vec![], &face, "the pose image"),
        (
            None,
            vec![face.clone(), none.clone()],
            &face,
            "reference image 2",
        ),
    ];
    for (pose, refs, main, which) in cases {
        let e = analyze_faces(&mut fa, main, pose, &refs).unwrap_err();
        match &e {
            FaceError::NoFace { image, threshold } => {
                assert_eq!(image, which);
                assert_eq!(*threshold, 0.5);
            }
            other => panic!("not NoFace: {other}"),
        }
        assert_eq!(
            e.to_string(),
            format!("no face found in {which} (detector threshold 0.5)")
        );
    }
    let broken = RgbImage {
        width: 4,
        height: 4,
        data: vec![0; 5],
    };
    let e = analyze_faces(&mut fa, &broken, None, &[]).unwrap_err();
    assert!(
        matches!(e, FaceError::Image(ref m) if m.contains("the face image")),
        "{e}"
    );
}

fn resident(c: &Case) -> InstantIdPipeline {
    InstantIdPipeline::from_models(c.models(), Device::Cpu, MemoryOptions::default()).unwrap()
}

#[test]
fn generate_reproduces_instantx_and_the_models_call() {
    for name in ["euler_cfg", "ancestral_zero_negative", "euler_no_cfg"] {
        let _g = generator();
        let c = Case::load(name);
        let mut pipe = resident(&c);
        let mut stages = Vec::new();
        let got = pipe
            .generate(&c.face, &c.params, &mut |p| stages.push(p), &|| false)
            .unwrap();
        let (h, w) = (c.params.height.unwrap(), c.params.width.unwrap());
        assert_eq!(
            (got.size(), got.kind(), got.device()),
            (vec![h, w, 3], Kind::Uint8, Device::Cpu)
        );
        let off = max_abs_diff(&got, &c.image_u8);
        println!("{name}: bytes off by at most {off}");
        assert!(off <= 1.0, "{name}: {off} levels from InstantX's image");
        let n = c.params.steps;
        let mut expected = vec![Progress::EncodingText, Progress::EncodingImage];
        expected.extend((1..=n).map(|step| Progress::Denoising { step, total: n }));
        expected.push(Progress::Decoding);
        assert_eq!(stages, expected, "{name}");

        let mut models: InstantIdModels = c.models();
        let embedding = Tensor::from_slice(&c.face.embedding);
        let want = models
            .generate(
                &embedding,
                &c.face.keypoints,
                &c.params,
                &mut |_| {},
                &|| false,
            )
            .unwrap();
        assert!(
            got.equal(&want),
            "{name}: the pipeline is the models' generation"
        );
    }
}

#[test]
fn cancelling_stops_at_a_step_boundary() {
    let _g = generator();
    let c = Case::load("euler_cfg");
    let mut pipe = resident(&c);
    let seen = std::cell::RefCell::new(Vec::new());
    let r = pipe.generate(
        &c.face,
        &c.params,
        &mut |p| seen.borrow_mut().push(p),
        &|| seen.borrow().len() >= 3,
    );
    assert!(matches!(r, Err(ModelError::Cancelled)), "{:?}", r.err());
    assert_eq!(
        *seen.borrow(),
        vec![
            Progress::EncodingText,
            Progress::EncodingImage,
            Progress::Denoising { step: 1, total: 3 }
        ],
        "stopped before step 2"
    );
    // The pipeline is still usable, and the same seed gives the same image.
    let a = pipe
        .generate(&c.face, &c.params, &mut |_| {}, &|| false)
        .unwrap();
    assert!(max_abs_diff(&a, &c.image_u8) <= 1.0);
}

#[test]
fn bad_face_inputs_are_refused_naming_them() {
    let c = Case::load("euler_cfg");
    let mut pipe = resident(&c);
    let mut face = c.face.clone();
    face.embedding.truncate(5);
    let e = pipe
        .generate(&face, &c.params, &mut |_| {}, &|| false)
        .unwrap_err();
    assert!(e.to_string().contains("face embedding has 5 values"), "{e}");
    let mut face = c.face.clone();
    face.keypoints.data.pop();
    let e = pipe
        .generate(&face, &c.params, &mut |_| {}, &|| false)
        .unwrap_err();
    assert!(e.to_string().contains("keypoint image"), "{e}");
}

#[test]
fn the_workload_comes_from_the_configs_alone() {
    let c = Case::load("euler_cfg");
    let pipe = resident(&c);
    let read = InstantIdShapes::read(&paths().sdxl, &SdxlDtypes::uniform(Kind::Float)).unwrap();
    assert_eq!(read, InstantIdShapes::of_models(pipe.models()).unwrap());
    // The fixture: 3 levels of 8, 8, 16 channels, transformers at the last two.
    assert_eq!(read.channels, vec![8, 8, 16]);
    assert_eq!(read.heads, vec![0, 2, 2]);
    let kps = (c.face.keypoints.height, c.face.keypoints.width);
    let w = pipe.workload(&c.params, kps).unwrap();
    let from_configs = instantid_workload(&read, None, &c.params, kps).unwrap();
    assert_eq!(w, from_configs);
    assert!(w.text_activations > 0 && w.transformer_activations > 0 && w.decode_activations > 0);
    // CFG doubles the denoising step's batch.
    let no_cfg = instantid_workload(
        &read,
        None,
        &ltx_pipelines::InstantIdParams {
            guidance_scale: 1.0,
            ..c.params.clone()
        },
        kps,
    )
    .unwrap();
    assert_eq!(
        no_cfg.transformer_activations * 2,
        w.transformer_activations
    );
    // The size defaults to the keypoint image's, floored to 8; bad settings are refused.
    let default_size = ltx_pipelines::InstantIdParams {
        height: None,
        width: None,
        ..c.params.clone()
    };
    let a = instantid_workload(&read, None, &default_size, (43, 61)).unwrap();
    let b = instantid_workload(
        &read,
        None,
        &ltx_pipelines::InstantIdParams {
            height: Some(40),
            width: Some(56),
            ..c.params.clone()
        },
        (1, 1),
    )
    .unwrap();
    assert_eq!(a, b);
    assert!(instantid_workload(&read, None, &default_size, (5, 5)).is_err());
    // float16 weights: the VAE computes in float32 (force_upcast).
    let half = InstantIdShapes::read(&paths().sdxl, &SdxlDtypes::uniform(Kind::Half)).unwrap();
    assert_eq!((half.unet_kind, half.vae_kind), (Kind::Half, Kind::Float));
}

#[test]
fn vae_tiling_is_checked_and_decodes_the_same_size() {
    let _g = generator();
    let c = Case::load("euler_cfg");
    let mut pipe = resident(&c);
    let bad = SdxlTileConfig {
        mode: TilingMode::Weighted,
        tile_sample_size: 16,
        stride_sample_size: 24,
    };
    let e = pipe.set_vae_tiling(Some(bad)).unwrap_err();
    assert!(
        e.to_string()
            .contains("tile_sample_size (16) must not be smaller than stride_sample_size (24)"),
        "{e}"
    );
    assert!(pipe.vae_tiling().is_none());
    let tiles = SdxlTileConfig {
        mode: TilingMode::Weighted,
        tile_sample_size: 32,
        stride_sample_size: 24,
    };
    pipe.set_vae_tiling(Some(tiles)).unwrap();
    assert_eq!(pipe.vae_tiling(), Some(&tiles));
    let tiled = pipe
        .generate(&c.face, &c.params, &mut |_| {}, &|| false)
        .unwrap();
    assert_eq!(tiled.size(), c.image_u8.size());
    let kps = (c.face.keypoints.height, c.face.keypoints.width);
    let w_tiled = pipe.workload(&c.params, kps).unwrap();
    pipe.set_vae_tiling(None).unwrap();
    let untiled = pipe
        .generate(&c.face, &c.params, &mut |_| {}, &|| false)
        .unwrap();
    assert!(max_abs_diff(&untiled, &c.image_u8) <= 1.0);
    let w_untiled = pipe.workload(&c.params, kps).unwrap();
    assert_ne!(w_tiled.decode_activations, w_untiled.decode_activations);
    assert_eq!(
        pipe.default_vae_tiling(TilingMode::DiffusersCompatible)
            .tile_sample_size,
        32,
        "the fixture VAE's sample_size"
    );
}

#[test]
fn loading_for_the_cpu_needs_no_placement() {
    for mode in [
        OffloadMode::None,
        OffloadMode::Model,
        OffloadMode::Sequential,
    ] {
        let pipe = InstantIdPipeline::load_placed(
            Device::Cpu,
            Kind::Float,
            MemoryOptions { mode, prefetch: 1 },
            |opts| {
                assert_eq!(opts.sdxl.device, Device::Cpu);
                InstantIdModels::load(&paths(), opts)
            },
        )
        .unwrap();
        // Offload on the CPU is a no-op: the weights stay where they loaded.
        assert_eq!(pipe.mode(), OffloadMode::None);
        let r = pipe.memory_report();
        assert_eq!((r.mode, r.device_bytes), (None, 0));
        assert_eq!(r.host_bytes, pipe.weight_bytes());
        assert_eq!(pipe.device(), Device::Cpu);
    }
}
