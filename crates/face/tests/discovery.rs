//! Model discovery on real folders: antelopev2's and buffalo_l's names, and the errors a user
//! sees for a missing or unusable file.

use std::path::{Path, PathBuf};

use ltx_face::{discover, Role};

fn fixture_models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/face/antelopev2")
}

/// A fresh folder holding copies of fixture files under new names.
fn folder(tag: &str, files: &[(&str, Option<&str>)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ltx-face-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    for (name, from) in files {
        match from {
            Some(src) => std::fs::copy(fixture_models().join(src), dir.join(name)).map(|_| ()),
            None => std::fs::write(dir.join(name), b"\x0a\x05trunc"),
        }
        .expect("write");
    }
    dir
}

#[test]
fn antelopev2_folder_as_downloaded() {
    let m = discover(&fixture_models()).expect("discovers");
    assert_eq!(
        m.detector.path.file_name().expect("name"),
        "scrfd_10g_bnkps.onnx"
    );
    assert_eq!(
        m.recogniser.path.file_name().expect("name"),
        "glintr100.onnx"
    );
    let roles: Vec<(String, Role)> = m
        .files
        .iter()
        .map(|f| {
            (
                f.path
                    .file_name()
                    .expect("name")
                    .to_string_lossy()
                    .into_owned(),
                f.role,
            )
        })
        .collect();
    assert_eq!(
        roles,
        [
            ("2d106det.onnx".into(), Role::Landmark),
            ("genderage.onnx".into(), Role::Attribute),
            ("glintr100.onnx".into(), Role::Recogniser),
            ("scrfd_10g_bnkps.onnx".into(), Role::Detector),
        ]
    );
    assert_eq!(m.detector.input, "[1, 3, ?, ?]");
    assert_eq!(m.recogniser.input, "[?, 3, 112, 112]");
}

#[test]
fn buffalo_l_names_work_too() {
    let dir = folder(
        "buffalo",
        &[
            ("det_10g.onnx", Some("scrfd_10g_bnkps.onnx")),
            ("w600k_r50.onnx", Some("glintr100.onnx")),
            ("genderage.onnx", Some("genderage.onnx")),
            ("README.txt", None),
        ],
    );
    let m = discover(&dir).expect("discovers");
    assert_eq!(m.detector.path.file_name().expect("name"), "det_10g.onnx");
    assert_eq!(
        m.recogniser.path.file_name().expect("name"),
        "w600k_r50.onnx"
    );
    assert_eq!(m.files.len(), 3, "only .onnx files are routed");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn first_file_of_a_task_wins_in_sorted_order() {
    let dir = folder(
        "order",
        &[
            ("b_rec.onnx", Some("glintr100.onnx")),
            ("a_rec.onnx", Some("glintr100.onnx")),
            ("det.onnx", Some("scrfd_10g_bnkps.onnx")),
        ],
    );
    let m = discover(&dir).expect("discovers");
    assert_eq!(m.recogniser.path.file_name().expect("name"), "a_rec.onnx");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn missing_recogniser_names_glintr100_and_lists_what_was_found() {
    let dir = folder(
        "norec",
        &[
            ("scrfd_10g_bnkps.onnx", Some("scrfd_10g_bnkps.onnx")),
            ("genderage.onnx", Some("genderage.onnx")),
        ],
    );
    let e = discover(&dir).expect_err("no recogniser").to_string();
    assert!(e.contains("no recogniser"), "{e}");
    assert!(
        e.contains("expected glintr100.onnx (antelopev2) or w600k_r50.onnx (buffalo_l)"),
        "{e}"
    );
    assert!(e.contains("found genderage.onnx (attribute, input [1, 3, 96, 96], 1 outputs), scrfd_10g_bnkps.onnx (detector"), "{e}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn unusable_file_is_reported_with_its_reason() {
    let dir = folder(
        "broken",
        &[
            ("scrfd_10g_bnkps.onnx", Some("scrfd_10g_bnkps.onnx")),
            ("glintr100.onnx", None),
        ],
    );
    let e = discover(&dir).expect_err("broken recogniser").to_string();
    assert!(e.contains("glintr100.onnx (unreadable: "), "{e}");
    let empty = folder("empty", &[]);
    let e = discover(&empty).expect_err("empty").to_string();
    assert!(
        e.contains("no detector: found no .onnx files; expected scrfd_10g_bnkps.onnx"),
        "{e}"
    );
    let e = discover(&empty.join("nope"))
        .expect_err("missing")
        .to_string();
    assert!(e.contains("cannot read the folder"), "{e}");
    std::fs::remove_dir_all(dir).ok();
    std::fs::remove_dir_all(empty).ok();
}

#[test]
fn a_nested_download_folder_is_pointed_out() {
    let outer = folder("nested", &[]);
    std::fs::create_dir_all(outer.join("antelopev2")).expect("subfolder");
    std::fs::copy(
        fixture_models().join("glintr100.onnx"),
        outer.join("antelopev2/glintr100.onnx"),
    )
    .expect("copy");
    let e = discover(&outer)
        .expect_err("nothing at the top")
        .to_string();
    assert!(
        e.contains("found no .onnx files here, but")
            && e.contains("antelopev2 has some: point at that folder"),
        "{e}"
    );
    std::fs::remove_dir_all(outer).ok();
}

#[test]
fn face_analysis_can_move_to_a_worker_thread() {
    fn send<T: Send>() {}
    send::<ltx_face::FaceAnalysis>();
}
