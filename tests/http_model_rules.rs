//! Rules that depend on the configured model, checked when the request arrives (read from the
//! model's config files, no weights loaded), each a 422 naming the field: the scheduler's
//! minimum steps with `shift_terminal`, the multi-scale flow's scheduler and upsampler, the
//! VAE's size and frame multiples. The tiny diffusers-format fixtures stand in for real models.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine;
use common::{request, start, Resp};

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/ltx/models")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn png() -> Vec<u8> {
    let img = image::RgbImage::from_fn(96, 64, |x, y| {
        image::Rgb([(x * 2) as u8, (y * 3) as u8, 90])
    });
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .unwrap();
    bytes
}

fn submit(addr: &str, extra: serde_json::Value) -> Resp {
    let mut body = serde_json::json!({
        "image": base64::engine::general_purpose::STANDARD.encode(png()),
        "prompt": "a red ball", "width": 96, "height": 64, "num_frames": 9, "steps": 2,
        "seed": 1
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    request(
        addr,
        "POST",
        "/v1/image-to-video",
        Some("application/json"),
        &serde_json::to_vec(&body).unwrap(),
    )
}

/// A 422 naming `field`, whose message contains every needle and no stray whitespace.
fn refused(r: &Resp, field: &str, needles: &[&str]) {
    let body = String::from_utf8_lossy(&r.body).to_string();
    assert_eq!(r.status, 422, "{body}");
    let j = r.json();
    assert_eq!(j["error_type"], "validation", "{body}");
    assert_eq!(j["field"], field, "{body}");
    let message = j["message"].as_str().unwrap();
    for n in needles {
        assert!(message.contains(n), "{n:?} not in {message:?}");
    }
    assert!(!message.contains("  "), "a run of spaces in {message:?}");
}

fn wait_done(addr: &str, id: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let s = request(addr, "GET", &format!("/v1/jobs/{id}"), None, b"").json();
        match s["state"].as_str().unwrap() {
            "done" => return s,
            "queued" | "running" => {}
            other => panic!("job ended {other}: {s}"),
        }
        assert!(Instant::now() < deadline, "job stuck: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn shift_terminal_needs_two_steps_and_says_so_at_submission() {
    // LTX-Video 0.9.1's scheduler: dynamic shifting, shift_terminal 0.1.
    let model = fixture("ltx-0.9.1");
    let server = start("rules-091", &["--ltx-model", &model]);
    let a = &server.addr;
    let r = submit(a, serde_json::json!({"steps": 1}));
    refused(
        &r,
        "steps",
        &["1 step(s) with shift_terminal 0.1", "use at least 2 steps"],
    );
    // The refusal made no job.
    let metrics = request(a, "GET", "/metrics", None, b"");
    assert!(String::from_utf8_lossy(&metrics.body)
        .contains("ltx_jobs_accepted_total{family=\"ltx\"} 0"));
    // Two steps are fine, and the worker agrees.
    let ok = submit(a, serde_json::json!({"steps": 2}));
    assert_eq!(ok.status, 202, "{}", String::from_utf8_lossy(&ok.body));
    wait_done(a, ok.json()["id"].as_str().unwrap());
    // The VAE's multiples, named with the model's values.
    refused(
        &submit(a, serde_json::json!({"width": 100})),
        "width",
        &["multiple of 32", "got 100"],
    );
    refused(
        &submit(a, serde_json::json!({"num_frames": 12})),
        "num_frames",
        &["8k+1", "got 12"],
    );
}

#[test]
fn the_demo_model_has_no_shift_terminal() {
    let server = start("rules-demo", &[]);
    let r = submit(&server.addr, serde_json::json!({"steps": 1}));
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    wait_done(&server.addr, r.json()["id"].as_str().unwrap());
}

#[test]
fn the_multiscale_flow_needs_its_upsampler_and_a_scheduler_it_can_run() {
    let multiscale = serde_json::json!({"pipeline": "multiscale", "width": 100, "height": 70,
        "num_frames": 9, "steps": 2, "steps_refine": 5});
    // No upsampler configured for a real model: 422 on the pipeline field, saying what to set.
    let model = fixture("ltx-0.9.5");
    let bare = start("rules-noup", &["--ltx-model", &model]);
    refused(
        &submit(&bare.addr, multiscale.clone()),
        "pipeline",
        &["latent upsampler", "LTX_UPSAMPLER"],
    );
    // 0.9.1's scheduler shifts dynamically, which the condition pipeline cannot do.
    let (old, up) = (fixture("ltx-0.9.1"), fixture("upsampler"));
    let server = start(
        "rules-091-up",
        &["--ltx-model", &old, "--ltx-upsampler", &up],
    );
    refused(
        &submit(&server.addr, multiscale.clone()),
        "pipeline",
        &["use_dynamic_shifting"],
    );
    // 0.9.5 with the upsampler runs it.
    let good = start(
        "rules-095-up",
        &["--ltx-model", &model, "--ltx-upsampler", &up],
    );
    let r = submit(&good.addr, multiscale);
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    wait_done(&good.addr, r.json()["id"].as_str().unwrap());
}

#[test]
fn settings_the_model_cannot_use_are_refused_at_start() {
    let refused = |args: &[&str], needles: &[&str]| {
        let out = std::process::Command::new(common::BIN)
            .args(["serve", "--port", "0"])
            .args(args)
            .env("LTX_DEVICE", "cpu")
            .env_remove("LTX_MODEL")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} started");
        let err = String::from_utf8_lossy(&out.stderr);
        for n in needles {
            assert!(err.contains(n), "{n:?} not in {err}");
        }
    };
    // The fixture upsampler takes 8 latent channels; the demo model's VAE makes 16.
    refused(
        &["--ltx-upsampler", &fixture("upsampler")],
        &["takes 8 latent channels", "makes 16"],
    );
    refused(
        &["--ltx-host-budget", "plenty"],
        &["LTX_HOST_BUDGET", "12GiB"],
    );
}

#[test]
fn odd_video_sides_are_refused_at_submission() {
    // The multi-scale flow takes any size; the H.264 video it ends in needs even sides.
    let server = start("rules-even", &[]);
    let r = submit(
        &server.addr,
        serde_json::json!({"pipeline": "multiscale", "width": 99, "height": 70, "steps": 2}),
    );
    refused(&r, "width", &["must be even", "got 99"]);
    let boundary = "evenrule";
    let mut body = Vec::new();
    for (k, v) in [
        ("prompt", "x"),
        ("expected_width", "256"),
        ("expected_height", "255"),
    ] {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n")
                .as_bytes(),
        );
    }
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"f.png\"\r\n\r\n").as_bytes(),
    );
    body.extend_from_slice(&png());
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let r = request(
        &server.addr,
        "POST",
        "/i2v",
        Some(&format!("multipart/form-data; boundary={boundary}")),
        &body,
    );
    refused(&r, "expected_height", &["must be even", "got 255"]);
}
