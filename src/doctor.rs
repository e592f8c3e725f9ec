//! `ltx-i2v doctor`: what this machine can do, in a few lines. Exits 0 whether or not CUDA
//! is usable; a missing GPU is a fact to report, not a failure.

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
    Ok(())
}
