//! What this machine offers, for `ltx-i2v doctor` and the server's `/v1/system`.

use serde::Serialize;

use crate::cuda::{self, MemoryStats};
use crate::kernels::{self, KernelRegistry, NvrtcStatus};
use crate::libs::{self, LibraryReport};

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

/// One kernel entry loaded into a device (`cuModuleLoadData` + `cuModuleGetFunction`), with
/// the resources the driver reports for it.
#[derive(Debug, Clone, Serialize)]
pub struct EntryReport {
    pub device: usize,
    pub kernel: String,
    pub entry: String,
    /// "ok", or why it could not be loaded.
    pub status: String,
    pub registers: Option<i32>,
    /// Local memory per thread (spills and stack arrays): 0 is what we want.
    pub local_bytes: Option<i32>,
    pub static_shared_bytes: Option<i32>,
    pub max_threads_per_block: Option<i32>,
}

/// The `.entry` names of a PTX module.
pub fn ptx_entries(ptx: &str) -> Vec<String> {
    ptx.lines()
        .filter_map(|l| {
            let rest = l.split(".entry").nth(1)?;
            let name: String = rest
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '$')
                .collect();
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

/// Loads every entry of every kernel into each device and reads its resources.
pub fn entry_report(devices: &[DeviceReport]) -> Vec<EntryReport> {
    let mut out = Vec::new();
    for d in devices {
        let registry = match cuda::open(d.index)
            .map_err(crate::GpuError::from)
            .and_then(KernelRegistry::new)
        {
            Ok(r) => r,
            Err(e) => {
                out.push(EntryReport::failed(d.index, "*", "*", e.to_string()));
                continue;
            }
        };
        for k in kernels::KERNELS {
            let ptx = match kernels::compile(k, registry.arch()) {
                Ok(p) => p,
                Err(e) => {
                    out.push(EntryReport::failed(d.index, k.name, "*", e.to_string()));
                    continue;
                }
            };
            for entry in ptx_entries(&ptx) {
                let r = registry.function(k.name, &entry).and_then(|f| {
                    Ok((
                        f.num_regs()?,
                        f.local_size_bytes()?,
                        f.shared_size_bytes()?,
                        f.max_threads_per_block()?,
                    ))
                });
                out.push(match r {
                    Ok((regs, local, shared, threads)) => EntryReport {
                        device: d.index,
                        kernel: k.name.to_string(),
                        entry,
                        status: "ok".into(),
                        registers: Some(regs),
                        local_bytes: Some(local),
                        static_shared_bytes: Some(shared),
                        max_threads_per_block: Some(threads),
                    },
                    Err(e) => EntryReport::failed(d.index, k.name, &entry, e.to_string()),
                });
            }
        }
    }
    out
}

impl EntryReport {
    fn failed(device: usize, kernel: &str, entry: &str, why: String) -> Self {
        Self {
            device,
            kernel: kernel.into(),
            entry: entry.into(),
            status: why,
            registers: None,
            local_bytes: None,
            static_shared_bytes: None,
            max_threads_per_block: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DoctorReport {
    pub torch_version: &'static str,
    pub cuda: CudaReport,
    pub nvrtc: NvrtcStatus,
    pub kernels: Vec<KernelReport>,
    /// Every kernel entry loaded into each device (empty without a device).
    pub entries: Vec<EntryReport>,
    /// The CUDA and torch libraries this process actually loaded (after the checks above).
    pub libraries: LibraryReport,
}

/// Everything `ltx-i2v doctor` prints: kernels are compiled for each device's architecture,
/// or for the CI architectures when there is no device, and loaded into each device; then the
/// libraries the process ended up with.
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
    let kernels = kernel_report(&archs);
    let entries = entry_report(&cuda.devices);
    DoctorReport {
        torch_version: crate::torch_version(),
        cuda,
        nvrtc,
        kernels,
        entries,
        libraries: libs::report(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn entries_are_read_from_ptx() {
        let ptx = ".version 9.0\n.target sm_90\n.visible .entry tile_accumulate_f32(\n\t.param .align 8 .b8 p[64]\n)\n{\n}\n.visible .entry sliced_attention_bf16_d64(\n";
        assert_eq!(
            super::ptx_entries(ptx),
            vec!["tile_accumulate_f32", "sliced_attention_bf16_d64"]
        );
    }
}
