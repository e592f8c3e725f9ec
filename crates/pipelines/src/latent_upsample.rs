//! `LTXLatentUpsamplePipeline` (diffusers 0.42.1), latents in, latents out — the step between
//! the low-resolution and the refine pass of LTX-Video 0.9.7/0.9.8's multi-scale flow
//! (`../shared/specs/ltx-condition.md` §3.1): de-normalise with the base VAE's statistics,
//! upsample, optionally AdaIN towards the input's per-channel statistics and tone-map, then
//! normalise again.

use ltx_models::ltx::{LtxLatentUpsampler, LtxVae};
use ltx_models::{ModelError, Result};
use tch::{Kind, Tensor};

/// The pipeline's two knobs; both 0 (off) by default, as the replaced service runs it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct UpsampleParams {
    /// Blend towards the input's per-(batch, channel) mean and (unbiased) std: 0 off, 1 full.
    pub adain_factor: f64,
    /// Sigmoid compression of large latent values, in [0, 1].
    pub tone_map_compression_ratio: f64,
}

impl UpsampleParams {
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.tone_map_compression_ratio) {
            return Err(ModelError::InvalidInput(format!(
                "tone_map_compression_ratio must be in [0, 1], got {}",
                self.tone_map_compression_ratio
            )));
        }
        if !self.adain_factor.is_finite() {
            return Err(ModelError::InvalidInput(format!(
                "adain_factor must be finite, got {}",
                self.adain_factor
            )));
        }
        Ok(())
    }
}

/// Upsamples normalised latents `[B, C, F, H, W]` (as a denoising pass leaves them) to
/// normalised latents `[B, C, F', 2H, 2W]` in the upsampler's dtype, with `vae`'s latent
/// statistics (the base model's VAE, not one shipped beside the upsampler).
pub fn upsample_latents(
    upsampler: &LtxLatentUpsampler,
    vae: &LtxVae,
    latents: &Tensor,
    p: &UpsampleParams,
) -> Result<Tensor> {
    p.validate()?;
    let dtype = upsampler.dtype();
    let scaling = vae.config().scaling_factor;
    tch::no_grad(|| {
        let x = latents.f_to_kind(Kind::Float)?;
        let (mean, std) = vae.latent_stats(latents.device())?;
        let x = (x * &std / scaling + &mean).f_to_kind(dtype)?;
        let mut y = upsampler.forward(&x)?;
        if p.adain_factor > 0.0 {
            y = adain(&y, &x, p.adain_factor)?;
        }
        if p.tone_map_compression_ratio > 0.0 {
            y = tone_map(&y, p.tone_map_compression_ratio)?;
        }
        let mean = mean.f_to_kind(y.kind())?;
        let std = std.f_to_kind(y.kind())?;
        Ok((y - mean) * scaling / std)
    })
}

/// `lerp(y, (y − mean(y))/std(y)·std(x) + mean(x), factor)` per (batch, channel) over frames
/// and pixels, with unbiased std: diffusers' `adain_filter_latent`.
fn adain(y: &Tensor, reference: &Tensor, factor: f64) -> Result<Tensor> {
    let dims: &[i64] = &[2, 3, 4];
    let (rs, rm) = reference.f_std_mean_dim(dims, true, true)?;
    let (s, m) = y.f_std_mean_dim(dims, true, true)?;
    let r = (y - m) / s * rs + rm;
    Ok(y.f_lerp(&r, factor)?)
}

/// `y · (1 − 0.8·sf·sigmoid(4·sf·(|y| − 1)))` with `sf = 0.75·compression`.
fn tone_map(y: &Tensor, compression: f64) -> Result<Tensor> {
    let sf = compression * 0.75;
    let gate = ((y.f_abs()? - 1.0) * (4.0 * sf)).f_sigmoid()?;
    Ok(y * ((gate * (-0.8 * sf)) + 1.0))
}
