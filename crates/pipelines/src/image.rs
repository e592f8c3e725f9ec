//! Image preprocessing as diffusers does it with PIL: an RGB uint8 image resized straight to
//! the target size with Pillow's Lanczos filter (no crop, aspect ratio not kept), reproduced
//! bit for bit: separable two-pass resampling (horizontal first), support 3 scaled by the
//! downscale factor, 22-bit fixed-point coefficients and a uint8 intermediate.

use std::f64::consts::PI;

/// An RGB image, rows of `width · 3` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

const PRECISION_BITS: u32 = 32 - 8 - 2;
const SUPPORT: f64 = 3.0;

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * PI;
        x.sin() / x
    }
}

fn lanczos(x: f64) -> f64 {
    if (-3.0..3.0).contains(&x) {
        sinc(x) * sinc(x / 3.0)
    } else {
        0.0
    }
}

/// Per output pixel: first input index and the fixed-point weights (Pillow's
/// `precompute_coeffs` + `normalize_coeffs_8bpc`).
fn coefficients(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = SUPPORT * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let w: Vec<f64> = (xmin..xmax)
                .map(|x| lanczos((x as f64 - center + 0.5) * ss))
                .collect();
            let total: f64 = w.iter().sum();
            let fixed = w
                .iter()
                .map(|&k| {
                    let k = if total != 0.0 { k / total } else { k };
                    let v = k * f64::from(1u32 << PRECISION_BITS);
                    if v < 0.0 {
                        (v - 0.5) as i32
                    } else {
                        (v + 0.5) as i32
                    }
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

fn clip8(v: i64) -> u8 {
    if v >= (1i64 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

impl RgbImage {
    /// The image as model pixels `[1, 3, H, W]` in [-1, 1] at `(width, height)`: Pillow's
    /// Lanczos stretch (no crop), then `x/255·2 − 1` in float32, as diffusers' video
    /// processor preprocesses images and video frames; then `kind` on `device`.
    pub fn to_pixels(
        &self,
        width: i64,
        height: i64,
        kind: tch::Kind,
        device: tch::Device,
    ) -> Result<tch::Tensor, tch::TchError> {
        let img = self.resize_lanczos(width as usize, height as usize);
        let t = tch::Tensor::from_slice(&img.data)
            .f_reshape([height, width, 3])?
            .f_permute([2, 0, 1])?
            .f_unsqueeze(0)?
            .f_to_kind(tch::Kind::Float)?;
        ((t / 255.0) * 2.0 - 1.0)
            .f_to_device(device)?
            .f_to_kind(kind)
    }

    /// `PIL.Image.resize((width, height), Image.LANCZOS)`.
    pub fn resize_lanczos(&self, width: usize, height: usize) -> RgbImage {
        if width == self.width && height == self.height {
            return self.clone();
        }
        let vert = coefficients(self.height, height);
        let mut img = self.clone();
        if width != self.width {
            // Only the source rows the vertical pass reads are resampled, as in Pillow.
            let first = vert.first().map_or(0, |(lo, _)| *lo);
            let last = vert.last().map_or(self.height, |(lo, k)| lo + k.len());
            let horiz = coefficients(self.width, width);
            let mut out = vec![0u8; (last - first) * width * 3];
            for y in first..last {
                let row = &self.data[y * self.width * 3..(y + 1) * self.width * 3];
                for (x, (lo, k)) in horiz.iter().enumerate() {
                    for c in 0..3 {
                        let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                        for (i, &w) in k.iter().enumerate() {
                            ss += i64::from(row[(lo + i) * 3 + c]) * i64::from(w);
                        }
                        out[((y - first) * width + x) * 3 + c] = clip8(ss);
                    }
                }
            }
            img = RgbImage {
                width,
                height: last - first,
                data: out,
            };
            if height == self.height {
                return img;
            }
            let shifted: Vec<(usize, Vec<i32>)> =
                vert.into_iter().map(|(lo, k)| (lo - first, k)).collect();
            return img.vertical(&shifted, height);
        }
        img.vertical(&vert, height)
    }

    fn vertical(&self, coeffs: &[(usize, Vec<i32>)], height: usize) -> RgbImage {
        let stride = self.width * 3;
        let mut out = vec![0u8; height * stride];
        for (y, (lo, k)) in coeffs.iter().enumerate() {
            for x in 0..stride {
                let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                for (i, &w) in k.iter().enumerate() {
                    ss += i64::from(self.data[(lo + i) * stride + x]) * i64::from(w);
                }
                out[y * stride + x] = clip8(ss);
            }
        }
        RgbImage {
            width: self.width,
            height,
            data: out,
        }
    }
}

impl From<::image::RgbImage> for RgbImage {
    fn from(img: ::image::RgbImage) -> Self {
        RgbImage {
            width: img.width() as usize,
            height: img.height() as usize,
            data: img.into_raw(),
        }
    }
}
