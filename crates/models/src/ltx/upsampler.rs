//! `LTXLatentUpsamplerModel` (diffusers `pipelines/ltx/modeling_latent_upsampler.py`), the
//! LTX-Video 0.9.7/0.9.8 latent upsampler (`Lightricks/ltxv-spatial-upscaler-0.9.7`): a conv
//! net that doubles the latent's height and width (and/or its frames) in raw VAE latent space.
//! The original Lightricks `LatentUpsampler` has the same parameter names, so the diffusers
//! folder (`latent_upsampler/`) and the original single file load through one loader.

use std::path::Path;

use serde::Deserialize;
use tch::Tensor;

use crate::weights::{Vb, WeightStore};
use crate::{ModelError, Result};

/// `latent_upsampler/config.json` (or the single file's `config` metadata). Defaults are
/// diffusers', which are the released 0.9.7/0.9.8 spatial upscaler's.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct LtxUpsamplerConfig {
    pub in_channels: i64,
    pub mid_channels: i64,
    pub num_blocks_per_stage: i64,
    pub dims: i64,
    pub spatial_upsample: bool,
    pub temporal_upsample: bool,
}

impl Default for LtxUpsamplerConfig {
    fn default() -> Self {
        Self {
            in_channels: 128,
            mid_channels: 512,
            num_blocks_per_stage: 4,
            dims: 3,
            spatial_upsample: true,
            temporal_upsample: false,
        }
    }
}

impl LtxUpsamplerConfig {
    fn check(&self) -> Result<()> {
        let bad = |m: String| {
            Err(ModelError::UnsupportedConfig(format!(
                "latent upsampler: {m}"
            )))
        };
        if self.dims != 2 && self.dims != 3 {
            return bad(format!("dims {} (2 or 3)", self.dims));
        }
        if !self.spatial_upsample && !self.temporal_upsample {
            return bad("neither spatial_upsample nor temporal_upsample is set".into());
        }
        if self.dims == 2 && self.temporal_upsample {
            return bad("dims 2 cannot upsample in time".into());
        }
        if self.mid_channels % 32 != 0 || self.mid_channels <= 0 || self.in_channels <= 0 {
            return bad(format!(
                "mid_channels {} must be a positive multiple of 32 (GroupNorm(32))",
                self.mid_channels
            ));
        }
        if self.num_blocks_per_stage < 0 {
            return bad(format!(
                "num_blocks_per_stage {}",
                self.num_blocks_per_stage
            ));
        }
        Ok(())
    }

    /// The config stored in a safetensors file's `config` metadata (as the original Lightricks
    /// files carry it), or the defaults when it has none.
    pub fn from_safetensors_metadata(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        // SAFETY: read-only map of a file we only parse the header of.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(&map).map_err(|e| ModelError::Safetensors {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        let Some(cfg) = meta.metadata().as_ref().and_then(|m| m.get("config")) else {
            return Ok(Self::default());
        };
        serde_json::from_str(cfg).map_err(|source| ModelError::Json {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Opens a latent upsampler as people download it: a diffusers folder (`config.json` +
/// safetensors, or a pipeline-shaped repo such as `ltxv-spatial-upscaler-0.9.7` with its
/// `latent_upsampler/` subfolder) or the original single `.safetensors` file (config from its
/// metadata, else the released defaults). Loading is strict: a missing, unexpected or wrongly
/// shaped tensor is an error naming it. Returns the model and its parameter handles.
pub fn open_upsampler(
    path: &Path,
    kind: tch::Kind,
    device: tch::Device,
) -> Result<(LtxLatentUpsampler, Vec<(String, Tensor)>)> {
    let (store, cfg) = if path.is_dir() {
        let dir = if path.join("latent_upsampler").is_dir() {
            path.join("latent_upsampler")
        } else {
            path.to_path_buf()
        };
        let cfg_path = dir.join("config.json");
        let cfg = if cfg_path.is_file() {
            crate::config::read_config(&cfg_path)?
        } else {
            LtxUpsamplerConfig::default()
        };
        (WeightStore::from_component_dir(&dir, kind, device)?, cfg)
    } else {
        let cfg = LtxUpsamplerConfig::from_safetensors_metadata(path)?;
        (
            WeightStore::from_files(&[path.to_path_buf()], kind, device)?,
            cfg,
        )
    };
    let model = tch::no_grad(|| LtxLatentUpsampler::new(&store.root(), cfg))?;
    store.finish()?;
    Ok((model, store.take_params()))
}

/// Conv2d or Conv3d, kernel 3, padding 1, with bias.
struct Conv {
    weight: Tensor,
    bias: Tensor,
    dims: usize,
}

impl Conv {
    fn new(vb: &Vb<'_>, cin: i64, cout: i64, dims: usize) -> Result<Self> {
        let mut shape = vec![cout, cin];
        shape.extend(std::iter::repeat_n(3, dims));
        Ok(Self {
            weight: vb.get("weight", &shape)?,
            bias: vb.get("bias", &[cout])?,
            dims,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(if self.dims == 2 {
            x.f_conv2d(&self.weight, Some(&self.bias), [1, 1], [1, 1], [1, 1], 1)?
        } else {
            x.f_conv3d(
                &self.weight,
                Some(&self.bias),
                [1, 1, 1],
                [1, 1, 1],
                [1, 1, 1],
                1,
            )?
        })
    }
}

/// `GroupNorm(32, c)`, eps 1e-5, affine.
struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
}

impl GroupNorm {
    fn new(vb: &Vb<'_>, c: i64) -> Result<Self> {
        Ok(Self {
            weight: vb.get("weight", &[c])?,
            bias: vb.get("bias", &[c])?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_group_norm(32, Some(&self.weight), Some(&self.bias), 1e-5, false)?)
    }
}

/// conv1 → norm1 → SiLU → conv2 → norm2 → SiLU(h + x): the activation comes after the add.
struct ResBlock {
    conv1: Conv,
    norm1: GroupNorm,
    conv2: Conv,
    norm2: GroupNorm,
}

impl ResBlock {
    fn new(vb: &Vb<'_>, c: i64, dims: usize) -> Result<Self> {
        Ok(Self {
            conv1: Conv::new(&vb.pp("conv1"), c, c, dims)?,
            norm1: GroupNorm::new(&vb.pp("norm1"), c)?,
            conv2: Conv::new(&vb.pp("conv2"), c, c, dims)?,
            norm2: GroupNorm::new(&vb.pp("norm2"), c)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.norm1.forward(&self.conv1.forward(x)?)?.f_silu()?;
        let h = self.norm2.forward(&self.conv2.forward(&h)?)?;
        Ok((h + x).f_silu()?)
    }
}

pub struct LtxLatentUpsampler {
    cfg: LtxUpsamplerConfig,
    initial_conv: Conv,
    initial_norm: GroupNorm,
    res_blocks: Vec<ResBlock>,
    upsampler: Conv,
    post_upsample_res_blocks: Vec<ResBlock>,
    final_conv: Conv,
}

impl LtxLatentUpsampler {
    pub fn new(vb: &Vb<'_>, cfg: LtxUpsamplerConfig) -> Result<Self> {
        cfg.check()?;
        let (c, m) = (cfg.in_channels, cfg.mid_channels);
        let dims = cfg.dims as usize;
        let blocks = |name: &str| -> Result<Vec<ResBlock>> {
            (0..cfg.num_blocks_per_stage)
                .map(|i| ResBlock::new(&vb.pp(name).pp(i), m, dims))
                .collect()
        };
        // The upsampling conv: 2-D over frames folded into the batch for a spatial-only
        // upsampler, 3-D when time is upsampled too.
        let (factor, up_dims) = match (cfg.spatial_upsample, cfg.temporal_upsample) {
            (true, true) => (8, 3),
            (true, false) => (4, 2),
            _ => (2, 3),
        };
        Ok(Self {
            initial_conv: Conv::new(&vb.pp("initial_conv"), c, m, dims)?,
            initial_norm: GroupNorm::new(&vb.pp("initial_norm"), m)?,
            res_blocks: blocks("res_blocks")?,
            upsampler: Conv::new(&vb.pp("upsampler").pp(0), m, factor * m, up_dims)?,
            post_upsample_res_blocks: blocks("post_upsample_res_blocks")?,
            final_conv: Conv::new(&vb.pp("final_conv"), m, c, dims)?,
            cfg,
        })
    }

    pub fn config(&self) -> &LtxUpsamplerConfig {
        &self.cfg
    }

    /// The dtype its weights were loaded in (inputs are cast to it).
    pub fn dtype(&self) -> tch::Kind {
        self.initial_conv.weight.kind()
    }

    /// `[B, C, F, H, W]` raw (de-normalised) latents → `[B, C, F', 2H, 2W]` (spatial) where
    /// `F' = 2F − 1` when time is upsampled, else `F`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let s = x.size();
        if s.len() != 5 || s[1] != self.cfg.in_channels {
            return Err(ModelError::InvalidInput(format!(
                "latent upsampler: latents {s:?} must be [B, {}, F, H, W]",
                self.cfg.in_channels
            )));
        }
        let b = s[0];
        let fold =
            |t: &Tensor| -> Result<Tensor> { Ok(t.f_permute([0, 2, 1, 3, 4])?.f_flatten(0, 1)?) };
        let unfold = |t: &Tensor| -> Result<Tensor> {
            let ts = t.size();
            Ok(t.f_view([b, ts[0] / b, ts[1], ts[2], ts[3]])?
                .f_permute([0, 2, 1, 3, 4])?)
        };
        let stage = |h: Tensor, blocks: &[ResBlock]| -> Result<Tensor> {
            blocks.iter().try_fold(h, |h, blk| blk.forward(&h))
        };
        if self.cfg.dims == 2 {
            let h = fold(x)?;
            let h = self
                .initial_norm
                .forward(&self.initial_conv.forward(&h)?)?
                .f_silu()?;
            let h = stage(h, &self.res_blocks)?;
            let h = pixel_shuffle_2d(&self.upsampler.forward(&h)?)?;
            let h = stage(h, &self.post_upsample_res_blocks)?;
            return unfold(&self.final_conv.forward(&h)?);
        }
        let h = self
            .initial_norm
            .forward(&self.initial_conv.forward(x)?)?
            .f_silu()?;
        let h = stage(h, &self.res_blocks)?;
        let h = if self.cfg.temporal_upsample {
            let up = self.upsampler.forward(&h)?;
            let up = if self.cfg.spatial_upsample {
                pixel_shuffle_3d(&up)?
            } else {
                pixel_shuffle_t(&up)?
            };
            let f = up.size()[2];
            up.f_narrow(2, 1, f - 1)?
        } else {
            unfold(&pixel_shuffle_2d(&self.upsampler.forward(&fold(&h)?)?)?)?
        };
        let h = stage(h, &self.post_upsample_res_blocks)?;
        self.final_conv.forward(&h)
    }
}

/// `b (c 2 2) h w → b c (h 2) (w 2)`: `out[c, 2h+i, 2w+j] = in[4c + 2i + j, h, w]`.
fn pixel_shuffle_2d(x: &Tensor) -> Result<Tensor> {
    Ok(x.f_pixel_shuffle(2)?)
}

/// `b (c 2 2 2) f h w → b c (f 2) (h 2) (w 2)`: `out[c, 2f+d, 2h+i, 2w+j] = in[8c+4d+2i+j]`.
fn pixel_shuffle_3d(x: &Tensor) -> Result<Tensor> {
    let s = x.size();
    let (b, c, f, h, w) = (s[0], s[1] / 8, s[2], s[3], s[4]);
    Ok(x.f_view(&[b, c, 2, 2, 2, f, h, w][..])?
        .f_permute([0, 1, 5, 2, 6, 3, 7, 4])?
        .f_reshape([b, c, 2 * f, 2 * h, 2 * w])?)
}

/// `b (c 2) f h w → b c (f 2) h w`.
fn pixel_shuffle_t(x: &Tensor) -> Result<Tensor> {
    let s = x.size();
    let (b, c, f, h, w) = (s[0], s[1] / 2, s[2], s[3], s[4]);
    Ok(x.f_view([b, c, 2, f, h, w])?
        .f_permute([0, 1, 3, 2, 4, 5])?
        .f_reshape([b, c, 2 * f, h, w])?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn the_3d_shuffle_follows_the_index_rule() {
        let x =
            Tensor::arange(2 * 8 * 2 * 3 * 2, (Kind::Float, Device::Cpu)).view([1, 16, 2, 3, 2]);
        let y = pixel_shuffle_3d(&x).unwrap();
        assert_eq!(y.size(), [1, 2, 4, 6, 4]);
        for (c, d, i, j) in [(0, 0, 0, 0), (1, 1, 0, 1), (1, 0, 1, 1), (0, 1, 1, 0)] {
            let got = y.i_strided(c, d, i, j);
            let want = x.get(0).get(8 * c + 4 * d + 2 * i + j);
            assert!(got.equal(&want), "c{c} d{d} i{i} j{j}");
        }
    }

    trait Strided {
        fn i_strided(&self, c: i64, d: i64, i: i64, j: i64) -> Tensor;
    }
    impl Strided for Tensor {
        /// `self[0, c, d::2, i::2, j::2]`
        fn i_strided(&self, c: i64, d: i64, i: i64, j: i64) -> Tensor {
            let t = self.get(0).get(c);
            let pick = |t: Tensor, dim: i64, start: i64| {
                let n = t.size()[dim as usize];
                t.slice(dim, start, n, 2)
            };
            pick(pick(pick(t, 0, d), 1, i), 2, j)
        }
    }

    #[test]
    fn unsupported_configs_say_why() {
        let store = crate::weights::WeightStore::shapes_only(Kind::Float);
        let cfg = LtxUpsamplerConfig {
            spatial_upsample: false,
            ..Default::default()
        };
        let e = LtxLatentUpsampler::new(&store.root(), cfg)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("neither"), "{e}");
    }

    #[test]
    fn the_released_upsampler_has_the_specs_126m_parameters() {
        let store = crate::weights::WeightStore::shapes_only(Kind::Float);
        LtxLatentUpsampler::new(&store.root(), LtxUpsamplerConfig::default()).unwrap();
        let params = store.take_params();
        assert_eq!(params.len(), 72);
        let n: usize = params.iter().map(|(_, t)| t.numel()).sum();
        assert_eq!(n, 126_250_624);
    }
}
