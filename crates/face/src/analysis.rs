//! `FaceAnalysis`: insightface's detect → align → embed on one image, and InstantID's choice of
//! the face to condition on (the largest box).

use std::path::Path;

use image::RgbImage;
use ort::session::Session;
use ort::value::Tensor;
use serde::Serialize;

use crate::arcface;
use crate::error::{FaceError, Result};
use crate::models::{discover, FaceModels, ModelFile};
use crate::runtime::{open_session, Provider, SessionOptions};
use crate::scrfd::{self, Layout, Output};

/// insightface's defaults (`prepare(det_size=(640, 640))`, `det_thresh=0.5`, NMS 0.4).
#[derive(Clone, Copy, Debug)]
pub struct AnalysisOptions {
    pub det_size: u32,
    pub det_thresh: f32,
    pub nms_thresh: f32,
    pub session: SessionOptions,
}

impl Default for AnalysisOptions {
    fn default() -> Self {
        AnalysisOptions {
            det_size: 640,
            det_thresh: 0.5,
            nms_thresh: 0.4,
            session: SessionOptions::default(),
        }
    }
}

/// One face as insightface's `Face`: box, score and keypoints in image pixels, and the raw
/// (un-normalised) embedding InstantID passes on.
#[derive(Clone, Debug, Serialize)]
pub struct Face {
    pub bbox: [f32; 4],
    pub score: f32,
    pub kps: [[f32; 2]; 5],
    pub embedding: Vec<f32>,
}

impl Face {
    /// `(x2 − x1)·(y2 − y1)` in float32, InstantID's sort key.
    pub fn area(&self) -> f32 {
        (self.bbox[2] - self.bbox[0]) * (self.bbox[3] - self.bbox[1])
    }

    pub fn embedding_norm(&self) -> f32 {
        self.embedding.iter().map(|v| v * v).sum::<f32>().sqrt()
    }
}

/// The face InstantID conditions on, among all found, with what a user should know.
#[derive(Clone, Debug, Serialize)]
pub struct Selection {
    /// Index into the detected faces (insightface's order).
    pub index: usize,
    pub count: usize,
    pub warnings: Vec<String>,
}

/// InstantID's pick: `sorted(faces, key=area)[-1]`, i.e. the largest box, the last one among
/// equal areas. `None` for no faces.
pub fn largest_face(faces: &[Face]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, f) in faces.iter().enumerate() {
        let a = f.area();
        if best.is_none_or(|(_, b)| a >= b) {
            best = Some((i, a));
        }
    }
    best.map(|(i, _)| i)
}

fn run(
    session: &mut Session,
    model: &ModelFile,
    shape: [usize; 4],
    blob: Vec<f32>,
) -> Result<Vec<(Vec<usize>, Vec<f32>)>> {
    let name = model.path.display().to_string();
    let fail = |e: ort::Error| FaceError::Inference {
        model: name.clone(),
        problem: e.to_string(),
    };
    let input_name = model.meta.inputs[0].name.clone();
    let tensor = Tensor::from_array((shape, blob)).map_err(fail)?;
    let outputs = session
        .run(ort::inputs![input_name => tensor])
        .map_err(fail)?;
    let mut out = Vec::with_capacity(outputs.len());
    for (_, v) in outputs.iter() {
        let (shape, data) = v.try_extract_tensor::<f32>().map_err(fail)?;
        out.push((
            shape.iter().map(|&d| d.max(0) as usize).collect(),
            data.to_vec(),
        ));
    }
    Ok(out)
}

/// The detector and recogniser sessions of one model folder.
pub struct FaceAnalysis {
    models: FaceModels,
    opts: AnalysisOptions,
    layout: Layout,
    detector: Session,
    recogniser: Session,
    providers: [Provider; 2],
    input_size: (u32, u32),
    rec_size: u32,
    rec_norm: (f64, f64),
}

impl FaceAnalysis {
    /// Discovers the networks in `dir` and opens them.
    pub fn new(dir: &Path, opts: AnalysisOptions) -> Result<Self> {
        if opts.det_size < 32 || opts.det_size > 4096 {
            return Err(FaceError::Config(format!(
                "det_size {} is outside 32..=4096",
                opts.det_size
            )));
        }
        if !(opts.det_thresh > 0.0 && opts.det_thresh <= 1.0) {
            return Err(FaceError::Config(format!(
                "det_thresh {} is outside (0, 1]",
                opts.det_thresh
            )));
        }
        let models = discover(dir)?;
        let layout = models.layout.clone();
        // A detector with a fixed input size runs at that size, whatever det_size says.
        let dims = &models
            .detector
            .meta
            .inputs
            .first()
            .map(|i| i.shape.clone())
            .unwrap_or_default();
        let fixed = |i: usize| {
            dims.get(i)
                .and_then(|d| d.fixed())
                .filter(|v| *v > 0)
                .map(|v| v as u32)
        };
        let input_size = match (fixed(3), fixed(2)) {
            (Some(w), Some(h)) => (w, h),
            _ => (opts.det_size, opts.det_size),
        };
        let rec_size = models.recogniser.meta.inputs[0]
            .shape
            .get(3)
            .and_then(|d| d.fixed())
            .unwrap_or(0) as u32;
        let rec_norm = arcface::input_normalisation(&models.recogniser.meta.first_node_names);
        let (detector, p0) = open_session(&models.detector.path, &opts.session)?;
        let (recogniser, p1) = open_session(&models.recogniser.path, &opts.session)?;
        tracing::info!(
            detector = %models.detector.path.display(),
            recogniser = %models.recogniser.path.display(),
            provider = p0.name,
            "face models ready"
        );
        Ok(FaceAnalysis {
            models,
            opts,
            layout,
            detector,
            recogniser,
            providers: [p0, p1],
            input_size,
            rec_size,
            rec_norm,
        })
    }

    pub fn models(&self) -> &FaceModels {
        &self.models
    }

    /// The execution providers of the detector and the recogniser.
    pub fn providers(&self) -> &[Provider; 2] {
        &self.providers
    }

    /// The recogniser's square input size (the aligned crop's).
    pub fn crop_size(&self) -> u32 {
        self.rec_size
    }

    pub fn options(&self) -> &AnalysisOptions {
        &self.opts
    }

    /// Every face, in insightface's order (by score after NMS), without embeddings yet.
    pub fn detect(&mut self, img: &RgbImage) -> Result<Vec<scrfd::Candidate>> {
        let (iw, ih) = self.input_size;
        let lb = scrfd::letterbox(img, iw, ih).ok_or_else(|| {
            FaceError::Image(format!(
                "{}x{} is too narrow to letterbox into {iw}x{ih}",
                img.width(),
                img.height()
            ))
        })?;
        let blob = scrfd::blob(&lb.canvas, 127.5, 128.0);
        let outs = run(
            &mut self.detector,
            &self.models.detector,
            [1, 3, ih as usize, iw as usize],
            blob,
        )?;
        let views: Vec<Output> = outs
            .iter()
            .map(|(s, d)| Output {
                shape: s.clone(),
                data: d,
            })
            .collect();
        let cands = scrfd::decode(
            &views,
            &self.layout,
            iw as usize,
            ih as usize,
            self.opts.det_thresh,
        )
        .map_err(|problem| FaceError::Inference {
            model: self.models.detector.path.display().to_string(),
            problem,
        })?;
        Ok(scrfd::postprocess(
            cands,
            lb.det_scale,
            self.opts.nms_thresh,
        ))
    }

    /// The aligned crop `norm_crop` gives for these keypoints.
    pub fn align(&self, img: &RgbImage, kps: &[[f32; 2]; 5]) -> Result<RgbImage> {
        arcface::norm_crop(img, kps, self.rec_size)
            .map(|(crop, _)| crop)
            .ok_or_else(|| {
                FaceError::Image(format!("degenerate keypoints {kps:?}: no alignment exists"))
            })
    }

    /// The recogniser's raw output for an aligned crop.
    pub fn embed(&mut self, crop: &RgbImage) -> Result<Vec<f32>> {
        let (mean, std) = self.rec_norm;
        let s = self.rec_size as usize;
        let outs = run(
            &mut self.recogniser,
            &self.models.recogniser,
            [1, 3, s, s],
            scrfd::blob(crop, mean, std),
        )?;
        outs.into_iter()
            .next()
            .map(|(_, d)| d)
            .ok_or_else(|| FaceError::Inference {
                model: self.models.recogniser.path.display().to_string(),
                problem: "no output".into(),
            })
    }

    /// `FaceAnalysis.get`: every face with its embedding.
    pub fn analyze(&mut self, img: &RgbImage) -> Result<Vec<Face>> {
        let dets = self.detect(img)?;
        let mut faces = Vec::with_capacity(dets.len());
        for d in dets {
            let Some(kps) = d.kps else {
                return Err(FaceError::Inference {
                    model: self.models.detector.path.display().to_string(),
                    problem: "no keypoints decoded".into(),
                });
            };
            let crop = self.align(img, &kps)?;
            let embedding = self.embed(&crop)?;
            faces.push(Face {
                bbox: d.bbox,
                score: d.score,
                kps,
                embedding,
            });
        }
        Ok(faces)
    }

    /// InstantID's face among `faces`: the largest; none is an error the server maps to 422.
    pub fn select(&self, faces: &[Face]) -> Result<Selection> {
        let index = largest_face(faces).ok_or_else(|| FaceError::NoFace {
            threshold: self.opts.det_thresh,
            image: "the image".into(),
        })?;
        let mut warnings = Vec::new();
        if faces.len() > 1 {
            warnings.push(format!(
                "{} faces found; the largest (face {index}) is used",
                faces.len()
            ));
        }
        let b = faces[index].bbox;
        let (w, h) = (b[2] - b[0], b[3] - b[1]);
        if w < self.rec_size as f32 || h < self.rec_size as f32 {
            warnings.push(format!(
                "the face is {w:.0}x{h:.0} pixels, smaller than the recogniser's {0}x{0} input: identity may be weak",
                self.rec_size
            ));
        }
        Ok(Selection {
            index,
            count: faces.len(),
            warnings,
        })
    }
}
