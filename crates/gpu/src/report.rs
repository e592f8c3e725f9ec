//! What this machine offers, for `ltx-i2v doctor` and the server's `/v1/system`.

use serde::Serialize;

use crate::cuda::{self, MemoryStats};
use crate::kernels::{self, NvrtcStatus};

#[derive(Debug, Clone, Serialize)]
pub struct CudaReport {
    pub available: bool,
    /// Why CUDA is not usable, when it is not.
    pub reason: Option<String>,
    /// Where libtorch_cuda.so was loaded from (None: linked in, or not loaded).
    pub libtorch_cuda: Option<String>,
    pub devices: Vec<DeviceReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeviceReport {
    pub index: usize,
    pub name: String,
    pub compute_capability: String,
    pub total_bytes: u64,
    pub free_bytes: u64,
    /// torch's caching allocator on this device.
    pub memory: MemoryStats,
}

/// CUDA status and every device's memory. Loads CUDA on first use (see [`cuda::runtime`]).
pub fn cuda_report() -> CudaReport {
    let rt = match cuda::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            return CudaReport {
                available: false,
                reason: Some(e.to_string()),
                libtorch_cuda: None,
                devices: Vec::new(),
            }
        }
    };
    let mut devices = Vec::new();
    let mut problems = Vec::new();
    for index in 0..rt.device_count {
        match device_report(index) {
            Ok(d) => devices.push(d),
            Err(e) => problems.push(format!("cuda:{index}: {e}")),
        }
    }
    CudaReport {
        available: !devices.is_empty(),
        reason: (!problems.is_empty()).then(|| problems.join("; ")),
        libtorch_cuda: rt.libtorch_cuda.as_ref().map(|p| p.display().to_string()),
        devices,
    }
}

fn device_report(index: usize) -> Result<DeviceReport, crate::GpuError> {
    let d = cuda::open(index)?;
    let (major, minor) = d.compute_capability()?;
    let (free, total) = d.mem_info()?;
    Ok(DeviceReport {
        index,
        name: d.name()?,
        compute_capability: format!("{major}.{minor}"),
        total_bytes: total as u64,
        free_bytes: free as u64,
        memory: d.memory_stats()?,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct KernelReport {
    pub name: String,
    pub arch: String,
    /// "ok", or the compiler's error.
    pub status: String,
    /// "nvcc" when PTX was precompiled at build time, else "nvrtc".
    pub compiler: &'static str,
}

/// Compiles every kernel for each of `archs` and reports the outcome.
pub fn kernel_report(archs: &[String]) -> Vec<KernelReport> {
    let mut out = Vec::new();
    for k in kernels::KERNELS {
        for arch in archs {
            let precompiled = k.precompiled.iter().any(|(a, _)| a == arch);
            out.push(KernelReport {
                name: k.name.to_string(),
                arch: arch.clone(),
                status: match kernels::compile(k, arch) {
                    Ok(_) => "ok".to_string(),
                    Err(e) => e.to_string(),
                },
                compiler: if precompiled { "nvcc" } else { "nvrtc" },
            });
        }
    }
    out
}

#[derive(Debug, Clone, Serialize)]
pub struct DoctorReport {
    pub torch_version: &'static str,
    pub cuda: CudaReport,
    pub nvrtc: NvrtcStatus,
    pub kernels: Vec<KernelReport>,
}

/// Everything `ltx-i2v doctor` prints: kernels are compiled for each device's architecture,
/// or for the CI architectures when there is no device.
pub fn doctor() -> DoctorReport {
    let cuda = cuda_report();
    let nvrtc = kernels::nvrtc_status();
    let mut archs: Vec<String> = cuda
        .devices
        .iter()
        .map(|d| format!("compute_{}", d.compute_capability.replace('.', "")))
        .collect();
    archs.dedup();
    if archs.is_empty() {
        archs = kernels::CI_ARCHS.iter().map(|s| s.to_string()).collect();
    }
    DoctorReport {
        torch_version: crate::torch_version(),
        cuda,
        nvrtc,
        kernels: kernel_report(&archs),
    }
}
