use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{Method, Uri};
use axum::routing::{get, post};
use axum::{Json, Router};
use ltx_gpu::device::ResolvedDevice;
use ltx_gpu::report::{self, CudaReport};
use ltx_gpu::DeviceSpec;
use serde::Serialize;

use tokio::sync::mpsc;

use crate::config::Limits;
use crate::jobs::{Job, JobStore};
use crate::worker::{self, WorkerConfig};
use crate::{jobs_api, ApiError, ServeConfig, ServerError};

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
    queue: mpsc::Sender<Arc<Job>>,
    config: ServeConfig,
}

impl AppState {
    /// Checks the configured device against the machine: an explicit `cuda:N` that is not
    /// usable stops the server here, with the reason; `auto` falls back to the CPU and says why.
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
        let worker = WorkerConfig {
            model: config.ltx_model.clone(),
            device: resolved.clone(),
        };
        let model = worker.model_description();
        if config.ltx_model.is_none() {
            tracing::warn!("no LTX_MODEL configured: serving the demo model (random weights, videos are noise)");
        }
        let queue = worker::spawn(worker, config.queue_size)?;
        Ok(Self {
            inner: Arc::new(Inner {
                ltx_device: config.ltx_device,
                resolved,
                model,
                jobs: JobStore::default(),
                queue,
                config: config.clone(),
            }),
        })
    }

    pub(crate) fn jobs(&self) -> &JobStore {
        &self.inner.jobs
    }

    pub(crate) fn queue(&self) -> &mpsc::Sender<Arc<Job>> {
        &self.inner.queue
    }

    pub(crate) fn queue_capacity(&self) -> usize {
        self.inner.config.queue_size
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

    /// Cancels every unfinished job (shutdown); returns how many.
    pub fn cancel_all(&self) -> usize {
        self.inner.jobs.cancel_all()
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

pub fn router(state: AppState) -> Router {
    let body_limit = state.limits().max_body_bytes;
    Router::new()
        .route("/health", get(health))
        .route("/v1/system", get(system))
        .route("/v1/image-to-video", post(jobs_api::submit))
        .route(
            "/v1/jobs/{id}",
            get(jobs_api::status).delete(jobs_api::cancel),
        )
        .route("/v1/jobs/{id}/result", get(jobs_api::result))
        .route("/v1/jobs/{id}/events", get(jobs_api::events))
        .route("/ready", get(ready))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
}

async fn health() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// `200` while the worker thread takes jobs, `503` once it has stopped.
async fn ready(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    if state.queue().is_closed() {
        Err(ApiError::Unavailable)
    } else {
        Ok(Json(Health { status: "ready" }))
    }
}

#[derive(Serialize)]
struct DeviceChoice {
    configured: String,
    /// "cpu" or "cuda:N".
    using: String,
    /// Why `auto` chose the CPU.
    fallback_reason: Option<String>,
}

#[derive(Serialize)]
struct System {
    version: &'static str,
    /// The LTX-Video model the worker serves (loaded on the first job).
    ltx_model: String,
    queue_capacity: usize,
    torch_version: &'static str,
    cpu_threads: usize,
    ltx_device: DeviceChoice,
    cuda: CudaReport,
}

async fn system(State(state): State<AppState>) -> Result<Json<System>, ApiError> {
    let inner = state.inner.clone();
    // Device queries go through the CUDA driver and c10: keep them off the async executor.
    let cuda = tokio::task::spawn_blocking(report::cuda_report)
        .await
        .map_err(|e| ApiError::Internal(format!("system report task: {e}")))?;
    let (using, fallback_reason) = match &inner.resolved {
        ResolvedDevice::Cpu { cuda_unavailable } => (
            "cpu".to_string(),
            cuda_unavailable.as_ref().map(ToString::to_string),
        ),
        ResolvedDevice::Cuda(d) => (format!("cuda:{}", d.index()), None),
    };
    Ok(Json(System {
        version: env!("CARGO_PKG_VERSION"),
        ltx_model: state.model_description().to_string(),
        queue_capacity: state.queue_capacity(),
        torch_version: ltx_gpu::torch_version(),
        cpu_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        ltx_device: DeviceChoice {
            configured: inner.ltx_device.to_string(),
            using,
            fallback_reason,
        },
        cuda,
    }))
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}
