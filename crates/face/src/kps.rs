//! InstantID's `draw_kps`: the ControlNet condition image drawn from the 5 keypoints.
//!
//! On a black canvas the size of the face (or pose) image: for each limb (0,2), (1,2), (3,2),
//! (4,2) an ellipse polygon (`ellipse2Poly` around the limb's midpoint, half-length × 4 px, at
//! the limb's angle) filled in its first keypoint's colour; the canvas ×0.6 (limbs at 153);
//! then a filled circle of radius 10 at each keypoint. Arithmetic follows the reference's
//! float32 numpy and integer truncations, so the image equals it pixel for pixel.

use image::RgbImage;

use crate::cv::draw::{ellipse2poly, fill_circle, fill_convex_poly, Canvas};

const COLORS: [[u8; 3]; 5] = [
    [255, 0, 0],
    [0, 255, 0],
    [0, 0, 255],
    [255, 255, 0],
    [255, 0, 255],
];
const LIMBS: [(usize, usize); 4] = [(0, 2), (1, 2), (3, 2), (4, 2)];
const STICK_WIDTH: i32 = 4;
const RADIUS: i32 = 10;

/// Python's `int()` of a float: truncation toward zero (saturated where it would overflow).
fn trunc(v: f64) -> i32 {
    v.trunc().clamp(i32::MIN as f64, i32::MAX as f64) as i32
}

/// The keypoint image for `kps` (insightface's 5 points, image pixels) on a `width × height`
/// canvas. Zero-sized canvases give an empty image.
pub fn draw_kps(width: u32, height: u32, kps: &[[f32; 2]; 5]) -> RgbImage {
    let mut data = vec![0u8; width as usize * height as usize * 3];
    let (w, h) = (width as i32, height as i32);
    {
        let mut canvas = Canvas {
            width: w,
            height: h,
            data: &mut data,
        };
        for &(a, b) in &LIMBS {
            let (p, q) = (kps[a], kps[b]);
            let (dx, dy) = (p[0] - q[0], p[1] - q[1]);
            let length = (dx * dx + dy * dy).sqrt();
            let angle = f64::from(dy).atan2(f64::from(dx)).to_degrees();
            let cx = (p[0] + q[0]) / 2.0;
            let cy = (p[1] + q[1]) / 2.0;
            let poly = ellipse2poly(
                (trunc(f64::from(cx)), trunc(f64::from(cy))),
                (trunc(f64::from(length / 2.0)), STICK_WIDTH),
                trunc(angle),
                0,
                360,
                1,
            );
            // The reference fills 255 on a float canvas, then scales all of it by 0.6.
            let c = COLORS[a].map(|v| (f64::from(v) * 0.6) as u8);
            fill_convex_poly(&mut canvas, &poly, c);
        }
        for (p, color) in kps.iter().zip(COLORS) {
            let centre = (trunc(f64::from(p[0])), trunc(f64::from(p[1])));
            fill_circle(&mut canvas, centre, RADIUS, color);
        }
    }
    RgbImage::from_raw(width, height, data).expect("buffer sized to the image")
}
