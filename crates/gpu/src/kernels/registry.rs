use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use cudarc::driver::{CudaFunction, CudaModule};
use cudarc::nvrtc::{CompileError, CompileOptions, Ptx};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::KernelSource;
use crate::cuda::CudaDevice;
use crate::GpuError;

/// Whether NVRTC can be loaded, and which version.
#[derive(Debug, Clone, Serialize)]
pub struct NvrtcStatus {
    pub available: bool,
    pub version: Option<String>,
    pub reason: Option<String>,
}

pub fn nvrtc_status() -> NvrtcStatus {
    match nvrtc_version() {
        Ok(v) => NvrtcStatus {
            available: true,
            version: Some(v),
            reason: None,
        },
        Err(e) => NvrtcStatus {
            available: false,
            version: None,
            reason: Some(e),
        },
    }
}

fn nvrtc_version() -> Result<String, String> {
    // SAFETY: only tries to dlopen libnvrtc; cudarc panics on first use when it is absent.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(
            "libnvrtc.so was not found (scripts/setup.sh puts it next to libtorch; on a GPU host \
             it comes with torch's nvidia-cuda-nvrtc package)"
                .into(),
        );
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present; both out-pointers are valid.
    let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    if r != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(format!("nvrtcVersion failed: {r:?}"));
    }
    static BUILTINS: OnceLock<()> = OnceLock::new();
    BUILTINS.get_or_init(|| preload_builtins(major, minor));
    Ok(format!("{major}.{minor}"))
}

/// libnvrtc dlopens `libnvrtc-builtins.so.X.Y` when it compiles, searching only the default
/// paths (the wheel's libnvrtc has no RUNPATH), so our binary's RUNPATH does not reach it.
/// Loading it here from libnvrtc's own folder makes that later dlopen find it by soname.
fn preload_builtins(major: i32, minor: i32) {
    // cudarc already dlopened libnvrtc; find which file it is through one of its symbols.
    let symbol = [format!("libnvrtc.so.{major}"), "libnvrtc.so".to_string()]
        .iter()
        .filter_map(|name| std::ffi::CString::new(name.as_str()).ok())
        .find_map(|name| {
            // SAFETY: RTLD_NOLOAD only looks up an already loaded library; dlsym reads it.
            unsafe {
                let h = libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD);
                let sym = if h.is_null() {
                    std::ptr::null_mut()
                } else {
                    libc::dlsym(h, c"nvrtcVersion".as_ptr())
                };
                (!sym.is_null()).then_some(sym)
            }
        });
    let Some(symbol) = symbol else {
        return;
    };
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr only reads the loader's tables; `info` is a valid out-pointer.
    if unsafe { libc::dladdr(symbol, &mut info) } == 0 || info.dli_fname.is_null() {
        return;
    }
    // SAFETY: dli_fname is a NUL-terminated path owned by the loader.
    let lib = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) };
    let Some(dir) = std::path::Path::new(&*lib.to_string_lossy())
        .parent()
        .map(PathBuf::from)
    else {
        return;
    };
    let builtins = dir.join(format!("libnvrtc-builtins.so.{major}.{minor}"));
    let Ok(c) = std::ffi::CString::new(builtins.as_os_str().as_encoded_bytes()) else {
        return;
    };
    // SAFETY: plain dlopen of a file path; the handle stays open for the process's life.
    if builtins.is_file()
        && unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) }.is_null()
    {
        tracing::warn!("could not preload {}", builtins.display());
    }
}

type CacheKey = (String, [u8; 32]);

fn memory_cache() -> &'static Mutex<HashMap<CacheKey, String>> {
    static CACHE: OnceLock<Mutex<HashMap<CacheKey, String>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// `$LTX_KERNEL_CACHE`, else `$XDG_CACHE_HOME/ltx-i2v/kernels`, else `~/.cache/ltx-i2v/kernels`.
fn disk_cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("LTX_KERNEL_CACHE").filter(|d| !d.is_empty()) {
        return Some(d.into());
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("ltx-i2v/kernels"))
}

/// PTX for `kernel` on `arch` (`compute_XY`): nvcc's from build time if there is one, else
/// NVRTC's, cached per (arch, source hash).
pub fn compile(kernel: &KernelSource, arch: &str) -> Result<String, GpuError> {
    if let Some((_, ptx)) = kernel.precompiled.iter().find(|(a, _)| *a == arch) {
        return Ok((*ptx).to_string());
    }
    let hash: [u8; 32] = Sha256::digest(kernel.source.as_bytes()).into();
    let key = (arch.to_string(), hash);
    if let Some(ptx) = lock(memory_cache()).get(&key) {
        return Ok(ptx.clone());
    }
    let hex: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
    let file = disk_cache_dir().map(|d| d.join(format!("{}-{arch}-{hex}.ptx", kernel.name)));
    let ptx = match file.as_ref().and_then(|f| std::fs::read_to_string(f).ok()) {
        Some(ptx) => ptx,
        None => {
            let ptx = nvrtc_compile(kernel, arch)?;
            if let Some(f) = &file {
                let written = f
                    .parent()
                    .map_or(Ok(()), std::fs::create_dir_all)
                    .and_then(|()| std::fs::write(f, &ptx));
                if let Err(e) = written {
                    tracing::warn!("could not cache kernel PTX in {}: {e}", f.display());
                }
            }
            ptx
        }
    };
    lock(memory_cache()).insert(key, ptx.clone());
    Ok(ptx)
}

fn nvrtc_compile(kernel: &KernelSource, arch: &str) -> Result<String, GpuError> {
    nvrtc_version().map_err(GpuError::NvrtcUnavailable)?;
    if kernel.source.contains('\0') {
        return Err(GpuError::InvalidArgument(format!(
            "kernel {} source contains a NUL byte",
            kernel.name
        )));
    }
    let opts = CompileOptions {
        name: Some(format!("{}.cu", kernel.name)),
        options: vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()],
        ..Default::default()
    };
    match cudarc::nvrtc::compile_ptx_with_opts(kernel.source, opts) {
        Ok(ptx) => Ok(ptx.to_src()),
        Err(CompileError::CompileError { log, .. }) => Err(GpuError::KernelCompile {
            kernel: kernel.name.to_string(),
            arch: arch.to_string(),
            log: log.to_string_lossy().into_owned(),
        }),
        Err(e) => Err(GpuError::KernelCompile {
            kernel: kernel.name.to_string(),
            arch: arch.to_string(),
            log: format!("{e:?}"),
        }),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Kernels loaded into one device's primary context, compiled for its architecture.
pub struct KernelRegistry {
    device: CudaDevice,
    arch: String,
    modules: Mutex<HashMap<&'static str, std::sync::Arc<CudaModule>>>,
}

impl KernelRegistry {
    pub fn new(device: CudaDevice) -> Result<Self, GpuError> {
        let (major, minor) = device.compute_capability()?;
        Ok(Self {
            device,
            arch: format!("compute_{major}{minor}"),
            modules: Mutex::new(HashMap::new()),
        })
    }

    pub fn device(&self) -> &CudaDevice {
        &self.device
    }

    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// Function `func` of kernel file `kernel`, compiling and loading the module on first use.
    pub fn function(&self, kernel: &str, func: &str) -> Result<CudaFunction, GpuError> {
        let src = super::source(kernel).ok_or_else(|| GpuError::UnknownKernel(kernel.into()))?;
        let mut modules = lock(&self.modules);
        let module = match modules.get(src.name) {
            Some(m) => m.clone(),
            None => {
                let ptx = compile(src, &self.arch)?;
                let m = self.device.context().load_module(Ptx::from_src(ptx))?;
                modules.insert(src.name, m.clone());
                m
            }
        };
        Ok(module.load_function(func)?)
    }
}
