//! InstantID over real HTTP with the demo family: `POST /v1/instantid` (JSON and multipart)
//! and the replaced service's `POST /instantid` answer PNGs; a photo without a face is a 422
//! on both routes; LTX-Video and InstantID jobs alternate through one server with both
//! families' states right in `/v1/system` after each.

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::{form, multipart_ctype, request, start, start_in, Resp};

fn fixture(name: &str) -> Vec<u8> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::read(root.join("tests/fixtures/face/images").join(name)).unwrap()
}

fn face_models() -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    root.join("tests/fixtures/face/antelopev2")
        .display()
        .to_string()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 3) as u8, (y * 2) as u8, 80]));
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .unwrap();
    bytes
}

fn json_job(face: &[u8], seed: u64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "face_image": b64(face), "prompt": "a portrait", "width": 64, "height": 48,
        "steps": 2, "seed": seed
    }))
    .unwrap()
}

fn post_json(addr: &str, path: &str, body: &[u8]) -> Resp {
    request(addr, "POST", path, Some("application/json"), body)
}

fn wait_done(addr: &str, id: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(300);
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

/// A done job's PNG: its bytes and size.
fn result_png(addr: &str, id: &str) -> (Vec<u8>, (u32, u32)) {
    let r = request(addr, "GET", &format!("/v1/jobs/{id}/result"), None, b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type").as_deref(), Some("image/png"));
    let img = image::load_from_memory_with_format(&r.body, image::ImageFormat::Png).unwrap();
    (r.body.clone(), (img.width(), img.height()))
}

fn submit(addr: &str, body: &[u8]) -> String {
    let r = post_json(addr, "/v1/instantid", body);
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    r.json()["id"].as_str().unwrap().to_string()
}

#[test]
fn both_routes_answer_pngs_from_the_demo_family() {
    let server = start("iid-routes", &[]);
    let a = &server.addr;
    let face = png(80, 96);

    // JSON with a base64 photo: a job of kind instantid, followed to done.
    let id = submit(a, &json_job(&face, 5));
    let s = wait_done(a, &id);
    assert_eq!(s["family"], "instantid");
    assert!(s["model"].as_str().unwrap().contains("noise"), "{s}");
    assert_eq!(
        (s["step"].as_i64(), s["total_steps"].as_i64()),
        (Some(2), Some(2))
    );
    assert!(
        s["timings"]["face_analysis"].as_f64().unwrap() >= 0.0,
        "{s}"
    );
    let (json_png, size) = result_png(a, &id);
    assert_eq!(size, (64, 48));

    // The same request as multipart file parts: the same job, the same bytes.
    let body = form(&[
        ("face_image", Some("face.png"), &face),
        ("prompt", None, b"a portrait"),
        ("width", None, b"64"),
        ("height", None, b"48"),
        ("steps", None, b"2"),
        ("seed", None, b"5"),
    ]);
    let r = request(a, "POST", "/v1/instantid", Some(&multipart_ctype()), &body);
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json()["id"].as_str().unwrap().to_string();
    wait_done(a, &id);
    assert_eq!(result_png(a, &id).0, json_png, "JSON and multipart differ");

    // `?wait=true` answers the PNG itself.
    let r = post_json(a, "/v1/instantid?wait=true", &json_job(&face, 6));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type").as_deref(), Some("image/png"));
    assert_ne!(r.body, json_png, "another seed gave the same portrait");

    // The replaced service's route: its fields, the PNG when done.
    let body = form(&[
        ("face_image", Some("face.png"), &face),
        ("prompt", None, b"a portrait"),
        ("width", None, b"64"),
        ("height", None, b"48"),
        ("num_inference_steps", None, b"2"),
        ("seed", None, b"5"),
    ]);
    let r = request(a, "POST", "/instantid", Some(&multipart_ctype()), &body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type").as_deref(), Some("image/png"));
    let img = image::load_from_memory_with_format(&r.body, image::ImageFormat::Png).unwrap();
    assert_eq!((img.width(), img.height()), (64, 48));
    // Its defaults (guidance 7.5, its negative prompt) are not /v1's: another portrait.
    assert_ne!(r.body, json_png);

    // A drop-in field the route does not know is named.
    let body = form(&[
        ("face_image", Some("face.png"), &face),
        ("prompt", None, b"a portrait"),
        ("steps", None, b"2"),
    ]);
    let r = request(a, "POST", "/instantid", Some(&multipart_ctype()), &body);
    assert_eq!(r.status, 422);
    assert!(
        r.json()["message"].as_str().unwrap().contains("steps"),
        "{}",
        r.json()
    );

    // Metrics count the family's jobs.
    let m = request(a, "GET", "/metrics", None, b"");
    let text = String::from_utf8_lossy(&m.body);
    let done = text
        .lines()
        .find_map(|l| l.strip_prefix("ltx_jobs_total{family=\"instantid\",outcome=\"done\"} "))
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(done.trim(), "4", "{text}");
}

#[test]
fn a_photo_without_a_face_is_422_on_both_routes() {
    let dir = common::output_dir("iid-noface");
    let _ = std::fs::remove_dir_all(&dir);
    let server = start_in(dir, &[], &[("INSTANTID_FACE_MODELS", &face_models())]);
    let a = &server.addr;
    let noface = fixture("noface.png");

    let r = post_json(a, "/v1/instantid", &json_job(&noface, 1));
    assert_eq!(r.status, 422, "{}", String::from_utf8_lossy(&r.body));
    let e = r.json();
    assert_eq!(e["error_type"], "no_face");
    assert_eq!(e["field"], "face_image");
    assert!(e["message"].as_str().unwrap().contains("face"), "{e}");

    let body = form(&[
        ("face_image", Some("noface.png"), &noface),
        ("prompt", None, b"a portrait"),
    ]);
    let r = request(a, "POST", "/instantid", Some(&multipart_ctype()), &body);
    assert_eq!(r.status, 422, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error_type"], "no_face");

    // A pose photo without a face names the pose field.
    let mut job: serde_json::Value =
        serde_json::from_slice(&json_job(&fixture("portrait.png"), 1)).unwrap();
    job["pose_image"] = b64(&noface).into();
    let r = post_json(a, "/v1/instantid", &serde_json::to_vec(&job).unwrap());
    assert_eq!(r.status, 422, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["field"], "pose_image");

    // A real portrait goes through the fixture networks to a PNG.
    let id = submit(a, &json_job(&fixture("portrait.png"), 2));
    wait_done(a, &id);
    assert_eq!(result_png(a, &id).1, (64, 48));
}

fn family<'a>(system: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    system["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {system}"))
}

fn video_job(seed: u64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "image": b64(&png(96, 64)), "prompt": "a red ball", "width": 96, "height": 64,
        "num_frames": 9, "steps": 2, "seed": seed
    }))
    .unwrap()
}

#[test]
fn ltx_and_instantid_jobs_alternate_with_both_states_in_system() {
    let server = start("iid-alternate", &[]);
    let a = &server.addr;
    let system = |a: &str| request(a, "GET", "/v1/system", None, b"").json();
    let s = system(a);
    for name in ["ltx", "instantid"] {
        let f = family(&s, name);
        assert_eq!(
            (f["state"].as_str(), f["loads"].as_i64()),
            (Some("unloaded"), Some(0)),
            "{f}"
        );
    }
    // One CPU device: one worker runs both families.
    let workers = s["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 1, "{s}");
    assert_eq!(
        workers[0]["families"],
        serde_json::json!(["ltx", "instantid"])
    );

    for round in 1..=2 {
        let r = post_json(a, "/v1/image-to-video", &video_job(round));
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        let job = wait_done(a, r.json()["id"].as_str().unwrap());
        assert_eq!(job["family"], "ltx");
        let s = system(a);
        let (ltx, iid) = (family(&s, "ltx"), family(&s, "instantid"));
        assert_eq!(ltx["state"], "resident", "{ltx}");
        assert_eq!(ltx["loads"], 1, "loaded once: {ltx}");
        assert!(ltx["host_bytes"].as_u64().unwrap() > 0, "{ltx}");
        // Before InstantID's first job it is unloaded; after, it stays loaded (plenty of
        // host memory for both).
        let want = if round == 1 {
            ("unloaded", 0)
        } else {
            ("resident", 1)
        };
        assert_eq!(
            (
                iid["state"].as_str().unwrap(),
                iid["loads"].as_i64().unwrap()
            ),
            want,
            "{iid}"
        );

        let id = submit(a, &json_job(&png(64, 64), round));
        let job = wait_done(a, &id);
        assert_eq!(job["family"], "instantid");
        let s = system(a);
        let (ltx, iid) = (family(&s, "ltx"), family(&s, "instantid"));
        assert_eq!(
            (iid["state"].as_str(), iid["loads"].as_i64()),
            (Some("resident"), Some(1)),
            "{iid}"
        );
        assert!(iid["host_bytes"].as_u64().unwrap() > 0, "{iid}");
        assert_eq!(
            (ltx["state"].as_str(), ltx["loads"].as_i64()),
            (Some("resident"), Some(1)),
            "{ltx}"
        );
    }

    // Unloading InstantID leaves LTX loaded; the next portrait loads it again.
    let r = request(a, "POST", "/v1/models/instantid/unload", None, b"");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let s = system(a);
    assert_eq!(family(&s, "instantid")["state"], "unloaded");
    assert_eq!(family(&s, "ltx")["state"], "resident");
    let id = submit(a, &json_job(&png(64, 64), 9));
    wait_done(a, &id);
    assert_eq!(family(&system(a), "instantid")["loads"], 2);
}
