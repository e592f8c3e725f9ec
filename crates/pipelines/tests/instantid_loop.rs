//! One whole InstantID generation against InstantX's pipeline (diffusers 0.42.1's
//! StableDiffusionXLControlNetPipeline + InstantID's face path) on the tiny random model set of
//! tests/fixtures/sdxl/instantid, made by tools/sdxl-fixtures/make_instantid_loop.py and loaded
//! through the loaders users' folders go through (SDXL folder, `ControlNetModel/`,
//! `ip-adapter.bin`). Three cases: Euler with CFG and a negative prompt (the keypoint image is
//! Lanczos-resized), Euler ancestral (noise drawn every step) with zero negatives, and no CFG.
//!
//! Tolerances (float32, CPU): every intermediate ≤ 1e-4. The operations are diffusers' own on
//! the same libtorch; the fixture was made with one thread, the tests run with several, so
//! sums are ordered differently: measured 0 for the text and the inputs, ≤ 9e-7 for the face
//! tokens, ≤ 7e-6 for the first noise prediction and ≤ 2e-5 for the latents (of magnitude
//! ~16: 1e-6 relative). The final image in [0, 1] ≤ 1e-3 (measured ≤ 1.1e-6): the latents are
//! divided by 0.13025 and decoded by a random VAE, which can amplify a latent difference
//! severalfold, and on another CPU or attention backend the latent differences grow like the
//! others; 1e-3 is still a quarter of a byte level. Bytes within 1 level (measured: one byte of
//! 9,216 off by one, a value next to a rounding boundary). The generator must be left where
//! diffusers leaves it: its next draws equal (exactly).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use ltx_models::ModelError;
use ltx_pipelines::image::RgbImage;
use ltx_pipelines::instantid::{
    to_u8, InstantIdLoadOptions, InstantIdModels, InstantIdParams, InstantIdPaths,
};
use ltx_pipelines::Progress;
use serde_json::Value;
use tch::{Device, Kind, Tensor};

const INTERMEDIATE: f64 = 1e-4;
const IMAGE: f64 = 1e-3;

/// The tests draw from torch's one global CPU generator: one at a time.
static GENERATOR: Mutex<()> = Mutex::new(());

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/sdxl/instantid")
}

fn refs() -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixtures().join("refs.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

fn meta() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("refs.json")).unwrap()).unwrap()
}

fn models() -> InstantIdModels {
    let paths = InstantIdPaths::from_checkpoints(&fixtures().join("sdxl"), &fixtures());
    InstantIdModels::load(&paths, &InstantIdLoadOptions::new(Device::Cpu, Kind::Float)).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

struct Case {
    name: String,
    params: InstantIdParams,
    face: Tensor,
    kps: RgbImage,
    refs: HashMap<String, Tensor>,
    scheduler: String,
}

impl Case {
    fn load(name: &str) -> Self {
        let m = &meta()["cases"][name];
        let all = refs();
        let prefix = format!("{name}.");
        let refs: HashMap<String, Tensor> = all
            .into_iter()
            .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|k| (k.to_string(), v)))
            .collect();
        let kps = &refs["kps"];
        let (h, w) = (kps.size()[0] as usize, kps.size()[1] as usize);
        let kps = RgbImage {
            width: w,
            height: h,
            data: Vec::<u8>::try_from(kps.flatten(0, -1)).unwrap(),
        };
        let f = |k: &str| m[k].as_f64().unwrap();
        let params = InstantIdParams {
            prompt: m["prompt"].as_str().unwrap().into(),
            negative_prompt: m["negative_prompt"].as_str().map(str::to_string),
            height: m["height"].as_i64(),
            width: m["width"].as_i64(),
            steps: m["steps"].as_u64().unwrap() as usize,
            guidance_scale: f("guidance_scale"),
            controlnet_conditioning_scale: f("controlnet_conditioning_scale"),
            ip_adapter_scale: f("ip_adapter_scale"),
            seed: m["seed"].as_u64().unwrap(),
            ..InstantIdParams::default()
        };
        Self {
            name: name.into(),
            face: refs["face_embedding"].shallow_clone(),
            kps,
            params,
            refs,
            scheduler: m["scheduler"].as_str().unwrap().into(),
        }
    }

    fn models(&self) -> InstantIdModels {
        let mut m = models();
        if self.scheduler != "sdxl/scheduler" {
            m.set_scheduler_config_file(
                &fixtures()
                    .join(&self.scheduler)
                    .join("scheduler_config.json"),
            )
            .unwrap();
        }
        m
    }

    fn check(&self, what: &str, got: &Tensor, tolerance: f64) -> f64 {
        let err = max_abs_diff(got, &self.refs[what]);
        println!("{}: {what} max |Δ| = {err:.3e}", self.name);
        assert!(
            err <= tolerance,
            "{}: {what} differs by {err:e} > {tolerance:e}",
            self.name
        );
        err
    }

    /// The stages one by one, each against diffusers' intermediate.
    fn run_stages(&self) {
        let _g = GENERATOR.lock().unwrap_or_else(|p| p.into_inner());
        let mut m = self.models();
        let c = m.conditioning(&self.face, &self.kps, &self.params).unwrap();
        self.check("prompt_embeds", &c.prompt.embeds, INTERMEDIATE);
        self.check("pooled", &c.prompt.pooled, INTERMEDIATE);
        self.check("face_tokens", &c.face_tokens, INTERMEDIATE);
        self.check("control_image", &c.control_image, 0.0);
        self.check("time_ids", &c.time_ids, 0.0);

        let mut seen = Vec::new();
        let mut steps = Vec::new();
        let mut rng = ltx_gpu::rng::Generator::new(Device::Cpu, self.params.seed).unwrap();
        let latents = m
            .denoise_from(
                &c,
                &self.params,
                &mut rng,
                &mut |p| steps.push(p),
                &|| false,
                &mut |s| {
                    if s.index == 0 {
                        seen.push(("init_latents", s.latents_in.copy()));
                        seen.push(("unet_out_0", s.unet_out.copy()));
                        seen.push(("noise_pred_0", s.noise_pred.copy()));
                        seen.push(("cn_mid_0", s.controlnet_mid.copy()));
                    }
                    let name: &'static str = ["latents_0", "latents_1", "latents_2"][s.index];
                    seen.push((name, s.latents.copy()));
                },
            )
            .unwrap();
        // The job's generator drew exactly what diffusers' did: its next numbers agree.
        let after = rng.randn(&[8], Kind::Float).unwrap();
        self.check("rng_after", &after, 0.0);
        assert_eq!(seen.len(), 4 + self.params.steps);
        for (name, t) in &seen {
            self.check(name, t, INTERMEDIATE);
        }
        let n = self.params.steps;
        let expected: Vec<Progress> = (1..=n)
            .map(|step| Progress::Denoising { step, total: n })
            .collect();
        assert_eq!(steps, expected);

        let image = m.decode(&latents).unwrap();
        self.check("image", &image, IMAGE);
        let bytes = to_u8(&image).unwrap();
        self.check("image_u8", &bytes, 1.0);
    }

    /// The user-facing call: bytes and the float image, the stages it reports, the generator.
    fn run_generate(&self) {
        let _g = GENERATOR.lock().unwrap_or_else(|p| p.into_inner());
        let mut m = self.models();
        let mut stages = Vec::new();
        let image = m
            .generate_float(
                &self.face,
                &self.kps,
                &self.params,
                &mut |p| stages.push(p),
                &|| false,
            )
            .unwrap();
        // (The draws' count is checked on the job's generator in `run_stages`.)
        self.check("image", &image, IMAGE);
        let n = self.params.steps;
        let mut expected = vec![Progress::EncodingText, Progress::EncodingImage];
        expected.extend((1..=n).map(|step| Progress::Denoising { step, total: n }));
        expected.push(Progress::Decoding);
        assert_eq!(stages, expected);

        let bytes = m
            .generate(&self.face, &self.kps, &self.params, &mut |_| {}, &|| false)
            .unwrap();
        assert_eq!(bytes.kind(), Kind::Uint8);
        let (h, w) = (self.params.height.unwrap(), self.params.width.unwrap());
        assert_eq!(bytes.size(), [h, w, 3]);
        assert!(
            bytes.equal(&to_u8(&image).unwrap()),
            "same seed, same bytes"
        );
        let off = self.check("image_u8", &bytes, 1.0);
        let exact = (bytes.to_kind(Kind::Int) - self.refs["image_u8"].to_kind(Kind::Int))
            .abs()
            .gt(0)
            .sum(Kind::Int64)
            .int64_value(&[]);
        println!("{}: {exact} bytes off by {off}", self.name);
    }
}

#[test]
fn euler_with_cfg_and_a_negative_prompt_matches_instantx() {
    let c = Case::load("euler_cfg");
    assert_ne!(
        (c.kps.width, c.kps.height),
        (48, 64),
        "the keypoint image must need resizing"
    );
    c.run_stages();
    c.run_generate();
}

#[test]
fn euler_ancestral_with_zero_negatives_matches_instantx() {
    let c = Case::load("ancestral_zero_negative");
    assert!(c.params.negative_prompt.is_none());
    c.run_stages();
    c.run_generate();
}

#[test]
fn without_cfg_matches_instantx() {
    let c = Case::load("euler_no_cfg");
    assert!(c.params.guidance_scale <= 1.0);
    c.run_stages();
    c.run_generate();
}

#[test]
fn the_default_size_is_the_keypoint_image_floored_to_8() {
    let _g = GENERATOR.lock().unwrap_or_else(|p| p.into_inner());
    let c = Case::load("euler_no_cfg");
    let mut m = c.models();
    let kps = c.kps.resize_lanczos(45, 43);
    let p = InstantIdParams {
        height: None,
        width: None,
        steps: 1,
        ..c.params.clone()
    };
    let out = m
        .generate(&c.face, &kps, &p, &mut |_| {}, &|| false)
        .unwrap();
    assert_eq!(out.size(), [40, 40, 3]);
}

#[test]
fn cancelling_stops_the_generation() {
    let _g = GENERATOR.lock().unwrap_or_else(|p| p.into_inner());
    let c = Case::load("euler_cfg");
    let mut m = c.models();
    let count = std::cell::Cell::new(0);
    let r = m.generate(
        &c.face,
        &c.kps,
        &c.params,
        &mut |_| count.set(count.get() + 1),
        &|| count.get() >= 3,
    );
    assert!(matches!(r, Err(ModelError::Cancelled)), "{:?}", r.err());
    assert_eq!(
        count.get(),
        3,
        "text, image, the first step; then cancelled"
    );
}

fn invalid(r: ltx_models::Result<Tensor>) -> String {
    match r {
        Err(ModelError::InvalidInput(m)) => m,
        Err(other) => panic!("not InvalidInput: {other}"),
        Ok(_) => panic!("accepted"),
    }
}

#[test]
fn bad_inputs_are_refused_naming_the_field() {
    let c = Case::load("euler_cfg");
    let mut m = c.models();
    let mut run = |face: &Tensor, kps: &RgbImage, p: &InstantIdParams| {
        invalid(m.generate(face, kps, p, &mut |_| {}, &|| false))
    };
    let p = &c.params;
    let msg = run(
        &c.face,
        &c.kps,
        &InstantIdParams {
            height: Some(60),
            ..p.clone()
        },
    );
    assert!(
        msg.contains("height") && msg.contains("multiple of 8"),
        "{msg}"
    );
    let msg = run(
        &c.face,
        &c.kps,
        &InstantIdParams {
            width: Some(8192),
            ..p.clone()
        },
    );
    assert!(msg.contains("width") && msg.contains("4096"), "{msg}");
    let msg = run(
        &c.face,
        &c.kps,
        &InstantIdParams {
            steps: 0,
            ..p.clone()
        },
    );
    assert!(msg.contains("steps"), "{msg}");
    let msg = run(
        &c.face,
        &c.kps,
        &InstantIdParams {
            guidance_scale: f64::NAN,
            ..p.clone()
        },
    );
    assert!(msg.contains("guidance_scale"), "{msg}");
    let msg = run(
        &c.face,
        &c.kps,
        &InstantIdParams {
            controlnet_conditioning_scale: -1.0,
            ..p.clone()
        },
    );
    assert!(msg.contains("controlnet_conditioning_scale"), "{msg}");
    let msg = run(
        &c.face,
        &c.kps,
        &InstantIdParams {
            control_guidance_start: 0.5,
            control_guidance_end: 0.5,
            ..p.clone()
        },
    );
    assert!(msg.contains("control_guidance_start"), "{msg}");

    let msg = run(
        &Tensor::zeros([1, 31], (Kind::Float, Device::Cpu)),
        &c.kps,
        p,
    );
    assert!(
        msg.contains("31 values") && msg.contains("32-value"),
        "{msg}"
    );
    let nan = c.face.copy();
    let _ = nan.get(0).get(3).fill_(f64::NAN);
    let msg = run(&nan, &c.kps, p);
    assert!(msg.contains("NaN"), "{msg}");
    let msg = run(&c.face.to_kind(Kind::Int64), &c.kps, p);
    assert!(msg.contains("floating point"), "{msg}");

    let broken = RgbImage {
        width: 4,
        height: 4,
        data: vec![0; 10],
    };
    let msg = run(&c.face, &broken, p);
    assert!(msg.contains("keypoint image"), "{msg}");
    let tiny = c.kps.resize_lanczos(6, 6);
    let msg = run(
        &c.face,
        &tiny,
        &InstantIdParams {
            height: None,
            width: None,
            ..p.clone()
        },
    );
    assert!(msg.contains("from the keypoint image"), "{msg}");
}

#[test]
fn several_face_embeddings_become_several_tokens_in() {
    let c = Case::load("euler_cfg");
    let m = c.models();
    let two = Tensor::cat(&[&c.face, &(&c.face * 0.5)], 0);
    let one = m.encode_face(&c.face, true).unwrap();
    let both = m.encode_face(&two, true).unwrap();
    let flat = m.encode_face(&two.view([-1]), true).unwrap();
    assert_eq!(both.size(), one.size(), "still `queries` tokens per image");
    assert!(
        both.equal(&flat),
        "[N, E] and [N·E] are the same embeddings"
    );
    assert!(
        max_abs_diff(&both, &one) > 1e-3,
        "the second embedding counts"
    );
    let negative = one.get(0);
    assert!(
        negative.abs().max().double_value(&[]) > 1e-2,
        "Resampler(0) is not zero"
    );
}
