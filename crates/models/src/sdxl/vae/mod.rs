//! SDXL's VAE: diffusers' `AutoencoderKL` (`models/autoencoders/autoencoder_kl.py`, 0.42.1),
//! encode (a diagonal Gaussian posterior) and decode, plus `enable_tiling()`'s tiled decode
//! ([`tiling`]). Parameter names are diffusers' (`encoder.down_blocks.{i}.resnets.{j}.conv1`,
//! `encoder.mid_block.attentions.0.to_q`, `quant_conv`, `post_quant_conv`,
//! `decoder.up_blocks.{i}.upsamplers.0.conv`, …), so a diffusers `vae/` folder loads as it is.
//!
//! Precision: the model computes in the dtype passed to [`AutoencoderKl::decode_in`] /
//! [`AutoencoderKl::encode_in`], casting its weights layer by layer when they are stored in
//! another one. [`AutoencoderKl::decode`] and [`AutoencoderKl::encode`] use
//! [`AutoencoderKl::compute_kind`]: float32 when the weights are float16 and the config sets
//! `force_upcast` (SDXL's VAE overflows in float16), the weights' dtype otherwise. That is what
//! diffusers' SDXL pipelines do with `upcast_vae()` (float16 weights cast to float32, so the
//! float16 rounding of the weights stays), without holding a float32 copy of the model.

mod blocks;
pub mod tiling;

use std::path::Path;

use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use crate::config::read_config;
use crate::weights::{Vb, WeightStore};
use crate::{ModelError, Result};
use blocks::{Activation, Conv2d, Decoder, Encoder};

pub use tiling::DiffusersTiling;

/// `vae/config.json`. Defaults are diffusers' `AutoencoderKL.__init__` defaults; unknown keys
/// (`_class_name`, `_diffusers_version`, newer fields) are ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AutoencoderKlConfig {
    pub in_channels: i64,
    pub out_channels: i64,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<i64>,
    pub layers_per_block: i64,
    pub act_fn: String,
    pub latent_channels: i64,
    pub norm_num_groups: i64,
    pub sample_size: i64,
    pub scaling_factor: f64,
    pub shift_factor: Option<f64>,
    pub latents_mean: Option<Vec<f64>>,
    pub latents_std: Option<Vec<f64>>,
    pub force_upcast: bool,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
    pub mid_block_add_attention: bool,
}

impl Default for AutoencoderKlConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec!["DownEncoderBlock2D".into()],
            up_block_types: vec!["UpDecoderBlock2D".into()],
            block_out_channels: vec![64],
            layers_per_block: 1,
            act_fn: "silu".into(),
            latent_channels: 4,
            norm_num_groups: 32,
            sample_size: 32,
            scaling_factor: 0.18215,
            shift_factor: None,
            latents_mean: None,
            latents_std: None,
            force_upcast: true,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
        }
    }
}

impl AutoencoderKlConfig {
    /// Pixels per latent pixel: `2^(len(block_out_channels) - 1)` (8 for SDXL).
    pub fn spatial_ratio(&self) -> i64 {
        1i64 << self.block_out_channels.len().saturating_sub(1).min(62)
    }

    /// Checks that the config describes a model this implementation builds, naming the first
    /// field that does not fit.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::UnsupportedConfig(format!("AutoencoderKL: {m}")));
        let n = self.block_out_channels.len();
        if n == 0 || n > 16 {
            return bad(format!(
                "block_out_channels has {n} entries, expected 1 to 16"
            ));
        }
        for (name, types, want) in [
            (
                "down_block_types",
                &self.down_block_types,
                "DownEncoderBlock2D",
            ),
            ("up_block_types", &self.up_block_types, "UpDecoderBlock2D"),
        ] {
            if types.len() != n {
                return bad(format!(
                    "{name} has {} entries, block_out_channels {n}",
                    types.len()
                ));
            }
            if let Some(t) = types.iter().find(|t| t.as_str() != want) {
                return bad(format!("{name} entry {t:?} (only {want} is supported)"));
            }
        }
        for (name, v) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("latent_channels", self.latent_channels),
            ("layers_per_block", self.layers_per_block),
            ("norm_num_groups", self.norm_num_groups),
            ("sample_size", self.sample_size),
        ] {
            if v < 1 {
                return bad(format!("{name} is {v}, it must be at least 1"));
            }
        }
        if let Some(c) = self
            .block_out_channels
            .iter()
            .find(|&&c| c < 1 || c % self.norm_num_groups != 0)
        {
            return bad(format!(
                "block_out_channels entry {c} is not a positive multiple of norm_num_groups ({})",
                self.norm_num_groups
            ));
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor != 0.0) {
            return bad(format!("scaling_factor is {}", self.scaling_factor));
        }
        for (name, v) in [
            ("latents_mean", &self.latents_mean),
            ("latents_std", &self.latents_std),
        ] {
            if let Some(v) = v
                .as_ref()
                .filter(|v| v.len() as i64 != self.latent_channels)
            {
                return bad(format!(
                    "{name} has {} entries, latent_channels is {}",
                    v.len(),
                    self.latent_channels
                ));
            }
        }
        Activation::parse(&self.act_fn).map(|_| ())
    }
}

pub use crate::nn::Posterior;

pub struct AutoencoderKl {
    cfg: AutoencoderKlConfig,
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    weight_kind: Kind,
}

fn invalid<T>(m: String) -> Result<T> {
    Err(ModelError::InvalidInput(format!("AutoencoderKL: {m}")))
}

fn check_kind(kind: Kind) -> Result<()> {
    match kind {
        Kind::Float | Kind::Half | Kind::BFloat16 | Kind::Double => Ok(()),
        other => invalid(format!(
            "cannot compute in {other:?} (float32, float16, bfloat16 or float64)"
        )),
    }
}

impl AutoencoderKl {
    /// Builds the model from `vb` (the `vae/` component's root), strictly by name and shape.
    pub fn new(vb: &Vb<'_>, cfg: AutoencoderKlConfig) -> Result<Self> {
        cfg.validate()?;
        let act = Activation::parse(&cfg.act_fn)?;
        let l = cfg.latent_channels;
        Ok(Self {
            encoder: Encoder::new(&vb.pp("encoder"), &cfg, act)?,
            decoder: Decoder::new(&vb.pp("decoder"), &cfg, act)?,
            quant_conv: if cfg.use_quant_conv {
                Some(Conv2d::new(&vb.pp("quant_conv"), 2 * l, 2 * l, 1, 1, 0)?)
            } else {
                None
            },
            post_quant_conv: if cfg.use_post_quant_conv {
                Some(Conv2d::new(&vb.pp("post_quant_conv"), l, l, 1, 1, 0)?)
            } else {
                None
            },
            weight_kind: vb.kind(),
            cfg,
        })
    }

    /// Loads a diffusers `vae/` folder (`config.json` + safetensors) with its weights in `kind`
    /// on `device`; fails on a missing, misshapen or unused tensor, naming it.
    pub fn from_dir(dir: &Path, kind: Kind, device: Device) -> Result<Self> {
        check_kind(kind)?;
        let cfg: AutoencoderKlConfig = read_config(&dir.join("config.json"))?;
        let store = WeightStore::from_component_dir(dir, kind, device)?;
        let vae = Self::new(&store.root(), cfg)?;
        store.finish()?;
        Ok(vae)
    }

    pub fn config(&self) -> &AutoencoderKlConfig {
        &self.cfg
    }

    /// The dtype the weights are stored in.
    pub fn weight_kind(&self) -> Kind {
        self.weight_kind
    }

    /// The dtype [`Self::decode`] and [`Self::encode`] compute in: float32 for float16 weights
    /// with `force_upcast` (diffusers' `needs_upcasting`), else the weights' dtype.
    pub fn compute_kind(&self) -> Kind {
        if self.weight_kind == Kind::Half && self.cfg.force_upcast {
            Kind::Float
        } else {
            self.weight_kind
        }
    }

    /// Pixels per latent pixel (8 for SDXL).
    pub fn spatial_ratio(&self) -> i64 {
        self.cfg.spatial_ratio()
    }

    /// The diffusion model's latents → the VAE's: diffusers' SDXL pipeline's
    /// `latents · latents_std / scaling_factor + latents_mean` when the config has both
    /// statistics, else `latents / scaling_factor + shift_factor` (shift 0 when absent, as in
    /// SDXL; SD3's formula when present). In `z`'s dtype.
    pub fn unscale_latents(&self, z: &Tensor) -> Result<Tensor> {
        let sf = self.cfg.scaling_factor;
        match self.latent_stats(z)? {
            Some((mean, std)) => Ok(z.f_mul(&std)?.f_div_scalar(sf)?.f_add(&mean)?),
            None => Ok(z
                .f_div_scalar(sf)?
                .f_add_scalar(self.cfg.shift_factor.unwrap_or(0.0))?),
        }
    }

    /// The inverse of [`Self::unscale_latents`] (how img2img scales an encoded image):
    /// `(x − latents_mean) · scaling_factor / latents_std`, else
    /// `(x − shift_factor) · scaling_factor`.
    pub fn scale_latents(&self, x: &Tensor) -> Result<Tensor> {
        let sf = self.cfg.scaling_factor;
        match self.latent_stats(x)? {
            Some((mean, std)) => Ok(x.f_sub(&mean)?.f_mul_scalar(sf)?.f_div(&std)?),
            None => Ok(x
                .f_sub_scalar(self.cfg.shift_factor.unwrap_or(0.0))?
                .f_mul_scalar(sf)?),
        }
    }

    /// `latents_mean` / `latents_std` as `[1, C, 1, 1]` in `like`'s dtype and device.
    fn latent_stats(&self, like: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
        let (Some(mean), Some(std)) = (&self.cfg.latents_mean, &self.cfg.latents_std) else {
            return Ok(None);
        };
        let t = |v: &[f64]| -> Result<Tensor> {
            Ok(Tensor::from_slice(v)
                .f_view([1, -1, 1, 1])?
                .f_to_kind(like.kind())?
                .f_to_device(like.device())?)
        };
        Ok(Some((t(mean)?, t(std)?)))
    }

    /// Encodes `[B, in_channels, H, W]` images in [-1, 1] (H and W multiples of
    /// [`Self::spatial_ratio`]) in [`Self::compute_kind`].
    pub fn encode(&self, x: &Tensor) -> Result<Posterior> {
        self.encode_in(x, self.compute_kind())
    }

    /// [`Self::encode`] computing in `kind` (the input is cast to it).
    pub fn encode_in(&self, x: &Tensor, kind: Kind) -> Result<Posterior> {
        check_kind(kind)?;
        let s = x.size();
        let r = self.spatial_ratio();
        if s.len() != 4 || s[1] != self.cfg.in_channels {
            return invalid(format!(
                "images must be [B, {}, H, W], got {s:?}",
                self.cfg.in_channels
            ));
        }
        if s[0] < 1 || s[2] < r || s[3] < r || s[2] % r != 0 || s[3] % r != 0 {
            return invalid(format!(
                "image size {}x{} (batch {}): height and width must be positive multiples of {r}",
                s[2], s[3], s[0]
            ));
        }
        let mut h = self.encoder.forward(&x.f_to_kind(kind)?)?;
        if let Some(q) = &self.quant_conv {
            h = q.forward(&h)?;
        }
        let parts = h.f_chunk(2, 1)?;
        Ok(Posterior {
            mean: parts[0].shallow_clone(),
            logvar: parts[1].f_clamp(-30.0, 20.0)?,
        })
    }

    /// Decodes `[B, latent_channels, h, w]` VAE latents (see [`Self::unscale_latents`]) to
    /// `[B, out_channels, 8h, 8w]` in [`Self::compute_kind`], untiled.
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        self.decode_in(z, self.compute_kind())
    }

    /// [`Self::decode`] computing in `kind` (the latents are cast to it).
    pub fn decode_in(&self, z: &Tensor, kind: Kind) -> Result<Tensor> {
        let z = self.check_latents(z, kind)?;
        self.decode_checked(&z)
    }

    /// `z` validated and cast to `kind`.
    fn check_latents(&self, z: &Tensor, kind: Kind) -> Result<Tensor> {
        check_kind(kind)?;
        let s = z.size();
        if s.len() != 4 || s[1] != self.cfg.latent_channels {
            return invalid(format!(
                "latents must be [B, {}, h, w], got {s:?}",
                self.cfg.latent_channels
            ));
        }
        if s.iter().any(|&d| d < 1) {
            return invalid(format!("empty latents {s:?}"));
        }
        Ok(z.f_to_kind(kind)?)
    }

    /// `post_quant_conv` and the decoder on checked latents (one tile or the whole image).
    fn decode_checked(&self, z: &Tensor) -> Result<Tensor> {
        match &self.post_quant_conv {
            Some(p) => self.decoder.forward(&p.forward(z)?),
            None => self.decoder.forward(z),
        }
    }
}
