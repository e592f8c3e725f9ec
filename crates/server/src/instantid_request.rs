//! The InstantID request as it arrives (`POST /v1/instantid`, JSON or multipart) and its
//! validation into decoded images and [`InstantIdParams`]: every rule is checked here once,
//! the cheap ones before any image is decoded, and each violation names the field, the limit
//! and the value (the same `ApiError` shape as the image-to-video request).

use ltx_models::sdxl::schedulers::SUPPORTED_SCHEDULERS;
use ltx_pipelines::image::RgbImage;
use ltx_pipelines::instantid::InstantIdParams;
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::config::Limits;
use crate::request::{area_within, decode_base64, finite, int_in, prompt_within, seed_or_random};
use crate::ApiError;

/// The most reference photos one request may send (their embeddings are averaged in).
pub const MAX_REFERENCE_IMAGES: usize = 4;

/// The output side when none is given (SDXL's native 1024², as the replaced service).
pub const DEFAULT_SIDE: i64 = 1024;

/// Output sides are multiples of this (the SDXL VAE's downscale).
pub const SIDE_MULTIPLE: i64 = 8;

/// `/v1/instantid` defaults: InstantX's `infer.py` and README (30 steps, guidance 5, both
/// strengths 0.8, the IdentityNet over the whole schedule).
pub const DEFAULT_STEPS: i64 = 30;
pub const DEFAULT_GUIDANCE: f64 = 5.0;
pub const DEFAULT_IP_ADAPTER_SCALE: f64 = 0.8;
pub const DEFAULT_CONTROLNET_SCALE: f64 = 0.8;

/// The largest `guidance_scale` accepted (as the image-to-video route).
pub const MAX_GUIDANCE: f64 = 30.0;
/// The largest `ip_adapter_scale` and `controlnet_conditioning_scale` accepted (InstantX's
/// demo sliders stop at 1.5).
pub const MAX_STRENGTH: f64 = 2.0;

/// `POST /v1/instantid` JSON body. Unknown fields are refused. Defaults and limits: width and
/// height 1024 (multiples of 8, each ≤ the server's max side, product ≤ its max pixels), steps
/// 30 (≤ the server's max steps), guidance_scale 5 ([0, 30]; classifier-free guidance above
/// 1), ip_adapter_scale and controlnet_conditioning_scale 0.8 ([0, 2]),
/// control_guidance_start 0 and control_guidance_end 1 (0 ≤ start < end ≤ 1), the model's own
/// scheduler, a random seed. Images: PNG, JPEG or WebP, each within the server's input pixel
/// limit; at most 4 reference images.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstantIdRequest {
    /// The face photo (identity, and the keypoints without `pose_image`): base64 or a
    /// `data:image/...;base64,` URL of a PNG, JPEG or WebP. Its largest face is used.
    pub face_image: String,
    /// A photo whose largest face's keypoints drive the IdentityNet instead of the face
    /// photo's (the output's head position); base64 or a data URL.
    pub pose_image: Option<String>,
    /// More photos of the same person: each one's largest face embedding is averaged with the
    /// face photo's. Base64 or data URLs.
    #[schema(max_items = 4)]
    pub reference_images: Option<Vec<String>>,
    /// The images' bytes when they came as multipart file parts.
    #[serde(skip)]
    #[schema(ignore)]
    pub uploads: Option<Uploads>,
    pub prompt: String,
    /// Unset: the model's empty negative (zeros for SDXL, whose `force_zeros_for_empty_prompt`
    /// is set).
    pub negative_prompt: Option<String>,
    #[schema(minimum = 8, multiple_of = 8)]
    pub width: Option<i64>,
    #[schema(minimum = 8, multiple_of = 8)]
    pub height: Option<i64>,
    #[schema(minimum = 1)]
    pub steps: Option<i64>,
    #[schema(minimum = 0, maximum = 30)]
    pub guidance_scale: Option<f64>,
    /// The face tokens' weight in the UNet's cross-attention.
    #[schema(minimum = 0, maximum = 2)]
    pub ip_adapter_scale: Option<f64>,
    /// The IdentityNet residuals' weight.
    #[schema(minimum = 0, maximum = 2)]
    pub controlnet_conditioning_scale: Option<f64>,
    /// The fraction of the steps before which the IdentityNet is not applied.
    #[schema(minimum = 0, maximum = 1)]
    pub control_guidance_start: Option<f64>,
    /// The fraction of the steps after which the IdentityNet is not applied.
    #[schema(minimum = 0, maximum = 1)]
    pub control_guidance_end: Option<f64>,
    /// Another scheduler than the model's (its config, with this class): one of
    /// `EulerDiscreteScheduler`, `EulerAncestralDiscreteScheduler`,
    /// `DPMSolverMultistepScheduler`, `DDIMScheduler`.
    pub scheduler: Option<String>,
    pub seed: Option<u64>,
}

/// The images of a multipart request, as sent.
#[derive(Debug, Default, Clone)]
pub struct Uploads {
    pub face: Vec<u8>,
    pub pose: Option<Vec<u8>>,
    pub references: Vec<Vec<u8>>,
}

/// A binary file part.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)] // documents a file part; handlers read the bytes
pub struct ImageFile(Vec<u8>);

/// `POST /v1/instantid` as `multipart/form-data`: the images as file parts (`reference_images`
/// repeated, once per photo), every other field as a text part with the same name and meaning
/// as in the JSON body.
#[derive(ToSchema)]
#[allow(dead_code)] // documents the form; the handler reads the parts one by one
pub struct InstantIdForm {
    /// PNG, JPEG or WebP file: the face photo.
    #[schema(value_type = String, format = Binary)]
    face_image: Vec<u8>,
    /// PNG, JPEG or WebP file whose face's keypoints drive the IdentityNet.
    #[schema(value_type = Option<String>, format = Binary)]
    pose_image: Option<Vec<u8>>,
    /// One file part per reference photo (at most 4).
    #[schema(max_items = 4)]
    reference_images: Option<Vec<ImageFile>>,
    prompt: String,
    negative_prompt: Option<String>,
    width: Option<i64>,
    height: Option<i64>,
    steps: Option<i64>,
    guidance_scale: Option<f64>,
    ip_adapter_scale: Option<f64>,
    controlnet_conditioning_scale: Option<f64>,
    control_guidance_start: Option<f64>,
    control_guidance_end: Option<f64>,
    scheduler: Option<String>,
    seed: Option<u64>,
}

/// Fields that must be integers (and `seed` a non-negative one).
const INTEGER_FIELDS: [&str; 4] = ["width", "height", "steps", "seed"];
/// Fields that must be numbers.
const NUMBER_FIELDS: [&str; 5] = [
    "guidance_scale",
    "ip_adapter_scale",
    "controlnet_conditioning_scale",
    "control_guidance_start",
    "control_guidance_end",
];

fn invalid(field: &'static str, message: String) -> ApiError {
    ApiError::Invalid { field, message }
}

/// Checks that every number field of `fields` holds a number of the right kind and that the
/// required fields are there, so the error names the field (serde's would not).
/// `required`: the fields that must be present; `integer`/`number`: how numbers are named.
pub(crate) fn check_types(
    fields: &Map<String, Value>,
    required: &[&'static str],
    integer: &[&'static str],
    number: &[&'static str],
) -> Result<(), ApiError> {
    for field in required {
        if fields.get(*field).is_none_or(Value::is_null) {
            return Err(invalid(field, "is required".into()));
        }
    }
    for (name, value) in fields {
        if value.is_null() {
            continue;
        }
        if let Some(field) = integer.iter().find(|f| **f == name.as_str()) {
            let ok = if *field == "seed" {
                value.is_u64()
            } else {
                value.is_i64()
            };
            if !ok {
                let range = if *field == "seed" {
                    " in [0, 2^64)"
                } else {
                    ""
                };
                return Err(invalid(
                    field,
                    format!("must be an integer{range}, got {value}"),
                ));
            }
        } else if let Some(field) = number.iter().find(|f| **f == name.as_str()) {
            if !value.is_number() {
                return Err(invalid(field, format!("must be a number, got {value}")));
            }
        }
    }
    Ok(())
}

/// A serde failure on an already type-checked body (unknown field, a string where a list is
/// expected) as a 422 on the body.
pub(crate) fn body_error(e: serde_json::Error) -> ApiError {
    invalid("body", e.to_string())
}

impl InstantIdRequest {
    /// The request from a JSON object: field types checked first (naming the field), then
    /// the fields themselves.
    pub fn from_value(value: Value) -> Result<Self, ApiError> {
        let Value::Object(fields) = value else {
            return Err(invalid(
                "body",
                format!("must be a JSON object, got {}", kind_of(&value)),
            ));
        };
        check_types(
            &fields,
            &["face_image", "prompt"],
            &INTEGER_FIELDS,
            &NUMBER_FIELDS,
        )?;
        serde_json::from_value(Value::Object(fields)).map_err(body_error)
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A validated InstantID request: the decoded images and the generation's settings.
#[derive(Debug, Clone)]
pub struct ValidInstantId {
    pub face: RgbImage,
    pub pose: Option<RgbImage>,
    pub references: Vec<RgbImage>,
    pub params: InstantIdParams,
    /// The scheduler class to run instead of the model's (one of [`SUPPORTED_SCHEDULERS`]).
    pub scheduler: Option<&'static str>,
}

/// The names the checks use for two fields the replaced service's route calls otherwise.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FieldNames {
    pub steps: &'static str,
}

impl FieldNames {
    pub const V1: FieldNames = FieldNames { steps: "steps" };
}

/// An output side: a multiple of 8 in [8, max_side].
fn side(limits: &Limits, field: &'static str, v: Option<i64>) -> Result<i64, ApiError> {
    let v = v.unwrap_or(DEFAULT_SIDE);
    if v < SIDE_MULTIPLE || v % SIDE_MULTIPLE != 0 || v > limits.max_side {
        return Err(invalid(
            field,
            format!(
                "must be a multiple of {SIDE_MULTIPLE} (the SDXL VAE) in [{SIDE_MULTIPLE}, {}], got {v}",
                limits.max_side
            ),
        ));
    }
    Ok(v)
}

/// One uploaded image: base64 (or a data URL) or multipart bytes, decoded as InstantID's
/// `load_image` does (EXIF orientation applied, RGB) within the input pixel limit. `what`
/// prefixes the message when one field holds several images.
fn decode(
    limits: &Limits,
    field: &'static str,
    what: Option<&str>,
    bytes: Result<Vec<u8>, ApiError>,
) -> Result<RgbImage, ApiError> {
    let prefix = what.map_or_else(String::new, |w| format!("{w}: "));
    let bytes = bytes.map_err(|e| match e {
        ApiError::Invalid { message, .. } => invalid(field, format!("{prefix}{message}")),
        other => other,
    })?;
    let img = ltx_face::decode_image(&bytes, limits.max_input_pixels).map_err(|e| {
        let message = match e {
            ltx_face::FaceError::Image(m) => m,
            other => other.to_string(),
        };
        invalid(field, format!("{prefix}{message}"))
    })?;
    Ok(img.into())
}

impl InstantIdRequest {
    /// Checks every rule against `limits`; the random seed is drawn here when absent.
    #[cfg(test)]
    pub fn validate(self, limits: &Limits) -> Result<ValidInstantId, ApiError> {
        self.validate_named(limits, FieldNames::V1)
    }

    pub(crate) fn validate_named(
        self,
        limits: &Limits,
        names: FieldNames,
    ) -> Result<ValidInstantId, ApiError> {
        prompt_within(limits, "prompt", &self.prompt)?;
        if let Some(n) = &self.negative_prompt {
            prompt_within(limits, "negative_prompt", n)?;
        }
        let width = side(limits, "width", self.width)?;
        let height = side(limits, "height", self.height)?;
        area_within(limits, "width", width, height)?;
        let steps = int_in(
            names.steps,
            self.steps,
            DEFAULT_STEPS,
            1,
            i64::try_from(limits.max_steps).unwrap_or(i64::MAX),
        )?;
        let guidance_scale = finite(
            "guidance_scale",
            self.guidance_scale,
            DEFAULT_GUIDANCE,
            0.0,
            MAX_GUIDANCE,
        )?;
        let ip_adapter_scale = finite(
            "ip_adapter_scale",
            self.ip_adapter_scale,
            DEFAULT_IP_ADAPTER_SCALE,
            0.0,
            MAX_STRENGTH,
        )?;
        let controlnet_conditioning_scale = finite(
            "controlnet_conditioning_scale",
            self.controlnet_conditioning_scale,
            DEFAULT_CONTROLNET_SCALE,
            0.0,
            MAX_STRENGTH,
        )?;
        let start = finite(
            "control_guidance_start",
            self.control_guidance_start,
            0.0,
            0.0,
            1.0,
        )?;
        let end = finite(
            "control_guidance_end",
            self.control_guidance_end,
            1.0,
            0.0,
            1.0,
        )?;
        if start >= end {
            return Err(invalid(
                "control_guidance_start",
                format!(
                    "must be less than control_guidance_end (0 ≤ start < end ≤ 1), got start \
                     {start} and end {end}"
                ),
            ));
        }
        let scheduler = match self.scheduler.as_deref() {
            None => None,
            Some(name) => Some(
                SUPPORTED_SCHEDULERS
                    .iter()
                    .copied()
                    .find(|s| *s == name)
                    .ok_or_else(|| {
                        invalid(
                            "scheduler",
                            format!(
                                "must be one of {}, got {name:?}",
                                SUPPORTED_SCHEDULERS.join(", ")
                            ),
                        )
                    })?,
            ),
        };
        let references = self.reference_images.unwrap_or_default();
        let uploads = self.uploads;
        let reference_count = uploads
            .as_ref()
            .map_or(references.len(), |u| u.references.len());
        if reference_count > MAX_REFERENCE_IMAGES {
            return Err(invalid(
                "reference_images",
                format!("at most {MAX_REFERENCE_IMAGES} images, got {reference_count}"),
            ));
        }
        let seed = seed_or_random(self.seed)?;
        let params = InstantIdParams {
            prompt: self.prompt,
            negative_prompt: self.negative_prompt,
            height: Some(height),
            width: Some(width),
            steps: steps as usize,
            guidance_scale,
            controlnet_conditioning_scale,
            ip_adapter_scale,
            control_guidance_start: start,
            control_guidance_end: end,
            seed,
        };
        // The pipeline's own rules, should they ever be stricter than the ones above.
        params
            .validate()
            .map_err(|e| invalid("body", e.to_string()))?;
        let (face, pose, references) = match uploads {
            Some(u) => (
                decode(limits, "face_image", None, Ok(u.face))?,
                u.pose
                    .map(|p| decode(limits, "pose_image", None, Ok(p)))
                    .transpose()?,
                u.references
                    .into_iter()
                    .enumerate()
                    .map(|(i, r)| {
                        let what = format!("reference image {}", i + 1);
                        decode(limits, "reference_images", Some(&what), Ok(r))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            None => (
                decode(limits, "face_image", None, decode_base64(&self.face_image))?,
                self.pose_image
                    .map(|p| decode(limits, "pose_image", None, decode_base64(&p)))
                    .transpose()?,
                references
                    .iter()
                    .enumerate()
                    .map(|(i, r)| {
                        let what = format!("reference image {}", i + 1);
                        decode(limits, "reference_images", Some(&what), decode_base64(r))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        Ok(ValidInstantId {
            face,
            pose,
            references,
            params,
            scheduler,
        })
    }
}

#[cfg(test)]
#[path = "instantid_request_tests.rs"]
mod tests;
