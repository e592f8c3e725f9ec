//! Tiled VAE decoding: the latent video is cut into overlapping tiles in time, height and width,
//! each tile goes through the normal decoder ([`LtxVae::decode`]), and the decoded tiles are
//! put back together, so that the decoder's activations never cover more than one tile.
//!
//! Two ways of putting tiles together ([`TilingMode`]):
//! - [`TilingMode::DiffusersCompatible`] reproduces diffusers 0.42.1's
//!   `AutoencoderKLLTXVideo` with `enable_tiling(...)` and `use_framewise_decoding = True`:
//!   the same tile grid, decoder calls in the same order (so the 0.9.1 decoder's noise injection
//!   draws the same numbers from torch's global generator), the same in-place linear blends
//!   (`blend_v`, `blend_h`, `blend_t`), the same crops to the stride, and the same temporal frame
//!   handling, including its quirks (see below). Matches diffusers to float32 rounding.
//! - [`TilingMode::Weighted`] (the default): tiles of equal size, the last one aligned to the end
//!   of the video, each decoded tile accumulated into a float32 canvas with separable feather
//!   weights (a linear ramp over each overlap, never zero, no ramp at the video's borders) by
//!   [`tile_accumulate::accumulate`] (the CUDA kernel on CUDA tensors), then divided by the
//!   summed weights.
//!
//! Units: tile and stride sizes are given in **sample** pixels and frames, like diffusers'
//! `enable_tiling`; the latent sizes are `size / ratio`, rounded down (32 px and 8 frames per
//! latent for every released LTX VAE). A temporal tile of `tile_frames` spans
//! `tile_frames / 8 + 1` latent frames (as in diffusers), i.e. `tile_frames + 1` decoded frames.
//!
//! What diffusers does that [`TilingMode::Weighted`] does not (found reading
//! `autoencoder_kl_ltx.py` 0.42.1, confirmed on the fixture):
//! - Temporal tiles after the first drop their **last** decoded frame, and the concatenation
//!   puts a tile's first frame (latent frame `i`, i.e. sample frame `8i`) at output frame `8i + 1`.
//!   Every frame after the first temporal tile is therefore one frame late (frame `8i` appears
//!   twice, the last frame is lost), and the first blend (tile 0 with tile 1) mixes frames that
//!   are one apart.
//! - The grid starts a tile at every stride below the size, so the last tiles can be a single
//!   latent pixel or frame, entirely inside the tile before them, decoded with almost no context.
//! - The blends are applied in place, tile by tile, so at tile corners the result is not a
//!   separable weighting (the tile above-left enters twice).
//! - `enable_tiling` alone never tiles in time: `_decode` goes temporal only with
//!   `use_framewise_decoding`, which no diffusers code sets. To mimic `enable_tiling()` alone, make
//!   `tile_frames` at least 8 × the number of latent frames (diffusers tiles in time when
//!   `F > tile_frames / 8`).

use std::ops::Range;

use ltx_gpu::kernels::tile_accumulate::{self, Canvas, Placement, Tile};
use ltx_gpu::kernels::KernelRegistry;
use ltx_gpu::rng::{Generator, Generators};
use ltx_gpu::GpuError;
use ltx_models::ltx::LtxVae;
use ltx_models::{ModelError, Result};
use tch::{Kind, Tensor};

/// How decoded tiles are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TilingMode {
    /// diffusers' `enable_tiling()` + `use_framewise_decoding`, reproduced exactly.
    DiffusersCompatible,
    /// Equal tiles, feather-weighted accumulation, normalised by the summed weights.
    #[default]
    Weighted,
}

/// Tiling settings, in sample pixels and frames (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TileConfig {
    pub mode: TilingMode,
    pub tile_sample_height: i64,
    pub tile_sample_width: i64,
    pub stride_sample_height: i64,
    pub stride_sample_width: i64,
    pub tile_frames: i64,
    pub stride_frames: i64,
}

impl Default for TileConfig {
    /// diffusers' defaults: 512 px tiles every 448 px, 16-frame tiles every 8 frames.
    fn default() -> Self {
        Self {
            mode: TilingMode::default(),
            tile_sample_height: 512,
            tile_sample_width: 512,
            stride_sample_height: 448,
            stride_sample_width: 448,
            tile_frames: 16,
            stride_frames: 8,
        }
    }
}

impl TileConfig {
    /// Checks the settings against the VAE's ratios, naming the first one that cannot work.
    pub fn validate(&self, temporal_ratio: i64, spatial_ratio: i64) -> Result<()> {
        let axes = [
            (
                "tile_sample_height",
                self.tile_sample_height,
                "stride_sample_height",
                self.stride_sample_height,
                spatial_ratio,
            ),
            (
                "tile_sample_width",
                self.tile_sample_width,
                "stride_sample_width",
                self.stride_sample_width,
                spatial_ratio,
            ),
            (
                "tile_frames",
                self.tile_frames,
                "stride_frames",
                self.stride_frames,
                temporal_ratio,
            ),
        ];
        for (tile_name, tile, stride_name, stride, ratio) in axes {
            if ratio < 1 {
                return invalid(format!("the VAE's compression ratio is {ratio}"));
            }
            if stride < ratio {
                return invalid(format!(
                    "{stride_name} is {stride}, it must be at least one latent ({ratio})"
                ));
            }
            if tile < stride {
                return invalid(format!(
                    "{tile_name} ({tile}) must not be smaller than {stride_name} ({stride})"
                ));
            }
        }
        Ok(())
    }
}

fn invalid<T>(message: String) -> Result<T> {
    Err(ModelError::InvalidInput(format!("tiled decode: {message}")))
}

/// How one tile along one axis is combined with the others.
#[derive(Debug, Clone, PartialEq)]
pub enum Blend {
    /// [`TilingMode::Weighted`]: the feather weight of each decoded element (all > 0).
    Feather(Vec<f32>),
    /// [`TilingMode::DiffusersCompatible`]: blend linearly with the previous tile over its
    /// first `extent` elements (in place), then keep the first `keep` elements.
    Diffusers { extent: i64, keep: i64 },
}

/// One tile along one axis (frames, rows or columns).
#[derive(Debug, Clone, PartialEq)]
pub struct AxisTile {
    /// The latent crop `[start, end)`.
    pub latent: Range<i64>,
    /// Where the tile's first used decoded element lands on the output axis.
    pub out_start: i64,
    /// How many decoded elements the tile has (after diffusers' dropped frame, if any).
    pub len: i64,
    pub blend: Blend,
}

impl AxisTile {
    /// The output range the tile contributes to: its whole extent when weighted, the kept part
    /// in diffusers' mode.
    pub fn out_range(&self) -> Range<i64> {
        match &self.blend {
            Blend::Feather(_) => self.out_start..self.out_start + self.len,
            Blend::Diffusers { keep, .. } => self.out_start..self.out_start + (*keep).min(self.len),
        }
    }
}

/// The tiles of one decode: the product of the three axes' tiles, decoded frames-major then
/// row-major (diffusers' order).
#[derive(Debug, Clone, PartialEq)]
pub struct TilePlan {
    pub mode: TilingMode,
    pub frames: Vec<AxisTile>,
    pub rows: Vec<AxisTile>,
    pub cols: Vec<AxisTile>,
    /// The decoded video's `[frames, height, width]`.
    pub output: [i64; 3],
}

impl TilePlan {
    /// Plans the tiles of a latent video of `latent = [frames, height, width]`.
    pub fn new(
        latent: [i64; 3],
        temporal_ratio: i64,
        spatial_ratio: i64,
        cfg: &TileConfig,
    ) -> Result<Self> {
        cfg.validate(temporal_ratio, spatial_ratio)?;
        let [f, h, w] = latent;
        if f < 1 || h < 1 || w < 1 {
            return invalid(format!("empty latent video {latent:?}"));
        }
        let (tr, sr) = (temporal_ratio, spatial_ratio);
        let output = [(f - 1) * tr + 1, h * sr, w * sr];
        let (frames, rows, cols) = match cfg.mode {
            TilingMode::Weighted => (
                weighted_axis(
                    f,
                    cfg.tile_frames / tr + 1,
                    cfg.stride_frames / tr,
                    |n| (n - 1) * tr + 1,
                    tr,
                ),
                weighted_axis(
                    h,
                    cfg.tile_sample_height / sr,
                    cfg.stride_sample_height / sr,
                    |n| n * sr,
                    sr,
                ),
                weighted_axis(
                    w,
                    cfg.tile_sample_width / sr,
                    cfg.stride_sample_width / sr,
                    |n| n * sr,
                    sr,
                ),
            ),
            TilingMode::DiffusersCompatible => {
                let frames = if f > cfg.tile_frames / tr {
                    diffusers_frames(f, tr, cfg)
                } else {
                    vec![whole(f, output[0])]
                };
                let spatial = w > cfg.tile_sample_width / sr || h > cfg.tile_sample_height / sr;
                let (rows, cols) = if spatial {
                    (
                        diffusers_spatial(h, sr, cfg.tile_sample_height, cfg.stride_sample_height),
                        diffusers_spatial(w, sr, cfg.tile_sample_width, cfg.stride_sample_width),
                    )
                } else {
                    (vec![whole(h, output[1])], vec![whole(w, output[2])])
                };
                (frames, rows, cols)
            }
        };
        Ok(Self {
            mode: cfg.mode,
            frames,
            rows,
            cols,
            output,
        })
    }

    /// Number of tiles (decoder calls).
    pub fn len(&self) -> usize {
        self.frames.len() * self.rows.len() * self.cols.len()
    }

    /// Never true: a plan has at least one tile.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One tile covering the whole video: decoding it is the untiled decode.
    pub fn is_single(&self) -> bool {
        self.len() == 1
    }

    /// The tiles in decode order, as `[frame, row, column]` axis tiles.
    pub fn tiles(&self) -> impl Iterator<Item = [&AxisTile; 3]> + '_ {
        self.frames.iter().flat_map(move |t| {
            self.rows
                .iter()
                .flat_map(move |y| self.cols.iter().map(move |x| [t, y, x]))
        })
    }
}

/// One tile over the whole axis (no tiling along it).
fn whole(n: i64, out_len: i64) -> AxisTile {
    AxisTile {
        latent: 0..n,
        out_start: 0,
        len: out_len,
        blend: Blend::Diffusers {
            extent: 0,
            keep: out_len,
        },
    }
}

/// Weighted mode along one axis of `n` latents: tiles of `tile` latents every `stride`, the last
/// one ending at `n` (all tiles full-size unless the axis is shorter than a tile); `decoded(m)`
/// is the decoded length of `m` latents and `ratio` the step of a latent on the output.
fn weighted_axis(
    n: i64,
    tile: i64,
    stride: i64,
    decoded: impl Fn(i64) -> i64,
    ratio: i64,
) -> Vec<AxisTile> {
    let starts: Vec<i64> = if n <= tile {
        vec![0]
    } else {
        let mut s: Vec<i64> = (0..)
            .map(|k| k * stride)
            .take_while(|&s| s + tile < n)
            .collect();
        s.push(n - tile);
        s
    };
    let spans: Vec<(i64, i64)> = starts
        .iter()
        .map(|&a| {
            let b = (a + tile).min(n);
            (a * ratio, a * ratio + decoded(b - a))
        })
        .collect();
    starts
        .iter()
        .zip(&spans)
        .enumerate()
        .map(|(k, (&a, &(s, e)))| {
            let prev = k.checked_sub(1).map(|j| spans[j]);
            let next = spans.get(k + 1).copied();
            let weights = (s..e)
                .map(|p| {
                    let mut w = 1.0f64;
                    if let Some((_, pe)) = prev.filter(|&(_, pe)| p < pe) {
                        w *= (p - s + 1) as f64 / (pe - s + 1) as f64;
                    }
                    if let Some((ns, _)) = next.filter(|&(ns, _)| p >= ns) {
                        w *= (e - p) as f64 / (e - ns + 1) as f64;
                    }
                    w as f32
                })
                .collect();
            AxisTile {
                latent: a..(a + tile).min(n),
                out_start: s,
                len: e - s,
                blend: Blend::Feather(weights),
            }
        })
        .collect()
}

/// diffusers' `tiled_decode` grid along one spatial axis of `n` latents.
fn diffusers_spatial(n: i64, ratio: i64, tile_px: i64, stride_px: i64) -> Vec<AxisTile> {
    let (tile, stride) = (tile_px / ratio, stride_px / ratio);
    let blend = (tile_px - stride_px).max(0);
    let mut out = Vec::<AxisTile>::new();
    let mut at = 0;
    for a in (0..n).step_by(stride as usize) {
        let b = (a + tile).min(n);
        let len = (b - a) * ratio;
        let extent = out.last().map_or(0, |p| blend.min(p.len).min(len));
        out.push(AxisTile {
            latent: a..b,
            out_start: at,
            len,
            blend: Blend::Diffusers {
                extent,
                keep: stride_px,
            },
        });
        at += stride_px.min(len);
    }
    out
}

/// diffusers' `_temporal_tiled_decode` grid: tiles of `tile_frames / 8 + 1` latent frames every
/// `stride_frames / 8`; tiles after the first lose their last decoded frame.
fn diffusers_frames(n: i64, ratio: i64, cfg: &TileConfig) -> Vec<AxisTile> {
    let (tile, stride) = (cfg.tile_frames / ratio, cfg.stride_frames / ratio);
    let blend = (cfg.tile_frames - cfg.stride_frames).max(0);
    let mut out = Vec::<AxisTile>::new();
    let mut at = 0;
    for (k, a) in (0..n).step_by(stride as usize).enumerate() {
        let b = (a + tile + 1).min(n);
        let len = (b - a - 1) * ratio + 1 - i64::from(k > 0);
        let keep = cfg.stride_frames + i64::from(k == 0);
        let extent = out.last().map_or(0, |p| blend.min(p.len).min(len));
        out.push(AxisTile {
            latent: a..b,
            out_start: at,
            len,
            blend: Blend::Diffusers { extent, keep },
        });
        at += keep.min(len);
    }
    out
}

pub(crate) fn gpu_error(e: GpuError) -> ModelError {
    match e {
        GpuError::Torch(e) => ModelError::Torch(e),
        other => ModelError::InvalidInput(format!("tiled decode: tile accumulation: {other}")),
    }
}

/// The generator `vae`'s decoder draws its injected noise from, on `device` (where it
/// decodes), out of the job's `rng`; None for a decoder that injects none (nothing is made).
pub fn noise_for<'a>(
    vae: &LtxVae,
    rng: &'a mut Generators,
    device: tch::Device,
) -> Result<Option<&'a mut Generator>> {
    if !vae.config().injects_noise() {
        return Ok(None);
    }
    Ok(Some(rng.on(device)?))
}

/// The tile plan of latents of size `s` (`[B, C, F, H, W]`) for this VAE's ratios.
fn plan_for(vae: &LtxVae, s: &[i64], cfg: &TileConfig) -> Result<TilePlan> {
    let vc = vae.config();
    TilePlan::new(
        [s[2], s[3], s[4]],
        vc.temporal_ratio(),
        vc.spatial_ratio(),
        cfg,
    )
}

/// Decodes `z` `[B, C, F, H, W]` tile by tile; returns what [`LtxVae::decode`] returns (shape
/// and dtype). `registry` is the CUDA device's kernel registry for the weighted accumulation on
/// CUDA tensors; without one (CPU, or no registry) the accumulation runs as tch ops.
///
/// The 0.9.1 decoder injects noise on every call, drawn from `noise` (see [`noise_for`]): each
/// tile draws its own in turn, so a tiled decode never equals the untiled one exactly on such
/// a VAE.
pub fn decode_tiled(
    vae: &LtxVae,
    z: &Tensor,
    timestep: Option<&Tensor>,
    noise: Option<&mut Generator>,
    cfg: &TileConfig,
    registry: Option<&KernelRegistry>,
) -> Result<Tensor> {
    let s = z.size();
    if s.len() != 5 {
        return invalid(format!("latents must be [B, C, F, H, W], got {s:?}"));
    }
    let plan = plan_for(vae, &s, cfg)?;
    if plan.is_single() {
        return vae.decode(z, timestep, noise);
    }
    match plan.mode {
        TilingMode::Weighted => decode_weighted(vae, z, timestep, noise, &plan, registry),
        TilingMode::DiffusersCompatible => decode_diffusers(vae, z, timestep, noise, &plan),
    }
}

fn crop(z: &Tensor, [t, y, x]: [&AxisTile; 3]) -> Result<Tensor> {
    let r = |a: &AxisTile| (a.latent.start, a.latent.end - a.latent.start);
    let ((t0, tn), (y0, yn), (x0, xn)) = (r(t), r(y), r(x));
    Ok(z.f_narrow(2, t0, tn)?
        .f_narrow(3, y0, yn)?
        .f_narrow(4, x0, xn)?
        .f_contiguous()?)
}

fn decode_tile(
    vae: &LtxVae,
    z: &Tensor,
    timestep: Option<&Tensor>,
    noise: Option<&mut Generator>,
    tile: [&AxisTile; 3],
    full_len: [i64; 3],
) -> Result<Tensor> {
    let d = vae.decode(&crop(z, tile)?, timestep, noise)?;
    let got = d.size();
    if got.len() != 5 || got[2..] != full_len {
        return invalid(format!(
            "a tile decoded to {got:?}, the plan expects [B, C, {full_len:?}]"
        ));
    }
    Ok(d)
}

fn weights(t: &AxisTile, device: tch::Device) -> Result<Tensor> {
    match &t.blend {
        Blend::Feather(w) => Ok(Tensor::from_slice(w).f_to_device(device)?),
        Blend::Diffusers { .. } => invalid("a diffusers tile in a weighted plan".into()),
    }
}

fn decode_weighted(
    vae: &LtxVae,
    z: &Tensor,
    timestep: Option<&Tensor>,
    noise: Option<&mut Generator>,
    plan: &TilePlan,
    registry: Option<&KernelRegistry>,
) -> Result<Tensor> {
    let (out, wsum, kind) = accumulate_weighted(vae, z, timestep, noise, plan, registry)?;
    let [of, oh, ow] = plan.output;
    let (batch, channels) = (z.size()[0], vae.config().out_channels);
    let video = (out / wsum.f_unsqueeze(0)?).f_reshape([batch, channels, of, oh, ow])?;
    Ok(video.f_to_kind(kind)?)
}

/// Decodes every tile into the float32 canvas `[B·C, F, H, W]` and its weight sum `[F, H, W]`;
/// also returns the decoder's output dtype.
fn accumulate_weighted(
    vae: &LtxVae,
    z: &Tensor,
    timestep: Option<&Tensor>,
    mut noise: Option<&mut Generator>,
    plan: &TilePlan,
    registry: Option<&KernelRegistry>,
) -> Result<(Tensor, Tensor, Kind)> {
    let device = z.device();
    let batch = z.size()[0];
    let channels = vae.config().out_channels;
    let [of, oh, ow] = plan.output;
    let mut out = Tensor::f_zeros([batch * channels, of, oh, ow], (Kind::Float, device))?;
    let mut wsum = Tensor::f_zeros([of, oh, ow], (Kind::Float, device))?;
    let mut kind = None;
    for tile in plan.tiles() {
        let [t, y, x] = tile;
        let d = decode_tile(
            vae,
            z,
            timestep,
            noise.as_deref_mut(),
            tile,
            [t.len, y.len, x.len],
        )?;
        kind.get_or_insert(d.kind());
        let data = d
            .f_to_kind(Kind::Float)?
            .f_reshape([batch * channels, t.len, y.len, x.len])?;
        accumulate_tile(registry, &mut out, &mut wsum, &data, [t, y, x])?;
    }
    Ok((out, wsum, kind.unwrap_or(Kind::Float)))
}

/// Adds one decoded tile (float32 `[B·C, f, h, w]`) with its plan's feather weights into the
/// canvas `out` `[B·C, F, H, W]` and the weight sum `wsum` `[F, H, W]`: the CUDA kernel with a
/// registry, tch ops otherwise. Shared by the LTX and the SDXL tiled decodes.
pub(crate) fn accumulate_tile(
    registry: Option<&KernelRegistry>,
    out: &mut Tensor,
    wsum: &mut Tensor,
    data: &Tensor,
    [t, y, x]: [&AxisTile; 3],
) -> Result<()> {
    let device = data.device();
    let data = data.f_contiguous()?;
    let (wt, wy, wx) = (
        weights(t, device)?,
        weights(y, device)?,
        weights(x, device)?,
    );
    let tile = Tile {
        data: &data,
        wt: &wt,
        wy: &wy,
        wx: &wx,
    };
    let at = Placement {
        f0: t.out_start,
        y0: y.out_start,
        x0: x.out_start,
    };
    let mut canvas = Canvas { out, wsum };
    match registry {
        Some(r) => tile_accumulate::accumulate(Some(r), &mut canvas, &tile, at),
        None => tile_accumulate::reference(&mut canvas, &tile, at),
    }
    .map_err(gpu_error)
}

/// Decodes a batch of one to uint8 frames `[F, H, W, 3]`: `x·0.5 + 0.5` clamped to [0, 1],
/// ×255, truncated. Untiled or in the diffusers mode that is the decode followed by those tch
/// ops; in the weighted mode the float32 canvas goes straight to bytes through
/// [`tile_accumulate::finalize_u8`] — on CUDA one kernel pass instead of the normalised float
/// video, its map and clamp, the channel-last copy and the conversion. With a float32 decoder
/// these are the bytes the pipeline's float output gives after `frames_to_u8`; with a bf16 or
/// fp16 decoder the weighted mode skips the float path's rounding of the normalised video to
/// the decoder's dtype, so a pixel can differ from that path by one level (the fused bytes are
/// the more exact ones).
pub fn decode_to_u8(
    vae: &LtxVae,
    z: &Tensor,
    timestep: Option<&Tensor>,
    noise: Option<&mut Generator>,
    cfg: Option<&TileConfig>,
    registry: Option<&KernelRegistry>,
) -> Result<Tensor> {
    let s = z.size();
    if s.len() != 5 || s[0] != 1 {
        return invalid(format!("latents must be [1, C, F, H, W], got {s:?}"));
    }
    if let Some(cfg) = cfg.filter(|c| c.mode == TilingMode::Weighted) {
        let plan = plan_for(vae, &s, cfg)?;
        if !plan.is_single() {
            let (out, wsum, _) = accumulate_weighted(vae, z, timestep, noise, &plan, registry)?;
            return tile_accumulate::finalize_u8(registry, &out, &wsum, 0.5, 0.5)
                .map_err(gpu_error);
        }
    }
    let video = match cfg {
        Some(c) => decode_tiled(vae, z, timestep, noise, c, registry)?,
        None => vae.decode(z, timestep, noise)?,
    };
    let x = (video.f_to_kind(Kind::Float)? * 0.5 + 0.5).f_clamp(0.0, 1.0)? * 255.0;
    Ok(x.f_to_kind(Kind::Uint8)?
        .f_select(0, 0)?
        .f_permute([1, 2, 3, 0])?
        .f_contiguous()?)
}

/// `b[.., :e, ..] = a[.., -e:, ..] · (1 − i/e) + b[.., :e, ..] · (i/e)` along `dim`, in place,
/// with `e = min(extent, a's length, b's length)`: diffusers' `blend_v` / `blend_h` / `blend_t`.
fn blend_into(a: &Tensor, b: &Tensor, dim: usize, extent: i64) -> Result<()> {
    let (la, lb) = (a.size()[dim], b.size()[dim]);
    let e = extent.min(la).min(lb);
    if e <= 0 {
        return Ok(());
    }
    let mut shape = vec![1i64; b.dim()];
    shape[dim] = e;
    // diffusers multiplies by Python floats (1 - i/e and i/e, computed in double), which torch
    // rounds to float32 for float32 tensors: the same float32 weights here.
    let ramp = |f: &dyn Fn(f64) -> f64| -> Result<Tensor> {
        let w: Vec<f32> = (0..e).map(|i| f(i as f64 / e as f64) as f32).collect();
        Ok(Tensor::from_slice(&w)
            .f_to_device(b.device())?
            .f_view(shape.as_slice())?)
    };
    let (wa, wb) = (ramp(&|r| 1.0 - r)?, ramp(&|r| r)?);
    let mut head = b.f_narrow(dim as i64, 0, e)?;
    let mixed = a.f_narrow(dim as i64, la - e, e)?.f_mul(&wa)? + head.f_mul(&wb)?;
    head.f_copy_(&mixed)?;
    Ok(())
}

fn keep_of(t: &AxisTile) -> i64 {
    match t.blend {
        Blend::Diffusers { keep, .. } => keep.min(t.len),
        Blend::Feather(_) => t.len,
    }
}

fn extent_of(t: &AxisTile) -> i64 {
    match t.blend {
        Blend::Diffusers { extent, .. } => extent,
        Blend::Feather(_) => 0,
    }
}

fn decode_diffusers(
    vae: &LtxVae,
    z: &Tensor,
    timestep: Option<&Tensor>,
    mut noise: Option<&mut Generator>,
    plan: &TilePlan,
) -> Result<Tensor> {
    let [_, oh, ow] = plan.output;
    let spatial = plan.rows.len() * plan.cols.len() > 1;
    let temporal = plan.frames.len() > 1;
    let mut row_t = Vec::with_capacity(plan.frames.len());
    for (k, t) in plan.frames.iter().enumerate() {
        // Decoded length of the tile before diffusers drops the last frame of tiles after the first.
        let full_t = t.len + i64::from(temporal && k > 0);
        let mut grid: Vec<Vec<Tensor>> = Vec::with_capacity(plan.rows.len());
        for y in &plan.rows {
            let mut row = Vec::with_capacity(plan.cols.len());
            for x in &plan.cols {
                row.push(decode_tile(
                    vae,
                    z,
                    timestep,
                    noise.as_deref_mut(),
                    [t, y, x],
                    [full_t, y.len, x.len],
                )?);
            }
            grid.push(row);
        }
        let decoded = if spatial {
            // tiled_decode: blend with the tile above, then the left one, in place; crop each to
            // the stride; concatenate; crop to the sample size.
            let mut result_rows = Vec::with_capacity(grid.len());
            for (i, y) in plan.rows.iter().enumerate() {
                let mut result_row = Vec::with_capacity(plan.cols.len());
                for (j, x) in plan.cols.iter().enumerate() {
                    let tile = &grid[i][j];
                    if i > 0 {
                        blend_into(&grid[i - 1][j], tile, 3, extent_of(y))?;
                    }
                    if j > 0 {
                        blend_into(&grid[i][j - 1], tile, 4, extent_of(x))?;
                    }
                    result_row.push(
                        tile.f_narrow(3, 0, keep_of(y))?
                            .f_narrow(4, 0, keep_of(x))?,
                    );
                }
                result_rows.push(Tensor::f_cat(&result_row, 4)?);
            }
            let all = Tensor::f_cat(&result_rows, 3)?;
            let (h, w) = (all.size()[3].min(oh), all.size()[4].min(ow));
            all.f_narrow(3, 0, h)?.f_narrow(4, 0, w)?
        } else {
            grid.swap_remove(0).swap_remove(0)
        };
        row_t.push(decoded.f_narrow(2, 0, t.len)?);
    }
    if !temporal {
        return Ok(row_t.swap_remove(0));
    }
    let mut result = Vec::with_capacity(row_t.len());
    for (k, t) in plan.frames.iter().enumerate() {
        if k > 0 {
            blend_into(&row_t[k - 1], &row_t[k], 2, extent_of(t))?;
        }
        result.push(row_t[k].f_narrow(2, 0, keep_of(t))?);
    }
    let video = Tensor::f_cat(&result, 2)?;
    let n = video.size()[2].min(plan.output[0]);
    Ok(video.f_narrow(2, 0, n)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn cfg(mode: TilingMode, tile: i64, stride: i64, tf: i64, sf: i64) -> TileConfig {
        TileConfig {
            mode,
            tile_sample_height: tile,
            tile_sample_width: tile,
            stride_sample_height: stride,
            stride_sample_width: stride,
            tile_frames: tf,
            stride_frames: sf,
        }
    }

    fn feather(t: &AxisTile) -> &[f32] {
        match &t.blend {
            Blend::Feather(w) => w,
            Blend::Diffusers { .. } => panic!("not a weighted tile"),
        }
    }

    /// Per output element along an axis: (number of tiles covering it, sum of raw weights).
    fn coverage(tiles: &[AxisTile], n: i64) -> Vec<(u32, f64)> {
        let mut c = vec![(0u32, 0.0f64); n as usize];
        for t in tiles {
            for (j, p) in t.out_range().enumerate() {
                assert!((0..n).contains(&p), "tile {t:?} overhangs an axis of {n}");
                c[p as usize].0 += 1;
                if let Blend::Feather(w) = &t.blend {
                    c[p as usize].1 += f64::from(w[j]);
                }
            }
        }
        c
    }

    /// Latent sizes, spatial/temporal settings, including sizes that are not multiples of the
    /// stride, axes shorter than a tile and strides equal to the tile.
    fn cases() -> Vec<([i64; 3], TileConfig)> {
        let mut v = Vec::new();
        for latent in [
            [1, 1, 1],
            [2, 2, 3],
            [3, 2, 3],
            [4, 5, 7],
            [5, 9, 4],
            [13, 16, 17],
            [7, 23, 41],
        ] {
            for (tile, stride, tf, sf) in [
                (64, 32, 16, 8),
                (96, 64, 24, 8),
                (128, 128, 8, 8),
                (512, 448, 16, 8),
                (160, 96, 32, 16),
            ] {
                for mode in [TilingMode::Weighted, TilingMode::DiffusersCompatible] {
                    v.push((latent, cfg(mode, tile, stride, tf, sf)));
                }
            }
        }
        v
    }

    #[test]
    fn every_output_element_is_covered_and_tiles_stay_inside() {
        for (latent, c) in cases() {
            let plan = TilePlan::new(latent, 8, 32, &c).unwrap();
            assert_eq!(
                plan.output,
                [(latent[0] - 1) * 8 + 1, latent[1] * 32, latent[2] * 32]
            );
            for (axis, tiles, n, out) in [
                ("frames", &plan.frames, latent[0], plan.output[0]),
                ("rows", &plan.rows, latent[1], plan.output[1]),
                ("cols", &plan.cols, latent[2], plan.output[2]),
            ] {
                for t in tiles.iter() {
                    assert!(t.latent.start >= 0 && t.latent.end <= n && !t.latent.is_empty());
                }
                let ctx = format!("{latent:?} {c:?} {axis}");
                match c.mode {
                    TilingMode::Weighted => {
                        for (p, (count, _)) in coverage(tiles, out).iter().enumerate() {
                            assert!(*count >= 1, "{ctx}: element {p} uncovered");
                        }
                        // Borders: the first tile starts the video, the last one ends it.
                        assert_eq!(tiles[0].out_start, 0, "{ctx}");
                        let last = tiles.last().unwrap();
                        assert_eq!(last.out_start + last.len, out, "{ctx}");
                        assert_eq!(last.latent.end, n, "{ctx}");
                    }
                    TilingMode::DiffusersCompatible => {
                        // The kept parts are concatenated: contiguous, in order, and at least
                        // as long as the output (diffusers then crops).
                        let mut at = 0;
                        for t in tiles.iter() {
                            assert_eq!(t.out_start, at, "{ctx}");
                            at = t.out_range().end;
                        }
                        assert!(at >= out, "{ctx}: covers {at} of {out}");
                    }
                }
            }
        }
    }

    #[test]
    fn weighted_feathers_are_positive_flat_at_borders_and_sum_to_one_on_overlaps() {
        for (latent, c) in cases() {
            if c.mode != TilingMode::Weighted {
                continue;
            }
            let plan = TilePlan::new(latent, 8, 32, &c).unwrap();
            for (tiles, out) in [
                (&plan.frames, plan.output[0]),
                (&plan.rows, plan.output[1]),
                (&plan.cols, plan.output[2]),
            ] {
                for t in tiles.iter() {
                    let w = feather(t);
                    assert_eq!(w.len() as i64, t.len);
                    assert!(w.iter().all(|&v| v > 0.0 && v <= 1.0), "{w:?}");
                }
                // No ramp at the video's borders.
                assert_eq!(feather(&tiles[0])[0], 1.0);
                assert_eq!(*feather(tiles.last().unwrap()).last().unwrap(), 1.0);
                for (p, (count, sum)) in coverage(tiles, out).iter().enumerate() {
                    // Where at most two tiles meet, the raw ramps already form a partition of
                    // unity; with more, the division by the summed weights takes care of it.
                    if *count <= 2 {
                        assert!((sum - 1.0).abs() < 1e-6, "{latent:?} {c:?}: {p}: {sum}");
                    }
                }
            }
        }
    }

    #[test]
    fn normalised_weights_sum_to_one_everywhere() {
        // Accumulate a tile of ones per tile with its weights: out / wsum must be exactly 1 and
        // wsum never 0.
        for (latent, c) in cases() {
            if c.mode != TilingMode::Weighted || latent[1] * latent[2] > 200 {
                continue;
            }
            let plan = TilePlan::new(latent, 8, 32, &c).unwrap();
            let opts = (Kind::Float, Device::Cpu);
            let [f, h, w] = plan.output;
            let mut out = Tensor::zeros([1, f, h, w], opts);
            let mut wsum = Tensor::zeros([f, h, w], opts);
            for [t, y, x] in plan.tiles() {
                let ones = Tensor::ones([1, t.len, y.len, x.len], opts);
                let (wt, wy, wx) = (
                    weights(t, Device::Cpu).unwrap(),
                    weights(y, Device::Cpu).unwrap(),
                    weights(x, Device::Cpu).unwrap(),
                );
                tile_accumulate::accumulate(
                    None,
                    &mut Canvas {
                        out: &mut out,
                        wsum: &mut wsum,
                    },
                    &Tile {
                        data: &ones,
                        wt: &wt,
                        wy: &wy,
                        wx: &wx,
                    },
                    Placement {
                        f0: t.out_start,
                        y0: y.out_start,
                        x0: x.out_start,
                    },
                )
                .unwrap();
            }
            assert!(wsum.min().double_value(&[]) > 0.0, "{latent:?} {c:?}");
            let norm = (&out / wsum.unsqueeze(0) - 1.0)
                .abs()
                .max()
                .double_value(&[]);
            assert!(norm < 1e-6, "{latent:?} {c:?}: {norm}");
        }
    }

    #[test]
    fn weighted_grid_has_equal_tiles_with_the_last_aligned_to_the_end() {
        // 7 latents, tiles of 3 every 2: 0..3, 2..5, 4..7 (no partial tile); 8 latents:
        // 0..3, 2..5, 4..7, 5..8.
        let c = cfg(TilingMode::Weighted, 96, 64, 16, 8);
        let plan = TilePlan::new([1, 7, 8], 8, 32, &c).unwrap();
        let ranges = |v: &[AxisTile]| v.iter().map(|t| t.latent.clone()).collect::<Vec<_>>();
        assert_eq!(ranges(&plan.rows), vec![0..3, 2..5, 4..7]);
        assert_eq!(ranges(&plan.cols), vec![0..3, 2..5, 4..7, 5..8]);
        assert_eq!(plan.cols[3].out_start, 160);
        // Ramps: over a 32-pixel overlap, 1/33 .. 32/33.
        let w = feather(&plan.rows[1]);
        assert!((w[0] - 1.0 / 33.0).abs() < 1e-7 && (w[31] - 32.0 / 33.0).abs() < 1e-7);
        assert_eq!(w[32], 1.0);
        // Temporal: 16-frame tiles span 3 latent frames (17 decoded frames) every latent frame.
        let plan = TilePlan::new([4, 1, 1], 8, 32, &c).unwrap();
        assert_eq!(ranges(&plan.frames), vec![0..3, 1..4]);
        assert_eq!(
            plan.frames
                .iter()
                .map(|t| (t.out_start, t.len))
                .collect::<Vec<_>>(),
            vec![(0, 17), (8, 17)]
        );
    }

    #[test]
    fn one_tile_when_the_video_fits() {
        for mode in [TilingMode::Weighted, TilingMode::DiffusersCompatible] {
            let c = TileConfig {
                mode,
                ..TileConfig::default()
            };
            // 512 px = 16 latents, 16 frames = 2 latent frames (+1 for the tile).
            let plan = TilePlan::new([2, 16, 16], 8, 32, &c).unwrap();
            assert!(plan.is_single(), "{mode:?}");
            let [t, y, x] = plan.tiles().next().unwrap();
            assert_eq!((t.latent.clone(), t.len), (0..2, 9));
            assert_eq!((y.latent.clone(), y.len, x.len), (0..16, 512, 512));
            assert!(!TilePlan::new([2, 17, 16], 8, 32, &c).unwrap().is_single());
        }
        // Weighted: a temporal tile holds tile_frames / 8 + 1 latent frames.
        let w = TilePlan::new([3, 4, 4], 8, 32, &TileConfig::default()).unwrap();
        assert!(w.is_single());
        let d = TilePlan::new(
            [3, 4, 4],
            8,
            32,
            &TileConfig {
                mode: TilingMode::DiffusersCompatible,
                ..TileConfig::default()
            },
        )
        .unwrap();
        assert_eq!(d.frames.len(), 3, "diffusers tiles in time once F > 16 / 8");
    }

    #[test]
    fn diffusers_grid_matches_its_loops() {
        // range(0, 5, 2) with 3-latent tiles: 0..3, 2..5, 4..5; blend 32 px; keep 64 px.
        let c = cfg(TilingMode::DiffusersCompatible, 96, 64, 16, 8);
        let plan = TilePlan::new([3, 2, 5], 8, 32, &c).unwrap();
        let cols: Vec<_> = plan
            .cols
            .iter()
            .map(|t| (t.latent.clone(), t.out_start, t.len, t.blend.clone()))
            .collect();
        let d = |extent, keep| Blend::Diffusers { extent, keep };
        assert_eq!(
            cols,
            vec![
                (0..3, 0, 96, d(0, 64)),
                (2..5, 64, 96, d(32, 64)),
                (4..5, 128, 32, d(32, 64)),
            ]
        );
        // Rows: 2 latents <= 3, but the columns tile, so diffusers runs range(0, 2, 2) = [0].
        assert_eq!(plan.rows.len(), 1);
        // Frames: range(0, 3, 1) with 3-frame tiles; after the first, the last frame is dropped
        // and the tile lands one frame late (0..9 kept, then 9.., 17..).
        let frames: Vec<_> = plan
            .frames
            .iter()
            .map(|t| (t.latent.clone(), t.out_start, t.len, t.blend.clone()))
            .collect();
        assert_eq!(
            frames,
            vec![
                (0..3, 0, 17, d(0, 9)),
                (1..3, 9, 8, d(8, 8)),
                (2..3, 17, 0, d(0, 8)),
            ]
        );
    }

    #[test]
    fn rejects_settings_that_cannot_tile() {
        let err = |c: TileConfig| TilePlan::new([3, 4, 4], 8, 32, &c).unwrap_err().to_string();
        let base = TileConfig::default();
        let e = err(TileConfig {
            stride_sample_width: 600,
            ..base.clone()
        });
        assert!(
            e.contains(
                "tile_sample_width (512) must not be smaller than stride_sample_width (600)"
            ),
            "{e}"
        );
        let e = err(TileConfig {
            stride_sample_height: 16,
            ..base.clone()
        });
        assert!(
            e.contains("stride_sample_height is 16, it must be at least one latent (32)"),
            "{e}"
        );
        let e = err(TileConfig {
            stride_frames: 4,
            ..base
        });
        assert!(e.contains("stride_frames is 4"), "{e}");
    }
}
