//! Face analysis for InstantID, equal to insightface's `FaceAnalysis` on the user's antelopev2
//! (or buffalo_l) ONNX files: SCRFD detection, ArcFace alignment and embedding, and InstantID's
//! keypoint image. The networks run on ONNX Runtime (`ort`, library loaded at run time); every
//! step around them is re-implemented to give insightface's numbers.

pub mod analysis;
pub mod arcface;
pub mod cv;
pub mod decode;
pub mod error;
pub mod kps;
pub mod models;
pub mod onnx_meta;
pub mod runtime;
pub mod scrfd;

pub use analysis::{largest_face, AnalysisOptions, Face, FaceAnalysis, Selection};
pub use decode::decode_image;
pub use error::{FaceError, Result};
pub use kps::draw_kps;
pub use models::{discover, FaceModels, Role};
pub use runtime::{FaceDevice, Provider, RuntimeInfo, SessionOptions};
