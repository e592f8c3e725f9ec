//! `ltx-i2v faces`: check face models and photos the way InstantID will use them. Per image,
//! every face insightface would find (box, score, keypoints, embedding norm) and the one
//! InstantID conditions on; optionally the keypoint image and the aligned crops.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use ltx_face::{decode_image, draw_kps, AnalysisOptions, FaceAnalysis, FaceDevice, SessionOptions};
use serde_json::json;

#[derive(Args, Debug)]
pub struct FacesArgs {
    /// The face model folder as downloaded (antelopev2: scrfd_10g_bnkps.onnx, glintr100.onnx, …).
    #[arg(long, env = "INSTANTID_FACE_MODELS")]
    pub face_models: PathBuf,
    /// Detection size (the square the photo is letterboxed into), as insightface's det_size.
    #[arg(long, env = "INSTANTID_FACE_DET_SIZE", default_value_t = 640)]
    pub det_size: u32,
    /// Detector score threshold.
    #[arg(long, env = "INSTANTID_FACE_DET_THRESH", default_value_t = 0.5)]
    pub det_thresh: f32,
    /// Where the face networks run: cpu, cuda or cuda:N (CUDA needs LTX_ONNXRUNTIME pointing
    /// at a CUDA build of ONNX Runtime; otherwise the CPU is used and the reason printed).
    #[arg(long, env = "INSTANTID_FACE_DEVICE", default_value = "cpu")]
    pub device: String,
    /// ONNX Runtime intra-op threads (default: half the cores, at most 4).
    #[arg(long, env = "INSTANTID_FACE_THREADS")]
    pub threads: Option<usize>,
    /// Largest photo accepted, in pixels (checked before decoding).
    #[arg(long, env = "LTX_MAX_INPUT_PIXELS", default_value_t = 16_777_216)]
    pub max_input_pixels: u64,
    /// Print one JSON object per image (insightface's coordinates: original image pixels).
    #[arg(long)]
    pub json: bool,
    /// Write InstantID's keypoint image of the face it would use (with several photos,
    /// `_<photo name>` is added before the extension).
    #[arg(long)]
    pub kps_out: Option<PathBuf>,
    /// Write every face's aligned crop as `<photo name>_face<i>.png` into this folder.
    #[arg(long)]
    pub crops_dir: Option<PathBuf>,
    /// Photos (PNG, JPEG or WebP).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .map_or_else(|| "image".into(), |s| s.to_string_lossy().into_owned())
}

fn kps_path(out: &Path, image: &Path, several: bool) -> PathBuf {
    if !several {
        return out.to_path_buf();
    }
    let ext = out
        .extension()
        .map_or_else(|| "png".into(), |e| e.to_string_lossy().into_owned());
    out.with_file_name(format!("{}_{}.{ext}", stem(out), stem(image)))
}

/// Analyses one photo; prints it; writes the requested files. `Err` is the photo's failure.
fn one(fa: &mut FaceAnalysis, args: &FacesArgs, path: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let img = decode_image(&bytes, args.max_input_pixels)?;
    let faces = fa.analyze(&img)?;
    let selection = fa.select(&faces);
    if args.json {
        let list: Vec<_> = faces
            .iter()
            .map(|f| json!({"bbox": f.bbox, "score": f.score, "kps": f.kps, "embedding": f.embedding}))
            .collect();
        let (pick, warnings, error) = match &selection {
            Ok(s) => (Some(s.index), s.warnings.clone(), None),
            Err(e) => (None, vec![], Some(e.to_string())),
        };
        let obj = json!({"image": path, "width": img.width(), "height": img.height(), "faces": list,
                         "instantid_face": pick, "warnings": warnings, "error": error});
        println!("{obj}");
    } else {
        println!(
            "{}: {}x{}, {} face(s)",
            path.display(),
            img.width(),
            img.height(),
            faces.len()
        );
        let pick = selection.as_ref().ok().map(|s| s.index);
        for (i, f) in faces.iter().enumerate() {
            let b = f.bbox;
            let kps: Vec<String> = f
                .kps
                .iter()
                .map(|p| format!("({:.1}, {:.1})", p[0], p[1]))
                .collect();
            println!(
                "  face {i}: box [{:.1}, {:.1}, {:.1}, {:.1}] score {:.4} kps {} |embedding| {:.3}{}",
                b[0], b[1], b[2], b[3], f.score, kps.join(" "), f.embedding_norm(),
                if pick == Some(i) { "  <- InstantID uses this one" } else { "" }
            );
        }
        if let Ok(s) = &selection {
            for w in &s.warnings {
                println!("  note: {w}");
            }
        }
    }
    if let Some(dir) = &args.crops_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (i, f) in faces.iter().enumerate() {
            let out = dir.join(format!("{}_face{i}.png", stem(path)));
            fa.align(&img, &f.kps)?
                .save(&out)
                .with_context(|| format!("writing {}", out.display()))?;
        }
    }
    let selection = selection?;
    if let Some(out) = &args.kps_out {
        let out = kps_path(out, path, args.images.len() > 1);
        draw_kps(img.width(), img.height(), &faces[selection.index].kps)
            .save(&out)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

pub fn run(args: FacesArgs) -> anyhow::Result<()> {
    let device: FaceDevice = args.device.parse()?;
    let session = SessionOptions {
        device,
        threads: args
            .threads
            .unwrap_or_else(ltx_face::runtime::default_threads),
    };
    let opts = AnalysisOptions {
        det_size: args.det_size,
        det_thresh: args.det_thresh,
        session,
        ..Default::default()
    };
    let mut fa = FaceAnalysis::new(&args.face_models, opts)?;
    let m = fa.models();
    let rt = ltx_face::runtime::info()?;
    let p = &fa.providers()[0];
    eprintln!(
        "face models: {} (detector {}, recogniser {}); ONNX Runtime {} ({}) on {}{}",
        m.dir.display(),
        m.detector
            .path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy(),
        m.recogniser
            .path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy(),
        rt.version,
        rt.library.display(),
        p.name,
        p.fallback_reason
            .as_ref()
            .map(|r| format!(" (fallback: {r})"))
            .unwrap_or_default(),
    );
    let mut failed = 0;
    for path in &args.images {
        if let Err(e) = one(&mut fa, &args, path) {
            failed += 1;
            if !args.json {
                println!("{}: {e:#}", path.display());
            } else if e
                .downcast_ref::<ltx_face::FaceError>()
                .is_none_or(|fe| !matches!(fe, ltx_face::FaceError::NoFace { .. }))
            {
                println!("{}", json!({"image": path, "error": format!("{e:#}")}));
            }
        }
    }
    if failed > 0 {
        anyhow::bail!(
            "{failed} of {} image(s) gave no usable face",
            args.images.len()
        );
    }
    Ok(())
}
