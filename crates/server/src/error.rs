use std::net::SocketAddr;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

/// Start-up and serving failures of the server process.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Serve(std::io::Error),
    #[error("{setting}: {source}")]
    Device {
        /// The setting naming the device (`LTX_DEVICE`, `INSTANTID_DEVICE`).
        setting: &'static str,
        source: ltx_gpu::GpuError,
    },
    #[error("configuration: {0}")]
    Config(String),
    #[error("output folder {path}: {source}")]
    OutputDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the worker thread: {0}")]
    Worker(std::io::Error),
}

/// Every error a route returns; [`IntoResponse`] is the one place errors become HTTP.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no route for {method} {path}")]
    NotFound { method: String, path: String },
    #[error("no job {0}")]
    NoSuchJob(String),
    #[error("no model family {family:?}; known: {known}")]
    NoSuchFamily { family: String, known: String },
    #[error("the result of job {0} was deleted by the retention policy")]
    Gone(String),
    #[error("job {id} is {state}: the result exists only for done jobs")]
    NotReady { id: String, state: &'static str },
    #[error("the request body must be JSON (Content-Type: application/json) or multipart/form-data, got {0:?}")]
    UnsupportedMediaType(String),
    #[error("the request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("malformed request: {0}")]
    BadRequest(String),
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// A photo in which the face detector found no face.
    #[error("{field}: {message}")]
    NoFace {
        field: &'static str,
        message: String,
    },
    #[error(
        "insufficient host memory for this job: it needs about {} (estimated peak resident \
         memory of the server, with tiled decoding) and the host budget is {} \
         (LTX_HOST_BUDGET); lower width, height or num_frames",
        crate::host_memory::gb(*estimate_bytes),
        crate::host_memory::gb(*budget_bytes)
    )]
    InsufficientMemory {
        estimate_bytes: u64,
        budget_bytes: u64,
    },
    #[error("the queue is full ({capacity} jobs waiting); retry later")]
    QueueFull { capacity: usize },
    #[error("the worker has stopped; the server is shutting down or unhealthy")]
    Unavailable,
    #[error("not configured: {0}")]
    NotConfigured(String),
    #[error("job {id} failed: {error}")]
    JobFailed { id: String, error: String },
    #[error("internal error: {0}")]
    Internal(String),
}

#[derive(Serialize)]
struct ErrorBody {
    error_type: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    estimate_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    budget_bytes: Option<u64>,
}

impl ApiError {
    fn status_and_type(&self) -> (StatusCode, &'static str) {
        match self {
            Self::NotFound { .. } | Self::NoSuchJob(_) | Self::NoSuchFamily { .. } => {
                (StatusCode::NOT_FOUND, "not_found")
            }
            Self::Gone(_) => (StatusCode::GONE, "gone"),
            Self::NotReady { .. } => (StatusCode::CONFLICT, "not_ready"),
            Self::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Self::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::Invalid { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "validation"),
            Self::NoFace { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "no_face"),
            Self::InsufficientMemory { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "insufficient_memory")
            }
            Self::QueueFull { .. } => (StatusCode::TOO_MANY_REQUESTS, "queue_full"),
            Self::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::NotConfigured(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_configured"),
            Self::JobFailed { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "job_failed"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error_type) = self.status_and_type();
        if status.is_server_error() {
            tracing::error!("{self}");
        }
        let field = match &self {
            Self::Invalid { field, .. } | Self::NoFace { field, .. } => Some(*field),
            _ => None,
        };
        let (estimate_bytes, budget_bytes) = match &self {
            Self::InsufficientMemory {
                estimate_bytes,
                budget_bytes,
            } => (Some(*estimate_bytes), Some(*budget_bytes)),
            _ => (None, None),
        };
        let body = ErrorBody {
            error_type,
            message: self.to_string(),
            field,
            estimate_bytes,
            budget_bytes,
        };
        let mut resp = (status, Json(body)).into_response();
        if matches!(self, Self::QueueFull { .. }) {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
        }
        resp
    }
}
