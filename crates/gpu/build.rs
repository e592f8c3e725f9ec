//! Builds the C++ shim over c10's CUDA API, generates Rust bindings for it and for
//! `kernels/abi.h`, and embeds the kernel sources (plus PTX when `nvcc` is available).

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Architectures precompiled with nvcc when it exists; NVRTC covers any other at run time.
const PTX_ARCHS: &[&str] = &["compute_80", "compute_89", "compute_90"];

type Result<T> = std::result::Result<T, String>;

fn main() {
    if let Err(e) = run() {
        panic!("ltx-gpu build: {e}");
    }
}

fn run() -> Result<()> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let out = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let libtorch = build_support::emit_libtorch_rpath()?;
    let cuda_include = cuda_include_dir(&libtorch)?;

    build_shim(&manifest, &libtorch, &cuda_include)?;
    bind(
        &manifest.join("shim/ltx_shim.h"),
        &out.join("shim_bindings.rs"),
        "ltx_.*",
    )?;
    let kernels = manifest.join("../../kernels");
    bind(
        &kernels.join("abi.h"),
        &out.join("abi_bindings.rs"),
        "ltx_.*",
    )?;
    embed_kernels(&kernels, &out, &cuda_include)
}

/// The CUDA runtime headers: `LTX_CUDA_INCLUDE`, the ones setup.sh extracted next to libtorch,
/// or a CUDA toolkit's.
fn cuda_include_dir(libtorch: &Path) -> Result<PathBuf> {
    println!("cargo:rerun-if-env-changed=LTX_CUDA_INCLUDE");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = env::var_os("LTX_CUDA_INCLUDE") {
        candidates.push(dir.into());
    }
    candidates.push(libtorch.join("cuda/include"));
    if let Some(home) = env::var_os("CUDA_HOME") {
        candidates.push(PathBuf::from(home).join("include"));
    }
    candidates.push("/usr/local/cuda/include".into());
    candidates
        .iter()
        .find(|d| d.join("cuda_runtime_api.h").is_file())
        .cloned()
        .ok_or_else(|| {
            format!(
                "no CUDA headers (cuda_runtime_api.h) in {candidates:?}: run scripts/setup.sh or set LTX_CUDA_INCLUDE"
            )
        })
}

fn build_shim(manifest: &Path, libtorch: &Path, cuda_include: &Path) -> Result<()> {
    let cpp = manifest.join("shim/ltx_shim.cpp");
    println!("cargo:rerun-if-changed={}", cpp.display());
    println!(
        "cargo:rerun-if-changed={}",
        manifest.join("shim/ltx_shim.h").display()
    );
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .std("c++17")
        .include(manifest.join("shim"))
        .include(libtorch.join("include"))
        .include(libtorch.join("include/torch/csrc/api/include"))
        .include(cuda_include)
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .flag_if_supported("-Wno-unused-parameter")
        .file(&cpp)
        .try_compile("ltx_shim")
        .map_err(|e| format!("compiling the c10 CUDA shim: {e}"))?;
    println!(
        "cargo:rustc-link-search=native={}",
        libtorch.join("lib").display()
    );
    println!("cargo:rustc-link-lib=dylib=c10_cuda");
    // cudaHostAlloc/cudaFreeHost for the pinned arena; libtorch_cpu needs this library anyway.
    println!("cargo:rustc-link-lib=dylib:+verbatim=libcudart.so.13");
    println!("cargo:rustc-link-lib=dylib=c10");
    // The unpickler behind ltx_torch_load_tensors.
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    Ok(())
}

fn bind(header: &Path, out: &Path, allow: &str) -> Result<()> {
    println!("cargo:rerun-if-changed={}", header.display());
    bindgen::Builder::default()
        .header(header.display().to_string())
        .allowlist_function(allow)
        .allowlist_type(allow)
        .derive_default(true)
        .layout_tests(true)
        .generate()
        .map_err(|e| format!("bindgen on {}: {e}", header.display()))?
        .write_to_file(out)
        .map_err(|e| format!("writing {}: {e}", out.display()))
}

/// Inlines `#include "abi.h"` so NVRTC needs no include path, writes each kernel's source
/// (and PTX when nvcc exists) to OUT_DIR, and generates the table `src/kernels.rs` includes.
fn embed_kernels(dir: &Path, out: &Path, cuda_include: &Path) -> Result<()> {
    println!("cargo:rerun-if-changed={}", dir.display());
    println!("cargo:rerun-if-env-changed=NVCC");
    let abi_path = dir.join("abi.h");
    let abi = fs::read_to_string(&abi_path).map_err(|e| format!("{}: {e}", abi_path.display()))?;
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    files.sort();
    let nvcc = find_nvcc();
    let mut table = String::from("&[\n");
    for path in &files {
        println!("cargo:rerun-if-changed={}", path.display());
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .ok_or_else(|| format!("bad kernel file name {}", path.display()))?;
        let src = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let inlined = src.replace("#include \"abi.h\"", &abi);
        let src_out = out.join(format!("{name}.cu"));
        fs::write(&src_out, &inlined).map_err(|e| e.to_string())?;
        let mut ptx = String::from("&[");
        if let Some(nvcc) = &nvcc {
            for arch in PTX_ARCHS {
                let ptx_out = out.join(format!("{name}.{arch}.ptx"));
                let status = Command::new(nvcc)
                    .args(["--ptx", &format!("-arch={arch}"), "-I"])
                    .arg(cuda_include)
                    .arg("-o")
                    .arg(&ptx_out)
                    .arg(&src_out)
                    .status()
                    .map_err(|e| format!("running {}: {e}", nvcc.display()))?;
                if !status.success() {
                    return Err(format!("nvcc failed on kernel {name} for {arch}"));
                }
                write!(
                    ptx,
                    "({arch:?}, include_str!({:?})),",
                    ptx_out.display().to_string()
                )
                .map_err(|e| e.to_string())?;
            }
        }
        ptx.push(']');
        writeln!(
            table,
            "    KernelSource {{ name: {name:?}, source: include_str!({:?}), precompiled: {ptx} }},",
            src_out.display().to_string()
        )
        .map_err(|e| e.to_string())?;
    }
    table.push(']');
    fs::write(out.join("kernel_table.rs"), table).map_err(|e| e.to_string())
}

fn find_nvcc() -> Option<PathBuf> {
    if let Some(p) = env::var_os("NVCC") {
        return Some(p.into());
    }
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|d| d.join("nvcc"))
        .find(|p| p.is_file())
}
