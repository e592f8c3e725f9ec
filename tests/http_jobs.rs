//! The image-to-video API over real HTTP on a loopback port, with the demo model: submit,
//! follow, download and ffprobe; `?wait=true`; cancel; queue full → 429; validation errors;
//! a malformed-request sweep over JSON and multipart bodies.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use common::{ffprobe, request, start, Resp};

fn png_b64() -> String {
    let img = image::RgbImage::from_fn(96, 64, |x, y| {
        image::Rgb([(x * 2) as u8, (y * 3) as u8, 90])
    });
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .unwrap();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn small_job(extra: serde_json::Value) -> Vec<u8> {
    let mut body = serde_json::json!({
        "image": png_b64(), "prompt": "a red ball", "width": 96, "height": 64,
        "num_frames": 9, "steps": 2, "seed": 1
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    serde_json::to_vec(&body).unwrap()
}

fn submit(addr: &str, body: &[u8], query: &str) -> Resp {
    request(
        addr,
        "POST",
        &format!("/v1/image-to-video{query}"),
        Some("application/json"),
        body,
    )
}

fn wait_state(addr: &str, id: &str, want: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = request(addr, "GET", &format!("/v1/jobs/{id}"), None, b"").json();
        if s["state"] == want {
            return s;
        }
        assert!(
            !["done", "failed", "cancelled"].contains(&s["state"].as_str().unwrap()),
            "wanted {want}, job ended {s}"
        );
        assert!(Instant::now() < deadline, "job stuck: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn submit_follow_download_and_wait() {
    let server = start("flow", &[]);
    let a = &server.addr;
    let r = submit(a, &small_job(serde_json::json!({})), "");
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let job = r.json();
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 32, "ids are 128 random bits");
    assert!(
        job["model"].as_str().unwrap().contains("noise"),
        "the demo model says so: {job}"
    );
    assert_eq!(
        request(a, "GET", &format!("/v1/jobs/{id}/result"), None, b"").status,
        409
    );
    let done = wait_state(a, &id, "done");
    assert_eq!(done["step"], 2);
    let result = request(a, "GET", &format!("/v1/jobs/{id}/result"), None, b"");
    assert_eq!(result.status, 200);
    assert!(
        result
            .headers
            .to_ascii_lowercase()
            .contains("content-type: video/mp4"),
        "{}",
        result.headers
    );
    let mp4 = server.dir.join("downloaded.mp4");
    std::fs::write(&mp4, &result.body).unwrap();
    let s = ffprobe(&mp4);
    assert_eq!(
        (s["codec_name"].as_str(), s["pix_fmt"].as_str()),
        (Some("h264"), Some("yuv420p"))
    );
    assert_eq!(
        (
            s["width"].as_i64(),
            s["height"].as_i64(),
            s["nb_read_frames"].as_str()
        ),
        (Some(96), Some(64), Some("9"))
    );
    let head = request(a, "HEAD", &format!("/v1/jobs/{id}/result"), None, b"");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());

    let sync = submit(a, &small_job(serde_json::json!({"seed": 2})), "?wait=true");
    assert_eq!(sync.status, 200, "{}", String::from_utf8_lossy(&sync.body));
    assert_eq!(
        &sync.body[4..8],
        b"ftyp",
        "wait=true answers with the MP4 itself"
    );
}

#[test]
fn full_queue_answers_429_and_cancel_stops_jobs() {
    let server = start("queue", &["--queue-size", "1"]);
    let a = &server.addr;
    let slow =
        small_job(serde_json::json!({"width": 256, "height": 256, "num_frames": 33, "steps": 50}));
    let mut accepted = Vec::new();
    let mut rejected = 0;
    for _ in 0..4 {
        let r = submit(a, &slow, "");
        match r.status {
            202 => accepted.push(r.json()["id"].as_str().unwrap().to_string()),
            429 => {
                rejected += 1;
                assert!(
                    r.headers.to_ascii_lowercase().contains("retry-after:"),
                    "{}",
                    r.headers
                );
                assert_eq!(r.json()["error_type"], "queue_full");
            }
            other => panic!("unexpected {other}: {}", String::from_utf8_lossy(&r.body)),
        }
    }
    assert!(
        rejected >= 2 && !accepted.is_empty(),
        "accepted {accepted:?}, rejected {rejected}"
    );
    for id in &accepted {
        let r = request(a, "DELETE", &format!("/v1/jobs/{id}"), None, b"");
        assert_eq!(r.status, 200);
    }
    for id in &accepted {
        wait_state(a, id, "cancelled");
    }
    // The worker is free again: a new job runs to the end.
    let r = submit(a, &small_job(serde_json::json!({})), "?wait=true");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

#[test]
fn bad_requests_get_4xx_json_naming_the_problem() {
    let server = start("bad", &["--max-body-bytes", "200000"]);
    let a = &server.addr;
    let cases: Vec<(Vec<u8>, Option<&str>, u16, &str)> = vec![
        (
            small_job(serde_json::json!({"height": 100})),
            Some("application/json"),
            422,
            "height",
        ),
        (
            small_job(serde_json::json!({"num_frames": 10})),
            Some("application/json"),
            422,
            "num_frames",
        ),
        (
            small_job(serde_json::json!({"steps": 0})),
            Some("application/json"),
            422,
            "steps",
        ),
        (
            small_job(serde_json::json!({"steps": 1000})),
            Some("application/json"),
            422,
            "steps",
        ),
        (
            small_job(serde_json::json!({"width": 4096})),
            Some("application/json"),
            422,
            "width",
        ),
        (
            small_job(serde_json::json!({"guidance_scale": -1.0})),
            Some("application/json"),
            422,
            "guidance_scale",
        ),
        (
            small_job(serde_json::json!({"colour": "red"})),
            Some("application/json"),
            422,
            "unknown field",
        ),
        (
            small_job(serde_json::json!({"steps": "many"})),
            Some("application/json"),
            422,
            "invalid type",
        ),
        (
            small_job(serde_json::json!({"image": "%%%not base64%%%"})),
            Some("application/json"),
            422,
            "base64",
        ),
        (
            small_job(
                serde_json::json!({"image": base64::engine::general_purpose::STANDARD.encode(b"random bytes, not an image")}),
            ),
            Some("application/json"),
            422,
            "image",
        ),
        (
            b"{\"image\": ".to_vec(),
            Some("application/json"),
            400,
            "JSON",
        ),
        (
            small_job(serde_json::json!({})),
            Some("text/plain"),
            415,
            "application/json",
        ),
        (
            small_job(serde_json::json!({})),
            None,
            415,
            "application/json",
        ),
        (vec![b'x'; 300_000], Some("application/json"), 413, "200000"),
    ];
    for (body, ctype, want_status, want_text) in cases {
        let r = request(a, "POST", "/v1/image-to-video", ctype, &body);
        let text = String::from_utf8_lossy(&r.body).to_string();
        assert_eq!(r.status, want_status, "{want_text}: {text}");
        let v = r.json();
        assert!(v["error_type"].is_string(), "{text}");
        assert!(text.contains(want_text), "expected {want_text:?} in {text}");
    }
    assert_eq!(
        request(
            a,
            "GET",
            "/v1/jobs/00000000000000000000000000000000",
            None,
            b""
        )
        .status,
        404
    );
    assert_eq!(request(a, "DELETE", "/v1/jobs/nope", None, b"").status, 404);
    assert_eq!(
        request(a, "GET", "/health", None, b"").status,
        200,
        "the server still answers"
    );
}

#[test]
fn events_follow_a_job_to_done_and_ready_answers() {
    let server = start("events", &[]);
    let a = &server.addr;
    assert_eq!(request(a, "GET", "/ready", None, b"").status, 200);
    let r = submit(a, &small_job(serde_json::json!({"steps": 3})), "");
    let id = r.json()["id"].as_str().unwrap().to_string();
    let events = request(a, "GET", &format!("/v1/jobs/{id}/events"), None, b"");
    assert_eq!(events.status, 200);
    assert!(
        events
            .headers
            .to_ascii_lowercase()
            .contains("text/event-stream"),
        "{}",
        events.headers
    );
    let text = String::from_utf8_lossy(&events.body);
    assert!(
        text.contains("event: done"),
        "the stream ends with the final state: {text}"
    );
    let last_data = text.lines().rev().find(|l| l.starts_with("data:")).unwrap();
    let last: serde_json::Value =
        serde_json::from_str(last_data.trim_start_matches("data:").trim()).unwrap();
    assert_eq!(
        (last["state"].as_str(), last["step"].as_i64()),
        (Some("done"), Some(3))
    );
}

/// A tiny deterministic generator for the sweep (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn malformed_request_sweep_never_gets_a_5xx() {
    let server = start(
        "sweep",
        &["--max-body-bytes", "1000000", "--queue-size", "1"],
    );
    let a = &server.addr;
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let valid = small_job(serde_json::json!({}));
    let wrong_values = [
        serde_json::json!(null),
        serde_json::json!(-1),
        serde_json::json!(1e300),
        serde_json::json!("12"),
        serde_json::json!([1, 2]),
        serde_json::json!({"a": 1}),
        serde_json::json!(true),
        serde_json::json!(-1e-300),
        serde_json::json!(4_000_000_000_i64),
        serde_json::json!(""),
    ];
    let fields = [
        "image",
        "prompt",
        "negative_prompt",
        "width",
        "height",
        "num_frames",
        "steps",
        "guidance_scale",
        "guidance_rescale",
        "seed",
        "fps",
        "decode_timestep",
        "decode_noise_scale",
    ];
    let mut counts = std::collections::BTreeMap::<u16, usize>::new();
    let total = 210;
    let boundary = "sweep-b0undary";
    let form_ctype = format!("multipart/form-data; boundary={boundary}");
    let mut png = Vec::new();
    image::RgbImage::new(96, 64)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    for i in 0..total {
        let (body, ctype): (Vec<u8>, &str) = match i % 7 {
            // random bytes as the body
            0 => {
                let n = 1 + rng.below(4000) as usize;
                (rng.bytes(n), "application/json")
            }
            // a valid request cut short
            1 => (
                valid[..rng.below(valid.len() as u64) as usize].to_vec(),
                "application/json",
            ),
            // one field with a wrong type or out-of-range value
            2 => {
                let mut v: serde_json::Value = serde_json::from_slice(&valid).unwrap();
                let f = fields[rng.below(fields.len() as u64) as usize];
                v[f] = wrong_values[rng.below(wrong_values.len() as u64) as usize].clone();
                (serde_json::to_vec(&v).unwrap(), "application/json")
            }
            // random bytes (sometimes a PNG header) as the image
            3 => {
                let mut img = if rng.below(2) == 0 {
                    b"\x89PNG\r\n\x1a\n".to_vec()
                } else {
                    Vec::new()
                };
                let n = rng.below(3000) as usize;
                img.extend(rng.bytes(n));
                let b64 = base64::engine::general_purpose::STANDARD.encode(img);
                (
                    small_job(serde_json::json!({"image": b64})),
                    "application/json",
                )
            }
            // huge or absurd dimensions
            4 => {
                let big = [0, 31, 33, 65_536, 1 << 40, i64::MAX][rng.below(6) as usize];
                let field = ["width", "height", "num_frames", "steps"][rng.below(4) as usize];
                (
                    small_job(serde_json::json!({field: big})),
                    "application/json",
                )
            }
            // a multipart form: cut short, random bytes as the image, or a random field value
            6 => {
                let image = if rng.below(2) == 0 {
                    png.clone()
                } else {
                    let n = 1 + rng.below(2000) as usize;
                    rng.bytes(n)
                };
                let f = fields[1 + rng.below(fields.len() as u64 - 1) as usize];
                let n = 1 + rng.below(20) as usize;
                let value = rng.bytes(n);
                let mut b = Vec::new();
                for (name, file, data) in [
                    ("image", true, image.as_slice()),
                    ("prompt", false, b"a cat".as_slice()),
                    (f, false, value.as_slice()),
                ] {
                    b.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
                    let disp = if file {
                        format!("form-data; name=\"{name}\"; filename=\"a.png\"")
                    } else {
                        format!("form-data; name=\"{name}\"")
                    };
                    b.extend_from_slice(format!("Content-Disposition: {disp}\r\n\r\n").as_bytes());
                    b.extend_from_slice(data);
                    b.extend_from_slice(b"\r\n");
                }
                b.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
                if rng.below(2) == 0 {
                    b.truncate(rng.below(b.len() as u64) as usize);
                }
                (b, form_ctype.as_str())
            }
            // the right body with a wrong content type
            _ => (
                valid.clone(),
                [
                    "text/plain",
                    "application/x-www-form-urlencoded",
                    "image/png",
                    "multipart/form-data; boundary=x",
                ][rng.below(4) as usize],
            ),
        };
        let r = request(a, "POST", "/v1/image-to-video", Some(ctype), &body);
        *counts.entry(r.status).or_default() += 1;
        assert!(
            r.status < 500,
            "request {i} got {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        if r.status == 202 {
            // A mutation that happened to be valid: cancel it so the queue stays free.
            let id = r.json()["id"].as_str().unwrap().to_string();
            request(a, "DELETE", &format!("/v1/jobs/{id}"), None, b"");
        } else if r.status != 429 {
            assert!(
                r.json()["error_type"].is_string(),
                "request {i}: {}",
                String::from_utf8_lossy(&r.body)
            );
        }
    }
    eprintln!("malformed sweep: {total} requests, statuses {counts:?}");
    assert_eq!(counts.keys().filter(|s| **s >= 500).count(), 0);
    assert_eq!(
        request(a, "GET", "/health", None, b"").status,
        200,
        "the server still answers"
    );
    // The queue holds one job, and the sweep's cancelled jobs leave it as the worker reaches
    // them (a running one at its next step): until then 429 is the right answer.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let r = loop {
        let r = submit(a, &small_job(serde_json::json!({"seed": 9})), "?wait=true");
        if r.status != 429 || std::time::Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(r.status, 200, "a valid job still runs after the sweep");
}

#[test]
fn sigterm_cancels_the_running_job_and_exits_zero() {
    let mut server = start("shutdown", &[]);
    let a = server.addr.clone();
    let slow =
        small_job(serde_json::json!({"width": 256, "height": 256, "num_frames": 33, "steps": 50}));
    let id = submit(&a, &slow, "").json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_state(&a, &id, "running");
    let pid = server.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
}

#[test]
fn twenty_concurrent_submissions_all_finish_or_get_429() {
    let server = start("concurrent", &["--queue-size", "8"]);
    let addr = server.addr.clone();
    let handles: Vec<_> = (0..20)
        .map(|i| {
            let a = addr.clone();
            std::thread::spawn(move || {
                let r = submit(&a, &small_job(serde_json::json!({"seed": i})), "");
                (
                    r.status,
                    (r.status == 202).then(|| r.json()["id"].as_str().unwrap().to_string()),
                )
            })
        })
        .collect();
    let results: Vec<(u16, Option<String>)> =
        handles.into_iter().map(|h| h.join().unwrap()).collect();
    let accepted: Vec<&String> = results.iter().filter_map(|(_, id)| id.as_ref()).collect();
    let rejected = results.iter().filter(|(s, _)| *s == 429).count();
    assert_eq!(
        accepted.len() + rejected,
        20,
        "every submission is accepted or refused: {results:?}"
    );
    assert!(accepted.len() >= 8, "the queue holds 8: {results:?}");
    for id in accepted {
        wait_state(&addr, id, "done");
    }
}
