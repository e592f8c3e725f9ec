//! The service around the jobs, over real HTTP with the demo model: multipart uploads, byte
//! ranges, `/metrics`, model families in `/v1/system`, unloading, the offload switches, result
//! retention and results surviving a restart.

mod common;

use std::time::{Duration, Instant};

use common::{ffprobe, form, multipart_ctype, request, request_with, start, start_in, Part, Resp};

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

fn small_form(extra: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
    let image = png();
    let mut parts: Vec<(&str, Option<&str>, &[u8])> = vec![
        ("image", Some("first.png"), &image),
        ("prompt", None, b"a red ball"),
        ("width", None, b"96"),
        ("height", None, b"64"),
        ("num_frames", None, b"9"),
        ("steps", None, b"2"),
        ("seed", None, b"3"),
    ];
    parts.extend_from_slice(extra);
    form(&parts)
}

fn submit_form(addr: &str, body: &[u8]) -> Resp {
    request(
        addr,
        "POST",
        "/v1/image-to-video",
        Some(&multipart_ctype()),
        body,
    )
}

fn wait_done(addr: &str, id: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = request(addr, "GET", &format!("/v1/jobs/{id}"), None, b"").json();
        match s["state"].as_str().unwrap() {
            "done" => return s,
            "failed" | "cancelled" => panic!("job ended {s}"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "job stuck: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Submits a small multipart job and waits for it; returns its id.
fn run_job(addr: &str) -> String {
    let r = submit_form(addr, &small_form(&[]));
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json()["id"].as_str().unwrap().to_string();
    wait_done(addr, &id);
    id
}

fn system(addr: &str) -> serde_json::Value {
    let r = request(addr, "GET", "/v1/system", None, b"");
    assert_eq!(r.status, 200);
    r.json()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn multipart_upload_runs_and_ranges_serve_the_video() {
    let server = start("multipart", &[]);
    let a = &server.addr;
    let id = run_job(a);
    let path = format!("/v1/jobs/{id}/result");

    let full = request(a, "GET", &path, None, b"");
    assert_eq!(full.status, 200);
    assert_eq!(full.header("content-type").as_deref(), Some("video/mp4"));
    assert_eq!(full.header("accept-ranges").as_deref(), Some("bytes"));
    let file = server.dir.join("dl.mp4");
    std::fs::write(&file, &full.body).unwrap();
    let probe = ffprobe(&file);
    assert_eq!(probe["codec_name"], "h264", "{probe}");
    assert_eq!(probe["width"], 96);
    assert_eq!(probe["nb_read_frames"], "9");
    let n = full.body.len();

    let part = request_with(a, "GET", &path, &[("Range", "bytes=10-109")], None, b"");
    assert_eq!(part.status, 206, "{}", part.headers);
    assert_eq!(part.body, full.body[10..110]);
    assert_eq!(
        part.header("content-range").as_deref(),
        Some(format!("bytes 10-109/{n}").as_str())
    );
    let tail = request_with(a, "GET", &path, &[("Range", "bytes=-50")], None, b"");
    assert_eq!(tail.status, 206);
    assert_eq!(tail.body, full.body[n - 50..]);
    let outside = request_with(
        a,
        "GET",
        &path,
        &[("Range", &format!("bytes={}-", n + 10))],
        None,
        b"",
    );
    assert_eq!(outside.status, 416, "{}", outside.headers);

    let head = request(a, "HEAD", &path, None, b"");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(
        head.header("content-length").as_deref(),
        Some(n.to_string().as_str())
    );
}

#[test]
fn multipart_errors_are_4xx_naming_the_problem() {
    let server = start("multipart-bad", &[]);
    let a = &server.addr;
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        // No image part.
        (
            form(&[("prompt", None, b"x"), ("width", None, b"96")]),
            422,
            "image",
        ),
        // A number field that is not a number.
        (
            small_form(&[("guidance_scale", None, b"lots")]),
            422,
            "body",
        ),
        (small_form(&[("width", None, b"NaN")]), 422, "body"),
        // An unknown field.
        (small_form(&[("strength", None, b"0.5")]), 422, "body"),
        // A rule broken: the same rules as JSON.
        (
            small_form(&[("output_format", None, b"avi")]),
            422,
            "output_format",
        ),
        // Random bytes as the image.
        (
            form(&[
                ("image", Some("x.png"), b"\x89PNG\r\n\x1a\nnot really"),
                ("prompt", None, b"x"),
            ]),
            422,
            "image",
        ),
    ];
    for (body, status, field) in cases {
        let r = submit_form(a, &body);
        assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(
            r.json()["field"],
            field,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
    }
    // Duplicate width: the width part repeats.
    let r = submit_form(a, &small_form(&[("width", None, b"64")]));
    assert_eq!(r.status, 422);
    assert!(r.json()["message"].as_str().unwrap().contains("twice"));
    // Truncated: cut in the middle of the image part.
    let body = small_form(&[]);
    let r = submit_form(a, &body[..body.len() / 3]);
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error_type"], "bad_request");
    // No boundary.
    let r = request(
        a,
        "POST",
        "/v1/image-to-video",
        Some("multipart/form-data"),
        &body,
    );
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(request(a, "GET", "/health", None, b"").status, 200);
}

#[test]
fn metrics_system_and_unload_follow_the_model() {
    let server = start("metrics", &[]);
    let a = &server.addr;
    let before = system(a);
    let ltx = &before["models"][0];
    assert_eq!(ltx["name"], "ltx");
    assert_eq!(ltx["state"], "unloaded", "nothing loads at start-up: {ltx}");
    assert_eq!(ltx["device"], "cpu");
    assert_eq!(
        ltx["offload"]["requested"], "model",
        "LTX_ENABLE_CPU_OFFLOAD defaults to true"
    );
    assert_eq!(ltx["offload"]["effective"], "none");
    assert!(ltx["offload"]["note"].as_str().unwrap().contains("no-op"));
    let iid = &before["models"][1];
    assert_eq!(iid["name"], "instantid");
    assert_eq!(iid["state"], "unloaded");
    assert_eq!(iid["device"], "cpu");
    assert_eq!(
        iid["offload"]["requested"], "model",
        "INSTANTID_ENABLE_CPU_OFFLOAD defaults to true"
    );
    assert!(iid["model"].as_str().unwrap().contains("demo"));
    // Both families on the CPU: one worker runs them in turn.
    assert_eq!(before["workers"].as_array().unwrap().len(), 1);
    assert_eq!(
        before["workers"][0]["families"],
        serde_json::json!(["ltx", "instantid"])
    );
    let face = &before["face_runtime"];
    assert_eq!(face["device"], "cpu");
    assert_eq!(face["provider"], "CPUExecutionProvider", "{face}");
    assert!(
        face["version"].as_str().unwrap().starts_with("1."),
        "{face}"
    );

    run_job(a);
    let after = system(a);
    let ltx = &after["models"][0];
    assert_eq!(ltx["state"], "resident");
    assert_eq!(ltx["loads"], 1);
    assert_eq!(ltx["gpu_bytes"], 0);
    let host = ltx["host_bytes"].as_u64().unwrap();
    assert!(host > 100_000, "the demo model's fp32 weights: {ltx}");

    let m = request(a, "GET", "/metrics", None, b"");
    assert_eq!(m.status, 200);
    assert!(m
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8(m.body).unwrap();
    assert_eq!(
        metric(&text, "ltx_jobs_total{family=\"ltx\",outcome=\"done\"}"),
        1.0
    );
    assert_eq!(
        metric(&text, "ltx_jobs_accepted_total{family=\"ltx\"}"),
        1.0
    );
    assert_eq!(metric(&text, "ltx_queue_depth"), 0.0);
    assert_eq!(
        metric(
            &text,
            "ltx_stage_duration_seconds_count{family=\"ltx\",stage=\"denoising\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "ltx_stage_duration_seconds_count{family=\"ltx\",stage=\"loading\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&text, "ltx_model_state{family=\"ltx\",state=\"resident\"}"),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "ltx_model_weight_bytes{family=\"ltx\",location=\"host\"}"
        ),
        host as f64
    );

    let u = request(a, "POST", "/v1/models/ltx/unload", None, b"");
    assert_eq!(u.status, 200, "{}", String::from_utf8_lossy(&u.body));
    let u = u.json();
    assert_eq!(u["was_loaded"], true);
    assert_eq!(u["freed_weight_bytes"].as_u64(), Some(host));
    assert_eq!(system(a)["models"][0]["state"], "unloaded");
    let again = request(a, "POST", "/v1/models/ltx/unload", None, b"").json();
    assert_eq!(again["was_loaded"], false);

    // The next job loads it again, and its timings show the load.
    let id = run_job(a);
    let job = request(a, "GET", &format!("/v1/jobs/{id}"), None, b"").json();
    assert!(job["timings"]["loading"].as_f64().unwrap() > 0.0, "{job}");
    assert!(job["timings"]["denoising"].as_f64().unwrap() > 0.0, "{job}");
    assert_eq!(system(a)["models"][0]["loads"], 2);

    let r = request(a, "POST", "/v1/models/instantid/unload", None, b"");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["was_loaded"], false);
    let r = request(a, "POST", "/v1/models/sdxl/unload", None, b"");
    assert_eq!(r.status, 404);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("known: ltx, instantid"));
}

#[test]
fn offload_switches_and_allocator_settings_are_reported() {
    let dir = common::output_dir("switches");
    let _ = std::fs::remove_dir_all(&dir);
    let server = start_in(
        dir,
        &[],
        &[
            ("LTX_ENABLE_SEQUENTIAL_CPU_OFFLOAD", "true"),
            ("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True"),
            ("LTX_ENABLE_ATTENTION_SLICING", "true"),
            ("LTX_ENABLE_VAE_TILING", "true"),
            ("LTX_VAE_TILE_SIZE", "64"),
            ("LTX_VAE_TILE_STRIDE", "32"),
        ],
    );
    let s = system(&server.addr);
    assert_eq!(s["models"][0]["offload"]["requested"], "sequential");
    assert_eq!(s["models"][0]["offload"]["effective"], "none");
    assert_eq!(s["pytorch_cuda_alloc_conf"], "expandable_segments:True");
    assert_eq!(
        s["models"][0]["attention"], "sliced",
        "the original slicing switch selects it"
    );
    // A job with sliced attention and tiled decoding still makes a playable video.
    let id = run_job(&server.addr);
    let video = request(
        &server.addr,
        "GET",
        &format!("/v1/jobs/{id}/result"),
        None,
        b"",
    );
    let file = server.dir.join("tiled.mp4");
    std::fs::write(&file, &video.body).unwrap();
    let probe = ffprobe(&file);
    assert_eq!(
        (probe["width"].as_i64(), probe["height"].as_i64()),
        (Some(96), Some(64))
    );
    assert_eq!(probe["nb_read_frames"], "9");
    let server = start("switches-off", &["--ltx-enable-cpu-offload", "false"]);
    let s = system(&server.addr);
    assert_eq!(s["models"][0]["offload"]["requested"], "none");
    assert!(s["models"][0]["offload"]["note"].is_null());
}

#[test]
fn results_survive_a_restart_and_expire_after_their_age() {
    let tag = "retention";
    let mut first = start(tag, &["--result-max-age-s", "8"]);
    let id = run_job(&first.addr);
    let path = format!("/v1/jobs/{id}/result");
    let original = request(&first.addr, "GET", &path, None, b"");
    assert_eq!(original.status, 200);
    let job = request(&first.addr, "GET", &format!("/v1/jobs/{id}"), None, b"").json();
    let expires = job["expires_at"].as_u64().unwrap();
    assert!(expires >= job["created_at"].as_u64().unwrap() + 8, "{job}");
    first.keep_dir = true;
    assert!(first.terminate().success());
    let dir = first.dir.clone();
    drop(first);

    // A new process on the same folder serves the same video while it is within retention.
    let second = start_in(dir.clone(), &["--result-max-age-s", "8"], &[]);
    let again = request(&second.addr, "GET", &path, None, b"");
    assert_eq!(
        again.status,
        200,
        "{}",
        String::from_utf8_lossy(&again.body)
    );
    assert_eq!(again.body, original.body);
    let video = dir.join(format!("{id}.mp4"));
    assert!(video.is_file());

    // Past its age it is deleted, and the id says so.
    let deadline = Instant::now() + Duration::from_secs(20);
    let gone = loop {
        let r = request(&second.addr, "GET", &path, None, b"");
        if r.status != 200 {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the result outlived its retention"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(gone.status, 410, "{}", String::from_utf8_lossy(&gone.body));
    assert_eq!(gone.json()["error_type"], "gone");
    assert!(!video.exists());
    let status = request(&second.addr, "GET", &format!("/v1/jobs/{id}"), None, b"").json();
    assert_eq!(status["expired"], true);
}

#[test]
fn settings_that_cannot_work_are_refused_at_start() {
    let out = std::process::Command::new(common::BIN)
        .args(["serve", "--port", "0", "--result-max-age-s", "0"])
        .env("LTX_DEVICE", "cpu")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--result-max-age-s"), "{err}");
    let out = std::process::Command::new(common::BIN)
        .args(["serve", "--port", "0", "--ltx-vram-budget", "lots"])
        .env("LTX_DEVICE", "cpu")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("LTX_VRAM_BUDGET") && err.contains("12GiB"),
        "{err}"
    );
}

/// `POST /i2v` as the replaced service's clients send it: the multipart fields, the MP4 back.
#[test]
fn the_replaced_services_i2v_route_answers_an_mp4_with_diffusers_frame_count() {
    let server = start("service-i2v", &[]);
    let a = &server.addr;
    let image = png();
    let body = form(&[
        ("image", Some("first.png"), &image),
        ("prompt", None, b"a red ball bounces"),
        ("expected_width", None, b"100"),
        ("expected_height", None, b"70"),
        ("num_frames", None, b"24"),
        ("steps_lowres", None, b"2"),
        ("steps_refine", None, b"5"),
        ("seed", None, b"7"),
    ]);
    let r = request(a, "POST", "/i2v", Some(&multipart_ctype()), &body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type").as_deref(), Some("video/mp4"));
    let mp4 = server.dir.join("i2v-response.mp4");
    std::fs::write(&mp4, &r.body).unwrap();
    let s = ffprobe(&mp4);
    assert_eq!(s["codec_name"], "h264");
    assert_eq!(
        (s["width"].as_i64(), s["height"].as_i64()),
        (Some(100), Some(70))
    );
    assert_eq!(
        s["nb_read_frames"], "17",
        "24 requested frames give 17, as diffusers"
    );
    // The job behind it: in the job system, with the warning about the frame count.
    let disposition = r.header("content-disposition").unwrap();
    let id = disposition
        .split('"')
        .nth(1)
        .unwrap()
        .trim_end_matches(".mp4")
        .to_string();
    let job = request(a, "GET", &format!("/v1/jobs/{id}"), None, b"").json();
    assert_eq!(job["state"], "done");
    assert_eq!(job["seed"], 7);
    assert_eq!(
        job["total_steps"], 4,
        "2 low-resolution + int(5 × 0.4) refine steps"
    );
    assert!(job["timings"]["upsampling"].is_number(), "{job}");
    let warnings = job["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("has 17")),
        "{job}"
    );

    // Without expected_* the size comes from the image (96x64 → 704 wide, int(704/1.5) = 469
    // → 448 high): checked through the validation error of a too-large max pixel count.
    let small = start("service-i2v-limits", &["--max-pixels", "100000"]);
    let body = form(&[("image", Some("first.png"), &image), ("prompt", None, b"x")]);
    let r = request(&small.addr, "POST", "/i2v", Some(&multipart_ctype()), &body);
    assert_eq!(r.status, 422);
    let msg = r.json()["message"].as_str().unwrap().to_string();
    assert!(msg.contains("704x448"), "{msg}");
}

#[test]
fn bad_i2v_requests_get_json_errors_naming_the_field() {
    let server = start("service-i2v-bad", &[]);
    let a = &server.addr;
    let image = png();
    let cases: Vec<(Vec<Part>, u16, &str)> = vec![
        (vec![("image", Some("f.png"), &image)], 422, "prompt"),
        (vec![("prompt", None, b"x")], 422, "image"),
        (
            vec![
                ("image", Some("f.png"), &image),
                ("prompt", None, b"x"),
                ("steps_lowres", None, b"0"),
            ],
            422,
            "steps_lowres",
        ),
        (
            vec![
                ("image", Some("f.png"), &image),
                ("prompt", None, b"x"),
                ("denoise_strength", None, b"2"),
            ],
            422,
            "denoise_strength",
        ),
        (
            vec![
                ("image", Some("f.png"), &image),
                ("prompt", None, b"x"),
                ("width", None, b"64"),
            ],
            422,
            "width",
        ),
        (
            vec![
                ("image", Some("f.png"), b"not an image"),
                ("prompt", None, b"x"),
            ],
            422,
            "image",
        ),
        (
            vec![
                ("image", Some("f.png"), &image),
                ("prompt", None, b"x"),
                ("fps", None, b"fast"),
            ],
            422,
            "fps",
        ),
    ];
    for (parts, status, needle) in cases {
        let r = request(a, "POST", "/i2v", Some(&multipart_ctype()), &form(&parts));
        let body = String::from_utf8_lossy(&r.body).to_string();
        assert_eq!(r.status, status, "{body}");
        let j = r.json();
        assert!(j["error_type"].is_string(), "{body}");
        assert!(body.contains(needle), "{needle}: {body}");
    }
    let r = request(a, "POST", "/i2v", Some("application/json"), b"{}");
    assert_eq!(r.status, 415);
    // A real model without an upsampler cannot run the flow: 503 saying what to set.
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/ltx/models/ltx-0.9.5");
    let real = start(
        "service-i2v-noup",
        &["--ltx-model", fixture.to_str().unwrap()],
    );
    let r = request(
        &real.addr,
        "POST",
        "/i2v",
        Some(&multipart_ctype()),
        &form(&[("image", Some("f.png"), &image), ("prompt", None, b"x")]),
    );
    assert_eq!(r.status, 503);
    assert!(String::from_utf8_lossy(&r.body).contains("LTX_UPSAMPLER"));
}

#[test]
fn the_v1_api_runs_the_multiscale_pipeline_as_a_job() {
    let server = start("v1-multiscale", &[]);
    let a = &server.addr;
    let image = png();
    let body = form(&[
        ("image", Some("first.png"), &image),
        ("prompt", None, b"a red ball bounces"),
        ("pipeline", None, b"multiscale"),
        ("width", None, b"100"),
        ("height", None, b"70"),
        ("num_frames", None, b"24"),
        ("steps", None, b"2"),
        ("steps_refine", None, b"5"),
        ("fps", None, b"24"),
        ("seed", None, b"3"),
    ]);
    let r = request(
        a,
        "POST",
        "/v1/image-to-video?wait=true",
        Some(&multipart_ctype()),
        &body,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let mp4 = server.dir.join("v1-multiscale.mp4");
    std::fs::write(&mp4, &r.body).unwrap();
    let s = ffprobe(&mp4);
    assert_eq!(
        (s["width"].as_i64(), s["height"].as_i64()),
        (Some(100), Some(70))
    );
    assert_eq!(s["nb_read_frames"], "17");
    // Multi-scale fields without the pipeline, and an unknown pipeline, are refused.
    for (extra, field) in [
        (("steps_refine", b"5".as_slice()), "steps_refine"),
        (("pipeline", b"fast".as_slice()), "pipeline"),
    ] {
        let body = form(&[
            ("image", Some("first.png"), &image),
            ("prompt", None, b"x"),
            (extra.0, None, extra.1),
        ]);
        let r = request(
            a,
            "POST",
            "/v1/image-to-video",
            Some(&multipart_ctype()),
            &body,
        );
        assert_eq!(r.status, 422, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["field"], field);
    }
}
