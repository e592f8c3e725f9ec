//! What the InstantID pipeline tests share: the tiny model set of tests/fixtures/sdxl/instantid
//! (see tests/instantid_loop.rs for how it was made) and its reference cases, as a
//! [`FaceConditioning`] and settings.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use ltx_pipelines::image::RgbImage;
use ltx_pipelines::instantid::{
    FaceConditioning, InstantIdLoadOptions, InstantIdModels, InstantIdParams, InstantIdPaths,
};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

/// Generations draw from torch's one global CPU generator: one at a time.
static GENERATOR: Mutex<()> = Mutex::new(());

pub fn generator() -> MutexGuard<'static, ()> {
    GENERATOR.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/sdxl/instantid")
}

pub fn paths() -> InstantIdPaths {
    InstantIdPaths::from_checkpoints(&fixtures().join("sdxl"), &fixtures())
}

/// One reference case of `refs.json`: its settings, its inputs as a face conditioning, and
/// InstantX's image.
pub struct Case {
    pub name: String,
    pub params: InstantIdParams,
    pub face: FaceConditioning,
    /// `[H, W, 3]` uint8.
    pub image_u8: Tensor,
    scheduler: String,
}

impl Case {
    pub fn load(name: &str) -> Self {
        let meta: Value =
            serde_json::from_str(&std::fs::read_to_string(fixtures().join("refs.json")).unwrap())
                .unwrap();
        let m = &meta["cases"][name];
        let refs: HashMap<String, Tensor> =
            Tensor::read_safetensors(fixtures().join("refs.safetensors"))
                .unwrap()
                .into_iter()
                .collect();
        let get = |k: &str| refs[&format!("{name}.{k}")].shallow_clone();
        let kps = get("kps");
        let (h, w) = (kps.size()[0] as usize, kps.size()[1] as usize);
        let f = |k: &str| m[k].as_f64().unwrap();
        Self {
            name: name.into(),
            params: InstantIdParams {
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
            },
            face: FaceConditioning {
                embedding: Vec::<f32>::try_from(
                    get("face_embedding").to_kind(Kind::Float).flatten(0, -1),
                )
                .unwrap(),
                keypoints: RgbImage {
                    width: w,
                    height: h,
                    data: Vec::<u8>::try_from(kps.flatten(0, -1)).unwrap(),
                },
                faces_found: 1,
                references_used: 0,
            },
            image_u8: get("image_u8"),
            scheduler: m["scheduler"].as_str().unwrap().into(),
        }
    }

    /// The models on the CPU in float32, with the case's scheduler.
    pub fn models(&self) -> InstantIdModels {
        let mut m = InstantIdModels::load(
            &paths(),
            &InstantIdLoadOptions::new(Device::Cpu, Kind::Float),
        )
        .unwrap();
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
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}
