//! The job API: submit an image-to-video job; follow any job (video or portrait), fetch its
//! result, cancel it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::error::TrySendError;
use tower::ServiceExt;
use tower_http::services::ServeFile;
use utoipa::{IntoParams, ToSchema};

use crate::jobs::{Job, JobState, JobStatus};
use crate::request::{I2vForm, I2vRequest, TEXT_FIELDS};
use crate::routes::{ApiErrorBody, AppState, Mp4File, PngFile};
use crate::worker::Command;
use crate::ApiError;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SubmitQuery {
    /// Answer with the result itself (the MP4 or PNG) when the job finishes within the server's wait limit
    /// (otherwise `202` as without it).
    #[serde(default)]
    pub(crate) wait: bool,
}

/// A job just accepted (or still running when `?wait=true` gave up).
#[derive(Serialize, ToSchema)]
pub(crate) struct Submitted {
    #[serde(flatten)]
    #[schema(inline)]
    status: JobStatus,
    status_url: String,
    result_url: String,
}

pub(crate) fn submitted(status: JobStatus) -> Response {
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

pub(crate) fn content_type(req: &Request) -> String {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim()
        .to_string()
}

fn too_large(state: &AppState) -> ApiError {
    ApiError::PayloadTooLarge {
        limit: state.limits().max_body_bytes,
    }
}

/// A request body as it arrived: a multipart form, or the bytes of a JSON one.
pub(crate) enum RequestBody {
    Form(Multipart),
    Json(Bytes),
}

fn is_multipart(ctype: &str) -> bool {
    ctype
        .to_ascii_lowercase()
        .starts_with("multipart/form-data")
}

/// The `multipart/form-data` body of `req`; any other content type is a 415.
pub(crate) async fn read_multipart(state: &AppState, req: Request) -> Result<Multipart, ApiError> {
    let ctype = content_type(&req);
    if !is_multipart(&ctype) {
        return Err(ApiError::UnsupportedMediaType(ctype));
    }
    Multipart::from_request(req, state)
        .await
        .map_err(|e| ApiError::BadRequest(e.body_text()))
}

/// The body of `req`: a multipart form, or `application/json` read whole within the body
/// limit; any other content type is a 415.
pub(crate) async fn read_body(state: &AppState, req: Request) -> Result<RequestBody, ApiError> {
    let ctype = content_type(&req);
    if is_multipart(&ctype) {
        return Ok(RequestBody::Form(read_multipart(state, req).await?));
    }
    if !ctype.to_ascii_lowercase().starts_with("application/json") {
        return Err(ApiError::UnsupportedMediaType(ctype));
    }
    let body = Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large(state)
        } else {
            ApiError::BadRequest(e.body_text())
        }
    })?;
    Ok(RequestBody::Json(body))
}

/// The body as JSON or as a multipart form, into one request type.
async fn read_request(state: &AppState, req: Request) -> Result<I2vRequest, ApiError> {
    match read_body(state, req).await? {
        RequestBody::Form(form) => read_form(state, form).await,
        RequestBody::Json(body) => from_json(serde_json::from_slice(&body)),
    }
}

fn from_json(parsed: Result<I2vRequest, serde_json::Error>) -> Result<I2vRequest, ApiError> {
    parsed.map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::Invalid {
            field: "body",
            message: e.to_string(),
        },
        _ => ApiError::BadRequest(format!("not valid JSON: {e}")),
    })
}

/// A multipart form: the `image` part is the file, every other part a field of the JSON body
/// (numbers as text), checked by the same deserializer so the same rules and errors apply.
async fn read_form(state: &AppState, form: Multipart) -> Result<I2vRequest, ApiError> {
    let (fields, image) = read_form_fields(state, form, "image", &TEXT_FIELDS).await?;
    let mut request = from_json(serde_json::from_value(serde_json::Value::Object(fields)))?;
    request.image_bytes = Some(image);
    Ok(request)
}

/// The parts of a multipart form: `file` as bytes (required, once), the others as JSON
/// values — strings for `text_fields`, numbers when a part parses as one, else strings (so a
/// wrong type fails the deserializer with its message). A field sent twice is a 422.
pub(crate) async fn read_form_fields(
    state: &AppState,
    mut form: Multipart,
    file: &'static str,
    text_fields: &[&str],
) -> Result<(serde_json::Map<String, serde_json::Value>, Vec<u8>), ApiError> {
    let part_error = |e| part_error(state, e);
    let mut fields = serde_json::Map::new();
    let mut bytes = None;
    while let Some(part) = form.next_field().await.map_err(part_error)? {
        let name = part.name().unwrap_or("").to_string();
        if name == file {
            if bytes.is_some() {
                return Err(ApiError::Invalid {
                    field: file,
                    message: "sent twice".into(),
                });
            }
            bytes = Some(part.bytes().await.map_err(part_error)?.to_vec());
            continue;
        }
        let text = part.text().await.map_err(part_error)?;
        insert_text_part(&mut fields, name, text, text_fields)?;
    }
    let Some(bytes) = bytes else {
        return Err(ApiError::Invalid {
            field: file,
            message: format!("missing: send the image as a file part named \"{file}\""),
        });
    };
    fields.insert(file.into(), serde_json::Value::String(String::new()));
    Ok((fields, bytes))
}

/// A multipart read failure: over the body limit (413), else a malformed body (400).
pub(crate) fn part_error(
    state: &AppState,
    e: axum::extract::multipart::MultipartError,
) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        too_large(state)
    } else {
        ApiError::BadRequest(format!("malformed multipart body: {}", e.body_text()))
    }
}

/// A text part as a JSON value of the form's fields: a string for `text_fields`, a number
/// when it parses as one, else a string (so a wrong type fails the type check with its
/// message). A field sent twice is a 422.
pub(crate) fn insert_text_part(
    fields: &mut serde_json::Map<String, serde_json::Value>,
    name: String,
    text: String,
    text_fields: &[&str],
) -> Result<(), ApiError> {
    let value = if text_fields.contains(&name.as_str()) {
        serde_json::Value::String(text)
    } else {
        serde_json::from_str::<serde_json::Value>(text.trim())
            .ok()
            .filter(serde_json::Value::is_number)
            .unwrap_or(serde_json::Value::String(text))
    };
    if fields.insert(name.clone(), value).is_some() {
        return Err(ApiError::Invalid {
            field: "body",
            message: format!("field {name:?} sent twice"),
        });
    }
    Ok(())
}

/// Queues an image-to-video job.
#[utoipa::path(post, path = "/v1/image-to-video", tag = "jobs",
    params(SubmitQuery),
    request_body(content(
        (I2vRequest = "application/json"),
        (I2vForm = "multipart/form-data"))),
    responses(
        (status = 202, description = "Queued (or, with `?wait=true`, not finished in time)", body = Submitted,
            headers(("Location" = String, description = "The job's status URL"))),
        (status = 200, description = "`?wait=true`: the video", content_type = "video/mp4", body = Mp4File),
        (status = 400, description = "Malformed JSON, multipart or query", body = ApiErrorBody),
        (status = 409, description = "`?wait=true`: the job was cancelled", body = ApiErrorBody),
        (status = 413, description = "Body over the size limit", body = ApiErrorBody),
        (status = 415, description = "Neither JSON nor multipart", body = ApiErrorBody),
        (status = 422, description = "A field breaks a rule (`field` names it; `multiscale` without an upsampler is one), or the job would not fit the host memory budget (`insufficient_memory`, with `estimate_bytes` and `budget_bytes`)", body = ApiErrorBody),
        (status = 429, description = "The queue is full; see Retry-After", body = ApiErrorBody,
            headers(("Retry-After" = String, description = "Seconds"))),
        (status = 500, description = "`?wait=true`: the job failed", body = ApiErrorBody),
        (status = 503, description = "The worker has stopped", body = ApiErrorBody)))]
pub async fn submit(
    State(state): State<AppState>,
    query: Result<Query<SubmitQuery>, axum::extract::rejection::QueryRejection>,
    req: Request,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let request = read_request(&state, req).await?;
    let limits = state.limits().clone();
    let compress = state.condition_compression();
    let multiples = state.multiples();
    // Decoding a large image takes a while: keep it off the async executor.
    let mut work =
        tokio::task::spawn_blocking(move || request.validate(&limits, multiples, compress))
            .await
            .map_err(|e| ApiError::Internal(format!("validation task: {e}")))??;
    state.admit(&mut work)?;
    let job = state.enqueue(work)?;
    if !query.wait {
        return Ok(submitted(job.status()));
    }
    wait_for(&state, &job).await
}

pub(crate) async fn wait_for(state: &AppState, job: &Arc<Job>) -> Result<Response, ApiError> {
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
        (true, JobState::Done) => result_file(job, Request::new(Body::empty())).await,
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

/// The result of a done job, through tower-http's file service: `Range` (206/416), HEAD,
/// `Last-Modified` and conditional requests, `video/mp4` or `image/png` from its extension.
pub(crate) async fn result_file(job: &Job, req: Request) -> Result<Response, ApiError> {
    if job.status().expired {
        return Err(ApiError::Gone(job.id.clone()));
    }
    let resp = ServeFile::new(&job.output)
        .oneshot(req)
        .await
        .map_err(|e| ApiError::Internal(format!("reading {}: {e}", job.output.display())))?;
    if resp.status() == StatusCode::NOT_FOUND {
        return Err(ApiError::Gone(job.id.clone()));
    }
    let mut resp = resp.map(Body::new);
    let name = job
        .output
        .file_name()
        .map_or_else(|| job.id.clone(), |n| n.to_string_lossy().into_owned());
    let disposition = format!("inline; filename=\"{name}\"");
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

fn find(state: &AppState, id: &str) -> Result<Arc<Job>, ApiError> {
    state
        .jobs()
        .get(id)
        .ok_or_else(|| ApiError::NoSuchJob(id.to_string()))
}

/// A job's state, stage, step, timings and error.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job", body = JobStatus),
        (status = 404, description = "No such job", body = ApiErrorBody)))]
pub async fn status(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobStatus>, ApiError> {
    Ok(Json(find(&state, &id)?.status()))
}

/// The headers `GET` would answer (size, type, `Accept-Ranges`), without the file.
#[utoipa::path(head, path = "/v1/jobs/{id}/result", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The result's headers"),
        (status = 404, description = "No such job"),
        (status = 409, description = "The job is not done"),
        (status = 410, description = "Deleted by the retention policy")))]
pub async fn result_head(
    state: State<AppState>,
    id: Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    result(state, id, req).await
}

/// The result of a done job: the MP4 of a video job, the PNG of an InstantID job; HEAD and
/// byte ranges (`Range: bytes=a-b`) are supported.
#[utoipa::path(get, path = "/v1/jobs/{id}/result", tag = "jobs",
    params(
        ("id" = String, Path, description = "Job id"),
        ("Range" = Option<String>, Header, description = "Byte range, e.g. `bytes=0-1023`")),
    responses(
        (status = 200, description = "The video or the image", content(
            (Mp4File = "video/mp4"),
            (PngFile = "image/png"))),
        (status = 206, description = "The requested range", content(
            (Mp4File = "video/mp4"),
            (PngFile = "image/png"))),
        (status = 404, description = "No such job", body = ApiErrorBody),
        (status = 409, description = "The job is not done", body = ApiErrorBody),
        (status = 410, description = "Deleted by the retention policy", body = ApiErrorBody),
        (status = 416, description = "The range is outside the file")))]
pub async fn result(
    State(state): State<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let job = find(&state, &id)?;
    match job.status().state {
        JobState::Done => result_file(&job, req).await,
        other => Err(ApiError::NotReady {
            id,
            state: other.as_str(),
        }),
    }
}

/// Server-sent events, one per change of the job (named after its state; the data is the job
/// as JSON), ending after the final state. Fast consecutive changes may arrive as one event
/// with the latest status.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "`text/event-stream`: events `queued`, then while running one named after the stage (`loading`, `encoding_text`, `encoding_image`, `denoising` with step/total_steps, `upsampling`, `decoding`, `writing_video` or `writing_image`), then `done`, `failed` or `cancelled`; data is the job", content_type = "text/event-stream", body = String),
        (status = 404, description = "No such job", body = ApiErrorBody)))]
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
            // While running, the event is named after the stage.
            let name = match (status.state, status.stage) {
                (JobState::Running, Some(stage)) => stage.as_str(),
                (state, _) => state.as_str(),
            };
            let event = Event::default()
                .event(name)
                .json_data(&status)
                .unwrap_or_else(|e| Event::default().event("error").data(e.to_string()));
            Some((Ok(event), (rx, status.state.is_terminal(), false)))
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// Cancels a job: a queued one now, a running one at its next step boundary (its memory is
/// then released).
#[utoipa::path(delete, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job after the request", body = JobStatus),
        (status = 404, description = "No such job", body = ApiErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobStatus>, ApiError> {
    let job = find(&state, &id)?;
    job.cancel();
    Ok(Json(job.status()))
}

impl AppState {
    /// Puts a validated job in the bounded queue of its family's worker: a full queue is a
    /// 429, never a backlog.
    pub(crate) fn enqueue(&self, work: crate::jobs::Work) -> Result<Arc<Job>, ApiError> {
        let family = work.family();
        let (Some(model), Some(queue)) =
            (self.model_description(family), self.workers().queue(family))
        else {
            return Err(ApiError::NotConfigured(format!(
                "this server does not serve the {family} family"
            )));
        };
        let job = self
            .jobs()
            .create(work, model, self.output_dir())
            .map_err(|e| ApiError::Internal(format!("job id: {e}")))?;
        match queue.try_send(Command::Run(job.clone())) {
            Ok(()) => {
                self.metrics().job_accepted(family);
                // Stages done at submission (InstantID's face analysis) count as the job's.
                for (stage, secs) in job.status().timings {
                    self.metrics().stage_seconds(family, stage, secs);
                }
                Ok(job)
            }
            Err(e) => {
                self.jobs().remove(&job.id);
                if matches!(e, TrySendError::Full(_)) {
                    self.metrics().queue_full(family);
                }
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
