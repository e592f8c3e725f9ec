//! `POST /i2v`: the replaced Python service's route, drop-in (`../shared/specs/replaced-service.md`):
//! the same multipart fields and defaults, the same size derivation, answered with the MP4
//! when the job is done. It runs on the job system (queued, in the metrics, cancelled when the
//! client goes away) with the LTX-Video 0.9.7/0.9.8 multi-scale flow.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::response::Response;
use ltx_pipelines::image::RgbImage;
use ltx_pipelines::multiscale::{MultiscaleParams, MultiscaleRequest};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::config::Limits;
use crate::jobs::{Job, JobState, Work};
use crate::jobs_api::{content_type, read_form_fields, result_file};
use crate::request::{
    area_within, even_sides, finite, int_in, multiscale_work, prompt_within, steps_in,
};
use crate::routes::{ApiErrorBody, AppState, Mp4File};
use crate::ApiError;

/// The replaced service's default negative prompt.
pub const DEFAULT_NEGATIVE: &str = "worst quality, inconsistent motion, blurry, jittery, distorted";

/// The fields of `POST /i2v` (multipart), with the replaced service's defaults.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceI2vRequest {
    /// The form's file part (its bytes travel separately); present so the field is known.
    #[serde(default, rename = "image")]
    _image: String,
    prompt: String,
    negative_prompt: Option<String>,
    expected_height: Option<i64>,
    expected_width: Option<i64>,
    max_dimension: Option<i64>,
    downscale_factor: Option<f64>,
    num_frames: Option<i64>,
    steps_lowres: Option<usize>,
    steps_refine: Option<usize>,
    denoise_strength: Option<f64>,
    decode_timestep: Option<f64>,
    image_cond_noise_scale: Option<f64>,
    fps: Option<f64>,
    guidance_scale: Option<f64>,
    seed: Option<u64>,
}

/// `POST /i2v` as the replaced service took it.
#[derive(ToSchema)]
#[allow(dead_code)] // documents the form; the handler reads the parts one by one
pub struct ServiceI2vForm {
    /// PNG, JPEG or WebP file: the first frame.
    #[schema(value_type = String, format = Binary)]
    image: Vec<u8>,
    prompt: String,
    /// Default: `worst quality, inconsistent motion, blurry, jittery, distorted`.
    negative_prompt: Option<String>,
    /// The output size; when either is missing both come from the image (its aspect, the
    /// long side `max_dimension`, floored to multiples of 32, at least 256).
    expected_height: Option<i64>,
    expected_width: Option<i64>,
    /// Default 704.
    max_dimension: Option<i64>,
    /// The first pass's scale, default 2/3.
    downscale_factor: Option<f64>,
    /// Default 96 (the video has 8k+1 frames: 89).
    num_frames: Option<i64>,
    /// Default 40.
    steps_lowres: Option<usize>,
    /// Default 15 (the refine pass runs int(steps_refine · denoise_strength)).
    steps_refine: Option<usize>,
    /// Default 0.4.
    denoise_strength: Option<f64>,
    /// Default 0.05.
    decode_timestep: Option<f64>,
    /// Default 0.025.
    image_cond_noise_scale: Option<f64>,
    /// The MP4's frame rate, default 30 (the model's conditioning stays 25).
    fps: Option<f64>,
    /// Accepted (default 3.2) and not passed on, as the replaced service did for its distilled
    /// model: diffusers' default 3 applies.
    guidance_scale: Option<f64>,
    /// Default 0.
    seed: Option<u64>,
}

const TEXT_FIELDS: [&str; 2] = ["prompt", "negative_prompt"];
const NUMBER_FIELDS: [&str; 13] = [
    "expected_height",
    "expected_width",
    "max_dimension",
    "downscale_factor",
    "num_frames",
    "steps_lowres",
    "steps_refine",
    "denoise_strength",
    "decode_timestep",
    "image_cond_noise_scale",
    "fps",
    "guidance_scale",
    "seed",
];

fn invalid(field: &'static str, message: String) -> ApiError {
    ApiError::Invalid { field, message }
}

/// The replaced service's size when `expected_*` are missing: the image's aspect with the
/// long side `max_dimension` (`int()` of the other), floored to multiples of 32, at least 256.
pub fn derived_size(image_w: usize, image_h: usize, max_dimension: i64) -> (i64, i64) {
    let aspect = image_w as f64 / image_h as f64;
    let (w, h) = if image_w >= image_h {
        (max_dimension, (max_dimension as f64 / aspect) as i64)
    } else {
        ((max_dimension as f64 * aspect) as i64, max_dimension)
    };
    let fit = |v: i64| (v - v.rem_euclid(32)).max(256);
    (fit(w), fit(h))
}

impl ServiceI2vRequest {
    pub fn validate(
        self,
        image: RgbImage,
        limits: &Limits,
        compress_condition: bool,
    ) -> Result<Work, ApiError> {
        let negative = self
            .negative_prompt
            .unwrap_or_else(|| DEFAULT_NEGATIVE.to_string());
        prompt_within(limits, "prompt", &self.prompt)?;
        prompt_within(limits, "negative_prompt", &negative)?;
        let max_dimension = int_in(
            "max_dimension",
            self.max_dimension,
            704,
            256,
            limits.max_side,
        )?;
        let (width, height) = match (self.expected_width, self.expected_height) {
            (Some(w), Some(h)) => (
                int_in("expected_width", Some(w), 0, 1, limits.max_side)?,
                int_in("expected_height", Some(h), 0, 1, limits.max_side)?,
            ),
            _ => derived_size(image.width, image.height, max_dimension),
        };
        area_within(limits, "expected_width", width, height)?;
        even_sides(("expected_width", width), ("expected_height", height))?;
        let guidance = finite("guidance_scale", self.guidance_scale, 3.2, 0.0, 30.0)?;
        let params = MultiscaleParams {
            width,
            height,
            num_frames: int_in("num_frames", self.num_frames, 96, 1, limits.max_frames)?,
            downscale_factor: finite(
                "downscale_factor",
                self.downscale_factor,
                2.0 / 3.0,
                1e-3,
                1.0,
            )?,
            steps_lowres: steps_in(limits, "steps_lowres", self.steps_lowres, 40)?,
            steps_refine: steps_in(limits, "steps_refine", self.steps_refine, 15)?,
            denoise_strength: finite("denoise_strength", self.denoise_strength, 0.4, 1e-3, 1.0)?,
            decode_timestep: finite("decode_timestep", self.decode_timestep, 0.05, 0.0, 1.0)?,
            image_cond_noise_scale: finite(
                "image_cond_noise_scale",
                self.image_cond_noise_scale,
                0.025,
                0.0,
                1.0,
            )?,
            // As the replaced service: not passed to the pipeline, whose default applies.
            guidance_scale: 3.0,
            frame_rate: 25.0,
            timesteps_lowres: None,
            timesteps_refine: None,
        };
        let fps = finite("fps", self.fps, 30.0, 1.0, 120.0)?;
        let mut warnings = Vec::new();
        if guidance != 3.0 {
            warnings.push(format!(
                "guidance_scale {guidance} is accepted and not used, as in the replaced service: diffusers' default 3 applies"
            ));
        }
        let request = MultiscaleRequest {
            prompt: self.prompt,
            negative_prompt: negative,
            seed: self.seed.unwrap_or(0),
            compress_condition,
            params,
        };
        multiscale_work(image, request, fps, warnings)
    }
}

/// Cancels the job if the request is dropped before it ends (the client went away).
struct CancelOnDrop(Option<Arc<Job>>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(job) = self.0.take() {
            if !job.status().state.is_terminal() {
                tracing::info!(id = %job.id, "client gone: cancelling the job");
                job.cancel();
            }
        }
    }
}

/// The replaced service's image-to-video route: multipart in, the MP4 out when done.
#[utoipa::path(post, path = "/i2v", tag = "compatibility",
    request_body(content((ServiceI2vForm = "multipart/form-data"))),
    responses(
        (status = 200, description = "The video (H.264 MP4)", content_type = "video/mp4", body = Mp4File),
        (status = 400, description = "Malformed multipart body", body = ApiErrorBody),
        (status = 409, description = "The job was cancelled", body = ApiErrorBody),
        (status = 413, description = "Body over the size limit", body = ApiErrorBody),
        (status = 415, description = "Not multipart/form-data", body = ApiErrorBody),
        (status = 422, description = "A field breaks a rule (`field` names it), or the job would not fit the host memory budget (`insufficient_memory`)", body = ApiErrorBody),
        (status = 429, description = "The queue is full; see Retry-After", body = ApiErrorBody,
            headers(("Retry-After" = String, description = "Seconds"))),
        (status = 500, description = "The generation failed", body = ApiErrorBody),
        (status = 503, description = "No upsampler configured (LTX_UPSAMPLER), or the worker has stopped", body = ApiErrorBody)))]
pub async fn service_i2v(
    State(state): State<AppState>,
    req: Request,
) -> Result<Response, ApiError> {
    let ctype = content_type(&req);
    if !ctype
        .to_ascii_lowercase()
        .starts_with("multipart/form-data")
    {
        return Err(ApiError::UnsupportedMediaType(ctype));
    }
    if !state.upsampler_available() {
        return Err(ApiError::NotConfigured(
            "POST /i2v runs the multi-scale flow, which needs the latent upsampler: set LTX_UPSAMPLER".into(),
        ));
    }
    let form = Multipart::from_request(req, &state)
        .await
        .map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let (fields, bytes) = read_form_fields(&state, form, "image", &TEXT_FIELDS).await?;
    // A field that should be a number and is not: name it (serde's message would not).
    for (name, value) in &fields {
        if let Some(field) = NUMBER_FIELDS.iter().find(|f| **f == name.as_str()) {
            if !value.is_number() {
                return Err(invalid(field, format!("must be a number, got {value}")));
            }
        }
    }
    let request: ServiceI2vRequest = serde_json::from_value(serde_json::Value::Object(fields))
        .map_err(|e| ApiError::Invalid {
            field: "body",
            message: e.to_string(),
        })?;
    let limits = state.limits().clone();
    let compress = state.condition_compression();
    let mut work = tokio::task::spawn_blocking(move || {
        let image = crate::request::decode_image(&bytes, &limits)?;
        request.validate(image, &limits, compress)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("validation task: {e}")))??;
    state.admit(&mut work)?;
    let job = state.enqueue(work)?;
    answer_when_done(job).await
}

/// The replaced service's way: waits for `job` to end and answers its result file; a client
/// that goes away first cancels the job (at its next step boundary).
pub(crate) async fn answer_when_done(job: Arc<Job>) -> Result<Response, ApiError> {
    let mut guard = CancelOnDrop(Some(job.clone()));
    let mut rx = job.subscribe();
    loop {
        if rx.borrow_and_update().state.is_terminal() {
            break;
        }
        if rx.changed().await.is_err() {
            break;
        }
    }
    guard.0 = None;
    let status = job.status();
    match status.state {
        JobState::Done => result_file(&job, Request::new(Body::empty())).await,
        JobState::Failed => Err(ApiError::JobFailed {
            id: status.id,
            error: status.error.unwrap_or_default(),
        }),
        _ => Err(ApiError::NotReady {
            id: status.id,
            state: status.state.as_str(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_derived_like_the_replaced_service() {
        // 1280x720 landscape: width 704, height int(704 / 1.777…) = 396 → 384.
        assert_eq!(derived_size(1280, 720, 704), (704, 384));
        // Portrait 720x1280: height 704, width int(704 · 0.5625) = 396 → 384.
        assert_eq!(derived_size(720, 1280, 704), (384, 704));
        // Very wide: the short side is at least 256.
        assert_eq!(derived_size(2000, 200, 704), (704, 256));
        assert_eq!(derived_size(500, 500, 704), (704, 704));
    }
}
