//! Host memory planned like GPU memory (`LTX_HOST_BUDGET`), on the CPU device with the demo
//! model: the job's estimated peak resident memory against what the kernel measured
//! (`VmHWM`, the server process's peak resident set, read from /proc after the job), tiled
//! decoding turned on when it brings a job under the budget, chunked attention likewise, and
//! a job that cannot fit refused at submission with a 422 naming both numbers.

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::{request, start_in, Resp, Server};

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

fn job(width: i64, height: i64, frames: i64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "image": png_b64(), "prompt": "a red ball", "width": width, "height": height,
        "num_frames": frames, "steps": 2, "seed": 1
    }))
    .unwrap()
}

fn server(tag: &str, env: &[(&str, &str)]) -> Server {
    let dir = common::output_dir(tag);
    let _ = std::fs::remove_dir_all(&dir);
    start_in(dir, &[], env)
}

fn submit(s: &Server, body: &[u8]) -> Resp {
    request(
        &s.addr,
        "POST",
        "/v1/image-to-video",
        Some("application/json"),
        body,
    )
}

/// A `VmHWM:`/`VmRSS:` value of the server process, in bytes.
fn status_bytes(s: &Server, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{}/status", s.child.id())).unwrap();
    let line = text.lines().find(|l| l.starts_with(field)).unwrap();
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .unwrap()
        * 1024
}

fn wait_done(s: &Server, id: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let j = request(&s.addr, "GET", &format!("/v1/jobs/{id}"), None, b"").json();
        match j["state"].as_str().unwrap() {
            "done" => return j,
            "queued" | "running" => {}
            other => panic!("job ended {other}: {j}"),
        }
        assert!(Instant::now() < deadline, "job stuck: {j}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn gb(b: u64) -> f64 {
    b as f64 / 1e9
}

#[test]
fn the_estimate_bounds_the_measured_peak_resident_memory() {
    // (width, height, frames, tiled): untiled points up to ~1.5 GB, tiled ones where the
    // canvas dominates. One fresh server per point, so VmHWM is that job's process peak
    // (start-up, model load and the job).
    let grid = [
        (96, 64, 9, false),
        (256, 256, 33, false),
        (512, 512, 33, false),
        (768, 512, 65, false),
        (1280, 704, 33, false),
        (768, 512, 33, true),
        (1280, 704, 17, true),
    ];
    println!("size              tiled  measured GB  estimate GB  estimate/measured");
    for (w, h, f, tiled) in grid {
        let tiling = if tiled { "true" } else { "false" };
        let s = server(
            &format!("hwm-{w}x{h}x{f}-{tiling}"),
            &[
                ("LTX_HOST_BUDGET", "64GiB"),
                ("LTX_ENABLE_VAE_TILING", tiling),
            ],
        );
        let r = submit(&s, &job(w, h, f));
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        let plan = r.json()["host_memory"].clone();
        assert_eq!(plan["tiled_decode"], tiled, "{plan}");
        let estimate = plan["estimate_bytes"].as_u64().unwrap();
        wait_done(&s, r.json()["id"].as_str().unwrap());
        let measured = status_bytes(&s, "VmHWM:");
        let ratio = estimate as f64 / measured as f64;
        println!(
            "{:<17} {tiled:<6} {:>11.3}  {:>11.3}  {ratio:>17.2}",
            format!("{w}x{h}x{f}"),
            gb(measured),
            gb(estimate)
        );
        assert!(
            measured <= estimate && estimate <= 2 * measured,
            "{w}x{h}x{f} tiled {tiled}: measured {measured} B, estimated {estimate} B"
        );
    }
}

#[test]
fn over_the_budget_tiling_then_refusal_at_submission() {
    // 1024x704x97: about 4.5 GB untiled, 2.5 GB tiled (canvas 2 GB); a 3.5 GB budget takes
    // the tiled plan, a 1 GB one refuses it.
    let s = server("budget-tiling", &[("LTX_HOST_BUDGET", "3.5GB")]);
    let r = submit(&s, &job(1024, 704, 97));
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let j = r.json();
    let plan = &j["host_memory"];
    assert_eq!(plan["tiled_decode"], true, "{plan}");
    assert_eq!(plan["budget_bytes"], 3_500_000_000u64);
    assert!(plan["estimate_bytes"].as_u64().unwrap() <= 3_500_000_000);
    let reason = plan["reason"].as_str().unwrap();
    assert!(
        reason.contains("VAE tiling on") && reason.contains("3.50 GB host budget"),
        "{reason}"
    );
    let id = j["id"].as_str().unwrap();
    request(&s.addr, "DELETE", &format!("/v1/jobs/{id}"), None, b"");
    // A small job keeps the configured (untiled) decode.
    let small = submit(&s, &job(256, 256, 9)).json();
    assert_eq!(small["host_memory"]["tiled_decode"], false, "{small}");
    assert!(small["host_memory"]["reason"].is_null(), "{small}");

    let tight = server("budget-refuse", &[("LTX_HOST_BUDGET", "1GB")]);
    let r = submit(&tight, &job(1024, 704, 97));
    assert_eq!(r.status, 422, "{}", String::from_utf8_lossy(&r.body));
    let e = r.json();
    assert_eq!(e["error_type"], "insufficient_memory");
    let (estimate, budget) = (
        e["estimate_bytes"].as_u64().unwrap(),
        e["budget_bytes"].as_u64().unwrap(),
    );
    assert_eq!(budget, 1_000_000_000);
    assert!(estimate > budget);
    let message = e["message"].as_str().unwrap();
    for number in [
        format!("{:.2} GB", gb(estimate)),
        "1.00 GB".to_string(),
        "LTX_HOST_BUDGET".to_string(),
    ] {
        assert!(message.contains(&number), "{number}: {message}");
    }
    // Refused at submission: no job was made, nothing ran.
    let metrics = request(&tight.addr, "GET", "/metrics", None, b"");
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("ltx_jobs_accepted_total{family=\"ltx\"} 0"),
        "{text}"
    );
}

#[test]
fn materialised_attention_is_chunked_when_that_fits() {
    // With the math backend the score matrix of 1024x704x257 (23232 tokens, CFG, 4 heads) is
    // about 35 GB; chunked it is small, and tiled decoding takes the rest under 10 GB.
    let s = server(
        "budget-attention",
        &[("LTX_HOST_BUDGET", "10GB"), ("LTX_ATTENTION", "math")],
    );
    let r = submit(&s, &job(1024, 704, 257));
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let j = r.json();
    let plan = &j["host_memory"];
    assert_eq!(
        (plan["attention"].as_str(), plan["tiled_decode"].as_bool()),
        (Some("sliced"), Some(true)),
        "{plan}"
    );
    assert!(plan["reason"]
        .as_str()
        .unwrap()
        .contains("sliced attention"));
    let id = j["id"].as_str().unwrap();
    request(&s.addr, "DELETE", &format!("/v1/jobs/{id}"), None, b"");
}

#[test]
fn the_largest_valid_request_fits_the_default_budget_or_is_refused() {
    // Every advertised limit at once: 1280x704, 257 frames (steps 2, the demo model), under the
    // default budget (auto). Either refused at submission naming both numbers, or run to the
    // end without the process passing the budget.
    let s = server("budget-max", &[]);
    let r = submit(&s, &job(1280, 704, 257));
    let j = r.json();
    if r.status == 422 {
        assert_eq!(j["error_type"], "insufficient_memory", "{j}");
        assert!(
            j["estimate_bytes"].as_u64() > j["budget_bytes"].as_u64(),
            "{j}"
        );
        println!("refused at submission: {}", j["message"]);
        return;
    }
    assert_eq!(r.status, 202, "{j}");
    let budget = j["host_memory"]["budget_bytes"].as_u64().unwrap();
    let estimate = j["host_memory"]["estimate_bytes"].as_u64().unwrap();
    let done = wait_done(&s, j["id"].as_str().unwrap());
    let measured = status_bytes(&s, "VmHWM:");
    println!(
        "1280x704x257: tiled {}, measured {:.3} GB, estimated {:.3} GB, budget {:.3} GB",
        done["host_memory"]["tiled_decode"],
        gb(measured),
        gb(estimate),
        gb(budget)
    );
    assert!(measured <= estimate && estimate <= budget, "{done}");
}
