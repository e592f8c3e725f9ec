//! `ltx-i2v doctor`: what this machine can do, in a few lines. Exits 0 whether or not CUDA
//! is usable (a missing GPU is a fact to report, not a failure), except where CUDA is
//! required (`LTX_REQUIRE_CUDA=1`, or `nvidia-smi -L` lists a GPU) and is not usable, or a
//! kernel fails to load into a device.

use ltx_gpu::report;

const GIB: f64 = (1u64 << 30) as f64;

/// ONNX Runtime for face analysis: the library, and the provider the face device
/// (`INSTANTID_FACE_DEVICE`, default cpu) gets from it, with the reason for any fallback.
fn onnxruntime() -> serde_json::Value {
    let device = std::env::var("INSTANTID_FACE_DEVICE").unwrap_or_else(|_| "cpu".into());
    let planned = device.parse().and_then(ltx_face::runtime::planned_provider);
    match (ltx_face::runtime::info(), planned) {
        (Ok(info), Ok(p)) => {
            serde_json::json!({"available": true, "library": info, "face_device": device, "provider": p})
        }
        (Ok(info), Err(e)) => {
            serde_json::json!({"available": true, "library": info, "face_device": device, "error": e.to_string()})
        }
        (Err(e), _) => serde_json::json!({"available": false, "reason": e.to_string()}),
    }
}

pub fn run(json: bool) -> anyhow::Result<()> {
    let r = report::doctor();
    let ort = onnxruntime();
    if json {
        let mut v = serde_json::to_value(&r)?;
        v["onnxruntime"] = ort;
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "libtorch   {} (headers this binary was built with)",
        r.torch_version
    );
    if r.cuda.available {
        let from = r.cuda.libtorch_cuda.as_deref().unwrap_or("linked in");
        println!("CUDA       available (libtorch_cuda: {from})");
    } else {
        println!(
            "CUDA       not available: {}",
            r.cuda.reason.as_deref().unwrap_or("unknown reason")
        );
        println!("           running on the CPU; see README \"GPU usage\" to enable CUDA");
    }
    for d in &r.cuda.devices {
        println!(
            "cuda:{}     {} (sm_{}), {:.1} GiB total, {:.1} GiB free",
            d.index,
            d.name,
            d.compute_capability.replace('.', ""),
            d.total_bytes as f64 / GIB,
            d.free_bytes as f64 / GIB,
        );
    }
    match (&r.nvrtc.version, &r.nvrtc.reason) {
        (Some(v), _) => println!("NVRTC      {v}"),
        (None, reason) => println!("NVRTC      not found: {}", reason.as_deref().unwrap_or("")),
    }
    for k in &r.kernels {
        println!(
            "kernel     {} {} [{}]: {}",
            k.name, k.arch, k.compiler, k.status
        );
    }
    for e in &r.entries {
        match (e.registers, e.local_bytes, e.static_shared_bytes, e.max_threads_per_block) {
            (Some(regs), Some(local), Some(shared), Some(threads)) => println!(
                "loaded     cuda:{} {}::{}: {regs} registers, {local} B local, {shared} B shared, ≤ {threads} threads/block",
                e.device, e.kernel, e.entry
            ),
            _ => println!(
                "loaded     cuda:{} {}::{}: FAILED: {}",
                e.device, e.kernel, e.entry, e.status
            ),
        }
    }
    let l = &r.libraries;
    for (name, path) in [
        ("libcuda", &l.libcuda),
        ("libnvrtc", &l.libnvrtc),
        ("libcudart", &l.libcudart),
        ("libtorch_cpu", &l.libtorch_cpu),
        ("libtorch_cuda", &l.libtorch_cuda),
        ("libc10", &l.libc10),
        ("libc10_cuda", &l.libc10_cuda),
    ] {
        println!(
            "lib        {name:<13} {}",
            path.as_deref().unwrap_or("(not loaded)")
        );
    }
    match (&ort["library"], &ort["provider"]) {
        (lib, p) if lib.is_object() => println!(
            "onnxrt     {} ({}, {}); face device {}: {}{}",
            lib["version"].as_str().unwrap_or("?"),
            lib["library"].as_str().unwrap_or("?"),
            lib["source"].as_str().unwrap_or("?"),
            ort["face_device"].as_str().unwrap_or("?"),
            p["name"].as_str().or(ort["error"].as_str()).unwrap_or("?"),
            p["fallback_reason"]
                .as_str()
                .map(|r| format!(" (fallback: {r})"))
                .unwrap_or_default(),
        ),
        _ => println!(
            "onnxrt     not available: {}",
            ort["reason"].as_str().unwrap_or("?")
        ),
    }
    if let (Some(why), false) = (ltx_gpu::cuda::cuda_required(), r.cuda.available) {
        anyhow::bail!("CUDA is required here ({why}) but not usable");
    }
    let failed = r.entries.iter().filter(|e| e.status != "ok").count();
    if failed > 0 {
        anyhow::bail!("{failed} kernel entries failed to load (see above)");
    }
    Ok(())
}
