//! A generation's face inputs from the uploaded images, as InstantX's `infer.py` and
//! `gradio_demo/app.py` compute them: face analysis (antelopev2's detector and ArcFace, through
//! `ltx-face`) on each image as given, the largest face by box area, its raw (un-normalised)
//! embedding, and the keypoint image `draw_kps` makes of its 5 points on a canvas the size of
//! the image they came from. With a pose image the keypoints come from the pose image's
//! largest face (the identity still from the face image); extra reference faces' embeddings
//! are averaged with the face image's (what InstantID users do to combine several photos).

use ltx_face::{draw_kps, largest_face, Face, FaceAnalysis, FaceError};

use crate::image::RgbImage;

/// What the pipeline conditions on, from the images.
#[derive(Debug, Clone, PartialEq)]
pub struct FaceConditioning {
    /// The raw ArcFace embedding of the face image's largest face, averaged with each
    /// reference image's (element by element).
    pub embedding: Vec<f32>,
    /// `draw_kps` of the largest face's keypoints, at the size of the image they came from
    /// (the pose image's when one is given, else the face image's).
    pub keypoints: RgbImage,
    /// Faces found in the face image.
    pub faces_found: usize,
    /// Reference images whose embedding was averaged in.
    pub references_used: usize,
}

fn to_face_image(img: &RgbImage, what: &str) -> Result<image::RgbImage, FaceError> {
    image::RgbImage::from_raw(img.width as u32, img.height as u32, img.data.clone()).ok_or_else(
        || {
            FaceError::Image(format!(
                "{what}: {}x{} with {} bytes is not an RGB image (width × height × 3 bytes)",
                img.width,
                img.height,
                img.data.len()
            ))
        },
    )
}

/// Every face in `img` and the index of the largest; no face is [`FaceError::NoFace`] naming
/// `what`.
fn largest(
    fa: &mut FaceAnalysis,
    img: &RgbImage,
    what: &str,
) -> Result<(Vec<Face>, usize), FaceError> {
    let faces = fa.analyze(&to_face_image(img, what)?)?;
    match largest_face(&faces) {
        Some(i) => Ok((faces, i)),
        None => Err(FaceError::NoFace {
            threshold: fa.options().det_thresh,
            image: what.to_string(),
        }),
    }
}

/// The face conditioning of one generation: `face` gives the identity (its largest face's
/// embedding) and, without `pose`, the keypoints; `pose` (optional) the keypoints from its
/// largest face, drawn at its size; each of `references` one more embedding (its largest
/// face's) averaged in. An image without a face is [`FaceError::NoFace`] naming it ("the face
/// image", "the pose image", "reference image N", counting from 1).
pub fn analyze_faces(
    fa: &mut FaceAnalysis,
    face: &RgbImage,
    pose: Option<&RgbImage>,
    references: &[RgbImage],
) -> Result<FaceConditioning, FaceError> {
    let (faces, pick) = largest(fa, face, "the face image")?;
    let faces_found = faces.len();
    let main = &faces[pick];
    let keypoints = match pose {
        Some(p) => {
            let (pose_faces, i) = largest(fa, p, "the pose image")?;
            draw_kps(p.width as u32, p.height as u32, &pose_faces[i].kps)
        }
        None => draw_kps(face.width as u32, face.height as u32, &main.kps),
    };
    let mut sum: Vec<f64> = main.embedding.iter().map(|&v| f64::from(v)).collect();
    for (n, r) in references.iter().enumerate() {
        let what = format!("reference image {}", n + 1);
        let (faces, i) = largest(fa, r, &what)?;
        let e = &faces[i].embedding;
        if e.len() != sum.len() {
            return Err(FaceError::Inference {
                model: what,
                problem: format!(
                    "embedding of {} values, the face image's has {}",
                    e.len(),
                    sum.len()
                ),
            });
        }
        for (s, &v) in sum.iter_mut().zip(e) {
            *s += f64::from(v);
        }
    }
    let n = (1 + references.len()) as f64;
    Ok(FaceConditioning {
        embedding: sum.into_iter().map(|s| (s / n) as f32).collect(),
        keypoints: keypoints.into(),
        faces_found,
        references_used: references.len(),
    })
}
