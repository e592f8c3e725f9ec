//! `ltx-i2v doctor`: what this machine can do, in a few lines. Exits 0 whether or not CUDA
//! is usable (a missing GPU is a fact to report, not a failure), except where CUDA is
//! required (`LTX_REQUIRE_CUDA=1`, or `nvidia-smi -L` lists a GPU) and is not usable, or a
//! kernel fails to load into a device.

use ltx_gpu::report;

const GIB: f64 = (1u64 << 30) as f64;

pub fn run(json: bool) -> anyhow::Result<()> {
    let r = report::doctor();
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
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
    if let (Some(why), false) = (ltx_gpu::cuda::cuda_required(), r.cuda.available) {
        anyhow::bail!("CUDA is required here ({why}) but not usable");
    }
    let failed = r.entries.iter().filter(|e| e.status != "ok").count();
    if failed > 0 {
        anyhow::bail!("{failed} kernel entries failed to load (see above)");
    }
    Ok(())
}
