//! Face analysis at submission: an InstantID request's photos become its face conditioning
//! (raw ArcFace embedding, keypoint image) before the job is queued, so a photo without a
//! face is a `422 no_face` at once, not a failed job later. The face networks (ONNX Runtime)
//! open on first use, from `INSTANTID_FACE_MODELS` or, for the demo family, from the demo's
//! own graphs; one analysis runs at a time, on a blocking thread.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use ltx_face::{AnalysisOptions, FaceAnalysis, FaceError};
use ltx_pipelines::image::RgbImage;
use ltx_pipelines::instantid::{analyze_faces, FaceConditioning};
use tokio::sync::Mutex;

use crate::{ApiError, InstantIdConfig};

/// Where the face networks come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaceModels {
    /// A model folder as downloaded (antelopev2: `scrfd_10g_bnkps.onnx`, `glintr100.onnx`, …).
    Folder(PathBuf),
    /// The demo family's tiny graphs (they find one face in any image).
    Demo,
    /// None configured and none to fall back on: InstantID answers 503 with `reason`.
    Missing { reason: String },
}

/// The face analysis settings (`INSTANTID_FACE_*`).
#[derive(Debug, Clone)]
pub struct FaceSettings {
    pub models: FaceModels,
    /// Detection size and threshold, NMS, device and threads.
    pub options: AnalysisOptions,
}

/// A request's face conditioning and how long the analysis took.
#[derive(Debug, Clone)]
pub struct AnalyzedFaces {
    pub conditioning: FaceConditioning,
    /// Seconds of the analysis itself (opening the networks, the first time, included).
    pub seconds: f64,
}

/// The face networks of the server, opened on first use and shared by all requests.
pub struct FaceService {
    settings: FaceSettings,
    analysis: Arc<Mutex<Option<FaceAnalysis>>>,
}

impl FaceService {
    pub fn new(settings: FaceSettings) -> Self {
        Self {
            settings,
            analysis: Arc::new(Mutex::new(None)),
        }
    }

    /// From the `INSTANTID_*` settings: `INSTANTID_FACE_MODELS` when set; else the demo
    /// family's graphs when the demo family is served (no `INSTANTID_MODEL`); else missing.
    pub fn from_config(c: &InstantIdConfig) -> Result<Self, String> {
        let models = match (&c.instantid_face_models, &c.instantid_model) {
            (Some(dir), _) => FaceModels::Folder(dir.clone()),
            (None, None) => FaceModels::Demo,
            (None, Some(_)) => FaceModels::Missing {
                reason: "INSTANTID_MODEL is set and INSTANTID_FACE_MODELS is not: set it to \
                         the antelopev2 folder (scrfd_10g_bnkps.onnx, glintr100.onnx)"
                    .into(),
            },
        };
        Ok(Self::new(FaceSettings {
            models,
            options: c.face_options()?,
        }))
    }

    pub fn settings(&self) -> &FaceSettings {
        &self.settings
    }

    /// Whether the networks are open (false before the first analysis, or while one runs).
    pub fn is_open(&self) -> bool {
        self.analysis.try_lock().is_ok_and(|g| g.is_some())
    }

    /// Analyses `face` (and `pose`, `references`): waits for the analysis in progress, if any,
    /// without holding a thread, then runs on a blocking thread. If the caller goes away
    /// while waiting, nothing runs.
    pub async fn analyze(
        &self,
        face: RgbImage,
        pose: Option<RgbImage>,
        references: Vec<RgbImage>,
    ) -> Result<AnalyzedFaces, ApiError> {
        let mut guard = self.analysis.clone().lock_owned().await;
        let settings = self.settings.clone();
        let mut sizes = vec![("face_image", face.width, face.height)];
        sizes.extend(pose.iter().map(|p| ("pose_image", p.width, p.height)));
        sizes.extend(
            references
                .iter()
                .map(|r| ("reference_images", r.width, r.height)),
        );
        tokio::task::spawn_blocking(move || {
            let start = Instant::now();
            let fa = open(&mut guard, &settings)?;
            let conditioning = analyze_faces(fa, &face, pose.as_ref(), &references)
                .map_err(|e| analysis_error(e, &sizes))?;
            Ok(AnalyzedFaces {
                conditioning,
                seconds: start.elapsed().as_secs_f64(),
            })
        })
        .await
        .map_err(|e| ApiError::Internal(format!("face analysis task: {e}")))?
    }
}

/// The open analysis, opening it first if needed. A failure is not kept: the next request
/// tries again (so a fixed model folder works without a restart).
fn open<'a>(
    slot: &'a mut Option<FaceAnalysis>,
    settings: &FaceSettings,
) -> Result<&'a mut FaceAnalysis, ApiError> {
    if slot.is_none() {
        let dir = match &settings.models {
            FaceModels::Folder(dir) => dir.clone(),
            FaceModels::Demo => ltx_pipelines::instantid::demo::demo_face_models_dir()
                .map_err(|e| ApiError::NotConfigured(format!("the demo face models: {e}")))?,
            FaceModels::Missing { reason } => return Err(ApiError::NotConfigured(reason.clone())),
        };
        let fa = FaceAnalysis::new(&dir, settings.options).map_err(open_error)?;
        let p = &fa.providers()[0];
        tracing::info!(
            dir = %dir.display(),
            provider = p.name,
            fallback = p.fallback_reason.as_deref().unwrap_or(""),
            "InstantID face models opened"
        );
        *slot = Some(fa);
    }
    slot.as_mut()
        .ok_or_else(|| ApiError::Internal("face analysis slot empty after opening".into()))
}

/// Opening the networks: every failure is the server's setup (library, folder, settings).
fn open_error(e: FaceError) -> ApiError {
    ApiError::NotConfigured(format!(
        "InstantID face analysis (INSTANTID_FACE_MODELS, INSTANTID_FACE_*, LTX_ONNXRUNTIME): {e}"
    ))
}

/// The request field an image of `analyze_faces` came from.
fn field_of(image: &str) -> &'static str {
    if image.contains("pose") {
        "pose_image"
    } else if image.starts_with("reference") {
        "reference_images"
    } else {
        "face_image"
    }
}

/// Running the analysis: no face, or an image the detector cannot take (one side hundreds
/// of times the other), is the request's fault (422, naming the image); a library or model
/// problem is the setup's (503); the rest is the server's. `sizes`: each image's field and
/// size, to name the image an [`FaceError::Image`] (which gives only the size) is about.
fn analysis_error(e: FaceError, sizes: &[(&'static str, usize, usize)]) -> ApiError {
    match e {
        FaceError::NoFace { ref image, .. } => ApiError::NoFace {
            field: field_of(image),
            message: format!(
                "{e}: InstantID needs a photo with a visible face (it uses the largest one)"
            ),
        },
        FaceError::Image(m) => {
            let field = sizes
                .iter()
                .find(|(_, w, h)| m.starts_with(&format!("{w}x{h} ")))
                .map_or("body", |(f, ..)| *f);
            ApiError::Invalid {
                field,
                message: format!("face analysis cannot use this image: {m}"),
            }
        }
        FaceError::Runtime(_) | FaceError::Models { .. } | FaceError::Config(_) => open_error(e),
        FaceError::Inference { .. } => ApiError::Internal(format!("face analysis: {e}")),
    }
}

#[cfg(test)]
#[path = "face_service_tests.rs"]
mod tests;
