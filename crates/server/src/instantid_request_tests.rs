//! Every rule of the InstantID request, one test each (or a small table).

use base64::Engine;
use serde_json::{json, Value};

use super::*;

fn limits() -> Limits {
    Limits {
        max_body_bytes: 32 << 20,
        max_side: 1280,
        max_pixels: 1280 * 1280,
        max_frames: 257,
        max_steps: 100,
        max_prompt_chars: 50,
        max_input_pixels: 64 * 64,
    }
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .unwrap();
    bytes
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A valid body with `patch` merged in (a `null` removes the field).
fn body(patch: Value) -> Value {
    let mut v = json!({"face_image": b64(&png(16, 12)), "prompt": "a portrait"});
    for (k, x) in patch.as_object().unwrap() {
        if x.is_null() {
            v.as_object_mut().unwrap().remove(k);
        } else {
            v[k] = x.clone();
        }
    }
    v
}

fn check(patch: Value) -> Result<ValidInstantId, ApiError> {
    InstantIdRequest::from_value(body(patch))?.validate(&limits())
}

/// The error's field and message; panics if the request was valid.
fn refused(patch: Value) -> (&'static str, String) {
    match check(patch.clone()) {
        Err(ApiError::Invalid { field, message }) => (field, message),
        Err(other) => panic!("{patch}: not a validation error: {other}"),
        Ok(_) => panic!("{patch}: accepted"),
    }
}

fn assert_refused(patch: Value, field: &str, needles: &[&str]) {
    let (f, m) = refused(patch.clone());
    assert_eq!(f, field, "{patch}: {m}");
    for n in needles {
        assert!(m.contains(n), "{patch}: {m:?} lacks {n:?}");
    }
}

#[test]
fn defaults_are_instantx_infer_py_at_1024() {
    let v = check(json!({})).unwrap();
    let p = &v.params;
    assert_eq!((p.width, p.height), (Some(1024), Some(1024)));
    assert_eq!(p.steps, 30);
    assert_eq!(p.guidance_scale, 5.0);
    assert_eq!(p.ip_adapter_scale, 0.8);
    assert_eq!(p.controlnet_conditioning_scale, 0.8);
    assert_eq!(
        (p.control_guidance_start, p.control_guidance_end),
        (0.0, 1.0)
    );
    assert_eq!(p.negative_prompt, None);
    assert_eq!(p.prompt, "a portrait");
    assert_eq!(v.scheduler, None);
    assert!(v.pose.is_none() && v.references.is_empty());
    assert_eq!((v.face.width, v.face.height), (16, 12));
    // The seed is drawn (53 bits) when absent; given, it is kept.
    assert!(p.seed < 1 << 53);
    assert_eq!(check(json!({"seed": 7})).unwrap().params.seed, 7);
    assert_eq!(
        check(json!({"seed": u64::MAX})).unwrap().params.seed,
        u64::MAX
    );
}

#[test]
fn every_field_is_passed_on() {
    let v = check(json!({
        "negative_prompt": "blurry", "width": 640, "height": 512, "steps": 12,
        "guidance_scale": 0, "ip_adapter_scale": 2, "controlnet_conditioning_scale": 0,
        "control_guidance_start": 0.25, "control_guidance_end": 0.5,
        "scheduler": "DDIMScheduler", "seed": 3,
        "pose_image": b64(&png(20, 30)),
        "reference_images": [b64(&png(8, 8)), format!("data:image/png;base64,{}", b64(&png(9, 9)))],
    }))
    .unwrap();
    let p = &v.params;
    assert_eq!(p.negative_prompt.as_deref(), Some("blurry"));
    assert_eq!((p.width, p.height, p.steps), (Some(640), Some(512), 12));
    assert_eq!(
        (
            p.guidance_scale,
            p.ip_adapter_scale,
            p.controlnet_conditioning_scale
        ),
        (0.0, 2.0, 0.0)
    );
    assert_eq!(
        (p.control_guidance_start, p.control_guidance_end),
        (0.25, 0.5)
    );
    assert_eq!(v.scheduler, Some("DDIMScheduler"));
    assert_eq!(p.seed, 3);
    let pose = v.pose.unwrap();
    assert_eq!((pose.width, pose.height), (20, 30));
    let sizes: Vec<_> = v.references.iter().map(|r| (r.width, r.height)).collect();
    assert_eq!(sizes, [(8, 8), (9, 9)]);
}

#[test]
fn sides_are_multiples_of_8_within_the_max_side() {
    for bad in [0, -8, 4, 1020, 1025, 1288, i64::MAX] {
        assert_refused(
            json!({"width": bad}),
            "width",
            &["multiple of 8", "[8, 1280]", &bad.to_string()],
        );
        assert_refused(json!({"height": bad}), "height", &[&bad.to_string()]);
    }
    for good in [8, 1280] {
        let v = check(json!({"width": good, "height": 8})).unwrap();
        assert_eq!(v.params.width, Some(good));
    }
}

#[test]
fn the_area_is_within_the_max_pixels() {
    let mut l = limits();
    l.max_pixels = 1024 * 1024 - 1;
    let r = InstantIdRequest::from_value(body(json!({})))
        .unwrap()
        .validate(&l);
    match r {
        Err(ApiError::Invalid { field, message }) => {
            assert_eq!(field, "width");
            assert!(message.contains("1024x1024 = 1048576 pixels"), "{message}");
            assert!(message.contains("1048575"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn steps_are_in_1_to_max_steps() {
    for bad in [0, -1, 101] {
        assert_refused(
            json!({"steps": bad}),
            "steps",
            &["[1, 100]", &bad.to_string()],
        );
    }
    assert_eq!(check(json!({"steps": 100})).unwrap().params.steps, 100);
    assert_eq!(check(json!({"steps": 1})).unwrap().params.steps, 1);
}

#[test]
fn scales_are_in_their_ranges() {
    let table: [(&str, f64, f64); 3] = [
        ("guidance_scale", -0.01, 30.01),
        ("ip_adapter_scale", -0.01, 2.01),
        ("controlnet_conditioning_scale", -0.01, 2.01),
    ];
    for (field, low, high) in table {
        for bad in [low, high, -1e300, 1e300] {
            assert_refused(json!({field: bad}), field, &["must be a number in"]);
        }
    }
    assert_refused(
        json!({"guidance_scale": 31}),
        "guidance_scale",
        &["[0, 30]", "31"],
    );
    assert_refused(
        json!({"ip_adapter_scale": 3}),
        "ip_adapter_scale",
        &["[0, 2]", "3"],
    );
    assert_eq!(
        check(json!({"guidance_scale": 30}))
            .unwrap()
            .params
            .guidance_scale,
        30.0
    );
}

#[test]
fn control_guidance_is_a_nonempty_window_in_0_1() {
    assert_refused(
        json!({"control_guidance_start": -0.1}),
        "control_guidance_start",
        &["[0, 1]"],
    );
    assert_refused(
        json!({"control_guidance_start": 1.5}),
        "control_guidance_start",
        &["[0, 1]"],
    );
    assert_refused(
        json!({"control_guidance_end": 1.01}),
        "control_guidance_end",
        &["[0, 1]"],
    );
    assert_refused(
        json!({"control_guidance_start": 0.5, "control_guidance_end": 0.5}),
        "control_guidance_start",
        &["start < end", "0.5"],
    );
    assert_refused(
        json!({"control_guidance_start": 1}),
        "control_guidance_start",
        &["start < end"],
    );
    assert_refused(
        json!({"control_guidance_end": 0}),
        "control_guidance_start",
        &["start < end"],
    );
}

#[test]
fn the_scheduler_is_one_the_sdxl_module_implements() {
    for name in SUPPORTED_SCHEDULERS {
        assert_eq!(
            check(json!({"scheduler": name})).unwrap().scheduler,
            Some(name)
        );
    }
    assert_refused(
        json!({"scheduler": "euler"}),
        "scheduler",
        &["\"euler\"", "EulerDiscreteScheduler", "DDIMScheduler"],
    );
    assert_refused(json!({"scheduler": ""}), "scheduler", &["must be one of"]);
}

#[test]
fn prompts_are_within_the_character_limit() {
    let long = "é".repeat(51);
    assert_refused(
        json!({"prompt": long}),
        "prompt",
        &["51 characters", "limit of 50"],
    );
    assert_refused(
        json!({"negative_prompt": long}),
        "negative_prompt",
        &["51 characters"],
    );
    assert!(check(json!({"prompt": "é".repeat(50), "negative_prompt": ""})).is_ok());
}

#[test]
fn at_most_four_reference_images() {
    let r = b64(&png(8, 8));
    assert_eq!(
        check(json!({"reference_images": vec![r.clone(); 4]}))
            .unwrap()
            .references
            .len(),
        4
    );
    assert_refused(
        json!({"reference_images": vec![r; 5]}),
        "reference_images",
        &["at most 4", "got 5"],
    );
    assert_refused(
        json!({"reference_images": "not a list"}),
        "body",
        &["expected a sequence"],
    );
}

#[test]
fn images_that_are_not_images_name_their_field() {
    let truncated = {
        let p = png(16, 16);
        b64(&p[..p.len() / 2])
    };
    let cases = [
        (
            json!({"face_image": "%%% not base64"}),
            "face_image",
            "not valid base64",
        ),
        (
            json!({"face_image": "data:image/png,abc"}),
            "face_image",
            "data URL must be base64",
        ),
        (json!({"face_image": ""}), "face_image", "empty"),
        (
            json!({"face_image": truncated}),
            "face_image",
            "not a readable",
        ),
        (
            json!({"face_image": b64(b"GIF89a not really")}),
            "face_image",
            "not a readable",
        ),
        (
            json!({"pose_image": "!!"}),
            "pose_image",
            "not valid base64",
        ),
        (
            json!({"pose_image": b64(b"\x89PNG\r\n\x1a\nxx")}),
            "pose_image",
            "not a readable",
        ),
    ];
    for (patch, field, needle) in cases {
        assert_refused(patch, field, &[needle]);
    }
    let good = b64(&png(8, 8));
    assert_refused(
        json!({"reference_images": [good, "@@"]}),
        "reference_images",
        &["reference image 2: ", "not valid base64"],
    );
}

#[test]
fn images_over_the_input_pixel_limit_are_refused_before_decoding() {
    // 65x64 = 4160 > 64², checked from the header.
    assert_refused(
        json!({"face_image": b64(&png(65, 64))}),
        "face_image",
        &["65x64 = 4160 pixels exceeds the limit of 4096"],
    );
    assert_refused(
        json!({"reference_images": [b64(&png(65, 64))]}),
        "reference_images",
        &["reference image 1: ", "4160 pixels"],
    );
    assert!(check(json!({"face_image": b64(&png(64, 64))})).is_ok());
}

#[test]
fn numbers_of_the_wrong_kind_name_their_field() {
    let cases = [
        (json!({"width": "1024"}), "width", "must be an integer"),
        (json!({"width": 1024.5}), "width", "must be an integer"),
        (json!({"steps": 1e300}), "steps", "must be an integer"),
        (json!({"steps": true}), "steps", "must be an integer"),
        (json!({"seed": -1}), "seed", "[0, 2^64)"),
        (json!({"seed": 1.5}), "seed", "must be an integer"),
        (
            json!({"guidance_scale": "NaN"}),
            "guidance_scale",
            "must be a number, got \"NaN\"",
        ),
        (
            json!({"ip_adapter_scale": [1]}),
            "ip_adapter_scale",
            "must be a number",
        ),
        (
            json!({"control_guidance_end": {}}),
            "control_guidance_end",
            "must be a number",
        ),
    ];
    for (patch, field, needle) in cases {
        assert_refused(patch, field, &[needle]);
    }
    // null is "not given".
    assert_eq!(
        check(json!({"steps": Value::Null})).unwrap().params.steps,
        30
    );
}

#[test]
fn required_and_unknown_fields() {
    let mut v = body(json!({}));
    v.as_object_mut().unwrap().remove("face_image");
    match InstantIdRequest::from_value(v) {
        Err(ApiError::Invalid { field, message }) => {
            assert_eq!((field, message.as_str()), ("face_image", "is required"))
        }
        other => panic!("{other:?}"),
    }
    let mut v = body(json!({}));
    v.as_object_mut().unwrap().remove("prompt");
    assert!(matches!(
        InstantIdRequest::from_value(v),
        Err(ApiError::Invalid {
            field: "prompt",
            ..
        })
    ));
    assert_refused(
        json!({"num_inference_steps": 3}),
        "body",
        &["unknown field"],
    );
    assert_refused(json!({"prompt": 5}), "body", &["invalid type"]);
    for not_object in [json!([1]), json!("x"), json!(3), Value::Null] {
        match InstantIdRequest::from_value(not_object.clone()) {
            Err(ApiError::Invalid { field, message }) => {
                assert_eq!(field, "body");
                assert!(message.starts_with("must be a JSON object"), "{message}");
            }
            other => panic!("{not_object}: {other:?}"),
        }
    }
}

#[test]
fn uploads_are_decoded_instead_of_the_strings() {
    let mut r = InstantIdRequest::from_value(body(json!({"face_image": ""}))).unwrap();
    r.uploads = Some(Uploads {
        face: png(10, 20),
        pose: Some(png(30, 40)),
        references: vec![png(8, 8)],
    });
    let v = r.validate(&limits()).unwrap();
    assert_eq!((v.face.width, v.face.height), (10, 20));
    assert_eq!(v.pose.map(|p| (p.width, p.height)), Some((30, 40)));
    assert_eq!(v.references.len(), 1);

    let mut r = InstantIdRequest::from_value(body(json!({}))).unwrap();
    r.uploads = Some(Uploads {
        face: png(10, 20),
        pose: None,
        references: vec![png(8, 8), b"junk".to_vec()],
    });
    match r.validate(&limits()) {
        Err(ApiError::Invalid { field, message }) => {
            assert_eq!(field, "reference_images");
            assert!(message.starts_with("reference image 2: "), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let mut r = InstantIdRequest::from_value(body(json!({}))).unwrap();
    r.uploads = Some(Uploads {
        face: png(8, 8),
        pose: None,
        references: vec![png(8, 8); 5],
    });
    assert!(matches!(
        r.validate(&limits()),
        Err(ApiError::Invalid {
            field: "reference_images",
            ..
        })
    ));
}

#[test]
fn cheap_rules_are_checked_before_the_images() {
    // A bad image and a bad number: the number is reported (no decoding was needed).
    assert_refused(
        json!({"face_image": "@@", "steps": 0}),
        "steps",
        &["[1, 100]"],
    );
}
