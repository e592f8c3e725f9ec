//! `ltx-i2v faces` as a user runs it, on the face fixtures (tiny antelopev2-shaped graphs and
//! synthetic photos, with insightface 2.1's results in reference.json).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ltx-i2v");

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/face")
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ltx-faces-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

fn faces(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("faces")
        .arg("--face-models")
        .arg(fixtures().join("antelopev2"))
        .args(["--threads", "1"])
        .args(args)
        .env("LTX_LOG", "warn")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("runs")
}

#[test]
fn json_matches_insightface_and_files_are_written() {
    let dir = scratch("json");
    let kps = dir.join("kps.png");
    let group = fixtures().join("images/group.png");
    let out = faces(&[
        "--json",
        "--kps-out",
        kps.to_str().expect("utf-8"),
        "--crops-dir",
        dir.join("crops").to_str().expect("utf-8"),
        group.to_str().expect("utf-8"),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("reference.json")).expect("reference"),
    )
    .expect("JSON");
    let want = &reference["images"]["group"];
    assert_eq!(got["width"], 400);
    assert_eq!(got["instantid_face"], want["instantid_face"]);
    let (g, w) = (
        got["faces"].as_array().expect("faces"),
        want["faces"].as_array().expect("faces"),
    );
    assert_eq!(g.len(), w.len());
    for (a, b) in g.iter().zip(w) {
        for (x, y) in a["bbox"]
            .as_array()
            .expect("bbox")
            .iter()
            .zip(b["bbox"].as_array().expect("bbox"))
        {
            assert!(
                (x.as_f64().expect("x") - y.as_f64().expect("y")).abs() <= 1e-3,
                "{a} vs {b}"
            );
        }
        assert_eq!(a["kps"].as_array().expect("kps").len(), 5);
        assert_eq!(a["embedding"].as_array().expect("embedding").len(), 512);
    }
    assert!(
        got["warnings"][0]
            .as_str()
            .expect("warning")
            .contains("3 faces found"),
        "{got}"
    );
    let ours = image::open(&kps).expect("kps image written").to_rgb8();
    let theirs = image::open(fixtures().join("kps/group.png"))
        .expect("fixture")
        .to_rgb8();
    assert!(
        ours == theirs,
        "keypoint image differs from InstantID's draw_kps"
    );
    for i in 0..3 {
        let crop = image::open(dir.join(format!("crops/group_face{i}.png"))).expect("crop written");
        assert_eq!((crop.width(), crop.height()), (112, 112));
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn text_report_marks_the_face_instantid_uses() {
    let out = faces(&[fixtures().join("images/large.png").to_str().expect("utf-8")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("large.png: 800x600, 5 face(s)"), "{stdout}");
    assert_eq!(
        stdout.matches("<- InstantID uses this one").count(),
        1,
        "{stdout}"
    );
    assert!(stdout.contains("|embedding|"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("on CPUExecutionProvider"), "{stderr}");
}

#[test]
fn photo_without_a_face_fails_with_the_clear_error() {
    let out = faces(&[fixtures()
        .join("images/noface.png")
        .to_str()
        .expect("utf-8")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        stdout.contains("no face found in the image (detector threshold 0.5)"),
        "{stdout}"
    );
}

#[test]
fn folder_without_glintr100_names_it() {
    let dir = scratch("norec");
    std::fs::copy(
        fixtures().join("antelopev2/scrfd_10g_bnkps.onnx"),
        dir.join("scrfd_10g_bnkps.onnx"),
    )
    .expect("copy");
    let out = Command::new(BIN)
        .args(["faces", "--face-models", dir.to_str().expect("utf-8")])
        .arg(fixtures().join("images/group.png"))
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("no recogniser") && stderr.contains("glintr100.onnx"),
        "{stderr}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn cuda_on_a_cpu_only_library_falls_back_visibly() {
    let out = faces(&[
        "--device",
        "cuda:0",
        fixtures()
            .join("images/portrait.png")
            .to_str()
            .expect("utf-8"),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if std::env::var_os("LTX_ONNXRUNTIME").is_some() {
        eprintln!("skipped: LTX_ONNXRUNTIME is set (the library may have the CUDA provider)");
        return;
    }
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("on CPUExecutionProvider (fallback: ")
            && stderr.contains("has no CUDA execution provider"),
        "{stderr}"
    );
}

#[test]
fn doctor_reports_onnxruntime_and_the_face_provider() {
    let out = Command::new(BIN)
        .args(["doctor", "--json"])
        .env("INSTANTID_FACE_DEVICE", "cuda")
        .output()
        .expect("runs");
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let ort = &v["onnxruntime"];
    assert_eq!(ort["available"], true, "{ort}");
    assert_eq!(ort["face_device"], "cuda");
    if ort["library"]["cuda_provider"] == false {
        assert_eq!(ort["provider"]["name"], "CPUExecutionProvider");
        assert!(ort["provider"]["fallback_reason"]
            .as_str()
            .expect("reason")
            .contains("no CUDA execution provider"));
    }
    let out = Command::new(BIN)
        .arg("doctor")
        .env("LTX_ONNXRUNTIME", "/nonexistent.so")
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("onnxrt     not available: ONNX Runtime is not available: LTX_ONNXRUNTIME=/nonexistent.so is not a file"), "{stdout}");
}
