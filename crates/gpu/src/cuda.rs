//! Making CUDA usable at run time on a binary built without it.
//!
//! The build links only libtorch's CPU libraries. On a GPU host, CUDA support comes from the
//! `libtorch_cuda.so` of a full torch install, loaded here with `RTLD_NOW | RTLD_GLOBAL` before
//! the first CUDA call, so its static initialisers register ATen's CUDA hooks. The order of
//! checks gives the most useful reason first: the driver, then libtorch_cuda, then the device.

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use cudarc::driver::CudaContext;
use serde::Serialize;

use crate::{ffi, GpuError};

/// Environment variable naming `libtorch_cuda.so` (or the folder holding it).
pub const LIBTORCH_CUDA_ENV: &str = "LTX_LIBTORCH_CUDA";

/// Why CUDA cannot be used on this machine, in the order it is checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CudaUnavailable {
    #[error(
        "no NVIDIA driver: libcuda.so (the CUDA driver library) was not found on this machine"
    )]
    NoDriver,
    #[error(
        "libtorch_cuda.so could not be loaded ({reason}); tried: {tried}. \
         Set {LIBTORCH_CUDA_ENV} to the libtorch_cuda.so of a torch 2.11 CUDA install, \
         or install torch 2.11 for python3"
    )]
    LibtorchCuda { tried: String, reason: String },
    #[error("the NVIDIA driver is present but reports no CUDA device")]
    NoDevice,
    #[error("CUDA device {index} does not exist: this machine has {count} CUDA device(s)")]
    NoSuchDevice { index: usize, count: usize },
    #[error("CUDA initialisation failed: {0}")]
    InitFailed(String),
}

/// CUDA as found on this machine, after libtorch_cuda was loaded and ATen initialised.
#[derive(Debug)]
pub struct CudaRuntime {
    pub device_count: usize,
    /// Where libtorch_cuda.so came from (None: it was already linked in).
    pub libtorch_cuda: Option<PathBuf>,
}

static RUNTIME: OnceLock<Result<CudaRuntime, CudaUnavailable>> = OnceLock::new();

/// Loads and initialises CUDA once per process; later calls return the same answer.
pub fn runtime() -> Result<&'static CudaRuntime, CudaUnavailable> {
    RUNTIME.get_or_init(init).as_ref().map_err(Clone::clone)
}

/// Loads CUDA before anything may touch torch's CUDA hooks for `device` (moving a tensor
/// there, pinning memory, seeding its generator): torch decides once per process whether CUDA
/// exists, so a CUDA call made before libtorch_cuda is loaded disables CUDA for good. A no-op
/// for other devices.
pub fn ensure_for(device: tch::Device) -> Result<(), CudaUnavailable> {
    if let tch::Device::Cuda(index) = device {
        let rt = runtime()?;
        if index >= rt.device_count {
            return Err(CudaUnavailable::NoSuchDevice {
                index,
                count: rt.device_count,
            });
        }
    }
    Ok(())
}

/// Whether the NVIDIA driver library (libcuda) can be loaded. cudarc panics on its first
/// driver call when it cannot, so this check comes before any other.
pub fn driver_present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    // SAFETY: only tries to dlopen libcuda.
    *PRESENT.get_or_init(|| unsafe { cudarc::driver::sys::is_culib_present() })
}

fn init() -> Result<CudaRuntime, CudaUnavailable> {
    if !driver_present() {
        return Err(CudaUnavailable::NoDriver);
    }
    let libtorch_cuda = load_libtorch_cuda()?;
    // SAFETY: no arguments; the shim never throws across the C boundary.
    let count = unsafe { ffi::ltx_cuda_device_count() };
    if count <= 0 {
        return Err(CudaUnavailable::NoDevice);
    }
    // SAFETY: err buffer handled by ffi::call.
    ffi::call(|e, n| unsafe { ffi::ltx_cuda_init(e, n) }).map_err(CudaUnavailable::InitFailed)?;
    Ok(CudaRuntime {
        device_count: count as usize,
        libtorch_cuda,
    })
}

fn load_libtorch_cuda() -> Result<Option<PathBuf>, CudaUnavailable> {
    if is_loaded("libtorch_cuda.so") {
        return Ok(None);
    }
    let candidates = libtorch_cuda_candidates();
    if candidates.is_empty() {
        return Err(CudaUnavailable::LibtorchCuda {
            tried: format!("${LIBTORCH_CUDA_ENV} (unset) and python3's torch (not found)"),
            reason: "no libtorch_cuda.so found".into(),
        });
    }
    let mut reasons = Vec::new();
    for path in &candidates {
        if !path.is_file() {
            reasons.push(format!("{}: no such file", path.display()));
            continue;
        }
        if let Err(e) = check_torch_version(path) {
            reasons.push(e);
            continue;
        }
        if let Err(e) = crate::libs::same_torch(&crate::libs::loaded(), path) {
            reasons.push(e);
            continue;
        }
        match dlopen_global(path) {
            Ok(()) => return Ok(Some(path.clone())),
            Err(e) => reasons.push(e),
        }
    }
    Err(CudaUnavailable::LibtorchCuda {
        tried: candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        reason: reasons.join("; "),
    })
}

/// `$LTX_LIBTORCH_CUDA` (a file or a folder), then the torch package python3 would import.
fn libtorch_cuda_candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os(LIBTORCH_CUDA_ENV).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        out.push(if p.is_dir() {
            p.join("libtorch_cuda.so")
        } else {
            p
        });
    }
    if let Some(dir) = python_torch_dir() {
        out.push(dir.join("lib/libtorch_cuda.so"));
    }
    out
}

/// The torch package folder, found without importing torch (which takes seconds).
fn python_torch_dir() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import importlib.util as u; s = u.find_spec('torch'); print(s.submodule_search_locations[0] if s else '')",
        ])
        .output()
        .ok()?;
    let dir = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !dir.is_empty()).then(|| PathBuf::from(dir))
}

/// Refuses a libtorch_cuda from another torch release than the headers we were built with:
/// mixing releases fails later, in confusing ways, instead of here.
fn check_torch_version(lib: &Path) -> Result<(), String> {
    let version_py = match lib.parent().and_then(Path::parent) {
        Some(pkg) => pkg.join("version.py"),
        None => return Ok(()),
    };
    let Ok(text) = std::fs::read_to_string(&version_py) else {
        return Ok(()); // a bare libtorch folder has no version.py; dlopen will tell
    };
    let found = text
        .lines()
        .find_map(|l| l.strip_prefix("__version__"))
        .and_then(|l| l.split(['\'', '"']).nth(1))
        .unwrap_or("");
    let release = found.split('+').next().unwrap_or("");
    if release == crate::torch_version() {
        Ok(())
    } else {
        Err(format!(
            "{} is torch {found}, this binary needs torch {}",
            lib.display(),
            crate::torch_version()
        ))
    }
}

fn is_loaded(soname: &str) -> bool {
    let Ok(name) = CString::new(soname) else {
        return false;
    };
    // SAFETY: RTLD_NOLOAD only looks the library up; the handle's reference is dropped at once.
    unsafe {
        let h = libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD);
        if h.is_null() {
            return false;
        }
        libc::dlclose(h);
    }
    true
}

fn dlopen_global(path: &Path) -> Result<(), String> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("{}: path contains NUL", path.display()))?;
    // SAFETY: dlopen/dlerror with a valid C string. The handle is deliberately never closed:
    // libtorch_cuda stays loaded for the life of the process.
    unsafe {
        if libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL).is_null() {
            let err = libc::dlerror();
            let msg = if err.is_null() {
                "dlopen failed".to_string()
            } else {
                CStr::from_ptr(err).to_string_lossy().into_owned()
            };
            return Err(msg);
        }
    }
    Ok(())
}

/// Environment variable that makes the GPU suite fail instead of skip when CUDA is not usable
/// (`1`/`true`; `0`/`false` turns the automatic check below off).
pub const REQUIRE_CUDA_ENV: &str = "LTX_REQUIRE_CUDA";

/// Why CUDA must work in this process, or None: `LTX_REQUIRE_CUDA=1`, or (unless it is `0`)
/// `nvidia-smi -L` listing a GPU. On such a host a GPU test or benchmark that cannot open a
/// device has found a bug (a library not found, a wrong path, a broken driver), not a machine
/// without a GPU, so it must fail rather than pass as skipped.
pub fn cuda_required() -> Option<String> {
    static REQUIRED: OnceLock<Option<String>> = OnceLock::new();
    REQUIRED
        .get_or_init(|| {
            let env = std::env::var(REQUIRE_CUDA_ENV).ok();
            let smi = || {
                Command::new("nvidia-smi")
                    .arg("-L")
                    .output()
                    .ok()
                    .filter(|o| o.status.success())
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            };
            required_reason(env.as_deref(), smi)
        })
        .clone()
}

/// [`cuda_required`]'s rule, given the variable and a way to ask nvidia-smi.
pub fn required_reason(
    env: Option<&str>,
    nvidia_smi_l: impl FnOnce() -> Option<String>,
) -> Option<String> {
    match env.map(|v| v.trim().to_ascii_lowercase()) {
        Some(v) if matches!(v.as_str(), "1" | "true" | "yes" | "on") => {
            return Some(format!("{REQUIRE_CUDA_ENV}={v}"))
        }
        Some(v) if matches!(v.as_str(), "0" | "false" | "no" | "off") => return None,
        _ => {}
    }
    let listing = nvidia_smi_l()?;
    let gpu = listing
        .lines()
        .find(|l| l.trim_start().starts_with("GPU "))?;
    Some(format!("nvidia-smi lists {}", gpu.trim()))
}

/// For the GPU suite (tests and benchmarks): CUDA device `index`; or, where CUDA is not usable,
/// `Ok(None)` after printing `skipped: no CUDA device (reason)` to stderr — unless CUDA is
/// required here ([`cuda_required`]), when it is an error saying both why it is required and
/// why it is not usable.
pub fn open_for_suite(index: usize) -> Result<Option<CudaDevice>, String> {
    match open(index) {
        Ok(d) => Ok(Some(d)),
        Err(e) => match cuda_required() {
            Some(why) => Err(format!(
                "CUDA is required here ({why}) but cuda:{index} is not usable: {e}"
            )),
            None => {
                // Straight to the stderr handle, not eprintln!: the test harness captures the
                // latter, and a skip must stay visible (CI counts these lines).
                use std::io::Write as _;
                let _ = writeln!(std::io::stderr(), "skipped: no CUDA device ({e})");
                Ok(None)
            }
        },
    }
}

/// Devices the CUDA runtime reports through c10, without loading anything: 0 on a machine
/// without a driver or device.
pub fn visible_device_count() -> usize {
    // SAFETY: no arguments; c10::cuda::device_count is noexcept.
    unsafe { ffi::ltx_cuda_device_count() }.max(0) as usize
}

/// An initialised CUDA device: torch can allocate on it and cudarc holds its primary context
/// (the one libtorch uses), so tensor pointers go straight into our kernels.
#[derive(Debug, Clone)]
pub struct CudaDevice {
    index: usize,
    ctx: Arc<CudaContext>,
}

impl PartialEq for CudaDevice {
    fn eq(&self, other: &Self) -> bool {
        self.index == other.index
    }
}
impl Eq for CudaDevice {}

/// Opens CUDA device `index`, loading and initialising CUDA first if needed.
pub fn open(index: usize) -> Result<CudaDevice, CudaUnavailable> {
    let rt = runtime()?;
    if index >= rt.device_count {
        return Err(CudaUnavailable::NoSuchDevice {
            index,
            count: rt.device_count,
        });
    }
    let ctx = CudaContext::new(index).map_err(|e| CudaUnavailable::InitFailed(e.to_string()))?;
    Ok(CudaDevice { index, ctx })
}

/// The caching allocator's view of one device, as `torch.cuda.memory_stats` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MemoryStats {
    pub allocated_bytes: u64,
    pub reserved_bytes: u64,
    pub peak_allocated_bytes: u64,
    pub peak_reserved_bytes: u64,
}

impl CudaDevice {
    pub fn index(&self) -> usize {
        self.index
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub fn name(&self) -> Result<String, GpuError> {
        Ok(self.ctx.name()?)
    }

    /// (major, minor), e.g. (9, 0) for an H100.
    pub fn compute_capability(&self) -> Result<(i32, i32), GpuError> {
        Ok(self.ctx.compute_capability()?)
    }

    /// (free, total) bytes as the driver reports them.
    pub fn mem_info(&self) -> Result<(usize, usize), GpuError> {
        Ok(self.ctx.mem_get_info()?)
    }

    fn device_arg(&self) -> i32 {
        self.index as i32
    }

    pub fn memory_stats(&self) -> Result<MemoryStats, GpuError> {
        let mut s = ffi::ltx_mem_stats::default();
        let d = self.device_arg();
        // SAFETY: `s` outlives the call; err buffer handled by ffi::call.
        ffi::call(|e, n| unsafe { ffi::ltx_cuda_memory_stats(d, &mut s, e, n) })
            .map_err(GpuError::Cuda)?;
        let u = |v: i64| v.max(0) as u64;
        Ok(MemoryStats {
            allocated_bytes: u(s.allocated_bytes),
            reserved_bytes: u(s.reserved_bytes),
            peak_allocated_bytes: u(s.peak_allocated_bytes),
            peak_reserved_bytes: u(s.peak_reserved_bytes),
        })
    }

    pub fn reset_peak_stats(&self) -> Result<(), GpuError> {
        let d = self.device_arg();
        // SAFETY: err buffer handled by ffi::call.
        ffi::call(|e, n| unsafe { ffi::ltx_cuda_reset_peak_stats(d, e, n) }).map_err(GpuError::Cuda)
    }

    /// Returns the allocator's unused cached blocks to the driver (`torch.cuda.empty_cache`).
    pub fn empty_cache(&self) -> Result<(), GpuError> {
        // SAFETY: err buffer handled by ffi::call.
        ffi::call(|e, n| unsafe { ffi::ltx_cuda_empty_cache(e, n) }).map_err(GpuError::Cuda)
    }

    /// Caps what torch's allocator may take on this device, as a fraction of its total memory
    /// (used to behave like a 16 GB card on a larger one).
    pub fn set_memory_fraction(&self, fraction: f64) -> Result<(), GpuError> {
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(GpuError::InvalidArgument(format!(
                "memory fraction must be in (0, 1], got {fraction}"
            )));
        }
        let d = self.device_arg();
        // SAFETY: err buffer handled by ffi::call.
        ffi::call(|e, n| unsafe { ffi::ltx_cuda_set_memory_fraction(fraction, d, e, n) })
            .map_err(GpuError::Cuda)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_torch(version: &str) -> (PathBuf, PathBuf) {
        let root =
            std::env::temp_dir().join(format!("ltx-fake-torch-{}-{version}", std::process::id()));
        std::fs::create_dir_all(root.join("lib")).unwrap();
        std::fs::write(
            root.join("version.py"),
            format!("__version__ = '{version}'\n"),
        )
        .unwrap();
        let lib = root.join("lib/libtorch_cuda.so");
        (root, lib)
    }

    #[test]
    fn cuda_is_required_when_asked_or_when_nvidia_smi_lists_a_gpu() {
        let smi_gpu = || Some("GPU 0: NVIDIA H200 (UUID: GPU-1234)\n".to_string());
        let no_smi = || None;
        assert_eq!(required_reason(None, no_smi), None);
        assert_eq!(
            required_reason(Some("1"), no_smi).as_deref(),
            Some("LTX_REQUIRE_CUDA=1")
        );
        assert_eq!(
            required_reason(None, smi_gpu).as_deref(),
            Some("nvidia-smi lists GPU 0: NVIDIA H200 (UUID: GPU-1234)")
        );
        assert_eq!(
            required_reason(Some("0"), smi_gpu),
            None,
            "explicit opt-out"
        );
        assert_eq!(
            required_reason(None, || Some("No devices were found\n".into())),
            None
        );
    }

    #[test]
    fn refuses_a_libtorch_cuda_of_another_torch_release() {
        let (root, lib) = fake_torch("2.5.1+cu121");
        let err = check_torch_version(&lib).unwrap_err();
        assert!(
            err.contains("is torch 2.5.1+cu121, this binary needs torch 2.11.0"),
            "{err}"
        );
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn accepts_the_same_release_with_any_local_tag() {
        let (root, lib) = fake_torch("2.11.0+cu130");
        assert_eq!(check_torch_version(&lib), Ok(()));
        std::fs::remove_dir_all(root).unwrap();
    }
}
