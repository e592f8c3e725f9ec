//! `GET /v1/system` and `GET /metrics`: the machine, each device's worker, each model family
//! (state, device, weight bytes, offload mode, loads), the face runtime and GPU memory.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use ltx_gpu::report::{self, CudaReport};
use serde::Serialize;
use utoipa::ToSchema;

use crate::devices::DeviceChoice;
use crate::family::{FamilyId, FamilyReport};
use crate::metrics::Gauges;
use crate::routes::AppState;
use crate::ApiError;

/// One device's worker.
#[derive(Serialize, ToSchema)]
pub struct WorkerReport {
    /// "cpu" or "cuda:N".
    device: String,
    /// The families whose jobs it runs, in order, under one residency manager.
    families: Vec<&'static str>,
    queue_depth: usize,
    queue_capacity: usize,
}

/// ONNX Runtime, which runs InstantID's face analysis.
#[derive(Serialize, ToSchema, Default)]
pub struct FaceRuntimeReport {
    /// `INSTANTID_FACE_DEVICE`.
    device: String,
    /// The `libonnxruntime.so` loaded.
    library: Option<String>,
    /// `LTX_ONNXRUNTIME` or `provisioned` (scripts/setup.sh).
    source: Option<String>,
    version: Option<String>,
    /// Whether the library has the CUDA execution provider.
    cuda_provider: Option<bool>,
    /// The execution provider the face networks get (CPUExecutionProvider or
    /// CUDAExecutionProvider).
    provider: Option<String>,
    /// Why the CPU is used when CUDA was asked for.
    fallback_reason: Option<String>,
    /// Why the runtime could not be loaded.
    error: Option<String>,
    /// Where the face networks come from: the `INSTANTID_FACE_MODELS` folder, `demo` (the
    /// demo family's tiny graphs), or why there are none.
    models: String,
    /// Whether the networks are open (they open on the first InstantID request).
    opened: bool,
}

/// Loads ONNX Runtime (once per process) and says what the face networks will run on.
fn face_runtime(device: &str, parsed: Result<ltx_face::FaceDevice, String>) -> FaceRuntimeReport {
    let mut r = FaceRuntimeReport {
        device: device.to_string(),
        ..Default::default()
    };
    let loaded = parsed.and_then(|d| {
        let info = ltx_face::runtime::info().map_err(|e| e.to_string())?;
        Ok((info, ltx_face::runtime::planned_provider(d)))
    });
    match loaded {
        Ok((info, provider)) => {
            r.library = Some(info.library.display().to_string());
            r.source = Some(info.source.to_string());
            r.version = Some(info.version);
            r.cuda_provider = Some(info.cuda_provider);
            match provider {
                Ok(p) => {
                    r.provider = Some(p.name.to_string());
                    r.fallback_reason = p.fallback_reason;
                }
                Err(e) => r.error = Some(e.to_string()),
            }
        }
        Err(e) => r.error = Some(e),
    }
    r
}

#[derive(Serialize, ToSchema)]
pub struct System {
    version: &'static str,
    /// The LTX-Video model (loaded on its first job).
    ltx_model: String,
    /// Jobs all the workers' queues hold, and hold now.
    queue_capacity: usize,
    queue_depth: usize,
    torch_version: &'static str,
    cpu_threads: usize,
    /// `PYTORCH_CUDA_ALLOC_CONF` as libtorch's CUDA allocator reads it from the environment.
    pytorch_cuda_alloc_conf: Option<String>,
    ltx_device: DeviceChoice,
    /// `INSTANTID_DEVICE`, when the family is served.
    instantid_device: Option<DeviceChoice>,
    /// One worker per device.
    workers: Vec<WorkerReport>,
    /// Each model family: state, device, weight bytes on GPU and host, offload mode
    /// (requested and effective), attention backend, load time and count.
    models: Vec<FamilyReport>,
    face_runtime: FaceRuntimeReport,
    /// CUDA status and each device's memory (allocated, reserved, peaks, free, total).
    #[schema(value_type = Object)]
    cuda: CudaReport,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    // Device queries go through the CUDA driver and c10, and loading ONNX Runtime reads a
    // library: keep them off the async executor.
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("system report task: {e}")))
}

/// Devices, memory, model families and settings.
#[utoipa::path(get, path = "/v1/system", tag = "service",
    responses((status = 200, description = "The machine and the models", body = System)))]
pub async fn system(State(state): State<AppState>) -> Result<Json<System>, ApiError> {
    let cuda = blocking(report::cuda_report).await?;
    let c = &state.config().instantid;
    let (device, parsed) = (c.instantid_face_device.clone(), c.face_device());
    let mut face = blocking(move || face_runtime(&device, parsed)).await?;
    face.models = match &state.faces().settings().models {
        crate::face_service::FaceModels::Folder(dir) => dir.display().to_string(),
        crate::face_service::FaceModels::Demo => "demo".into(),
        crate::face_service::FaceModels::Missing { reason } => format!("none: {reason}"),
    };
    face.opened = state.faces().is_open();
    let workers = state.workers();
    let gauges = workers.gauges();
    let device_of = |id| workers.family(id).map(|f| f.device.clone());
    Ok(Json(System {
        version: env!("CARGO_PKG_VERSION"),
        ltx_model: state.model_description(FamilyId::Ltx).unwrap_or_default(),
        queue_capacity: gauges.iter().map(|g| g.queue_capacity).sum(),
        queue_depth: gauges.iter().map(|g| g.queue_depth).sum(),
        torch_version: ltx_gpu::torch_version(),
        cpu_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        pytorch_cuda_alloc_conf: std::env::var("PYTORCH_CUDA_ALLOC_CONF").ok(),
        ltx_device: device_of(FamilyId::Ltx)
            .ok_or_else(|| ApiError::Internal("the LTX-Video family has no worker".into()))?,
        instantid_device: device_of(FamilyId::InstantId),
        workers: workers
            .workers
            .iter()
            .zip(&gauges)
            .map(|(w, g)| WorkerReport {
                device: w.device.clone(),
                families: w.families.iter().map(|f| f.as_str()).collect(),
                queue_depth: g.queue_depth,
                queue_capacity: g.queue_capacity,
            })
            .collect(),
        models: workers.families.iter().map(|f| f.report.get()).collect(),
        face_runtime: face,
        cuda,
    }))
}

/// Prometheus metrics (text exposition format 0.0.4): queue depth (all and per device), jobs
/// by family and outcome, stage durations by family, model state and weight bytes, GPU memory.
#[utoipa::path(get, path = "/metrics", tag = "service", responses(
    (status = 200, description = "Prometheus text format", content_type = "text/plain; version=0.0.4", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let cuda = blocking(report::cuda_report).await?;
    let families: Vec<FamilyReport> = state
        .workers()
        .families
        .iter()
        .map(|f| f.report.get())
        .collect();
    let text = state.metrics().render(&Gauges {
        workers: &state.workers().gauges(),
        unfinished_jobs: state.jobs().unfinished(),
        families: &families,
        cuda: &cuda,
    });
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    ))
}
