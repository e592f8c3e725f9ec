use std::sync::Arc;

use axum::extract::State;
use axum::http::{Method, Uri};
use axum::routing::get;
use axum::{Json, Router};
use ltx_gpu::device::ResolvedDevice;
use ltx_gpu::report::{self, CudaReport};
use ltx_gpu::DeviceSpec;
use serde::Serialize;

use crate::{ApiError, ServeConfig, ServerError};

/// Shared, read-only state of the routes.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    ltx_device: DeviceSpec,
    resolved: ResolvedDevice,
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
        Ok(Self {
            inner: Arc::new(Inner {
                ltx_device: config.ltx_device,
                resolved,
            }),
        })
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/system", get(system))
        .fallback(not_found)
        .with_state(state)
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
}

async fn health() -> Json<Health> {
    Json(Health { status: "ok" })
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
