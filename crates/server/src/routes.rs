use std::sync::{Arc, OnceLock};

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, Method, Uri};
use axum::response::IntoResponse;
use axum::{Json, Router};
use ltx_gpu::device::ResolvedDevice;
use ltx_gpu::report::{self, CudaReport};
use ltx_gpu::DeviceSpec;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::admission::Planner;
use crate::config::Limits;
use crate::family::{Family, FamilyReport, FamilyState, OffloadReport, Unloaded, FAMILIES};
use crate::host_memory::HostBudget;
use crate::jobs::JobStore;
use crate::metrics::{Gauges, Metrics};
use crate::model_facts::ModelFacts;
use crate::worker::{self, Command, WorkerConfig};
use crate::{jobs_api, retention, ApiError, ServeConfig, ServerError};
use ltx_pipelines::budget::HostPlacement;

/// Shared state of the routes: settings, the job store and the worker's queue.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    ltx_device: DeviceSpec,
    resolved: ResolvedDevice,
    model: String,
    jobs: JobStore,
    queue: mpsc::Sender<Command>,
    family: Family,
    metrics: Arc<Metrics>,
    config: ServeConfig,
    openapi: OnceLock<String>,
    planner: Planner,
}

impl AppState {
    /// Checks the configured device against the machine: an explicit `cuda:N` that is not
    /// usable stops the server here, with the reason; `auto` falls back to the CPU and says why.
    /// Takes back the results of an earlier run that are still within retention.
    pub fn new(config: &ServeConfig) -> Result<Self, ServerError> {
        let resolved = config.ltx_device.resolve()?;
        match &resolved {
            ResolvedDevice::Cpu {
                cuda_unavailable: Some(why),
            } => tracing::warn!("LTX_DEVICE=auto: using the CPU ({why})"),
            other => tracing::info!(device = ?other.tch_device(), "LTX-Video device"),
        }
        std::fs::create_dir_all(&config.output_dir).map_err(|source| ServerError::OutputDir {
            path: config.output_dir.clone(),
            source,
        })?;
        let jobs = JobStore::default();
        retention::restore(
            &jobs,
            &config.output_dir,
            config.retention(),
            crate::jobs::unix_now(),
        )
        .map_err(|source| ServerError::OutputDir {
            path: config.output_dir.clone(),
            source,
        })?;
        let model = worker::model_description(config.ltx_model.as_deref());
        if config.ltx_model.is_none() {
            tracing::warn!("no LTX_MODEL configured: serving the demo model (random weights, videos are noise)");
        }
        let on_cuda = matches!(resolved, ResolvedDevice::Cuda(_));
        let offload = OffloadReport::new(config.ltx_offload(), on_cuda);
        if let Some(note) = &offload.note {
            tracing::info!("LTX-Video offload: {note}");
        }
        let family = Family::new(FamilyReport {
            name: FAMILIES[0],
            state: FamilyState::Unloaded,
            device: device_name(&resolved),
            model: model.clone(),
            gpu_bytes: 0,
            host_bytes: 0,
            offload,
            load_seconds: None,
            loads: 0,
        });
        let placement = if on_cuda {
            // The VRAM planner may offload any job: count the pinned copies.
            HostPlacement::Cuda(ltx_pipelines::OffloadMode::Model)
        } else {
            HostPlacement::Cpu
        };
        let facts = ModelFacts::read(
            config.ltx_model.as_deref(),
            config.ltx_upsampler.as_deref(),
            placement,
        )
        .map_err(|e| ServerError::Config(format!("the configured model: {e}")))?;
        let host = HostBudget::at_start(
            &config
                .ltx_host_budget
                .parse()
                .map_err(ServerError::Config)?,
        );
        tracing::info!(
            budget = %crate::host_memory::gb(host.budget_bytes),
            resident = %crate::host_memory::gb(host.baseline_bytes),
            "host memory budget (LTX_HOST_BUDGET={})",
            config.ltx_host_budget
        );
        let planner = Planner {
            facts,
            host,
            tiling: config.tile_config().map_err(ServerError::Config)?,
            tiling_on: config.ltx_enable_vae_tiling,
            attention: config.attention_backend().map_err(ServerError::Config)?,
        };
        let metrics = Arc::new(Metrics::default());
        let queue = worker::spawn(
            WorkerConfig {
                model: config.ltx_model.clone(),
                upsampler: config.ltx_upsampler.clone(),
                device: resolved.clone(),
                memory: ltx_pipelines::MemoryOptions {
                    mode: config.ltx_offload(),
                    prefetch: config.ltx_offload_prefetch,
                },
                budget: config
                    .ltx_vram_budget
                    .parse()
                    .map_err(ServerError::Config)?,
                tiling: config.tile_config().map_err(ServerError::Config)?,
                tiling_on: config.ltx_enable_vae_tiling,
                family: family.clone(),
                metrics: metrics.clone(),
                retention: config.retention(),
            },
            config.queue_size,
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                ltx_device: config.ltx_device,
                resolved,
                model,
                jobs,
                queue,
                family,
                metrics,
                config: config.clone(),
                openapi: OnceLock::new(),
                planner,
            }),
        })
    }

    pub(crate) fn jobs(&self) -> &JobStore {
        &self.inner.jobs
    }

    pub(crate) fn queue(&self) -> &mpsc::Sender<Command> {
        &self.inner.queue
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub(crate) fn queue_capacity(&self) -> usize {
        self.inner.config.queue_size
    }

    /// Commands waiting in the queue.
    pub(crate) fn queue_depth(&self) -> usize {
        self.inner.queue.max_capacity() - self.inner.queue.capacity()
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.inner.config.limits
    }

    pub(crate) fn output_dir(&self) -> &std::path::Path {
        &self.inner.config.output_dir
    }

    pub(crate) fn model_description(&self) -> &str {
        &self.inner.model
    }

    pub(crate) fn wait_timeout_s(&self) -> u64 {
        self.inner.config.wait_timeout_s
    }

    /// Whether the multi-scale flow can run: an upsampler is configured, or the demo model
    /// (which has its own) is served.
    pub(crate) fn upsampler_available(&self) -> bool {
        self.inner.config.ltx_upsampler.is_some() || self.inner.config.ltx_model.is_none()
    }

    /// The configured model's rules and the host memory plan, applied to `work`.
    pub(crate) fn admit(&self, work: &mut crate::jobs::Work) -> Result<(), ApiError> {
        self.inner.planner.admit(work, self.upsampler_available())
    }

    /// The configured model's size and frame multiples.
    pub(crate) fn multiples(&self) -> crate::model_facts::Multiples {
        self.inner.planner.facts.multiples()
    }

    pub(crate) fn condition_compression(&self) -> bool {
        self.inner.config.ltx_condition_compression
    }

    /// Cancels every unfinished job (shutdown); returns how many.
    pub fn cancel_all(&self) -> usize {
        self.inner.jobs.cancel_all()
    }

    /// Applies the result retention policy now.
    pub fn sweep_results(&self) -> retention::Swept {
        retention::sweep(
            &self.inner.jobs,
            self.inner.config.retention(),
            crate::jobs::unix_now(),
        )
    }

    /// Waits until no job runs, at most `grace`; false if one still runs.
    pub async fn wait_idle(&self, grace: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + grace;
        while self.inner.jobs.any_running() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        true
    }
}

fn device_name(d: &ResolvedDevice) -> String {
    match d {
        ResolvedDevice::Cpu { .. } => "cpu".into(),
        ResolvedDevice::Cuda(d) => format!("cuda:{}", d.index()),
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ltx-i2v",
        description = "LTX-Video image-to-video inference server. Jobs are queued, run one at a \
                       time per device, and report progress; errors are JSON \
                       `{error_type, message, field}`."
    ),
    components(schemas(ApiErrorBody))
)]
struct ApiDoc;

/// The JSON body of every error.
#[derive(Serialize, ToSchema)]
pub struct ApiErrorBody {
    /// Machine-readable: not_found, gone, not_ready, unsupported_media_type,
    /// payload_too_large, bad_request, validation, insufficient_memory, queue_full,
    /// unavailable, not_configured, job_failed, internal.
    pub error_type: String,
    pub message: String,
    /// The request field at fault (validation errors).
    pub field: Option<String>,
    /// `insufficient_memory`: the job's estimated peak resident memory, in bytes.
    pub estimate_bytes: Option<u64>,
    /// `insufficient_memory`: the host budget (`LTX_HOST_BUDGET`), in bytes.
    pub budget_bytes: Option<u64>,
}

/// An H.264 MP4 video: the response body is the file's bytes.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary, content_media_type = "video/mp4")]
#[allow(dead_code)] // documents a binary body; handlers stream the file
pub struct Mp4File(Vec<u8>);

/// The routes and their OpenAPI document, from the same handler list.
fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(system))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
        .routes(routes!(unload))
        .routes(routes!(jobs_api::submit))
        .routes(routes!(crate::service_i2v::service_i2v))
        .routes(routes!(jobs_api::status, jobs_api::cancel))
        .routes(routes!(jobs_api::result, jobs_api::result_head))
        .routes(routes!(jobs_api::events))
}

/// The OpenAPI document of this server.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().into_openapi()
}

pub fn router(state: AppState) -> Router {
    let body_limit = state.limits().max_body_bytes;
    let (routes, doc) = api().split_for_parts();
    let json = doc
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    let _ = state.inner.openapi.set(json);
    routes
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

#[derive(Serialize, ToSchema)]
struct Health {
    status: &'static str,
}

/// Liveness: answers while the process serves HTTP.
#[utoipa::path(get, path = "/health", tag = "service",
    responses((status = 200, description = "The server is up", body = Health)))]
async fn health() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness: `200` while the worker thread takes jobs, `503` once it has stopped.
#[utoipa::path(get, path = "/ready", tag = "service", responses(
    (status = 200, description = "The worker takes jobs", body = Health),
    (status = 503, description = "The worker has stopped", body = ApiErrorBody)))]
async fn ready(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    if state.queue().is_closed() {
        Err(ApiError::Unavailable)
    } else {
        Ok(Json(Health { status: "ready" }))
    }
}

#[derive(Serialize, ToSchema)]
struct DeviceChoice {
    configured: String,
    /// "cpu" or "cuda:N".
    using: String,
    /// Why `auto` chose the CPU.
    fallback_reason: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct System {
    version: &'static str,
    /// The LTX-Video model the worker serves (loaded on the first job).
    ltx_model: String,
    queue_capacity: usize,
    queue_depth: usize,
    torch_version: &'static str,
    cpu_threads: usize,
    /// Attention backend in use: sdpa, sliced or math.
    attention: &'static str,
    /// `PYTORCH_CUDA_ALLOC_CONF` as libtorch's CUDA allocator reads it from the environment.
    pytorch_cuda_alloc_conf: Option<String>,
    ltx_device: DeviceChoice,
    /// Each model family: state, device, weight bytes on GPU and host, offload mode.
    models: Vec<FamilyReport>,
    /// CUDA status and each device's memory (allocated, reserved, peaks, free, total).
    #[schema(value_type = Object)]
    cuda: CudaReport,
}

async fn cuda_report() -> Result<CudaReport, ApiError> {
    // Device queries go through the CUDA driver and c10: keep them off the async executor.
    tokio::task::spawn_blocking(report::cuda_report)
        .await
        .map_err(|e| ApiError::Internal(format!("system report task: {e}")))
}

/// Devices, memory, model families and settings.
#[utoipa::path(get, path = "/v1/system", tag = "service",
    responses((status = 200, description = "The machine and the models", body = System)))]
async fn system(State(state): State<AppState>) -> Result<Json<System>, ApiError> {
    let cuda = cuda_report().await?;
    let inner = &state.inner;
    let fallback_reason = match &inner.resolved {
        ResolvedDevice::Cpu { cuda_unavailable } => {
            cuda_unavailable.as_ref().map(ToString::to_string)
        }
        ResolvedDevice::Cuda(_) => None,
    };
    Ok(Json(System {
        version: env!("CARGO_PKG_VERSION"),
        ltx_model: state.model_description().to_string(),
        queue_capacity: state.queue_capacity(),
        queue_depth: state.queue_depth(),
        torch_version: ltx_gpu::torch_version(),
        cpu_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        attention: ltx_models::attention::backend().as_str(),
        pytorch_cuda_alloc_conf: std::env::var("PYTORCH_CUDA_ALLOC_CONF").ok(),
        ltx_device: DeviceChoice {
            configured: inner.ltx_device.to_string(),
            using: device_name(&inner.resolved),
            fallback_reason,
        },
        models: vec![inner.family.get()],
        cuda,
    }))
}

/// Prometheus metrics (text exposition format 0.0.4): queue depth, jobs by outcome, stage
/// durations, model state and weight bytes, GPU memory.
#[utoipa::path(get, path = "/metrics", tag = "service", responses(
    (status = 200, description = "Prometheus text format", content_type = "text/plain; version=0.0.4", body = String)))]
async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let cuda = cuda_report().await?;
    let families = [state.inner.family.get()];
    let text = state.metrics().render(&Gauges {
        queue_depth: state.queue_depth(),
        queue_capacity: state.queue_capacity(),
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

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "service", responses(
    (status = 200, description = "The OpenAPI 3.1 document of this server", content_type = "application/json", body = Object)))]
async fn openapi_json(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.inner.openapi.get().cloned().unwrap_or_default(),
    )
}

/// Drops a model family's weights and releases its memory (after the jobs queued before this
/// request); the next job loads it again.
#[utoipa::path(post, path = "/v1/models/{family}/unload", tag = "models",
    params(("family" = String, Path, description = "Model family: `ltx`")),
    responses(
        (status = 200, description = "Unloaded", body = Unloaded),
        (status = 404, description = "No such family", body = ApiErrorBody),
        (status = 429, description = "The queue is full", body = ApiErrorBody),
        (status = 503, description = "The worker has stopped", body = ApiErrorBody)))]
async fn unload(
    State(state): State<AppState>,
    Path(family): Path<String>,
) -> Result<Json<Unloaded>, ApiError> {
    if !FAMILIES.contains(&family.as_str()) {
        return Err(ApiError::NoSuchFamily {
            family,
            known: FAMILIES.join(", "),
        });
    }
    let (tx, rx) = oneshot::channel();
    state
        .queue()
        .try_send(Command::Unload(tx))
        .map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ApiError::QueueFull {
                capacity: state.queue_capacity(),
            },
            mpsc::error::TrySendError::Closed(_) => ApiError::Unavailable,
        })?;
    rx.await.map(Json).map_err(|_| ApiError::Unavailable)
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}
