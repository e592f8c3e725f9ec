//! Face analysis for InstantID, equal to insightface's `FaceAnalysis` on the user's antelopev2
//! (or buffalo_l) ONNX files: SCRFD detection, ArcFace alignment and embedding, and InstantID's
//! keypoint image. The networks run on ONNX Runtime (`ort`, library loaded at run time); every
//! step around them is re-implemented to give insightface's numbers.

pub mod cv;
pub mod kps;

pub use kps::draw_kps;
