//! diffusers' tiled decode of `AutoencoderKL` after `enable_tiling()`, reproduced exactly
//! (`_decode` and `tiled_decode` in `autoencoder_kl.py` 0.42.1):
//!
//! - it tiles only when the latent is wider or taller than `tile_latent_min_size`
//!   (`int(sample_size / 2^(len(block_out_channels) − 1))`, 128 for SDXL);
//! - latent tiles of `tile_latent_min_size` start every `int(tile_latent_min_size · 0.75)`
//!   latents, row-major (the last ones in a row or column are shorter, down to one latent);
//! - each decoded tile is blended in place with the tile above (`blend_v`) and then with the
//!   one to its left (`blend_h`), linearly over `int(tile_sample_min_size · 0.25)` pixels, the
//!   neighbours being already blended themselves, then cropped to
//!   `row_limit = tile_sample_min_size − blend_extent` pixels; the crops are concatenated.
//!   diffusers does not crop the result: when `8 · overlap_size ≠ row_limit` (sample sizes that
//!   are not multiples of 32) the output is not `8h × 8w`, and neither is ours.

use tch::{Kind, Tensor};

use super::{AutoencoderKl, AutoencoderKlConfig};
use crate::{ModelError, Result};

/// The tile sizes of diffusers' `enable_tiling()`; the fields are public like diffusers'
/// attributes, which users may set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiffusersTiling {
    /// Tile size in pixels (`config.sample_size`).
    pub tile_sample_min_size: i64,
    /// Tile size in latents.
    pub tile_latent_min_size: i64,
    pub tile_overlap_factor: f64,
}

impl DiffusersTiling {
    /// The sizes `AutoencoderKL.__init__` sets from the config.
    pub fn for_config(cfg: &AutoencoderKlConfig) -> Self {
        let levels = cfg.block_out_channels.len().saturating_sub(1).min(62) as i32;
        Self {
            tile_sample_min_size: cfg.sample_size,
            tile_latent_min_size: (cfg.sample_size as f64 / 2f64.powi(levels)) as i64,
            tile_overlap_factor: 0.25,
        }
    }

    /// Whether diffusers' `_decode` tiles latents of `h × w`.
    pub fn tiles(&self, h: i64, w: i64) -> bool {
        w > self.tile_latent_min_size || h > self.tile_latent_min_size
    }

    /// `int(tile_latent_min_size · (1 − overlap))`: latents between tile starts.
    pub fn overlap_size(&self) -> i64 {
        (self.tile_latent_min_size as f64 * (1.0 - self.tile_overlap_factor)) as i64
    }

    /// `int(tile_sample_min_size · overlap)`: pixels blended at each seam.
    pub fn blend_extent(&self) -> i64 {
        (self.tile_sample_min_size as f64 * self.tile_overlap_factor) as i64
    }

    /// `tile_sample_min_size − blend_extent`: pixels kept of each tile.
    pub fn row_limit(&self) -> i64 {
        self.tile_sample_min_size - self.blend_extent()
    }

    fn check(&self) -> Result<()> {
        if self.tile_latent_min_size < 1 || self.overlap_size() < 1 || self.row_limit() < 1 {
            return Err(ModelError::InvalidInput(format!(
                "AutoencoderKL tiling {self:?}: tiles of {} latents every {} keeping {} pixels \
                 cannot tile (each must be at least 1)",
                self.tile_latent_min_size,
                self.overlap_size(),
                self.row_limit()
            )));
        }
        Ok(())
    }
}

/// `b[.., :e, ..] = a[.., −e:, ..] · (1 − i/e) + b[.., :e, ..] · (i/e)` along `dim`, in place,
/// with `e = min(extent, a's length, b's length)`: diffusers' `blend_v` (dim 2) / `blend_h`
/// (dim 3). Each product is computed in float32 and rounded to the tensor's dtype, and the sum in
/// that dtype, as torch does for a half/bf16 tensor times a Python float (float32 in float32).
fn blend(a: &Tensor, b: &Tensor, dim: i64, extent: i64) -> Result<()> {
    let (la, lb) = (a.size()[dim as usize], b.size()[dim as usize]);
    let e = extent.min(la).min(lb);
    if e <= 0 {
        return Ok(());
    }
    let kind = b.kind();
    let mut shape = vec![1i64; b.dim()];
    shape[dim as usize] = e;
    let ramp = |f: &dyn Fn(f64) -> f64| -> Result<Tensor> {
        let w: Vec<f32> = (0..e).map(|i| f(i as f64 / e as f64) as f32).collect();
        Ok(Tensor::from_slice(&w)
            .f_to_device(b.device())?
            .f_view(shape.as_slice())?)
    };
    let (wa, wb) = (ramp(&|r| 1.0 - r)?, ramp(&|r| r)?);
    let mut head = b.f_narrow(dim, 0, e)?;
    let tail = a.f_narrow(dim, la - e, e)?;
    let mixed = tail
        .f_to_kind(Kind::Float)?
        .f_mul(&wa)?
        .f_to_kind(kind)?
        .f_add(&head.f_to_kind(Kind::Float)?.f_mul(&wb)?.f_to_kind(kind)?)?;
    head.f_copy_(&mixed)?;
    Ok(())
}

impl AutoencoderKl {
    /// The tile sizes diffusers' `enable_tiling()` uses for this model.
    pub fn diffusers_tiling(&self) -> DiffusersTiling {
        DiffusersTiling::for_config(self.config())
    }

    /// `decode` as diffusers runs it after `enable_tiling()`: tiled when the latent exceeds the
    /// tile, the plain decode otherwise; in [`Self::compute_kind`].
    pub fn decode_tiled(&self, z: &Tensor) -> Result<Tensor> {
        self.decode_tiled_with(z, &self.diffusers_tiling(), self.compute_kind())
    }

    /// [`Self::decode_tiled`] with explicit tile sizes, computing in `kind`.
    pub fn decode_tiled_with(&self, z: &Tensor, t: &DiffusersTiling, kind: Kind) -> Result<Tensor> {
        let z = self.check_latents(z, kind)?;
        let (h, w) = (z.size()[2], z.size()[3]);
        if !t.tiles(h, w) {
            return self.decode_checked(&z);
        }
        t.check()?;
        let (tile, step) = (t.tile_latent_min_size, t.overlap_size() as usize);
        let (blend_extent, row_limit) = (t.blend_extent(), t.row_limit());
        let mut rows: Vec<Vec<Tensor>> = Vec::new();
        for i in (0..h).step_by(step) {
            let mut row = Vec::new();
            for j in (0..w).step_by(step) {
                let crop = z
                    .f_narrow(2, i, tile.min(h - i))?
                    .f_narrow(3, j, tile.min(w - j))?;
                row.push(self.decode_checked(&crop)?);
            }
            rows.push(row);
        }
        let mut result_rows = Vec::with_capacity(rows.len());
        for i in 0..rows.len() {
            let mut result_row = Vec::with_capacity(rows[i].len());
            for j in 0..rows[i].len() {
                let tile = &rows[i][j];
                if i > 0 {
                    blend(&rows[i - 1][j], tile, 2, blend_extent)?;
                }
                if j > 0 {
                    blend(&rows[i][j - 1], tile, 3, blend_extent)?;
                }
                let s = tile.size();
                result_row.push(tile.f_narrow(2, 0, row_limit.min(s[2]))?.f_narrow(
                    3,
                    0,
                    row_limit.min(s[3]),
                )?);
            }
            result_rows.push(Tensor::f_cat(&result_row, 3)?);
        }
        Ok(Tensor::f_cat(&result_rows, 2)?)
    }
}
