//! The InstantID demo family: the tiny random SDXL/IdentityNet/Resampler built in memory is
//! shaped like SDXL and InstantID's checkpoints, is the same model on every build, and generates
//! deterministic images of the requested size through the real pipeline code; its face graphs,
//! loaded through ONNX Runtime like any antelopev2 folder, find exactly one face in any image.

use std::sync::Mutex;

use ltx_pipelines::image::RgbImage;
use ltx_pipelines::instantid::demo::{demo_face_models_dir, demo_instantid};
use ltx_pipelines::instantid::{InstantIdLoadOptions, InstantIdModels, InstantIdParams};
use ltx_pipelines::Progress;
use tch::{Device, Kind, Tensor};

/// Building the demo and generating draw from torch's one global CPU generator: one at a time.
static GENERATOR: Mutex<()> = Mutex::new(());

fn demo() -> InstantIdModels {
    demo_instantid(&InstantIdLoadOptions::new(Device::Cpu, Kind::Float)).unwrap()
}

/// A keypoint-like picture: five bright dots on black.
fn keypoints(w: usize, h: usize) -> RgbImage {
    let mut data = vec![0u8; w * h * 3];
    for (i, (fx, fy)) in [
        (0.35, 0.4),
        (0.65, 0.4),
        (0.5, 0.55),
        (0.38, 0.7),
        (0.62, 0.7),
    ]
    .into_iter()
    .enumerate()
    {
        let (cx, cy) = ((fx * w as f64) as usize, (fy * h as f64) as usize);
        for y in cy.saturating_sub(4)..(cy + 4).min(h) {
            for x in cx.saturating_sub(4)..(cx + 4).min(w) {
                data[(y * w + x) * 3 + i % 3] = 255;
            }
        }
    }
    RgbImage {
        width: w,
        height: h,
        data,
    }
}

fn params(seed: u64) -> InstantIdParams {
    InstantIdParams {
        prompt: "a portrait photo of a woman".into(),
        negative_prompt: Some("lowres".into()),
        height: Some(256),
        width: Some(192),
        steps: 4,
        guidance_scale: 5.0,
        controlnet_conditioning_scale: 0.8,
        ip_adapter_scale: 0.8,
        seed,
        ..InstantIdParams::default()
    }
}

fn face_embedding(seed: i64) -> Tensor {
    tch::manual_seed(seed);
    Tensor::randn([1, 512], (Kind::Float, Device::Cpu)) * 4.0
}

#[test]
fn demo_is_shaped_like_sdxl_and_instantid() {
    let _g = GENERATOR.lock().unwrap_or_else(|p| p.into_inner());
    let mut m = demo();
    let (c1, c2) = (m.text_encoder.config(), m.text_encoder_2.config());
    let unet = m.unet.config();
    assert_eq!(unet.addition_embed_type.as_deref(), Some("text_time"));
    assert_eq!(
        unet.projection_class_embeddings_input_dim,
        Some(c2.projection_dim + 6 * unet.addition_time_embed_dim.unwrap())
    );
    assert_eq!(c1.vocab_size, 49408);
    assert_eq!(
        m.tokenizer.encode_one("a photo of a cat").unwrap()[..7],
        [49406, 320, 1125, 539, 320, 2368, 49407]
    );
    // tokenizer_2 pads with "!" (id 0), tokenizer with the end token.
    assert_eq!(m.tokenizer_2.pad_token_id(), 0);
    assert_eq!(m.tokenizer.pad_token_id(), 49407);
    // SDXL's 9 skip tensors, IP weights on every attn2, 16 face tokens from ArcFace's 512.
    assert_eq!(m.unet.num_down_residuals(), 9);
    let slots = m.unet.ip_attention_layers();
    assert!(slots.len() >= 4, "{} attn2 layers", slots.len());
    assert_eq!(m.unet.ip_params().len(), 2 * slots.len());
    assert!(slots
        .iter()
        .all(|s| s.cross_dim == c1.hidden_size + c2.hidden_size));
    assert_eq!(m.unet.ip_num_tokens(), Some(16));
    let face = m.resampler.shape();
    assert_eq!((face.queries, face.embedding_dim), (16, 512));
    let cn = m.controlnet.config();
    assert_eq!(cn.block_out_channels, unet.block_out_channels);
    assert_eq!(cn.down_block_types, unet.down_block_types);
    assert_eq!(
        m.scheduler_config()["_class_name"].as_str(),
        Some("EulerDiscreteScheduler")
    );
    assert!(m.force_zeros_for_empty_prompt());
    assert!(m.weight_bytes() > 10_000_000, "{}", m.weight_bytes());
    let w = m.take_weights().expect("the parameter handles");
    assert!(!w.sdxl.unet.is_empty() && !w.controlnet.is_empty() && !w.sdxl.vae.is_empty());
}

#[test]
fn demo_generates_deterministic_images_of_the_requested_size() {
    let _g = GENERATOR.lock().unwrap_or_else(|p| p.into_inner());
    let face = face_embedding(3);
    let kps = keypoints(300, 400);
    let run = |m: &mut InstantIdModels, seed: u64| {
        let mut stages = Vec::new();
        let img = m
            .generate(&face, &kps, &params(seed), &mut |p| stages.push(p), &|| {
                false
            })
            .unwrap();
        (img, stages)
    };
    let mut a = demo();
    let (img, stages) = run(&mut a, 7);
    assert_eq!(img.size(), [256, 192, 3]);
    assert_eq!(img.kind(), Kind::Uint8);
    assert_eq!(stages.first(), Some(&Progress::EncodingText));
    assert_eq!(stages.last(), Some(&Progress::Decoding));
    let steps = stages
        .iter()
        .filter(|p| matches!(p, Progress::Denoising { total: 4, .. }))
        .count();
    assert_eq!(steps, 4);
    // Not a constant picture: the random VAE still makes varied pixels.
    let f = img.to_kind(Kind::Float);
    assert!(f.std(true).double_value(&[]) > 1.0);

    // A second build is the same model: same seed, same bytes.
    let mut b = demo();
    let (again, _) = run(&mut b, 7);
    assert!(img.equal(&again), "two demo builds differ");
    let (other, _) = run(&mut b, 8);
    assert!(!img.equal(&other), "another seed gave the same image");
}

fn noise(w: u32, h: u32, seed: u64) -> image::RgbImage {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    image::RgbImage::from_fn(w, h, |_, _| {
        let mut px = [0u8; 3];
        for c in &mut px {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *c = (state >> 24) as u8;
        }
        image::Rgb(px)
    })
}

#[test]
fn demo_face_graphs_find_exactly_one_face_in_any_image() {
    let dir = demo_face_models_dir().unwrap();
    assert_eq!(
        demo_face_models_dir().unwrap(),
        dir,
        "one folder per process"
    );
    let mut fa = ltx_face::FaceAnalysis::new(&dir, ltx_face::AnalysisOptions::default()).unwrap();
    let photo = |name: &str| {
        let path = format!(
            "{}/../../tests/fixtures/face/images/{name}.png",
            env!("CARGO_MANIFEST_DIR")
        );
        image::open(path).unwrap().to_rgb8()
    };
    let images = [
        ("noise 512x512", noise(512, 512, 1)),
        ("other noise 512x512", noise(512, 512, 2)),
        ("black 640x480", image::RgbImage::new(640, 480)),
        (
            "white 480x640",
            image::RgbImage::from_pixel(480, 640, image::Rgb([255; 3])),
        ),
        ("landscape 1024x256", noise(1024, 256, 3)),
        ("portrait 256x1024", noise(256, 1024, 4)),
        ("small 40x24", noise(40, 24, 5)),
        ("photo portrait.png", photo("portrait")),
        ("photo without faces noface.png", photo("noface")),
        ("photo of three faces group.png", photo("group")),
    ];
    let mut embeddings: Vec<(&str, Vec<f32>)> = Vec::new();
    for (name, img) in &images {
        let faces = fa.analyze(img).unwrap();
        assert_eq!(faces.len(), 1, "{name}: {} faces", faces.len());
        let f = &faces[0];
        let (w, h) = (img.width() as f32, img.height() as f32);
        for [x, y] in f.kps {
            assert!(
                (0.0..w).contains(&x) && (0.0..h).contains(&y),
                "{name}: keypoint ({x}, {y}) outside {w}x{h}"
            );
        }
        assert!(
            f.score > 0.5 && f.bbox[0] < f.bbox[2] && f.bbox[1] < f.bbox[3],
            "{name}: {f:?}"
        );
        assert_eq!(f.embedding.len(), 512);
        assert!(
            f.embedding_norm() > 0.1,
            "{name}: embedding norm {}",
            f.embedding_norm()
        );
        assert_eq!(fa.select(&faces).unwrap().index, 0);
        for (other, e) in &embeddings {
            assert_ne!(e, &f.embedding, "{name} and {other}: the same embedding");
        }
        embeddings.push((name, f.embedding.clone()));
    }
}
