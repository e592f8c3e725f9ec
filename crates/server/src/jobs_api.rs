//! The image-to-video API: submit a job, follow it, fetch its video, cancel it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::error::TrySendError;

use crate::jobs::{Job, JobState, JobStatus};
use crate::request::I2vRequest;
use crate::routes::AppState;
use crate::ApiError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitQuery {
    /// Answer with the MP4 itself when the job finishes within the server's wait limit.
    #[serde(default)]
    wait: bool,
}

#[derive(Serialize)]
struct Submitted {
    #[serde(flatten)]
    status: JobStatus,
    status_url: String,
    result_url: String,
}

fn submitted(status: JobStatus) -> Response {
    let status_url = format!("/v1/jobs/{}", status.id);
    let result_url = format!("/v1/jobs/{}/result", status.id);
    let mut resp = (
        StatusCode::ACCEPTED,
        Json(Submitted {
            status,
            status_url: status_url.clone(),
            result_url,
        }),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&status_url) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

fn parse_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<I2vRequest, ApiError> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ctype
        .trim()
        .to_ascii_lowercase()
        .starts_with("application/json")
    {
        return Err(ApiError::UnsupportedMediaType(ctype.to_string()));
    }
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge {
                limit: state.limits().max_body_bytes,
            }
        } else {
            ApiError::BadRequest(e.body_text())
        }
    })?;
    serde_json::from_slice(&body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::Invalid {
            field: "body",
            message: e.to_string(),
        },
        _ => ApiError::BadRequest(format!("not valid JSON: {e}")),
    })
}

/// `POST /v1/image-to-video`.
pub async fn submit(
    State(state): State<AppState>,
    query: Result<Query<SubmitQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let request = parse_body(&state, &headers, body)?;
    let limits = state.limits().clone();
    // Decoding a large image takes a while: keep it off the async executor.
    let work = tokio::task::spawn_blocking(move || request.validate(&limits))
        .await
        .map_err(|e| ApiError::Internal(format!("validation task: {e}")))??;
    let job = state.enqueue(work)?;
    if !query.wait {
        return Ok(submitted(job.status()));
    }
    wait_for(&state, &job).await
}

async fn wait_for(state: &AppState, job: &Arc<Job>) -> Result<Response, ApiError> {
    let mut rx = job.subscribe();
    let finished = tokio::time::timeout(state.wait_timeout(), async {
        loop {
            if rx.borrow_and_update().state.is_terminal() {
                return true;
            }
            if rx.changed().await.is_err() {
                return false;
            }
        }
    })
    .await
    .unwrap_or(false);
    let status = job.status();
    match (finished, status.state) {
        (true, JobState::Done) => video(job).await,
        (true, JobState::Failed) => Err(ApiError::JobFailed {
            id: status.id,
            error: status.error.unwrap_or_default(),
        }),
        (true, JobState::Cancelled) => Err(ApiError::NotReady {
            id: status.id,
            state: "cancelled",
        }),
        _ => Ok(submitted(status)),
    }
}

async fn video(job: &Job) -> Result<Response, ApiError> {
    let bytes = tokio::fs::read(&job.output)
        .await
        .map_err(|e| ApiError::Internal(format!("reading {}: {e}", job.output.display())))?;
    let disposition = format!("inline; filename=\"{}.mp4\"", job.id);
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("video/mp4")),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_str(&disposition).unwrap_or(HeaderValue::from_static("inline")),
            ),
        ],
        bytes,
    )
        .into_response())
}

fn find(state: &AppState, id: &str) -> Result<Arc<Job>, ApiError> {
    state
        .jobs()
        .get(id)
        .ok_or_else(|| ApiError::NoSuchJob(id.to_string()))
}

/// `GET /v1/jobs/{id}`.
pub async fn status(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobStatus>, ApiError> {
    Ok(Json(find(&state, &id)?.status()))
}

/// `GET /v1/jobs/{id}/result` (HEAD too): the MP4 of a done job.
pub async fn result(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let job = find(&state, &id)?;
    match job.status().state {
        JobState::Done => video(&job).await,
        other => Err(ApiError::NotReady {
            id,
            state: other.as_str(),
        }),
    }
}

/// `GET /v1/jobs/{id}/events`: server-sent events, one per change of the job (named after its
/// state; the data is the job as JSON), ending after the final state. Fast consecutive
/// changes may arrive as one event with the latest status.
pub async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let rx = find(&state, &id)?.subscribe();
    let stream =
        futures_util::stream::unfold((rx, false, true), |(mut rx, finished, first)| async move {
            if finished || (!first && rx.changed().await.is_err()) {
                return None;
            }
            let status = rx.borrow_and_update().clone();
            let event = Event::default()
                .event(status.state.as_str())
                .json_data(&status)
                .unwrap_or_else(|e| Event::default().event("error").data(e.to_string()));
            Some((Ok(event), (rx, status.state.is_terminal(), false)))
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// `DELETE /v1/jobs/{id}`: a queued job is cancelled now, a running one at its next step.
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobStatus>, ApiError> {
    let job = find(&state, &id)?;
    job.cancel();
    Ok(Json(job.status()))
}

impl AppState {
    /// Puts a validated job in the bounded queue: a full queue is a 429, never a backlog.
    fn enqueue(&self, work: crate::jobs::Work) -> Result<Arc<Job>, ApiError> {
        let job = self
            .jobs()
            .create(
                work,
                self.model_description().to_string(),
                self.output_dir(),
            )
            .map_err(|e| ApiError::Internal(format!("job id: {e}")))?;
        match self.queue().try_send(job.clone()) {
            Ok(()) => Ok(job),
            Err(e) => {
                self.jobs().remove(&job.id);
                Err(match e {
                    TrySendError::Full(_) => ApiError::QueueFull {
                        capacity: self.queue_capacity(),
                    },
                    TrySendError::Closed(_) => ApiError::Unavailable,
                })
            }
        }
    }

    fn wait_timeout(&self) -> Duration {
        Duration::from_secs(self.wait_timeout_s())
    }
}
