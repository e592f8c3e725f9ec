//! Records where `scripts/setup.sh` provisions ONNX Runtime (`<workspace>/.onnxruntime`), so a
//! build run from this checkout finds the library at run time the way libtorch's RUNPATH does.
//! Nothing is linked or downloaded here: `ort` loads the library when face analysis starts.

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let dir = std::path::Path::new(&manifest).join("../../.onnxruntime");
    let dir = dir.canonicalize().unwrap_or(dir);
    println!("cargo:rustc-env=LTX_FACE_ONNXRUNTIME_DIR={}", dir.display());
    println!("cargo:rerun-if-changed=build.rs");
}
