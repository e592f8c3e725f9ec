//! diffusers' `DownBlock2D` / `CrossAttnDownBlock2D`, `UNetMidBlock2DCrossAttn` (and the
//! ControlNet's attention-free `UNetMidBlock2D`), `UpBlock2D` / `CrossAttnUpBlock2D`
//! (`models/unets/unet_2d_blocks.py`). A block without cross-attention is the same block with
//! no `attentions`. Every resnet, transformer and resampler is one streaming unit.

use tch::Tensor;

use super::ip_attention::IpInput;
use super::layers::Stream;
use super::layout::{BlockSpec, MidSpec, Norms};
use super::resnet::{Downsample2D, ResnetBlock2D, TimeInput, Upsample2D};
use super::transformer::Transformer2D;
use crate::weights::Vb;
use crate::Result;

/// What every block of one forward pass sees.
pub(crate) struct Cond<'a> {
    pub temb: &'a TimeInput,
    /// The cross-attention context (the text tokens when IP weights split off image tokens).
    pub context: &'a Tensor,
    pub ip: Option<IpInput<'a>>,
    pub stream: &'a Stream<'a>,
}

impl Cond<'_> {
    fn resnet(&self, r: &ResnetBlock2D, x: &Tensor) -> Result<Tensor> {
        self.stream.unit(|| r.forward(x, self.temb))
    }

    fn attention(&self, a: &Transformer2D, x: &Tensor) -> Result<Tensor> {
        self.stream
            .unit(|| a.forward(x, self.context, self.ip.as_ref()))
    }
}

fn transformers(vb: &Vb<'_>, spec: &BlockSpec, norms: &Norms) -> Result<Vec<Transformer2D>> {
    if !spec.cross_attention {
        return Ok(Vec::new());
    }
    (0..spec.layers)
        .map(|j| {
            Transformer2D::new(
                &vb.pp("attentions").pp(j),
                spec.out_channels,
                spec.heads,
                spec.depths[j],
                spec.cross_dim,
                norms,
            )
        })
        .collect()
}

/// `resnets.j` then `attentions.j` for each layer (down and up blocks).
fn unit_names(prefix: &str, resnets: usize, attentions: usize) -> Vec<String> {
    let mut out = Vec::new();
    for j in 0..resnets {
        out.push(format!("{prefix}.resnets.{j}"));
        if j < attentions {
            out.push(format!("{prefix}.attentions.{j}"));
        }
    }
    out
}

pub(crate) struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2D>,
    downsampler: Option<Downsample2D>,
}

impl DownBlock {
    pub fn new(vb: &Vb<'_>, spec: &BlockSpec, norms: &Norms, padding: i64) -> Result<Self> {
        Ok(Self {
            resnets: (0..spec.layers)
                .map(|j| {
                    let cin = if j == 0 {
                        spec.in_channels
                    } else {
                        spec.out_channels
                    };
                    ResnetBlock2D::new(
                        &vb.pp("resnets").pp(j),
                        cin,
                        spec.out_channels,
                        norms,
                        norms.output_scale,
                    )
                })
                .collect::<Result<_>>()?,
            attentions: transformers(vb, spec, norms)?,
            downsampler: if spec.resample {
                Some(Downsample2D::new(
                    &vb.pp("downsamplers.0"),
                    spec.out_channels,
                    padding,
                )?)
            } else {
                None
            },
        })
    }

    /// The block's output and its skip tensors (each layer's, then the downsampled one).
    pub fn forward(&self, x: &Tensor, cond: &Cond<'_>) -> Result<(Tensor, Vec<Tensor>)> {
        let mut x = x.shallow_clone();
        let mut skips = Vec::with_capacity(self.resnets.len() + 1);
        for (j, r) in self.resnets.iter().enumerate() {
            x = cond.resnet(r, &x)?;
            if let Some(a) = self.attentions.get(j) {
                x = cond.attention(a, &x)?;
            }
            skips.push(x.shallow_clone());
        }
        if let Some(d) = &self.downsampler {
            x = cond.stream.unit(|| d.forward(&x))?;
            skips.push(x.shallow_clone());
        }
        Ok((x, skips))
    }

    pub fn units(&self, prefix: &str) -> Vec<String> {
        let mut out = unit_names(prefix, self.resnets.len(), self.attentions.len());
        if self.downsampler.is_some() {
            out.push(format!("{prefix}.downsamplers.0"));
        }
        out
    }
}

/// `resnets.0`, then `attentions.j` + `resnets.{j+1}` for each layer.
pub(crate) struct MidBlock {
    resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2D>,
}

impl MidBlock {
    pub fn new(vb: &Vb<'_>, spec: &MidSpec, norms: &Norms) -> Result<Self> {
        let c = spec.channels;
        let block = BlockSpec {
            cross_attention: spec.layers > 0,
            in_channels: c,
            out_channels: c,
            prev_output_channels: c,
            layers: spec.layers,
            depths: spec.depths.clone(),
            heads: spec.heads,
            cross_dim: spec.cross_dim,
            resample: false,
        };
        Ok(Self {
            resnets: (0..=spec.layers)
                .map(|j| {
                    ResnetBlock2D::new(&vb.pp("resnets").pp(j), c, c, norms, spec.output_scale)
                })
                .collect::<Result<_>>()?,
            attentions: transformers(vb, &block, norms)?,
        })
    }

    pub fn forward(&self, x: &Tensor, cond: &Cond<'_>) -> Result<Tensor> {
        let mut x = x.shallow_clone();
        for (j, r) in self.resnets.iter().enumerate() {
            if j > 0 {
                x = cond.attention(&self.attentions[j - 1], &x)?;
            }
            x = cond.resnet(r, &x)?;
        }
        Ok(x)
    }

    pub fn units(&self, prefix: &str) -> Vec<String> {
        let mut out = Vec::new();
        for j in 0..self.resnets.len() {
            if j > 0 {
                out.push(format!("{prefix}.attentions.{}", j - 1));
            }
            out.push(format!("{prefix}.resnets.{j}"));
        }
        out
    }
}

pub(crate) struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2D>,
    upsampler: Option<Upsample2D>,
}

impl UpBlock {
    pub fn new(vb: &Vb<'_>, spec: &BlockSpec, norms: &Norms) -> Result<Self> {
        let n = spec.layers;
        Ok(Self {
            resnets: (0..n)
                .map(|j| {
                    let skip = if j + 1 == n {
                        spec.in_channels
                    } else {
                        spec.out_channels
                    };
                    let cin = if j == 0 {
                        spec.prev_output_channels
                    } else {
                        spec.out_channels
                    };
                    ResnetBlock2D::new(
                        &vb.pp("resnets").pp(j),
                        cin + skip,
                        spec.out_channels,
                        norms,
                        norms.output_scale,
                    )
                })
                .collect::<Result<_>>()?,
            attentions: transformers(vb, spec, norms)?,
            upsampler: if spec.resample {
                Some(Upsample2D::new(&vb.pp("upsamplers.0"), spec.out_channels)?)
            } else {
                None
            },
        })
    }

    pub fn num_skips(&self) -> usize {
        self.resnets.len()
    }

    /// `skips` are this block's skip tensors in down-path order (the last is taken first);
    /// `size` is where the upsampler resizes to.
    pub fn forward(
        &self,
        x: &Tensor,
        skips: &[Tensor],
        size: Option<[i64; 2]>,
        cond: &Cond<'_>,
    ) -> Result<Tensor> {
        let mut x = x.shallow_clone();
        for (j, (r, skip)) in self.resnets.iter().zip(skips.iter().rev()).enumerate() {
            x = Tensor::f_cat(&[&x, skip], 1)?;
            x = cond.resnet(r, &x)?;
            if let Some(a) = self.attentions.get(j) {
                x = cond.attention(a, &x)?;
            }
        }
        if let Some(u) = &self.upsampler {
            x = cond.stream.unit(|| u.forward(&x, size))?;
        }
        Ok(x)
    }

    pub fn units(&self, prefix: &str) -> Vec<String> {
        let mut out = unit_names(prefix, self.resnets.len(), self.attentions.len());
        if self.upsampler.is_some() {
            out.push(format!("{prefix}.upsamplers.0"));
        }
        out
    }
}
