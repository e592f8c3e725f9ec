//! Finding the detector and the recogniser in a folder the way insightface routes files: every
//! `*.onnx`, in sorted order, by its graph's shape — ≥ 5 outputs is a detector, a 192² input a
//! landmark net, 96² an attribute net, two inputs at 128² a face swapper, a square input ≥ 112
//! divisible by 16 a recogniser; the first file of each task wins. antelopev2's and buffalo_l's
//! file names are only used to say what is missing.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{FaceError, Result};
use crate::onnx_meta::{self, GraphMeta};
use crate::scrfd::Layout;

/// What a file in the folder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Detector,
    Recogniser,
    Landmark,
    Attribute,
    Swapper,
    /// A graph insightface's router does not recognise.
    Unrecognised,
    /// Not a readable ONNX file.
    Unreadable,
}

/// One `.onnx` file and what routing made of it.
#[derive(Clone, Debug, Serialize)]
pub struct ModelFile {
    pub path: PathBuf,
    pub role: Role,
    /// The first input's declared shape (`?` for symbolic or unknown dimensions).
    pub input: String,
    pub outputs: usize,
    /// Why the file is unreadable, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip)]
    pub meta: GraphMeta,
}

/// The two networks face analysis uses, and everything the folder held.
#[derive(Clone, Debug, Serialize)]
pub struct FaceModels {
    pub dir: PathBuf,
    pub detector: ModelFile,
    pub recogniser: ModelFile,
    pub files: Vec<ModelFile>,
    #[serde(skip)]
    pub layout: Layout,
}

fn route(meta: &GraphMeta) -> Role {
    if meta.outputs.len() >= 5 {
        return Role::Detector;
    }
    let Some(input) = meta.inputs.first() else {
        return Role::Unrecognised;
    };
    let dims: Vec<Option<i64>> = input.shape.iter().map(|d| d.fixed()).collect();
    let (h, w) = match dims.as_slice() {
        [_, _, h, w, ..] => (*h, *w),
        _ => return Role::Unrecognised,
    };
    match (h, w) {
        (Some(192), Some(192)) => Role::Landmark,
        (Some(96), Some(96)) => Role::Attribute,
        (Some(128), Some(128)) if meta.inputs.len() == 2 => Role::Swapper,
        (Some(h), Some(w)) if h == w && h >= 112 && h % 16 == 0 => Role::Recogniser,
        _ => Role::Unrecognised,
    }
}

fn describe(meta: &GraphMeta) -> String {
    let Some(input) = meta.inputs.first() else {
        return "no input".into();
    };
    let dims: Vec<String> = input
        .shape
        .iter()
        .map(|d| d.fixed().map_or("?".into(), |v| v.to_string()))
        .collect();
    format!("[{}]", dims.join(", "))
}

fn inspect(path: PathBuf) -> ModelFile {
    match onnx_meta::read(&path) {
        Ok(meta) => ModelFile {
            role: route(&meta),
            input: describe(&meta),
            outputs: meta.outputs.len(),
            error: None,
            meta,
            path,
        },
        Err(e) => ModelFile {
            path,
            role: Role::Unreadable,
            input: String::new(),
            outputs: 0,
            error: Some(e),
            meta: GraphMeta::default(),
        },
    }
}

/// Subfolders holding `.onnx` files (antelopev2's zip unpacks into `antelopev2/antelopev2/`).
fn nested(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut out: Vec<String> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .filter(|p| {
            std::fs::read_dir(p)
                .map(|mut r| {
                    r.any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "onnx")))
                })
                .unwrap_or(false)
        })
        .map(|p| p.display().to_string())
        .collect();
    out.sort();
    out
}

fn listing(dir: &Path, files: &[ModelFile]) -> String {
    if files.is_empty() {
        let sub = nested(dir);
        if !sub.is_empty() {
            return format!(
                "found no .onnx files here, but {} has some: point at that folder",
                sub.join(" and ")
            );
        }
        return "found no .onnx files".into();
    }
    let each: Vec<String> = files
        .iter()
        .map(|f| {
            let name = f.path.file_name().map_or_else(
                || f.path.display().to_string(),
                |n| n.to_string_lossy().into(),
            );
            match &f.error {
                Some(e) => format!("{name} (unreadable: {e})"),
                None => format!(
                    "{name} ({:?}, input {}, {} outputs)",
                    f.role, f.input, f.outputs
                )
                .to_lowercase(),
            }
        })
        .collect();
    format!("found {}", each.join(", "))
}

/// Routes every `*.onnx` in `dir` and returns the detector and recogniser, or an error that
/// lists what was found and what is expected.
pub fn discover(dir: &Path) -> Result<FaceModels> {
    let err = |problem: String| FaceError::Models {
        dir: dir.to_path_buf(),
        problem,
    };
    let entries =
        std::fs::read_dir(dir).map_err(|e| err(format!("cannot read the folder: {e}")))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "onnx") && p.is_file())
        .collect();
    paths.sort();
    let files: Vec<ModelFile> = paths.into_iter().map(inspect).collect();
    let first = |role| files.iter().find(|f| f.role == role).cloned();
    let detector = first(Role::Detector).ok_or_else(|| {
        err(format!(
            "no detector: {}; expected scrfd_10g_bnkps.onnx (antelopev2) or det_10g.onnx (buffalo_l), \
             an ONNX graph with 5 or more outputs",
            listing(dir, &files)
        ))
    })?;
    let recogniser = first(Role::Recogniser).ok_or_else(|| {
        err(format!(
            "no recogniser: {}; expected glintr100.onnx (antelopev2) or w600k_r50.onnx (buffalo_l), \
             an ONNX graph with a square input of 112 pixels or more, divisible by 16",
            listing(dir, &files)
        ))
    })?;
    let name = |f: &ModelFile| f.path.display().to_string();
    let layout = Layout::from_output_count(detector.outputs).ok_or_else(|| {
        err(format!(
            "{}: {} outputs; SCRFD has 6, 9, 10 or 15",
            name(&detector),
            detector.outputs
        ))
    })?;
    if !layout.keypoints {
        return Err(err(format!(
            "{}: a detector without keypoint outputs ({} outputs); InstantID aligns faces with the 5 \
             keypoints of scrfd_10g_bnkps.onnx",
            name(&detector),
            detector.outputs
        )));
    }
    if recogniser.outputs != 1 {
        return Err(err(format!(
            "{}: {} outputs; a recogniser has one (the embedding)",
            name(&recogniser),
            recogniser.outputs
        )));
    }
    let size = recogniser
        .meta
        .inputs
        .first()
        .and_then(|i| i.shape.get(2))
        .and_then(|d| d.fixed())
        .unwrap_or(0);
    if size % 112 != 0 && size % 128 != 0 {
        return Err(err(format!(
            "{}: input {size}x{size}; insightface's alignment needs a multiple of 112 or 128",
            name(&recogniser)
        )));
    }
    Ok(FaceModels {
        dir: dir.to_path_buf(),
        detector,
        recogniser,
        files,
        layout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx_meta::{Dim, ValueInfo};

    fn meta(inputs: &[&[i64]], outputs: usize) -> GraphMeta {
        let vi = |s: &[i64]| ValueInfo {
            name: "x".into(),
            shape: s
                .iter()
                .map(|&d| {
                    if d < 0 {
                        Dim::Symbolic("?".into())
                    } else {
                        Dim::Fixed(d)
                    }
                })
                .collect(),
        };
        GraphMeta {
            inputs: inputs.iter().map(|s| vi(s)).collect(),
            outputs: (0..outputs).map(|_| vi(&[1])).collect(),
            first_node_names: vec![],
        }
    }

    #[test]
    fn routes_like_insightface() {
        assert_eq!(route(&meta(&[&[1, 3, -1, -1]], 9)), Role::Detector);
        assert_eq!(route(&meta(&[&[1, 3, 640, 640]], 5)), Role::Detector);
        assert_eq!(route(&meta(&[&[1, 3, 192, 192]], 1)), Role::Landmark);
        assert_eq!(route(&meta(&[&[1, 3, 96, 96]], 1)), Role::Attribute);
        assert_eq!(
            route(&meta(&[&[1, 3, 128, 128], &[1, 512]], 1)),
            Role::Swapper
        );
        assert_eq!(route(&meta(&[&[-1, 3, 112, 112]], 1)), Role::Recogniser);
        assert_eq!(route(&meta(&[&[1, 3, 128, 128]], 1)), Role::Recogniser);
        assert_eq!(route(&meta(&[&[1, 3, 120, 120]], 1)), Role::Unrecognised);
        assert_eq!(route(&meta(&[&[1, 3, 112, 96]], 1)), Role::Unrecognised);
        assert_eq!(route(&meta(&[&[1, 3, -1, -1]], 1)), Role::Unrecognised);
        assert_eq!(route(&meta(&[&[1, 512]], 1)), Role::Unrecognised);
    }
}
