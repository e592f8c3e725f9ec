//! ArcFace alignment and input as insightface's `face_align.norm_crop` and `ArcFaceONNX` do it:
//! the 5-point similarity transform onto the arcface template (closed-form least squares,
//! equal to skimage's Umeyama estimate), `cv2.warpAffine` to the recogniser's square size, and
//! the mean/std insightface infers from the graph's first node names.

use image::RgbImage;

use crate::cv::warp_affine;

/// insightface's `arcface_dst`: where the 5 keypoints land in a 112×112 crop.
pub const ARCFACE_DST: [[f32; 2]; 5] = [
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
];

/// The template scaled to a crop of `size` pixels (`estimate_norm`): sizes divisible by 112
/// scale it, sizes divisible by 128 scale it and shift it right by 8/128 of the size.
pub fn template(size: u32) -> Option<[[f32; 2]; 5]> {
    let (ratio, diff_x) = if size.is_multiple_of(112) {
        (size as f32 / 112.0, 0.0f32)
    } else if size.is_multiple_of(128) {
        let r = size as f32 / 128.0;
        (r, 8.0 * r)
    } else {
        return None;
    };
    Some(ARCFACE_DST.map(|p| [p[0] * ratio + diff_x, p[1] * ratio]))
}

/// The least-squares similarity transform (rotation, uniform scale, translation) taking `src`
/// onto `dst`, as a row-major 2×3 forward matrix; `None` when the source points coincide.
///
/// For 2-D points Umeyama's SVD solution has a closed form: with the centred cross-covariance
/// A, the rotation angle is atan2(A₁₀ − A₀₁, A₀₀ + A₁₁) and scale·R = [[a, −b], [b, a]] / σ²,
/// a = A₀₀ + A₁₁, b = A₁₀ − A₀₁, σ² the source variance (reflections excluded, as there).
pub fn similarity(src: &[[f32; 2]; 5], dst: &[[f32; 2]; 5]) -> Option<[f64; 6]> {
    let n = src.len() as f64;
    let mean = |p: &[[f32; 2]; 5], k: usize| p.iter().map(|q| f64::from(q[k])).sum::<f64>() / n;
    let (sx, sy, dx, dy) = (mean(src, 0), mean(src, 1), mean(dst, 0), mean(dst, 1));
    let (mut a00, mut a01, mut a10, mut a11, mut var) = (0f64, 0f64, 0f64, 0f64, 0f64);
    for (s, d) in src.iter().zip(dst) {
        let (px, py) = (f64::from(s[0]) - sx, f64::from(s[1]) - sy);
        let (qx, qy) = (f64::from(d[0]) - dx, f64::from(d[1]) - dy);
        a00 += qx * px;
        a01 += qx * py;
        a10 += qy * px;
        a11 += qy * py;
        var += px * px + py * py;
    }
    let (a, b) = ((a00 + a11) / var, (a10 - a01) / var);
    if var.is_nan() || var <= 0.0 || !a.is_finite() || !b.is_finite() || (a == 0.0 && b == 0.0) {
        return None;
    }
    Some([a, -b, dx - (a * sx - b * sy), b, a, dy - (b * sx + a * sy)])
}

/// `norm_crop`: the aligned `size × size` crop and the matrix used.
pub fn norm_crop(img: &RgbImage, kps: &[[f32; 2]; 5], size: u32) -> Option<(RgbImage, [f64; 6])> {
    let m = similarity(kps, &template(size)?)?;
    Some((warp_affine(img, &m, size, size), m))
}

/// insightface's rule: mean 0 and std 1 when nodes named `Sub…`/`_minus…` and `Mul…`/`_mul…`
/// are among the first 8 (MXNet exports that normalise inside), else 127.5 and 127.5.
pub fn input_normalisation(first_node_names: &[String]) -> (f64, f64) {
    let first = &first_node_names[..first_node_names.len().min(8)];
    let sub = first
        .iter()
        .any(|n| n.starts_with("Sub") || n.starts_with("_minus"));
    let mul = first
        .iter()
        .any(|n| n.starts_with("Mul") || n.starts_with("_mul"));
    if sub && mul {
        (0.0, 1.0)
    } else {
        (127.5, 127.5)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn similarity_recovers_an_exact_transform() {
        // dst = s·R(θ)·src + t for a known s, θ, t: the fit must return it.
        let (s, th, tx, ty) = (1.7f64, 0.3f64, -12.5f64, 40.25f64);
        let src: [[f32; 2]; 5] = [
            [10.0, 20.0],
            [50.0, 18.0],
            [31.0, 40.0],
            [15.0, 61.0],
            [47.0, 60.0],
        ];
        let dst = src.map(|p| {
            let (x, y) = (f64::from(p[0]), f64::from(p[1]));
            [
                (s * (th.cos() * x - th.sin() * y) + tx) as f32,
                (s * (th.sin() * x + th.cos() * y) + ty) as f32,
            ]
        });
        let m = similarity(&src, &dst).expect("well posed");
        let want = [
            s * th.cos(),
            -s * th.sin(),
            tx,
            s * th.sin(),
            s * th.cos(),
            ty,
        ];
        for (a, b) in m.iter().zip(want) {
            assert!((a - b).abs() < 1e-4, "{m:?} vs {want:?}");
        }
    }

    #[test]
    fn similarity_is_the_least_squares_fit() {
        // Perturbed points: the closed form must beat any nearby similarity on squared error.
        let src: [[f32; 2]; 5] = [
            [100.0, 90.0],
            [140.0, 92.0],
            [121.0, 115.0],
            [103.0, 135.0],
            [138.0, 133.0],
        ];
        let dst = template(112).expect("112");
        let m = similarity(&src, &dst).expect("well posed");
        let err = |m: &[f64; 6]| -> f64 {
            src.iter()
                .zip(&dst)
                .map(|(p, q)| {
                    let (x, y) = (f64::from(p[0]), f64::from(p[1]));
                    let ex = m[0] * x + m[1] * y + m[2] - f64::from(q[0]);
                    let ey = m[3] * x + m[4] * y + m[5] - f64::from(q[1]);
                    ex * ex + ey * ey
                })
                .sum()
        };
        let best = err(&m);
        let base = [m[0], m[3], m[2], m[5]];
        for k in 0..4 {
            for d in [-1e-3, 1e-3] {
                let mut p = base;
                p[k] += d;
                let [a, b, tx, ty] = p;
                assert!(
                    err(&[a, -b, tx, b, a, ty]) > best,
                    "perturbing parameter {k} by {d} improved the fit"
                );
            }
        }
    }

    #[test]
    fn degenerate_keypoints_give_none() {
        assert!(similarity(&[[5.0, 5.0]; 5], &ARCFACE_DST).is_none());
        assert!(similarity(&[[f32::NAN, 5.0]; 5], &ARCFACE_DST).is_none());
    }

    #[test]
    fn template_follows_estimate_norm() {
        assert_eq!(template(112), Some(ARCFACE_DST));
        let t = template(128).expect("128");
        assert_eq!(t[0], [38.2946 * (128.0f32 / 128.0) + 8.0, 51.6963]);
        assert!(template(144).is_none());
    }

    #[test]
    fn normalisation_follows_the_node_names() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            input_normalisation(&names(&["_minus0", "_mul1", "conv0"])),
            (0.0, 1.0)
        );
        assert_eq!(input_normalisation(&names(&["Sub_3", "Mul_5"])), (0.0, 1.0));
        assert_eq!(
            input_normalisation(&names(&["Sub_3", "Conv_5"])),
            (127.5, 127.5)
        );
        assert_eq!(
            input_normalisation(&names(&["Conv_0", "PRelu_1"])),
            (127.5, 127.5)
        );
        let late = names(&["a", "b", "c", "d", "e", "f", "g", "h", "Sub", "Mul"]);
        assert_eq!(input_normalisation(&late), (127.5, 127.5));
    }
}
