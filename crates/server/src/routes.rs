use std::sync::{Arc, OnceLock};

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{Method, Uri};
use axum::{Json, Router};
use ltx_gpu::device::ResolvedDevice;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::admission::Planner;
use crate::config::Limits;
use crate::devices::{self, Served, Workers};
use crate::families::ltx::{model_description, LtxFamily, LtxSettings};
use crate::family::{Family, FamilyId, FamilyReport, FamilyState, OffloadReport, Unloaded};
use crate::host_memory::HostBudget;
use crate::jobs::JobStore;
use crate::metrics::Metrics;
use crate::model_facts::ModelFacts;
use crate::worker::{device_name, Command};
use crate::{jobs_api, retention, ApiError, ServeConfig, ServerError};
use ltx_pipelines::budget::HostPlacement;

/// Shared state of the routes: settings, the job store and the workers' queues.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    jobs: JobStore,
    workers: Workers,
    metrics: Arc<Metrics>,
    config: ServeConfig,
    openapi: OnceLock<String>,
    planner: Planner,
    /// The face networks InstantID requests are analysed with at submission.
    faces: crate::face_service::FaceService,
    /// The request limits for portraits (`INSTANTID_MAX_*`).
    instantid_limits: Limits,
}

/// A family's report before anything is loaded.
pub(crate) fn initial_report(
    id: FamilyId,
    device: &ResolvedDevice,
    model: String,
    attention: ltx_models::attention::AttentionBackend,
    requested: ltx_pipelines::OffloadMode,
) -> Family {
    let offload = OffloadReport::new(requested, matches!(device, ResolvedDevice::Cuda(_)));
    if let Some(note) = &offload.note {
        tracing::info!("{id} offload: {note}");
    }
    Family::new(FamilyReport {
        name: id.as_str(),
        state: FamilyState::Unloaded,
        device: device_name(device),
        model,
        attention: attention.as_str().to_string(),
        gpu_bytes: 0,
        host_bytes: 0,
        offload,
        load_seconds: None,
        loads: 0,
    })
}

impl AppState {
    /// Checks each family's configured device against the machine (see [`devices::resolve`]),
    /// reads the configured models' configs, starts one worker per device, and takes back the
    /// results of an earlier run that are still within retention.
    pub fn new(config: &ServeConfig) -> Result<Self, ServerError> {
        let ltx_device = devices::resolve("LTX_DEVICE", config.ltx_device)?;
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
        if config.ltx_model.is_none() {
            tracing::warn!("no LTX_MODEL configured: serving the demo model (random weights, videos are noise)");
        }
        let on_cuda = matches!(ltx_device, ResolvedDevice::Cuda(_));
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
        let instantid = crate::families::instantid::served(&config.instantid)?;
        let faces = crate::face_service::FaceService::from_config(&config.instantid)
            .map_err(ServerError::Config)?;
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
        let tiling = config.tile_config().map_err(ServerError::Config)?;
        let attention = config.attention_backend().map_err(ServerError::Config)?;
        let planner = Planner {
            facts: facts.clone(),
            host,
            tiling: tiling.clone(),
            tiling_on: config.ltx_enable_vae_tiling,
            attention,
        };
        let metrics = Arc::new(Metrics::default());
        let ltx = LtxFamily::new(LtxSettings {
            model: config.ltx_model.clone(),
            upsampler: config.ltx_upsampler.clone(),
            device: ltx_device.tch_device(),
            memory: ltx_pipelines::MemoryOptions {
                mode: config.ltx_offload(),
                prefetch: config.ltx_offload_prefetch,
            },
            budget: config
                .ltx_vram_budget
                .parse()
                .map_err(ServerError::Config)?,
            tiling,
            tiling_on: config.ltx_enable_vae_tiling,
            attention,
            facts,
        });
        let served = vec![
            Served {
                report: initial_report(
                    FamilyId::Ltx,
                    &ltx_device,
                    model_description(config.ltx_model.as_deref()),
                    attention,
                    config.ltx_offload(),
                ),
                family: Box::new(ltx),
                configured: config.ltx_device,
                device: ltx_device,
            },
            instantid,
        ];
        let workers = Workers::start(
            served,
            host,
            metrics.clone(),
            config.retention(),
            config.queue_size,
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                jobs,
                workers,
                metrics,
                config: config.clone(),
                openapi: OnceLock::new(),
                planner,
                faces,
                instantid_limits: config.instantid.limits(&config.limits),
            }),
        })
    }

    pub(crate) fn jobs(&self) -> &JobStore {
        &self.inner.jobs
    }

    pub(crate) fn workers(&self) -> &Workers {
        &self.inner.workers
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Each worker's queue holds this many jobs.
    pub(crate) fn queue_capacity(&self) -> usize {
        self.inner.config.queue_size
    }

    pub(crate) fn config(&self) -> &ServeConfig {
        &self.inner.config
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.inner.config.limits
    }

    /// What a portrait request may ask for (the server's limits, InstantID's sizes).
    pub(crate) fn instantid_limits(&self) -> &Limits {
        &self.inner.instantid_limits
    }

    pub(crate) fn faces(&self) -> &crate::face_service::FaceService {
        &self.inner.faces
    }

    pub(crate) fn output_dir(&self) -> &std::path::Path {
        &self.inner.config.output_dir
    }

    /// The model a family serves, as jobs report it.
    pub(crate) fn model_description(&self, family: FamilyId) -> Option<String> {
        self.inner
            .workers
            .family(family)
            .map(|f| f.report.get().model)
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

    pub(crate) fn openapi_json(&self) -> String {
        self.inner.openapi.get().cloned().unwrap_or_default()
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

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ltx-i2v",
        description = "LTX-Video image-to-video and InstantID portrait inference server. Jobs \
                       are queued, run one at a time per device (each model family on its \
                       configured device), and report progress; errors are JSON \
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

/// A PNG image: the response body is the file's bytes.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary, content_media_type = "image/png")]
#[allow(dead_code)] // documents a binary body; handlers stream the file
pub struct PngFile(Vec<u8>);

/// The routes and their OpenAPI document, from the same handler list.
fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(crate::system::system))
        .routes(routes!(crate::system::metrics))
        .routes(routes!(openapi_json))
        .routes(routes!(unload))
        .routes(routes!(jobs_api::submit))
        .routes(routes!(crate::service_i2v::service_i2v))
        .routes(routes!(crate::service_instantid::submit_instantid))
        .routes(routes!(crate::service_instantid::service_instantid))
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

/// Readiness: `200` while every device's worker takes jobs, `503` once one has stopped.
#[utoipa::path(get, path = "/ready", tag = "service", responses(
    (status = 200, description = "The workers take jobs", body = Health),
    (status = 503, description = "A worker has stopped", body = ApiErrorBody)))]
async fn ready(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    if state.workers().all_running() {
        Ok(Json(Health { status: "ready" }))
    } else {
        Err(ApiError::Unavailable)
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "service", responses(
    (status = 200, description = "The OpenAPI 3.1 document of this server", content_type = "application/json", body = Object)))]
async fn openapi_json(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        state.openapi_json(),
    )
}

/// Drops a model family's weights and releases its memory (after the jobs queued before this
/// request on its device's worker); the next job loads it again.
#[utoipa::path(post, path = "/v1/models/{family}/unload", tag = "models",
    params(("family" = String, Path, description = "Model family: `ltx` or `instantid`")),
    responses(
        (status = 200, description = "Unloaded", body = Unloaded),
        (status = 404, description = "No such family", body = ApiErrorBody),
        (status = 429, description = "The queue is full", body = ApiErrorBody),
        (status = 503, description = "The worker has stopped", body = ApiErrorBody)))]
async fn unload(
    State(state): State<AppState>,
    Path(family): Path<String>,
) -> Result<Json<Unloaded>, ApiError> {
    let served: Vec<&str> = state
        .workers()
        .families
        .iter()
        .map(|f| f.id.as_str())
        .collect();
    let Some((id, queue)) =
        FamilyId::parse(&family).and_then(|id| Some((id, state.workers().queue(id)?)))
    else {
        return Err(ApiError::NoSuchFamily {
            family,
            known: served.join(", "),
        });
    };
    let (tx, rx) = oneshot::channel();
    queue
        .try_send(Command::Unload(id, tx))
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
