//! The image-to-video request as it arrives (JSON) and its validation into [`Work`]: every
//! rule is checked here once, and each violation names the field, the limit and the value.

use base64::Engine;
use ltx_pipelines::image::RgbImage;
use ltx_pipelines::I2vParams;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::config::Limits;
use crate::jobs::{VideoInput, Work, WorkKind};
use crate::model_facts::Multiples;
use crate::ApiError;

/// `POST /v1/image-to-video` JSON body. Unknown fields are refused. Defaults and limits:
/// width 704 and height 512 (multiples of 32, each ≤ the server's max side, product ≤ its max
/// pixels), num_frames 161 (8k+1), steps 50, guidance_scale 3 ([0, 30]), guidance_rescale 0
/// ([0, 1]), fps 25 ([1, 120]), a random seed. With `"pipeline": "multiscale"` (the
/// 0.9.7/0.9.8 flow, which needs the upsampler) width and height may be any size, num_frames
/// any count (the video has 8k+1: 96 → 89), `steps` is the first pass's, and the
/// multi-scale fields apply (defaults: the replaced service's).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct I2vRequest {
    /// The first frame: base64 or a `data:image/...;base64,` URL of a PNG, JPEG or WebP.
    pub image: String,
    /// The image bytes when they came as a multipart file.
    #[serde(skip)]
    #[schema(ignore)]
    pub image_bytes: Option<Vec<u8>>,
    pub prompt: String,
    #[serde(default)]
    pub negative_prompt: String,
    #[schema(minimum = 32, multiple_of = 32)]
    pub width: Option<i64>,
    #[schema(minimum = 32, multiple_of = 32)]
    pub height: Option<i64>,
    /// 8k+1 frames.
    #[schema(minimum = 1)]
    pub num_frames: Option<i64>,
    #[schema(minimum = 1)]
    pub steps: Option<usize>,
    #[schema(minimum = 0, maximum = 30)]
    pub guidance_scale: Option<f64>,
    #[schema(minimum = 0, maximum = 1)]
    pub guidance_rescale: Option<f64>,
    pub seed: Option<u64>,
    /// Frame rate of the video and of the model's conditioning.
    #[schema(minimum = 1, maximum = 120)]
    pub fps: Option<f64>,
    #[schema(minimum = 0, maximum = 1)]
    pub decode_timestep: Option<f64>,
    #[schema(minimum = 0, maximum = 1)]
    pub decode_noise_scale: Option<f64>,
    /// The video container: only `mp4` (H.264) today.
    pub output_format: Option<String>,
    /// `i2v` (default: LTXImageToVideoPipeline) or `multiscale`.
    pub pipeline: Option<String>,
    /// Multi-scale: the first pass's scale, in (0, 1] (default 2/3).
    pub downscale_factor: Option<f64>,
    /// Multi-scale: the refine pass's steps (default 15; it runs int(this × denoise_strength)).
    #[schema(minimum = 1)]
    pub steps_refine: Option<usize>,
    /// Multi-scale: how much of the refine schedule runs, in (0, 1] (default 0.4).
    pub denoise_strength: Option<f64>,
    /// Multi-scale: the refine pass's noise on the condition frame, in [0, 1] (default 0.025).
    pub image_cond_noise_scale: Option<f64>,
    /// The model's frame-rate conditioning (default: `fps` for i2v, 25 for multiscale).
    #[schema(minimum = 1, maximum = 120)]
    pub frame_rate: Option<f64>,
}

/// `POST /v1/image-to-video` as `multipart/form-data`: the image as a file part, every other
/// field as a text part with the same name and meaning as in the JSON body.
#[derive(ToSchema)]
#[allow(dead_code)] // documents the form; the handler reads the parts one by one
pub struct I2vForm {
    /// PNG, JPEG or WebP file.
    #[schema(value_type = String, format = Binary)]
    image: Vec<u8>,
    prompt: String,
    negative_prompt: Option<String>,
    width: Option<i64>,
    height: Option<i64>,
    num_frames: Option<i64>,
    steps: Option<usize>,
    guidance_scale: Option<f64>,
    guidance_rescale: Option<f64>,
    seed: Option<u64>,
    fps: Option<f64>,
    decode_timestep: Option<f64>,
    decode_noise_scale: Option<f64>,
    output_format: Option<String>,
    pipeline: Option<String>,
    downscale_factor: Option<f64>,
    steps_refine: Option<usize>,
    denoise_strength: Option<f64>,
    image_cond_noise_scale: Option<f64>,
    frame_rate: Option<f64>,
}

/// Text fields of the form whose values are strings (all others are numbers).
pub const TEXT_FIELDS: [&str; 4] = ["prompt", "negative_prompt", "output_format", "pipeline"];

fn invalid(field: &'static str, message: String) -> ApiError {
    ApiError::Invalid { field, message }
}

pub(crate) fn finite(
    field: &'static str,
    v: Option<f64>,
    default: f64,
    lo: f64,
    hi: f64,
) -> Result<f64, ApiError> {
    let v = v.unwrap_or(default);
    if v.is_finite() && (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(invalid(
            field,
            format!("must be a number in [{lo}, {hi}], got {v}"),
        ))
    }
}

/// `v` (or `default`) within `[lo, hi]`.
pub(crate) fn int_in(
    field: &'static str,
    v: Option<i64>,
    default: i64,
    lo: i64,
    hi: i64,
) -> Result<i64, ApiError> {
    let v = v.unwrap_or(default);
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(invalid(field, format!("must be in [{lo}, {hi}], got {v}")))
    }
}

/// A step count (or `default`) in `[1, max_steps]`.
pub(crate) fn steps_in(
    limits: &Limits,
    field: &'static str,
    v: Option<usize>,
    default: usize,
) -> Result<usize, ApiError> {
    let v = v.unwrap_or(default);
    if v >= 1 && v <= limits.max_steps {
        Ok(v)
    } else {
        Err(invalid(
            field,
            format!("must be in [1, {}], got {v}", limits.max_steps),
        ))
    }
}

/// A prompt no longer than the limit.
pub(crate) fn prompt_within(limits: &Limits, field: &'static str, s: &str) -> Result<(), ApiError> {
    let n = s.chars().count();
    if n > limits.max_prompt_chars {
        return Err(invalid(
            field,
            format!(
                "{n} characters exceeds the limit of {}",
                limits.max_prompt_chars
            ),
        ));
    }
    Ok(())
}

/// `width × height` within the pixel limit (the error names `field`).
pub(crate) fn area_within(
    limits: &Limits,
    field: &'static str,
    width: i64,
    height: i64,
) -> Result<(), ApiError> {
    if width * height > limits.max_pixels {
        return Err(invalid(
            field,
            format!(
                "{width}x{height} = {} pixels exceeds the limit of {}",
                width * height,
                limits.max_pixels
            ),
        ));
    }
    Ok(())
}

/// The MP4 is H.264 with 4:2:0 chroma: each side of the video must be even (checked here so
/// the job is refused when it arrives, not after its generation).
pub(crate) fn even_sides(
    (wf, width): (&'static str, i64),
    (hf, height): (&'static str, i64),
) -> Result<(), ApiError> {
    for (field, v) in [(wf, width), (hf, height)] {
        if v % 2 != 0 {
            return Err(invalid(
                field,
                format!("must be even (the H.264 video has 4:2:0 chroma), got {v}"),
            ));
        }
    }
    Ok(())
}

/// The seed, or a random one (53 bits, exact in JSON numbers).
pub(crate) fn seed_or_random(seed: Option<u64>) -> Result<u64, ApiError> {
    match seed {
        Some(s) => Ok(s),
        None => {
            let mut b = [0u8; 8];
            getrandom::fill(&mut b).map_err(|e| ApiError::Internal(format!("random seed: {e}")))?;
            Ok(u64::from_le_bytes(b) >> 11)
        }
    }
}

/// A multi-scale job from checked parts: the flow's own rules (pass sizes, refine steps) as a
/// 422, and a warning when the video will not have the requested frame count.
pub(crate) fn multiscale_work(
    image: RgbImage,
    request: ltx_pipelines::multiscale::MultiscaleRequest,
    fps: f64,
    mut warnings: Vec<String>,
) -> Result<Work, ApiError> {
    let p = &request.params;
    p.validate().map_err(|e| invalid("body", e.to_string()))?;
    if p.output_frames() != p.num_frames {
        warnings.insert(
            0,
            format!(
                "{} frames requested; the model makes 8k+1, so the video has {} (as diffusers)",
                p.num_frames,
                p.output_frames()
            ),
        );
    }
    Ok(Work::new(
        WorkKind::Multiscale(VideoInput { image, fps }, Box::new(request)),
        warnings,
    ))
}

pub(crate) fn decode_base64(data: &str) -> Result<Vec<u8>, ApiError> {
    let b64 = match data.strip_prefix("data:") {
        Some(rest) => rest.split_once(";base64,").map(|(_, b)| b).ok_or_else(|| {
            invalid(
                "image",
                "a data URL must be base64 (data:image/png;base64,...)".into(),
            )
        })?,
        None => data,
    };
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| invalid("image", format!("not valid base64: {e}")))
}

pub(crate) fn decode_image(bytes: &[u8], limits: &Limits) -> Result<RgbImage, ApiError> {
    if bytes.is_empty() {
        return Err(invalid("image", "is empty".into()));
    }
    let unreadable = |e: image::ImageError| {
        invalid(
            "image",
            format!("not a readable PNG, JPEG or WebP image: {e}"),
        )
    };
    // One parse: the header gives the size, checked before any pixel is decoded.
    let mut decoder = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| invalid("image", format!("unreadable: {e}")))?
        .into_decoder()
        .map_err(unreadable)?;
    let (w, h) = image::ImageDecoder::dimensions(&decoder);
    let pixels = u64::from(w) * u64::from(h);
    if pixels > limits.max_input_pixels {
        return Err(invalid(
            "image",
            format!(
                "{w}x{h} = {pixels} pixels exceeds the limit of {} pixels",
                limits.max_input_pixels
            ),
        ));
    }
    let mut memory = image::Limits::default();
    memory.max_alloc = Some(limits.max_input_pixels.saturating_mul(16));
    image::ImageDecoder::set_limits(&mut decoder, memory).map_err(unreadable)?;
    let img = image::DynamicImage::from_decoder(decoder)
        .map_err(unreadable)?
        .to_rgb8();
    Ok(img.into())
}

impl I2vRequest {
    /// Checks every rule against `limits`; the random seed is drawn here when absent.
    /// `multiples`: the configured model's size and frame multiples.
    pub fn validate(
        self,
        limits: &Limits,
        multiples: Multiples,
        compress_condition: bool,
    ) -> Result<Work, ApiError> {
        prompt_within(limits, "prompt", &self.prompt)?;
        prompt_within(limits, "negative_prompt", &self.negative_prompt)?;
        match self.pipeline.as_deref() {
            None | Some("i2v") => {}
            Some("multiscale") => return self.validate_multiscale(limits, compress_condition),
            Some(other) => {
                return Err(invalid(
                    "pipeline",
                    format!("must be \"i2v\" or \"multiscale\", got {other:?}"),
                ))
            }
        }
        let multiscale_only = [
            ("downscale_factor", self.downscale_factor.is_some()),
            ("steps_refine", self.steps_refine.is_some()),
            ("denoise_strength", self.denoise_strength.is_some()),
            (
                "image_cond_noise_scale",
                self.image_cond_noise_scale.is_some(),
            ),
        ];
        if let Some((field, _)) = multiscale_only.iter().find(|(_, set)| *set) {
            return Err(invalid(
                field,
                "applies to \"pipeline\": \"multiscale\" only".into(),
            ));
        }
        let m = multiples.size;
        let side = |field: &'static str, v: Option<i64>, default: i64| {
            let v = v.unwrap_or(default);
            if v <= 0 || v % m != 0 || v > limits.max_side {
                Err(invalid(
                    field,
                    format!(
                        "must be a multiple of {m} (the model's VAE) in [{m}, {}], got {v}",
                        limits.max_side
                    ),
                ))
            } else {
                Ok(v)
            }
        };
        let width = side("width", self.width, 704)?;
        let height = side("height", self.height, 512)?;
        area_within(limits, "width", width, height)?;
        let frames = self.num_frames.unwrap_or(161);
        let k = multiples.frames;
        if frames < 1 || (frames - 1) % k != 0 || frames > limits.max_frames {
            return Err(invalid(
                "num_frames",
                format!(
                    "must be {k}k+1 (the model's VAE) in [1, {}], got {frames}",
                    limits.max_frames
                ),
            ));
        }
        let steps = steps_in(limits, "steps", self.steps, 50)?;
        let seed = seed_or_random(self.seed)?;
        let fps = finite("fps", self.fps, 25.0, 1.0, 120.0)?;
        let decode_timestep = finite("decode_timestep", self.decode_timestep, 0.0, 0.0, 1.0)?;
        let decode_noise_scale = match self.decode_noise_scale {
            Some(v) => Some(finite("decode_noise_scale", Some(v), 0.0, 0.0, 1.0)?),
            None => None,
        };
        let params = I2vParams {
            prompt: self.prompt,
            negative_prompt: self.negative_prompt,
            height,
            width,
            num_frames: frames,
            steps,
            guidance_scale: finite("guidance_scale", self.guidance_scale, 3.0, 0.0, 30.0)?,
            guidance_rescale: finite("guidance_rescale", self.guidance_rescale, 0.0, 0.0, 1.0)?,
            seed,
            decoder_noise_seed: seed,
            frame_rate: finite("frame_rate", self.frame_rate, fps, 1.0, 120.0)?,
            decode_timestep,
            decode_noise_scale,
            max_sequence_length: 128,
        };
        match self.output_format.as_deref() {
            None | Some("mp4") => {}
            Some(other) => {
                return Err(invalid(
                    "output_format",
                    format!("must be \"mp4\", got {other:?}"),
                ))
            }
        }
        let bytes = match self.image_bytes {
            Some(b) => b,
            None => decode_base64(&self.image)?,
        };
        let image = decode_image(&bytes, limits)?;
        Ok(Work::new(
            WorkKind::I2v(VideoInput { image, fps }, params),
            Vec::new(),
        ))
    }

    /// `"pipeline": "multiscale"`: the 0.9.7/0.9.8 flow's rules.
    fn validate_multiscale(
        self,
        limits: &Limits,
        compress_condition: bool,
    ) -> Result<Work, ApiError> {
        let width = int_in("width", self.width, 704, 1, limits.max_side)?;
        let height = int_in("height", self.height, 512, 1, limits.max_side)?;
        area_within(limits, "width", width, height)?;
        even_sides(("width", width), ("height", height))?;
        let frames = int_in("num_frames", self.num_frames, 96, 1, limits.max_frames)?;
        for (field, set) in [
            ("guidance_rescale", self.guidance_rescale.is_some()),
            ("decode_noise_scale", self.decode_noise_scale.is_some()),
        ] {
            if set {
                return Err(invalid(
                    field,
                    "applies to \"pipeline\": \"i2v\" only".into(),
                ));
            }
        }
        match self.output_format.as_deref() {
            None | Some("mp4") => {}
            Some(other) => {
                return Err(invalid(
                    "output_format",
                    format!("must be \"mp4\", got {other:?}"),
                ))
            }
        }
        let params = ltx_pipelines::multiscale::MultiscaleParams {
            width,
            height,
            num_frames: frames,
            downscale_factor: finite(
                "downscale_factor",
                self.downscale_factor,
                2.0 / 3.0,
                1e-3,
                1.0,
            )?,
            steps_lowres: steps_in(limits, "steps", self.steps, 40)?,
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
            guidance_scale: finite("guidance_scale", self.guidance_scale, 3.0, 0.0, 30.0)?,
            frame_rate: finite("frame_rate", self.frame_rate, 25.0, 1.0, 120.0)?,
            timesteps_lowres: None,
            timesteps_refine: None,
        };
        let fps = finite("fps", self.fps, 30.0, 1.0, 120.0)?;
        let seed = seed_or_random(self.seed)?;
        let bytes = match self.image_bytes {
            Some(b) => b,
            None => decode_base64(&self.image)?,
        };
        let image = decode_image(&bytes, limits)?;
        let request = ltx_pipelines::multiscale::MultiscaleRequest {
            prompt: self.prompt,
            negative_prompt: self.negative_prompt,
            seed,
            compress_condition,
            params,
        };
        multiscale_work(image, request, fps, Vec::new())
    }
}
