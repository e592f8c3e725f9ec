//! `cv2.warpAffine(img, M, (w, h), borderValue=0)` (bilinear, constant border) on 8-bit
//! 3-channel images, as OpenCV 4.10 computes it: M inverted in double, source coordinates in
//! 1/1024 pixel rounded to 1/32 pixel, and 15-bit bilinear weights `(32−a)(32−b)·32` etc.

use image::RgbImage;

const AB_BITS: i32 = 10;
const AB_SCALE: f64 = (1 << AB_BITS) as f64;
const INTER_BITS: i32 = 5;
const INTER_TAB: i32 = 1 << INTER_BITS;
const ROUND_DELTA: i32 = (1 << AB_BITS) / INTER_TAB / 2;
const CN: usize = 3;

/// `saturate_cast<int>(double)`: round half to even, saturated.
fn round_i32(v: f64) -> i32 {
    if v.is_nan() {
        return 0;
    }
    v.round_ties_even().clamp(i32::MIN as f64, i32::MAX as f64) as i32
}

/// The inverse of the forward map `m` (destination → source), as `warpAffine` computes it.
pub fn invert_affine(m: &[f64; 6]) -> [f64; 6] {
    let d = m[0] * m[4] - m[1] * m[3];
    let d = if d != 0.0 { 1.0 / d } else { 0.0 };
    let (a11, a22) = (m[4] * d, m[0] * d);
    let (a12, a21) = (m[1] * -d, m[3] * -d);
    let b1 = -a11 * m[2] - a12 * m[5];
    let b2 = -a21 * m[2] - a22 * m[5];
    [a11, a12, b1, a21, a22, b2]
}

/// Warps `src` by the forward affine map `m` (row-major 2×3, source → destination) into a
/// `width × height` image, pixels outside the source reading as 0.
pub fn warp_affine(src: &RgbImage, m: &[f64; 6], width: u32, height: u32) -> RgbImage {
    let inv = invert_affine(m);
    let (sw, sh) = (src.width() as i32, src.height() as i32);
    let s = src.as_raw();
    let (dw, dh) = (width as usize, height as usize);
    let adelta: Vec<i32> = (0..dw)
        .map(|x| round_i32(inv[0] * x as f64 * AB_SCALE))
        .collect();
    let bdelta: Vec<i32> = (0..dw)
        .map(|x| round_i32(inv[3] * x as f64 * AB_SCALE))
        .collect();
    let mut out = vec![0u8; dw * dh * CN];
    let at = |x: i32, y: i32, c: usize| -> i32 {
        if x >= 0 && y >= 0 && x < sw && y < sh {
            i32::from(s[(y as usize * sw as usize + x as usize) * CN + c])
        } else {
            0
        }
    };
    for y in 0..dh {
        let x0 = round_i32((inv[1] * y as f64 + inv[2]) * AB_SCALE).wrapping_add(ROUND_DELTA);
        let y0 = round_i32((inv[4] * y as f64 + inv[5]) * AB_SCALE).wrapping_add(ROUND_DELTA);
        for x in 0..dw {
            let xf = x0.wrapping_add(adelta[x]) >> (AB_BITS - INTER_BITS);
            let yf = y0.wrapping_add(bdelta[x]) >> (AB_BITS - INTER_BITS);
            // The integer part is stored as a short in OpenCV's map.
            let sx = (xf >> INTER_BITS).clamp(i16::MIN as i32, i16::MAX as i32);
            let sy = (yf >> INTER_BITS).clamp(i16::MIN as i32, i16::MAX as i32);
            let (ax, ay) = (xf & (INTER_TAB - 1), yf & (INTER_TAB - 1));
            let dst = &mut out[(y * dw + x) * CN..(y * dw + x + 1) * CN];
            if sx >= sw || sx + 1 < 0 || sy >= sh || sy + 1 < 0 {
                continue; // entirely outside: the border value 0
            }
            let w = [
                (INTER_TAB - ay) * (INTER_TAB - ax) * INTER_TAB,
                (INTER_TAB - ay) * ax * INTER_TAB,
                ay * (INTER_TAB - ax) * INTER_TAB,
                ay * ax * INTER_TAB,
            ];
            for (c, d) in dst.iter_mut().enumerate() {
                let v = at(sx, sy, c) * w[0]
                    + at(sx + 1, sy, c) * w[1]
                    + at(sx, sy + 1, c) * w[2]
                    + at(sx + 1, sy + 1, c) * w[3];
                *d = ((v + (1 << 14)) >> 15).clamp(0, 255) as u8;
            }
        }
    }
    RgbImage::from_raw(width, height, out).expect("buffer sized to the image")
}
