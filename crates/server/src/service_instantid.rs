//! InstantID over HTTP: `POST /v1/instantid` queues a portrait job (JSON with base64 images,
//! or multipart with file parts) that the job API follows like any other; the replaced
//! service's `POST /instantid` takes its multipart form and answers the PNG when the job is
//! done. Both validate every field, then analyse the faces before queueing (a photo without
//! a face is a `422 no_face` at once), on the same job system.

use axum::extract::{Multipart, Query, Request, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::instantid_request::{
    body_error, check_types, FieldNames, InstantIdForm, InstantIdRequest, Uploads, ValidInstantId,
    DEFAULT_CONTROLNET_SCALE, DEFAULT_IP_ADAPTER_SCALE,
};
use crate::jobs::{InstantIdWork, Work, WorkKind};
use crate::jobs_api::{
    insert_text_part, part_error, read_body, read_multipart, submitted, wait_for, RequestBody,
    SubmitQuery,
};
use crate::routes::{ApiErrorBody, AppState, PngFile};
use crate::ApiError;

/// The image parts of a multipart InstantID form.
const FILE_PARTS: [&str; 3] = ["face_image", "pose_image", "reference_images"];
/// The text parts that stay strings even when they look like numbers.
const TEXT_FIELDS: [&str; 3] = ["prompt", "negative_prompt", "scheduler"];

/// A multipart form's parts: the image parts as [`Uploads`], the other parts as JSON values
/// (see [`insert_text_part`]). `files`: the image parts this route takes.
async fn read_form(
    state: &AppState,
    mut form: Multipart,
    files: &[&str],
) -> Result<(Map<String, Value>, Uploads), ApiError> {
    let mut fields = Map::new();
    let (mut face, mut pose, mut references) = (None, None, Vec::new());
    while let Some(part) = form.next_field().await.map_err(|e| part_error(state, e))? {
        let name = part.name().unwrap_or("").to_string();
        if files.contains(&name.as_str()) {
            let bytes = part
                .bytes()
                .await
                .map_err(|e| part_error(state, e))?
                .to_vec();
            let slot = match name.as_str() {
                "face_image" => &mut face,
                "pose_image" => &mut pose,
                _ => {
                    references.push(bytes);
                    continue;
                }
            };
            if slot.replace(bytes).is_some() {
                let field = if name == "face_image" {
                    "face_image"
                } else {
                    "pose_image"
                };
                return Err(ApiError::Invalid {
                    field,
                    message: "sent twice: send one file part".into(),
                });
            }
            continue;
        }
        let text = part.text().await.map_err(|e| part_error(state, e))?;
        insert_text_part(&mut fields, name, text, &TEXT_FIELDS)?;
    }
    let Some(face) = face else {
        return Err(ApiError::Invalid {
            field: "face_image",
            message: "missing: send the face photo as a file part named \"face_image\"".into(),
        });
    };
    // The JSON body's image fields, present so the type check passes; the bytes are the
    // uploads.
    fields.insert("face_image".into(), Value::String(String::new()));
    Ok((
        fields,
        Uploads {
            face,
            pose,
            references,
        },
    ))
}

/// `POST /v1/instantid`'s body: JSON or multipart, into one request type.
async fn read_request(state: &AppState, req: Request) -> Result<InstantIdRequest, ApiError> {
    match read_body(state, req).await? {
        RequestBody::Form(form) => {
            let (fields, uploads) = read_form(state, form, &FILE_PARTS).await?;
            let mut request = InstantIdRequest::from_value(Value::Object(fields))?;
            request.uploads = Some(uploads);
            Ok(request)
        }
        RequestBody::Json(body) => {
            let value: Value = serde_json::from_slice(&body)
                .map_err(|e| ApiError::BadRequest(format!("not valid JSON: {e}")))?;
            InstantIdRequest::from_value(value)
        }
    }
}

/// Validates `request` (images decoded off the async executor), analyses its faces and
/// makes the job's work.
async fn prepare(
    state: &AppState,
    request: InstantIdRequest,
    names: FieldNames,
) -> Result<Work, ApiError> {
    let limits = state.instantid_limits().clone();
    let valid: ValidInstantId =
        tokio::task::spawn_blocking(move || request.validate_named(&limits, names))
            .await
            .map_err(|e| ApiError::Internal(format!("validation task: {e}")))??;
    let faces = state
        .faces()
        .analyze(valid.face, valid.pose, valid.references)
        .await?;
    let mut warnings = Vec::new();
    let found = faces.conditioning.faces_found;
    if found > 1 {
        warnings.push(format!(
            "{found} faces found in face_image: the largest one gives the identity"
        ));
    }
    Ok(Work::new(
        WorkKind::InstantId(Box::new(InstantIdWork {
            face: faces.conditioning,
            params: valid.params,
            scheduler: valid.scheduler,
            face_seconds: faces.seconds,
        })),
        warnings,
    ))
}

/// Queues an InstantID portrait job: the face photo's identity (ArcFace embedding through
/// the Resampler) and its keypoints (through the IdentityNet) on SDXL. The result is a PNG.
#[utoipa::path(post, path = "/v1/instantid", tag = "jobs",
    params(SubmitQuery),
    request_body(content(
        (InstantIdRequest = "application/json"),
        (InstantIdForm = "multipart/form-data"))),
    responses(
        (status = 202, description = "Queued (or, with `?wait=true`, not finished in time)", body = crate::jobs_api::Submitted,
            headers(("Location" = String, description = "The job's status URL"))),
        (status = 200, description = "`?wait=true`: the portrait", content_type = "image/png", body = PngFile),
        (status = 400, description = "Malformed JSON, multipart or query", body = ApiErrorBody),
        (status = 409, description = "`?wait=true`: the job was cancelled", body = ApiErrorBody),
        (status = 413, description = "Body over the size limit", body = ApiErrorBody),
        (status = 415, description = "Neither JSON nor multipart", body = ApiErrorBody),
        (status = 422, description = "A field breaks a rule (`field` names it), or an image has no face (`no_face`)", body = ApiErrorBody),
        (status = 429, description = "The queue is full; see Retry-After", body = ApiErrorBody,
            headers(("Retry-After" = String, description = "Seconds"))),
        (status = 500, description = "`?wait=true`: the job failed", body = ApiErrorBody),
        (status = 503, description = "The face models are not configured or cannot be opened, or the worker has stopped", body = ApiErrorBody)))]
pub async fn submit_instantid(
    State(state): State<AppState>,
    query: Result<Query<SubmitQuery>, axum::extract::rejection::QueryRejection>,
    req: Request,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let request = read_request(&state, req).await?;
    let work = prepare(&state, request, FieldNames::V1).await?;
    let job = state.enqueue(work)?;
    if !query.wait {
        return Ok(submitted(job.status()));
    }
    wait_for(&state, &job).await
}

/// The replaced service's `negative_prompt` default.
pub const SERVICE_NEGATIVE_PROMPT: &str = "(lowres, low quality, worst quality:1.2), (text:1.2), \
     watermark, painting, drawing, illustration, glitch, deformed, mutated, cross-eyed, ugly, \
     disfigured";
/// The replaced service's `guidance_scale` default.
pub const SERVICE_GUIDANCE: f64 = 7.5;

/// `POST /instantid`'s fields, as the replaced service took them (unknown fields refused).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceInstantIdRequest {
    #[allow(dead_code)] // the file part's placeholder; the bytes are the upload
    face_image: String,
    prompt: String,
    negative_prompt: Option<String>,
    width: Option<i64>,
    height: Option<i64>,
    num_inference_steps: Option<i64>,
    guidance_scale: Option<f64>,
    ip_adapter_scale: Option<f64>,
    controlnet_conditioning_scale: Option<f64>,
    seed: Option<u64>,
}

/// `POST /instantid` as `multipart/form-data`, the replaced service's form: defaults width
/// and height 1024, 30 steps, guidance 7.5, both strengths 0.8, its long negative prompt,
/// a random seed.
#[derive(ToSchema)]
#[allow(dead_code)] // documents the form; the handler reads the parts one by one
pub struct ServiceInstantIdForm {
    /// PNG, JPEG or WebP file: the face photo (its largest face is used).
    #[schema(value_type = String, format = Binary)]
    face_image: Vec<u8>,
    prompt: String,
    /// Default: `(lowres, low quality, worst quality:1.2), (text:1.2), watermark, painting,
    /// drawing, illustration, glitch, deformed, mutated, cross-eyed, ugly, disfigured`.
    negative_prompt: Option<String>,
    /// Default 1024 (a multiple of 8).
    width: Option<i64>,
    /// Default 1024 (a multiple of 8).
    height: Option<i64>,
    /// Default 30.
    num_inference_steps: Option<i64>,
    /// Default 7.5.
    guidance_scale: Option<f64>,
    /// Default 0.8.
    ip_adapter_scale: Option<f64>,
    /// Default 0.8.
    controlnet_conditioning_scale: Option<f64>,
    /// Default: random.
    seed: Option<u64>,
}

impl ServiceInstantIdRequest {
    fn into_request(self, face: Vec<u8>) -> InstantIdRequest {
        InstantIdRequest {
            face_image: String::new(),
            pose_image: None,
            reference_images: None,
            uploads: Some(Uploads {
                face,
                pose: None,
                references: Vec::new(),
            }),
            prompt: self.prompt,
            negative_prompt: Some(
                self.negative_prompt
                    .unwrap_or_else(|| SERVICE_NEGATIVE_PROMPT.to_string()),
            ),
            width: self.width,
            height: self.height,
            steps: self.num_inference_steps,
            guidance_scale: Some(self.guidance_scale.unwrap_or(SERVICE_GUIDANCE)),
            ip_adapter_scale: Some(self.ip_adapter_scale.unwrap_or(DEFAULT_IP_ADAPTER_SCALE)),
            controlnet_conditioning_scale: Some(
                self.controlnet_conditioning_scale
                    .unwrap_or(DEFAULT_CONTROLNET_SCALE),
            ),
            control_guidance_start: None,
            control_guidance_end: None,
            scheduler: None,
            seed: self.seed,
        }
    }
}

/// The replaced service's portrait route: multipart in, the PNG out when the job is done
/// (queued like any job, listed in metrics, cancelled if the client goes away).
#[utoipa::path(post, path = "/instantid", tag = "compatibility",
    request_body(content((ServiceInstantIdForm = "multipart/form-data"))),
    responses(
        (status = 200, description = "The portrait", content_type = "image/png", body = PngFile),
        (status = 400, description = "Malformed multipart body", body = ApiErrorBody),
        (status = 409, description = "The job was cancelled", body = ApiErrorBody),
        (status = 413, description = "Body over the size limit", body = ApiErrorBody),
        (status = 415, description = "Not multipart/form-data", body = ApiErrorBody),
        (status = 422, description = "A field breaks a rule (`field` names it), or the photo has no face (`no_face`)", body = ApiErrorBody),
        (status = 429, description = "The queue is full; see Retry-After", body = ApiErrorBody,
            headers(("Retry-After" = String, description = "Seconds"))),
        (status = 500, description = "The generation failed", body = ApiErrorBody),
        (status = 503, description = "The face models are not configured or cannot be opened, or the worker has stopped", body = ApiErrorBody)))]
pub async fn service_instantid(
    State(state): State<AppState>,
    req: Request,
) -> Result<Response, ApiError> {
    let form = read_multipart(&state, req).await?;
    let (fields, uploads) = read_form(&state, form, &["face_image"]).await?;
    check_types(
        &fields,
        &["face_image", "prompt"],
        &["width", "height", "num_inference_steps", "seed"],
        &[
            "guidance_scale",
            "ip_adapter_scale",
            "controlnet_conditioning_scale",
        ],
    )?;
    let form: ServiceInstantIdRequest =
        serde_json::from_value(Value::Object(fields)).map_err(body_error)?;
    let request = form.into_request(uploads.face);
    let names = FieldNames {
        steps: "num_inference_steps",
    };
    let work = prepare(&state, request, names).await?;
    let job = state.enqueue(work)?;
    crate::service_i2v::answer_when_done(job).await
}
