//! Tiled decoding of SDXL latents `[B, 4, h, w]` with [`AutoencoderKl`], so that the decoder's
//! activations (the largest of an InstantID job at 1280², about 10 GB in float32 untiled) never
//! cover more than one tile. The two [`TilingMode`]s of the LTX tiled decode:
//!
//! - [`TilingMode::DiffusersCompatible`]: diffusers' `enable_tiling()` exactly
//!   ([`AutoencoderKl::decode_tiled_with`]), with tiles of `tile_sample_size` pixels and
//!   diffusers' fixed 25 % overlap (`stride_sample_size` is not used: diffusers has no stride
//!   setting). Its seams show: the last tiles of a row or column can be one latent wide, each
//!   tile is cropped to 3/4 of itself, and the in-place blends are not a partition of unity at
//!   corners.
//! - [`TilingMode::Weighted`] (the default): the LTX tile plan ([`TilePlan`] with a single frame)
//!   — equal tiles every `stride_sample_size` pixels, the last one aligned to the image's edge,
//!   linear feather weights over each overlap, never zero, flat at the image's borders — each
//!   decoded tile accumulated into a float32 canvas by [`tile_accumulate::accumulate`] (the CUDA
//!   kernel on CUDA tensors with a registry, tch ops otherwise), then divided by the summed
//!   weights; [`decode_to_u8`] does that division and the conversion to bytes in
//!   `tile_finalize_u8` instead.
//!
//! Both decode in [`AutoencoderKl::compute_kind`] (float32 for SDXL's float16 VAE with
//! `force_upcast`) and take the VAE's latents (already divided by the scaling factor: see
//! [`AutoencoderKl::unscale_latents`]).

use ltx_gpu::kernels::tile_accumulate;
use ltx_gpu::kernels::KernelRegistry;
use ltx_models::sdxl::vae::{AutoencoderKl, DiffusersTiling};
use ltx_models::{ModelError, Result};
use tch::{Kind, Tensor};

pub use crate::tiled_decode::TilingMode;
use crate::tiled_decode::{accumulate_tile, gpu_error, TileConfig, TilePlan};

/// Tiling settings in sample pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SdxlTileConfig {
    pub mode: TilingMode,
    /// Tile height and width in pixels.
    pub tile_sample_size: i64,
    /// Pixels between tile starts ([`TilingMode::Weighted`] only).
    pub stride_sample_size: i64,
}

impl SdxlTileConfig {
    /// diffusers' tile for this VAE (`sample_size`, 1024 px for SDXL) and its stride
    /// (`tile − int(tile · 0.25)`, 768 px), in `mode`.
    pub fn for_vae(vae: &AutoencoderKl, mode: TilingMode) -> Self {
        let t = vae.diffusers_tiling();
        Self {
            mode,
            tile_sample_size: t.tile_sample_min_size,
            stride_sample_size: t.row_limit(),
        }
    }

    /// The LTX plan's settings for a one-frame video.
    fn plan_config(&self) -> TileConfig {
        TileConfig {
            mode: TilingMode::Weighted,
            tile_sample_height: self.tile_sample_size,
            tile_sample_width: self.tile_sample_size,
            stride_sample_height: self.stride_sample_size,
            stride_sample_width: self.stride_sample_size,
            tile_frames: 1,
            stride_frames: 1,
        }
    }
}

fn invalid<T>(message: String) -> Result<T> {
    Err(ModelError::InvalidInput(format!(
        "SDXL tiled decode: {message}"
    )))
}

/// `[B, C, h, w]` latents, checked.
fn latent_size(vae: &AutoencoderKl, z: &Tensor) -> Result<[i64; 4]> {
    let s = z.size();
    let c = vae.config().latent_channels;
    match s[..] {
        [b, zc, h, w] if zc == c && b > 0 && h > 0 && w > 0 => Ok([b, zc, h, w]),
        _ => invalid(format!("latents must be [B, {c}, h, w], got {s:?}")),
    }
}

/// The weighted plan for latents of `h × w`.
fn plan(vae: &AutoencoderKl, h: i64, w: i64, cfg: &SdxlTileConfig) -> Result<TilePlan> {
    TilePlan::new([1, h, w], 1, vae.spatial_ratio(), &cfg.plan_config())
}

/// Decodes `z` `[B, 4, h, w]` to `[B, 3, 8h, 8w]` tile by tile, in
/// [`AutoencoderKl::compute_kind`]. `registry` is the CUDA device's kernel registry for the
/// weighted accumulation on CUDA tensors; without one it runs as tch ops.
pub fn decode_tiled(
    vae: &AutoencoderKl,
    z: &Tensor,
    cfg: &SdxlTileConfig,
    registry: Option<&KernelRegistry>,
) -> Result<Tensor> {
    let [b, _, h, w] = latent_size(vae, z)?;
    let kind = vae.compute_kind();
    match cfg.mode {
        TilingMode::DiffusersCompatible => {
            let t = DiffusersTiling {
                tile_sample_min_size: cfg.tile_sample_size,
                tile_latent_min_size: cfg.tile_sample_size / vae.spatial_ratio(),
                ..vae.diffusers_tiling()
            };
            vae.decode_tiled_with(z, &t, kind)
        }
        TilingMode::Weighted => {
            let plan = plan(vae, h, w, cfg)?;
            if plan.is_single() {
                return vae.decode(z);
            }
            let (out, wsum) = accumulate(vae, z, &plan, registry)?;
            let [_, oh, ow] = plan.output;
            let c = vae.config().out_channels;
            Ok((out / wsum.f_unsqueeze(0)?)
                .f_reshape([b, c, oh, ow])?
                .f_to_kind(kind)?)
        }
    }
}

/// Decodes every tile of `plan` into the float32 canvas `[B·C, 1, H, W]` and its weight sum
/// `[1, H, W]`.
fn accumulate(
    vae: &AutoencoderKl,
    z: &Tensor,
    plan: &TilePlan,
    registry: Option<&KernelRegistry>,
) -> Result<(Tensor, Tensor)> {
    let device = z.device();
    let bc = z.size()[0] * vae.config().out_channels;
    let [of, oh, ow] = plan.output;
    let mut out = Tensor::f_zeros([bc, of, oh, ow], (Kind::Float, device))?;
    let mut wsum = Tensor::f_zeros([of, oh, ow], (Kind::Float, device))?;
    for [t, y, x] in plan.tiles() {
        let crop = z
            .f_narrow(2, y.latent.start, y.latent.end - y.latent.start)?
            .f_narrow(3, x.latent.start, x.latent.end - x.latent.start)?;
        let d = vae.decode(&crop)?;
        let got = d.size();
        if got[2..] != [y.len, x.len] {
            return invalid(format!(
                "a tile decoded to {got:?}, the plan expects [B, C, {}, {}]",
                y.len, x.len
            ));
        }
        let data = d.f_to_kind(Kind::Float)?.f_reshape([bc, 1, y.len, x.len])?;
        accumulate_tile(registry, &mut out, &mut wsum, &data, [t, y, x])?;
    }
    Ok((out, wsum))
}

/// Decodes `z` `[1, 4, h, w]` to uint8 `[8h, 8w, 3]` the way diffusers' `postprocess` +
/// `numpy_to_pil` make the PIL image: `round(clamp(x·0.5 + 0.5, 0, 1) · 255)`. Untiled
/// (`cfg` None) and in the diffusers mode that is the decode followed by those tch ops. In the
/// weighted mode the float32 canvas goes to bytes through [`tile_accumulate::finalize_u8`]
/// (one CUDA pass), which truncates: its offset carries the rounding's half level
/// (`x·0.5 + 0.5 + 0.5/255`), so a pixel can differ from the float path by one level only where
/// float32 rounding of that sum crosses a level boundary (and at exact halves, which numpy
/// rounds to even).
pub fn decode_to_u8(
    vae: &AutoencoderKl,
    z: &Tensor,
    cfg: Option<&SdxlTileConfig>,
    registry: Option<&KernelRegistry>,
) -> Result<Tensor> {
    let [b, _, h, w] = latent_size(vae, z)?;
    if b != 1 {
        return invalid(format!("decode_to_u8 takes one image, got a batch of {b}"));
    }
    if let Some(cfg) = cfg.filter(|c| c.mode == TilingMode::Weighted) {
        let plan = plan(vae, h, w, cfg)?;
        if !plan.is_single() {
            let (out, wsum) = accumulate(vae, z, &plan, registry)?;
            let offset = 0.5 + 0.5 / 255.0;
            return tile_accumulate::finalize_u8(registry, &out, &wsum, 0.5, offset)
                .map_err(gpu_error)?
                .f_select(0, 0)
                .map_err(ModelError::from);
        }
    }
    let image = match cfg {
        Some(c) => decode_tiled(vae, z, c, registry)?,
        None => vae.decode(z)?,
    };
    to_u8(&image.f_select(0, 0)?)
}

/// `[3, H, W]` in [-1, 1] → uint8 `[H, W, 3]`, as diffusers' `postprocess("pil")`.
pub fn to_u8(image: &Tensor) -> Result<Tensor> {
    let x = (image.f_to_kind(Kind::Float)? * 0.5 + 0.5).f_clamp(0.0, 1.0)?;
    Ok((x * 255.0)
        .f_round()?
        .f_to_kind(Kind::Uint8)?
        .f_permute([1, 2, 0])?
        .f_contiguous()?)
}
