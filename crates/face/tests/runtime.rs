//! Which ONNX Runtime library is used and which provider a session gets. One test: it changes
//! `LTX_ONNXRUNTIME` for this process, and the library is loaded once per process.

use std::path::Path;

use ltx_face::runtime::{self, open_session, FaceDevice, SessionOptions, LIBRARY_ENV};

#[test]
fn library_choice_and_provider_fallback() {
    let user = std::env::var_os(LIBRARY_ENV);
    std::env::set_var(LIBRARY_ENV, "/nonexistent/libonnxruntime.so");
    let e = runtime::locate().expect_err("a missing file").to_string();
    assert!(
        e.contains("LTX_ONNXRUNTIME=/nonexistent/libonnxruntime.so is not a file"),
        "{e}"
    );
    match &user {
        Some(v) => std::env::set_var(LIBRARY_ENV, v),
        None => std::env::remove_var(LIBRARY_ENV),
    }
    let (lib, source) =
        runtime::locate().expect("the provisioned library (scripts/setup.sh) or LTX_ONNXRUNTIME");
    assert_eq!(
        source,
        if user.is_some() {
            LIBRARY_ENV
        } else {
            "provisioned"
        }
    );
    let info = runtime::info().expect("loads");
    assert_eq!(info.library, lib);
    if user.is_none() {
        assert_eq!(info.version, "1.32.0", "the pinned release");
        assert!(!info.cuda_provider, "the pinned wheel is CPU-only");
    }

    let model = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/face/antelopev2/genderage.onnx");
    let (_, p) = open_session(
        &model,
        &SessionOptions {
            device: FaceDevice::Cpu,
            threads: 1,
        },
    )
    .expect("opens");
    assert_eq!(
        (p.name, p.fallback_reason.as_deref()),
        ("CPUExecutionProvider", None)
    );
    let (_, p) = open_session(
        &model,
        &SessionOptions {
            device: FaceDevice::Cuda(0),
            threads: 1,
        },
    )
    .expect("opens");
    if !info.cuda_provider {
        assert_eq!(p.name, "CPUExecutionProvider");
        let why = p.fallback_reason.expect("a visible reason");
        assert!(why.contains("has no CUDA execution provider"), "{why}");
    }
    let e = open_session(
        &model,
        &SessionOptions {
            device: FaceDevice::Cpu,
            threads: 0,
        },
    )
    .expect_err("0 threads");
    assert!(e.to_string().contains("at least 1"), "{e}");
    let e = open_session(
        &model.with_file_name("missing.onnx"),
        &SessionOptions::default(),
    )
    .expect_err("no file");
    assert!(e.to_string().contains("missing.onnx"), "{e}");

    assert_eq!(
        "cuda".parse::<FaceDevice>().expect("cuda"),
        FaceDevice::Cuda(0)
    );
    assert_eq!(
        "cuda:3".parse::<FaceDevice>().expect("cuda:3"),
        FaceDevice::Cuda(3)
    );
    assert_eq!("cpu".parse::<FaceDevice>().expect("cpu"), FaceDevice::Cpu);
    for bad in ["gpu", "cuda:-1", "cuda:x", ""] {
        assert!(
            bad.parse::<FaceDevice>().is_err(),
            "{bad:?} should be refused"
        );
    }
}
