//! `cv2.resize(img, (w, h))` with its default INTER_LINEAR on 8-bit 3-channel images, as
//! OpenCV 4.10 computes it: 11-bit fixed-point weights, an exact horizontal pass, and the
//! vertical pass's `((b0·(S0>>4))>>16 + (b1·(S1>>4))>>16 + 2) >> 2` rounding (the same in
//! its SIMD and scalar paths). An exact 2× downscale is INTER_AREA's 2×2 average there.

use image::RgbImage;

const COEF_BITS: u32 = 11;
const COEF_SCALE: f32 = (1 << COEF_BITS) as f32;
const CN: usize = 3;

/// `cvRound` of a float: round half to even, as the SSE conversion OpenCV uses.
fn round_i16(v: f32) -> i16 {
    v.round_ties_even().clamp(i16::MIN as f32, i16::MAX as f32) as i16
}

/// Source index and the two fixed-point weights of one destination coordinate.
struct Tap {
    src: usize,
    w: [i16; 2],
}

/// OpenCV's coordinate mapping `(d + 0.5)·scale − 0.5`, evaluated in double and rounded to
/// float as it does; `clamp_edges` applies the horizontal pass's border rule (the vertical
/// pass clips the row indices instead, keeping the weights).
fn taps(dst_len: usize, src_len: usize, scale: f64, clamp_edges: bool) -> Vec<(i64, Tap)> {
    (0..dst_len)
        .map(|d| {
            let mut f = ((d as f64 + 0.5) * scale - 0.5) as f32;
            let mut s = f.floor() as i64;
            f -= s as f32;
            if clamp_edges {
                if s < 0 {
                    f = 0.0;
                    s = 0;
                }
                if s >= src_len as i64 - 1 {
                    f = 0.0;
                    s = src_len as i64 - 1;
                }
            }
            let w = [round_i16((1.0 - f) * COEF_SCALE), round_i16(f * COEF_SCALE)];
            (
                s,
                Tap {
                    src: s.max(0) as usize,
                    w,
                },
            )
        })
        .collect()
}

/// Resizes `src` to `width × height` exactly as `cv2.resize(src, (width, height))`.
/// Both sizes must be non-zero (the callers compute them from a non-empty image).
pub fn resize_linear(src: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (sw, sh) = (src.width() as usize, src.height() as usize);
    let (dw, dh) = (width as usize, height as usize);
    if (sw, sh) == (dw, dh) {
        return src.clone();
    }
    let scale_x = 1.0 / (dw as f64 / sw as f64);
    let scale_y = 1.0 / (dh as f64 / sh as f64);
    let is_int = |s: f64| (s - s.round_ties_even()).abs() < f64::EPSILON;
    if is_int(scale_x) && is_int(scale_y) && scale_x.round() == 2.0 && scale_y.round() == 2.0 {
        return area_half(src, width, height);
    }
    let s = src.as_raw();
    let xt = taps(dw, sw, scale_x, true);
    let yt = taps(dh, sh, scale_y, false);
    // Horizontal pass of one source row into fixed point (exact integers).
    let hrow = |y: usize, out: &mut Vec<i32>| {
        out.clear();
        let row = &s[y * sw * CN..(y + 1) * sw * CN];
        for (sx, t) in &xt {
            let last = *sx >= sw as i64 - 1;
            for c in 0..CN {
                let a = i32::from(row[t.src * CN + c]);
                out.push(if last {
                    a << COEF_BITS
                } else {
                    a * i32::from(t.w[0]) + i32::from(row[(t.src + 1) * CN + c]) * i32::from(t.w[1])
                });
            }
        }
    };
    let clip = |y: i64| y.clamp(0, sh as i64 - 1) as usize;
    let mut out = vec![0u8; dw * dh * CN];
    let (mut r0, mut r1) = (Vec::with_capacity(dw * CN), Vec::with_capacity(dw * CN));
    for (dy, (sy, t)) in yt.iter().enumerate() {
        hrow(clip(*sy), &mut r0);
        hrow(clip(*sy + 1), &mut r1);
        let (b0, b1) = (i32::from(t.w[0]), i32::from(t.w[1]));
        let dst = &mut out[dy * dw * CN..(dy + 1) * dw * CN];
        for (x, d) in dst.iter_mut().enumerate() {
            let v = (((b0 * (r0[x] >> 4)) >> 16) + ((b1 * (r1[x] >> 4)) >> 16) + 2) >> 2;
            *d = v.clamp(0, 255) as u8;
        }
    }
    RgbImage::from_raw(width, height, out).expect("buffer sized to the image")
}

/// INTER_AREA for an exact factor of 2: the rounded mean of each 2×2 block.
fn area_half(src: &RgbImage, width: u32, height: u32) -> RgbImage {
    let s = src.as_raw();
    let sw = src.width() as usize;
    let (dw, dh) = (width as usize, height as usize);
    let mut out = vec![0u8; dw * dh * CN];
    for y in 0..dh {
        let (a, b) = (&s[2 * y * sw * CN..], &s[(2 * y + 1) * sw * CN..]);
        for x in 0..dw {
            for c in 0..CN {
                let i = 2 * x * CN + c;
                let sum =
                    u32::from(a[i]) + u32::from(a[i + CN]) + u32::from(b[i]) + u32::from(b[i + CN]);
                out[(y * dw + x) * CN + c] = ((sum + 2) >> 2) as u8;
            }
        }
    }
    RgbImage::from_raw(width, height, out).expect("buffer sized to the image")
}
