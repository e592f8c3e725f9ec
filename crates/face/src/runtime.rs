//! ONNX Runtime for the face networks: which library, which execution provider, how many
//! threads. The library is loaded once per process (ort's `load-dynamic`): from
//! `LTX_ONNXRUNTIME` when set, else from the folder `scripts/setup.sh` provisions.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::ep::ExecutionProvider;
use ort::session::builder::SessionBuilder;
use ort::session::Session;
use serde::Serialize;

use crate::error::{FaceError, Result};

/// The variable naming a `libonnxruntime.so` to use instead of the provisioned one
/// (e.g. the `onnxruntime-gpu` wheel's, for the CUDA provider).
pub const LIBRARY_ENV: &str = "LTX_ONNXRUNTIME";
/// Where `scripts/setup.sh` put the pinned library when this crate was built.
pub const PROVISIONED_DIR: &str = env!("LTX_FACE_ONNXRUNTIME_DIR");

/// The library this process runs.
#[derive(Clone, Debug, Serialize)]
pub struct RuntimeInfo {
    pub library: PathBuf,
    /// `LTX_ONNXRUNTIME` or `provisioned`.
    pub source: &'static str,
    /// The release, from the library's build string (e.g. `1.32.0`).
    pub version: String,
    /// Whether the library was built with the CUDA execution provider.
    pub cuda_provider: bool,
}

struct Runtime {
    info: RuntimeInfo,
    env: ort::environment::Environment,
}

/// The library to load and why that one, or every place tried.
pub fn locate() -> Result<(PathBuf, &'static str)> {
    if let Some(p) = std::env::var_os(LIBRARY_ENV).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            return Err(FaceError::Runtime(format!(
                "{LIBRARY_ENV}={} is not a file (point it at a libonnxruntime.so ≥ 1.31)",
                p.display()
            )));
        }
        return Ok((p, LIBRARY_ENV));
    }
    let p = Path::new(PROVISIONED_DIR).join("libonnxruntime.so");
    if p.is_file() {
        return Ok((p, "provisioned"));
    }
    Err(FaceError::Runtime(format!(
        "{} does not exist: run scripts/setup.sh (it provisions the pinned onnxruntime), or set \
         {LIBRARY_ENV} to a libonnxruntime.so ≥ 1.31",
        p.display()
    )))
}

fn load() -> std::result::Result<Runtime, String> {
    let (library, source) = locate().map_err(|e| match e {
        FaceError::Runtime(m) => m,
        other => other.to_string(),
    })?;
    let builder = ort::init_from(&library).map_err(|e| format!("{}: {e}", library.display()))?;
    let env = builder
        .with_name("ltx-face")
        .with_telemetry(false)
        .build()
        .map_err(|e| format!("{}: creating the environment: {e}", library.display()))?;
    let version = version_string(&library).unwrap_or_else(|e| format!("unknown ({e})"));
    let cuda_provider = ort::ep::CUDA::is_available().unwrap_or(false);
    tracing::info!(library = %library.display(), source, %version, cuda_provider, "ONNX Runtime loaded");
    Ok(Runtime {
        info: RuntimeInfo {
            library,
            source,
            version,
            cuda_provider,
        },
        env,
    })
}

/// `OrtGetApiBase()->GetVersionString()` of the library (already mapped by ort: the same
/// handle), e.g. `1.32.0`.
fn version_string(library: &Path) -> std::result::Result<String, String> {
    // SAFETY: the library is ONNX Runtime, already loaded by ort; OrtGetApiBase takes no
    // arguments and returns a pointer to a static struct whose GetVersionString returns a
    // static NUL-terminated string.
    unsafe {
        let lib = libloading::Library::new(library).map_err(|e| e.to_string())?;
        let get: libloading::Symbol<unsafe extern "C" fn() -> *const ort::sys::OrtApiBase> =
            lib.get(b"OrtGetApiBase").map_err(|e| e.to_string())?;
        let base = get();
        if base.is_null() {
            return Err("OrtGetApiBase returned null".into());
        }
        let v = ((*base).GetVersionString)();
        if v.is_null() {
            return Err("no version string".into());
        }
        Ok(std::ffi::CStr::from_ptr(v).to_string_lossy().into_owned())
    }
}

fn runtime() -> Result<&'static Runtime> {
    static RT: OnceLock<std::result::Result<Runtime, String>> = OnceLock::new();
    RT.get_or_init(load)
        .as_ref()
        .map_err(|e| FaceError::Runtime(e.clone()))
}

/// Loads the library (once) and describes it.
pub fn info() -> Result<RuntimeInfo> {
    runtime().map(|r| r.info.clone())
}

/// Where the face networks run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "index")]
pub enum FaceDevice {
    Cpu,
    Cuda(i32),
}

impl std::str::FromStr for FaceDevice {
    type Err = FaceError;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || FaceError::Config(format!("face device {s:?}: expected cpu, cuda or cuda:N"));
        match s {
            "cpu" => Ok(FaceDevice::Cpu),
            "cuda" => Ok(FaceDevice::Cuda(0)),
            _ => match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse::<i32>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .map(FaceDevice::Cuda)
                    .ok_or_else(bad),
                None => Err(bad()),
            },
        }
    }
}

impl std::fmt::Display for FaceDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FaceDevice::Cpu => f.write_str("cpu"),
            FaceDevice::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// The execution provider a session actually got, and why when it is not the one asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Provider {
    /// `CPUExecutionProvider` or `CUDAExecutionProvider`.
    pub name: &'static str,
    pub device: FaceDevice,
    /// Set when CUDA was asked for and the CPU is used instead.
    pub fallback_reason: Option<String>,
}

/// The provider a session on `device` will get, as far as the library alone decides it (CUDA
/// registration itself is checked when a model opens), for reports such as `doctor`.
pub fn planned_provider(device: FaceDevice) -> Result<Provider> {
    let rt = runtime()?;
    Ok(match device {
        FaceDevice::Cpu => Provider {
            name: "CPUExecutionProvider",
            device,
            fallback_reason: None,
        },
        FaceDevice::Cuda(_) if rt.info.cuda_provider => Provider {
            name: "CUDAExecutionProvider",
            device,
            fallback_reason: None,
        },
        FaceDevice::Cuda(_) => Provider {
            name: "CPUExecutionProvider",
            device,
            fallback_reason: Some(no_cuda(&rt.info)),
        },
    })
}

fn no_cuda(info: &RuntimeInfo) -> String {
    format!(
        "{} has no CUDA execution provider (a CPU-only build); set {LIBRARY_ENV} to the \
         onnxruntime-gpu wheel's libonnxruntime.so",
        info.library.display()
    )
}

/// Session settings shared by the detector and the recogniser.
#[derive(Clone, Copy, Debug)]
pub struct SessionOptions {
    pub device: FaceDevice,
    /// Intra-op threads (inter-op is 1: the graphs run sequentially).
    pub threads: usize,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            device: FaceDevice::Cpu,
            threads: default_threads(),
        }
    }
}

/// Half the cores, at most 4: measured faster than all cores when the machine is busy.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).clamp(1, 4))
}

fn builder(rt: &Runtime, threads: usize) -> ort::Result<SessionBuilder> {
    Ok(Session::builder(&rt.env)?
        .with_intra_threads(threads)?
        .with_inter_threads(1)?
        .with_intra_op_spinning(false)?)
}

/// Opens `path` as a session on the requested device. CUDA falls back to the CPU, visibly
/// (the reason is in the returned [`Provider`] and logged), when the library lacks the CUDA
/// provider or registering it fails (no driver, no cuDNN, a bad device index).
pub fn open_session(path: &Path, opts: &SessionOptions) -> Result<(Session, Provider)> {
    if opts.threads == 0 {
        return Err(FaceError::Config("face threads must be at least 1".into()));
    }
    let rt = runtime()?;
    let fail = |e: ort::Error| FaceError::Inference {
        model: path.display().to_string(),
        problem: e.to_string(),
    };
    let cpu = |reason: Option<String>| Provider {
        name: "CPUExecutionProvider",
        device: opts.device,
        fallback_reason: reason,
    };
    let mut provider = cpu(None);
    let mut b = builder(rt, opts.threads).map_err(fail)?;
    if let FaceDevice::Cuda(index) = opts.device {
        let reason = if !rt.info.cuda_provider {
            Some(no_cuda(&rt.info))
        } else {
            let ep = ort::ep::CUDA::default()
                .with_device_id(index)
                .build()
                .error_on_failure();
            match b.with_execution_providers([ep]) {
                Ok(with_cuda) => {
                    b = with_cuda;
                    None
                }
                Err(e) => {
                    let reason =
                        format!("registering the CUDA provider on cuda:{index} failed: {e}");
                    b = e.recover();
                    Some(reason)
                }
            }
        };
        match reason {
            None => {
                provider = Provider {
                    name: "CUDAExecutionProvider",
                    device: opts.device,
                    fallback_reason: None,
                }
            }
            Some(r) => {
                tracing::warn!(model = %path.display(), reason = %r, "face analysis falls back to the CPU");
                provider = cpu(Some(r));
            }
        }
    }
    let session = b.commit_from_file(path).map_err(fail)?;
    Ok((session, provider))
}
