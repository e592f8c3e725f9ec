//! Feather-weighted accumulation of decoded tiles into a video canvas, the core of tiled VAE
//! decoding (`kernels/tile_accumulate.cu`, parameters in `kernels/abi.h`):
//!
//! `out[c, f, y, x] += w · tile[c, f-f0, y-y0, x-x0]` and `wsum[f, y, x] += w`, with
//! `w = wt[f-f0] · wy[y-y0] · wx[x-x0]`, for the tile pixels that fall inside the canvas.
//!
//! On CUDA tensors the kernel runs on torch's current stream; on CPU tensors [`reference`]
//! (plain tch ops) does the same work, and is also what GPU tests compare the kernel against.

use cudarc::driver::{LaunchConfig, PushKernelArg};
use tch::{Device, Kind, Tensor};

use crate::cuda::CudaDevice;
use crate::kernels::KernelRegistry;
use crate::{ffi, GpuError};

pub const KERNEL: &str = "tile_accumulate";
pub const FUNCTION: &str = "tile_accumulate_f32";
const BLOCK: u32 = 256;

/// Where a tile's first frame/row/column lands on the canvas (may be negative or overhang).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub f0: i64,
    pub y0: i64,
    pub x0: i64,
}

/// The canvas being accumulated into: `out` is `[C, F, H, W]`, `wsum` is `[F, H, W]`.
pub struct Canvas<'a> {
    pub out: &'a mut Tensor,
    pub wsum: &'a mut Tensor,
}

/// A decoded tile `[C, tf, th, tw]` and its separable feather weights `wt[tf]`, `wy[th]`, `wx[tw]`.
pub struct Tile<'a> {
    pub data: &'a Tensor,
    pub wt: &'a Tensor,
    pub wy: &'a Tensor,
    pub wx: &'a Tensor,
}

struct Shape {
    channels: i64,
    out: [i64; 3],
    tile: [i64; 3],
}

fn check(canvas: &Canvas<'_>, tile: &Tile<'_>) -> Result<Shape, GpuError> {
    let bad = |m: String| Err(GpuError::InvalidArgument(format!("tile_accumulate: {m}")));
    let device = canvas.out.device();
    let named = [
        ("out", &*canvas.out),
        ("wsum", &*canvas.wsum),
        ("tile", tile.data),
        ("wt", tile.wt),
        ("wy", tile.wy),
        ("wx", tile.wx),
    ];
    for (name, t) in named {
        if t.kind() != Kind::Float {
            return bad(format!("{name} must be float32, got {:?}", t.kind()));
        }
        if t.device() != device {
            return bad(format!(
                "{name} is on {:?}, out is on {device:?}",
                t.device()
            ));
        }
        if !t.is_contiguous() {
            return bad(format!("{name} must be contiguous"));
        }
    }
    let (o, w, t) = (canvas.out.size(), canvas.wsum.size(), tile.data.size());
    if o.len() != 4 || t.len() != 4 {
        return bad(format!(
            "out {o:?} and tile {t:?} must both be [C, F, H, W]"
        ));
    }
    if t[0] != o[0] {
        return bad(format!("tile has {} channels, out has {}", t[0], o[0]));
    }
    if w != o[1..] {
        return bad(format!(
            "wsum {w:?} must be out's [F, H, W] = {:?}",
            &o[1..]
        ));
    }
    for (name, wt, n) in [
        ("wt", tile.wt, t[1]),
        ("wy", tile.wy, t[2]),
        ("wx", tile.wx, t[3]),
    ] {
        if wt.size() != [n] {
            return bad(format!(
                "{name} {:?} must be [{n}] to match the tile",
                wt.size()
            ));
        }
    }
    Ok(Shape {
        channels: o[0],
        out: [o[1], o[2], o[3]],
        tile: [t[1], t[2], t[3]],
    })
}

/// The tile range `[start, end)` along one axis that lands inside the canvas, or None.
fn overlap(offset: i64, tile_len: i64, out_len: i64) -> Option<(i64, i64)> {
    let start = (-offset).max(0);
    let end = tile_len.min(out_len - offset);
    (start < end).then_some((start, end))
}

/// Accumulates `tile` into `canvas` at `at`: the CUDA kernel for CUDA tensors (needs the
/// device's registry), [`reference`] for CPU tensors.
pub fn accumulate(
    registry: Option<&KernelRegistry>,
    canvas: &mut Canvas<'_>,
    tile: &Tile<'_>,
    at: Placement,
) -> Result<(), GpuError> {
    let shape = check(canvas, tile)?;
    match canvas.out.device() {
        Device::Cpu => accumulate_with_tch(canvas, tile, at, &shape),
        Device::Cuda(i) => {
            let registry = registry
                .filter(|r| r.device().index() == i)
                .ok_or_else(|| {
                    GpuError::InvalidArgument(format!(
                        "tile_accumulate on cuda:{i} needs that device's kernel registry"
                    ))
                })?;
            launch(registry, canvas, tile, at, &shape)
        }
        other => Err(GpuError::InvalidArgument(format!(
            "tile_accumulate: unsupported device {other:?}"
        ))),
    }
}

/// The same accumulation with tch ops, on any device.
pub fn reference(canvas: &mut Canvas<'_>, tile: &Tile<'_>, at: Placement) -> Result<(), GpuError> {
    let shape = check(canvas, tile)?;
    accumulate_with_tch(canvas, tile, at, &shape)
}

fn accumulate_with_tch(
    canvas: &mut Canvas<'_>,
    tile: &Tile<'_>,
    at: Placement,
    s: &Shape,
) -> Result<(), GpuError> {
    let (Some((fa, fb)), Some((ya, yb)), Some((xa, xb))) = (
        overlap(at.f0, s.tile[0], s.out[0]),
        overlap(at.y0, s.tile[1], s.out[1]),
        overlap(at.x0, s.tile[2], s.out[2]),
    ) else {
        return Ok(());
    };
    let w = tile.wt.f_narrow(0, fa, fb - fa)?.f_view([-1, 1, 1])?
        * tile.wy.f_narrow(0, ya, yb - ya)?.f_view([1, -1, 1])?
        * tile.wx.f_narrow(0, xa, xb - xa)?.f_view([1, 1, -1])?;
    let part = tile
        .data
        .f_narrow(1, fa, fb - fa)?
        .f_narrow(2, ya, yb - ya)?
        .f_narrow(3, xa, xb - xa)?;
    let mut out_view = canvas
        .out
        .f_narrow(1, at.f0 + fa, fb - fa)?
        .f_narrow(2, at.y0 + ya, yb - ya)?
        .f_narrow(3, at.x0 + xa, xb - xa)?;
    let _ = out_view.f_add_(&(&part * &w))?;
    let mut wsum_view = canvas
        .wsum
        .f_narrow(0, at.f0 + fa, fb - fa)?
        .f_narrow(1, at.y0 + ya, yb - ya)?
        .f_narrow(2, at.x0 + xa, xb - xa)?;
    let _ = wsum_view.f_add_(&w)?;
    Ok(())
}

fn ptr(t: &Tensor) -> *mut f32 {
    t.data_ptr().cast()
}

fn launch(
    registry: &KernelRegistry,
    canvas: &mut Canvas<'_>,
    tile: &Tile<'_>,
    at: Placement,
    s: &Shape,
) -> Result<(), GpuError> {
    let n = s.tile.iter().product::<i64>();
    if n == 0 || s.channels == 0 {
        return Ok(());
    }
    let params = ffi::ltx_tile_accumulate_params {
        out: ptr(canvas.out),
        wsum: ptr(canvas.wsum),
        tile: ptr(tile.data),
        wt: ptr(tile.wt),
        wy: ptr(tile.wy),
        wx: ptr(tile.wx),
        channels: s.channels,
        out_f: s.out[0],
        out_h: s.out[1],
        out_w: s.out[2],
        tile_f: s.tile[0],
        tile_h: s.tile[1],
        tile_w: s.tile[2],
        f0: at.f0,
        y0: at.y0,
        x0: at.x0,
    };
    // SAFETY: every pointer is a live, contiguous float32 CUDA tensor on this device whose
    // extent matches the sizes in `params` (checked above).
    unsafe { launch_per_pixel(registry, FUNCTION, n, &params) }
}

/// Launches `func` of this kernel file with one thread per pixel (`n` of them) on torch's
/// current stream, after the work that produced its tensors.
///
/// # Safety
/// `params` must describe live CUDA tensors on the registry's device of the sizes it states.
unsafe fn launch_per_pixel<P: cudarc::driver::DeviceRepr>(
    registry: &KernelRegistry,
    func: &str,
    n: i64,
    params: &P,
) -> Result<(), GpuError> {
    let blocks = u32::try_from((n + BLOCK as i64 - 1) / BLOCK as i64).map_err(|_| {
        GpuError::InvalidArgument(format!("{n} pixels are too many for one launch"))
    })?;
    let device: &CudaDevice = registry.device();
    let function = registry.function(KERNEL, func)?;
    let stream = device.current_stream()?.as_cudarc(device);
    let cfg = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the caller's contract.
    unsafe { stream.launch_builder(&function).arg(params).launch(cfg) }?;
    Ok(())
}

pub const FINALIZE: &str = "tile_finalize_u8";

/// The last pass of a weighted tiled decode, fused: `out [C, F, H, W] / wsum [F, H, W]`, then
/// `x·scale + offset`, clamped to [0, 1], ×255 truncated to uint8 (NaN → 0), as channel-last
/// frames `[F, H, W, C]`. The CUDA kernel for CUDA tensors (one pass instead of five), tch ops
/// otherwise; both round every step the same way, so they give the same bytes.
pub fn finalize_u8(
    registry: Option<&KernelRegistry>,
    out: &Tensor,
    wsum: &Tensor,
    scale: f32,
    offset: f32,
) -> Result<Tensor, GpuError> {
    let o = out.size();
    if o.len() != 4 || wsum.size() != o[1..] {
        return Err(GpuError::InvalidArgument(format!(
            "tile_finalize_u8: out {o:?} must be [C, F, H, W] and wsum {:?} its [F, H, W]",
            wsum.size()
        )));
    }
    for (name, t) in [("out", out), ("wsum", wsum)] {
        if t.kind() != Kind::Float || !t.is_contiguous() || t.device() != out.device() {
            return Err(GpuError::InvalidArgument(format!(
                "tile_finalize_u8: {name} must be contiguous float32 on {:?}",
                out.device()
            )));
        }
    }
    match (out.device(), registry) {
        (Device::Cuda(i), Some(r)) if r.device().index() == i => {
            finalize_launch(r, out, wsum, scale, offset)
        }
        _ => finalize_reference(out, wsum, scale, offset),
    }
}

/// [`finalize_u8`] in tch ops, on any device. One frame at a time: the float temporaries of
/// the conversion stay the size of a frame, not of the video (on the CPU device the canvas of
/// a long video is gigabytes).
pub fn finalize_reference(
    out: &Tensor,
    wsum: &Tensor,
    scale: f32,
    offset: f32,
) -> Result<Tensor, GpuError> {
    let o = out.size();
    let dst = Tensor::f_empty([o[1], o[2], o[3], o[0]], (Kind::Uint8, out.device()))?;
    for f in 0..o[1] {
        let frame = out.f_narrow(1, f, 1)?;
        let x = (frame.f_div(&wsum.f_narrow(0, f, 1)?.f_unsqueeze(0)?)? * f64::from(scale))
            + f64::from(offset);
        let bytes = (x.f_clamp(0.0, 1.0)? * 255.0)
            .f_to_kind(Kind::Uint8)?
            .f_permute([1, 2, 3, 0])?;
        dst.f_narrow(0, f, 1)?.f_copy_(&bytes)?;
    }
    Ok(dst)
}

fn finalize_launch(
    registry: &KernelRegistry,
    out: &Tensor,
    wsum: &Tensor,
    scale: f32,
    offset: f32,
) -> Result<Tensor, GpuError> {
    let o = out.size();
    let (c, f, h, w) = (o[0], o[1], o[2], o[3]);
    let dst = Tensor::f_empty([f, h, w, c], (Kind::Uint8, out.device()))?;
    let n = f * h * w;
    if n == 0 || c == 0 {
        return Ok(dst);
    }
    let params = ffi::ltx_tile_finalize_params {
        out: out.data_ptr() as *const f32,
        wsum: wsum.data_ptr() as *const f32,
        dst: dst.data_ptr().cast(),
        channels: c,
        frames: f,
        height: h,
        width: w,
        scale,
        offset,
    };
    // SAFETY: out/wsum are live contiguous float32 CUDA tensors of the checked shapes on this
    // device, dst a fresh contiguous uint8 [F, H, W, C].
    unsafe { launch_per_pixel(registry, FINALIZE, n, &params) }?;
    Ok(dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finalize_normalises_maps_clamps_and_truncates_channel_last() {
        // Two channels, one frame, 1×3 pixels; wsum 2 everywhere.
        let out = Tensor::from_slice(&[-4f32, 0.0, 1.998, 2.0, 0.5, f32::NAN]).view([2, 1, 1, 3]);
        let wsum = Tensor::full([1, 1, 3], 2.0, (Kind::Float, Device::Cpu));
        let u8s = finalize_u8(None, &out, &wsum, 0.5, 0.5).unwrap();
        assert_eq!(u8s.size(), [1, 1, 3, 2]);
        assert_eq!(u8s.kind(), Kind::Uint8);
        // x/2·0.5+0.5: -4 → -0.5 → 0; 0 → 0.5 → 127; 1.998 → 0.9995 → 254; 2 → 1 → 255;
        // 0.5 → 0.625 → 159; NaN → 0.
        let got = Vec::<u8>::try_from(&u8s.flatten(0, -1)).unwrap();
        assert_eq!(got, vec![0, 255, 127, 159, 254, 0]);
        assert!(finalize_u8(None, &out, &wsum.view([3, 1, 1]), 0.5, 0.5).is_err());
    }

    /// The definition, pixel by pixel, in float64.
    fn naive(
        out: &mut [f64],
        wsum: &mut [f64],
        dims: [i64; 4],
        t: &Tensor,
        w: [&Tensor; 3],
        at: Placement,
    ) {
        let [c_n, f_n, h_n, w_n] = dims;
        let ts = t.size();
        let v = |x: &Tensor, i: &[i64]| x.double_value(i);
        for tf in 0..ts[1] {
            for ty in 0..ts[2] {
                for tx in 0..ts[3] {
                    let (f, y, x) = (at.f0 + tf, at.y0 + ty, at.x0 + tx);
                    if f < 0 || f >= f_n || y < 0 || y >= h_n || x < 0 || x >= w_n {
                        continue;
                    }
                    let wt = v(w[0], &[tf]) * v(w[1], &[ty]) * v(w[2], &[tx]);
                    let o = ((f * h_n + y) * w_n + x) as usize;
                    for c in 0..c_n {
                        out[c as usize * (f_n * h_n * w_n) as usize + o] +=
                            wt * v(t, &[c, tf, ty, tx]);
                    }
                    wsum[o] += wt;
                }
            }
        }
    }

    #[test]
    fn reference_matches_the_definition_for_clipped_placements() {
        tch::manual_seed(7);
        let dims = [3i64, 4, 9, 11];
        for at in [
            Placement {
                f0: 0,
                y0: 0,
                x0: 0,
            },
            Placement {
                f0: 1,
                y0: 4,
                x0: 6,
            },
            Placement {
                f0: -2,
                y0: -3,
                x0: -1,
            },
            Placement {
                f0: 3,
                y0: 7,
                x0: 9,
            },
            Placement {
                f0: 10,
                y0: 0,
                x0: 0,
            },
        ] {
            let mut out = Tensor::randn(dims, (Kind::Float, Device::Cpu));
            let mut wsum = Tensor::rand(&dims[1..], (Kind::Float, Device::Cpu));
            let data = Tensor::randn([3, 3, 5, 6], (Kind::Float, Device::Cpu));
            let (wt, wy, wx) = (
                Tensor::rand([3], (Kind::Float, Device::Cpu)),
                Tensor::rand([5], (Kind::Float, Device::Cpu)),
                Tensor::rand([6], (Kind::Float, Device::Cpu)),
            );
            let mut want_out =
                Vec::<f64>::try_from(out.flatten(0, -1).to_kind(Kind::Double)).unwrap();
            let mut want_wsum =
                Vec::<f64>::try_from(wsum.flatten(0, -1).to_kind(Kind::Double)).unwrap();
            naive(
                &mut want_out,
                &mut want_wsum,
                dims,
                &data,
                [&wt, &wy, &wx],
                at,
            );

            let tile = Tile {
                data: &data,
                wt: &wt,
                wy: &wy,
                wx: &wx,
            };
            accumulate(
                None,
                &mut Canvas {
                    out: &mut out,
                    wsum: &mut wsum,
                },
                &tile,
                at,
            )
            .unwrap();

            let got_out = Vec::<f64>::try_from(out.flatten(0, -1).to_kind(Kind::Double)).unwrap();
            let got_wsum = Vec::<f64>::try_from(wsum.flatten(0, -1).to_kind(Kind::Double)).unwrap();
            // float32 arithmetic on O(1) values against float64: a few ulps.
            for (g, w) in got_out
                .iter()
                .zip(&want_out)
                .chain(got_wsum.iter().zip(&want_wsum))
            {
                assert!(
                    (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                    "{at:?}: {g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn rejects_mismatched_shapes_with_the_sizes() {
        let cpu = (Kind::Float, Device::Cpu);
        let w = Tensor::ones([2], cpu);
        let error_for = |data: &Tensor, wy: &Tensor| {
            let mut out = Tensor::zeros([2, 2, 4, 4], cpu);
            let mut wsum = Tensor::zeros([2, 4, 4], cpu);
            let tile = Tile {
                data,
                wt: &w,
                wy,
                wx: &w,
            };
            let mut canvas = Canvas {
                out: &mut out,
                wsum: &mut wsum,
            };
            accumulate(
                None,
                &mut canvas,
                &tile,
                Placement {
                    f0: 0,
                    y0: 0,
                    x0: 0,
                },
            )
            .unwrap_err()
            .to_string()
        };
        let three_channels = Tensor::zeros([3, 2, 2, 2], cpu);
        let err = error_for(&three_channels, &w);
        assert!(err.contains("tile has 3 channels, out has 2"), "{err}");

        let fits = Tensor::zeros([2, 2, 2, 2], cpu);
        let err = error_for(&fits, &Tensor::ones([3], cpu));
        assert!(err.contains("wy [3] must be [2]"), "{err}");

        let half = Tensor::zeros([2, 2, 2, 2], (Kind::Half, Device::Cpu));
        let err = error_for(&half, &w);
        assert!(err.contains("tile must be float32"), "{err}");
    }
}
