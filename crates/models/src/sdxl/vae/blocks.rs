//! The layers of diffusers' `Encoder` / `Decoder` (`models/autoencoders/vae.py`) as
//! `AutoencoderKL` builds them: `ResnetBlock2D` without a time embedding, `DownEncoderBlock2D`,
//! `UpDecoderBlock2D`, `UNetMidBlock2D` with its single-head attention, `Downsample2D` (pad
//! `(0, 1, 0, 1)`, stride-2 3×3 conv) and `Upsample2D` (nearest ×2, 3×3 conv).
//!
//! Every layer computes in its input's dtype: weights stored in another dtype are cast on the
//! fly, layer by layer. That is how [`super::AutoencoderKl`] decodes float16 weights in float32
//! (`force_upcast`) without a second, float32 copy of the model.

use tch::{Kind, Tensor};

use super::AutoencoderKlConfig;
use crate::attention::attention;
use crate::weights::Vb;
use crate::{ModelError, Result};

/// diffusers' VAE epsilon (`resnet_eps=1e-6` everywhere, `conv_norm_out` too).
const EPS: f64 = 1e-6;

/// `t` in `kind`, without a copy when it already is.
fn cast(t: &Tensor, kind: Kind) -> Result<Tensor> {
    if t.kind() == kind {
        Ok(t.shallow_clone())
    } else {
        Ok(t.f_to_kind(kind)?)
    }
}

/// `get_activation(act_fn)` for the names diffusers accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Activation {
    Silu,
    Mish,
    Gelu,
    Relu,
}

impl Activation {
    pub(super) fn parse(name: &str) -> Result<Self> {
        match name {
            "silu" | "swish" => Ok(Self::Silu),
            "mish" => Ok(Self::Mish),
            "gelu" => Ok(Self::Gelu),
            "relu" => Ok(Self::Relu),
            other => Err(ModelError::UnsupportedConfig(format!(
                "AutoencoderKL act_fn {other:?} (diffusers knows silu, swish, mish, gelu, relu)"
            ))),
        }
    }

    fn forward(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Silu => x.f_silu()?,
            Self::Mish => x.f_mish()?,
            Self::Gelu => x.f_gelu("none")?,
            Self::Relu => x.f_relu()?,
        })
    }
}

/// `nn.Conv2d` with bias.
pub(super) struct Conv2d {
    weight: Tensor,
    bias: Tensor,
    stride: i64,
    padding: i64,
}

impl Conv2d {
    pub(super) fn new(
        vb: &Vb<'_>,
        cin: i64,
        cout: i64,
        k: i64,
        stride: i64,
        padding: i64,
    ) -> Result<Self> {
        Ok(Self {
            weight: vb.get("weight", &[cout, cin, k, k])?,
            bias: vb.get("bias", &[cout])?,
            stride,
            padding,
        })
    }

    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let k = x.kind();
        Ok(x.f_conv2d(
            &cast(&self.weight, k)?,
            Some(&cast(&self.bias, k)?),
            [self.stride, self.stride],
            [self.padding, self.padding],
            [1, 1],
            1,
        )?)
    }
}

/// `nn.GroupNorm(groups, channels, eps=1e-6, affine=True)`.
struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: i64,
}

impl GroupNorm {
    fn new(vb: &Vb<'_>, channels: i64, groups: i64) -> Result<Self> {
        Ok(Self {
            weight: vb.get("weight", &[channels])?,
            bias: vb.get("bias", &[channels])?,
            groups,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let k = x.kind();
        Ok(x.f_group_norm(
            self.groups,
            Some(&cast(&self.weight, k)?),
            Some(&cast(&self.bias, k)?),
            EPS,
            true,
        )?)
    }
}

/// `nn.Linear` with bias.
struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn new(vb: &Vb<'_>, dim: i64) -> Result<Self> {
        Ok(Self {
            weight: vb.get("weight", &[dim, dim])?,
            bias: vb.get("bias", &[dim])?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let k = x.kind();
        Ok(x.f_linear(&cast(&self.weight, k)?, Some(&cast(&self.bias, k)?))?)
    }
}

/// `ResnetBlock2D` with `temb_channels=None`, `output_scale_factor=1`:
/// `shortcut(x) + conv2(act(norm2(conv1(act(norm1(x))))))`.
struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    act: Activation,
}

impl ResnetBlock {
    fn new(vb: &Vb<'_>, cin: i64, cout: i64, groups: i64, act: Activation) -> Result<Self> {
        Ok(Self {
            norm1: GroupNorm::new(&vb.pp("norm1"), cin, groups)?,
            conv1: Conv2d::new(&vb.pp("conv1"), cin, cout, 3, 1, 1)?,
            norm2: GroupNorm::new(&vb.pp("norm2"), cout, groups)?,
            conv2: Conv2d::new(&vb.pp("conv2"), cout, cout, 3, 1, 1)?,
            conv_shortcut: if cin != cout {
                Some(Conv2d::new(&vb.pp("conv_shortcut"), cin, cout, 1, 1, 0)?)
            } else {
                None
            },
            act,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.act.forward(&self.norm1.forward(x)?)?;
        let h = self.conv1.forward(&h)?;
        let h = self.act.forward(&self.norm2.forward(&h)?)?;
        let h = self.conv2.forward(&h)?;
        let skip = match &self.conv_shortcut {
            Some(c) => c.forward(x)?,
            None => x.shallow_clone(),
        };
        Ok(skip.f_add(&h)?)
    }
}

/// The mid block's `Attention(C, heads=1, dim_head=C, norm_num_groups=groups,
/// residual_connection=True, bias=True)` run by `AttnProcessor2_0`: group norm, one head over
/// the `H·W` positions with scale `1/√C`, `to_out.0`, plus the input; `rescale_output_factor`
/// is 1 in the VAE.
struct MidAttention {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
}

impl MidAttention {
    fn new(vb: &Vb<'_>, channels: i64, groups: i64) -> Result<Self> {
        Ok(Self {
            group_norm: GroupNorm::new(&vb.pp("group_norm"), channels, groups)?,
            to_q: Linear::new(&vb.pp("to_q"), channels)?,
            to_k: Linear::new(&vb.pp("to_k"), channels)?,
            to_v: Linear::new(&vb.pp("to_v"), channels)?,
            to_out: Linear::new(&vb.pp("to_out").pp(0), channels)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let s = x.size();
        let (b, c, h, w) = (s[0], s[1], s[2], s[3]);
        // [B, C, H·W] normed per group, then tokens [B, H·W, C] (diffusers norms after the
        // transpose back, which is the same GroupNorm).
        let tokens = self
            .group_norm
            .forward(x)?
            .f_view([b, c, h * w])?
            .f_transpose(1, 2)?;
        let heads = |t: Tensor| -> Result<Tensor> { Ok(t.f_unsqueeze(1)?) };
        let q = heads(self.to_q.forward(&tokens)?)?;
        let k = heads(self.to_k.forward(&tokens)?)?;
        let v = heads(self.to_v.forward(&tokens)?)?;
        let o = attention(&q, &k, &v, None, None)?.f_squeeze_dim(1)?;
        let o = self
            .to_out
            .forward(&o)?
            .f_transpose(-1, -2)?
            .f_reshape([b, c, h, w])?;
        Ok(o.f_add(x)?)
    }
}

/// `UNetMidBlock2D(num_layers=1)`: resnet, [attention], resnet.
struct MidBlock {
    resnets: [ResnetBlock; 2],
    attention: Option<MidAttention>,
}

impl MidBlock {
    fn new(vb: &Vb<'_>, channels: i64, cfg: &AutoencoderKlConfig, act: Activation) -> Result<Self> {
        let g = cfg.norm_num_groups;
        let r = |j: i64| ResnetBlock::new(&vb.pp("resnets").pp(j), channels, channels, g, act);
        Ok(Self {
            resnets: [r(0)?, r(1)?],
            attention: if cfg.mid_block_add_attention {
                Some(MidAttention::new(&vb.pp("attentions").pp(0), channels, g)?)
            } else {
                None
            },
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.resnets[0].forward(x)?;
        if let Some(a) = &self.attention {
            h = a.forward(&h)?;
        }
        self.resnets[1].forward(&h)
    }
}

/// A down (encoder) or up (decoder) block: its resnets, then the resampling conv if any.
struct Block {
    resnets: Vec<ResnetBlock>,
    resample: Option<Conv2d>,
}

fn resnets(
    vb: &Vb<'_>,
    n: i64,
    cin: i64,
    cout: i64,
    groups: i64,
    act: Activation,
) -> Result<Vec<ResnetBlock>> {
    (0..n)
        .map(|j| {
            let c = if j == 0 { cin } else { cout };
            ResnetBlock::new(&vb.pp("resnets").pp(j), c, cout, groups, act)
        })
        .collect()
}

pub(super) struct Encoder {
    conv_in: Conv2d,
    down_blocks: Vec<Block>,
    mid_block: MidBlock,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    act: Activation,
}

impl Encoder {
    /// diffusers' `Encoder(double_z=True)`: `conv_out` gives the mean and log-variance.
    pub(super) fn new(vb: &Vb<'_>, cfg: &AutoencoderKlConfig, act: Activation) -> Result<Self> {
        let bo = &cfg.block_out_channels;
        let g = cfg.norm_num_groups;
        let last = bo[bo.len() - 1];
        let mut out = bo[0];
        let mut down_blocks = Vec::with_capacity(bo.len());
        for (i, &c) in bo.iter().enumerate() {
            let cin = out;
            out = c;
            let b = vb.pp("down_blocks").pp(i);
            down_blocks.push(Block {
                resnets: resnets(&b, cfg.layers_per_block, cin, out, g, act)?,
                // Downsample2D(padding=0): the pad (0, 1, 0, 1) happens in forward.
                resample: if i + 1 < bo.len() {
                    Some(Conv2d::new(
                        &b.pp("downsamplers").pp(0).pp("conv"),
                        out,
                        out,
                        3,
                        2,
                        0,
                    )?)
                } else {
                    None
                },
            });
        }
        Ok(Self {
            conv_in: Conv2d::new(&vb.pp("conv_in"), cfg.in_channels, bo[0], 3, 1, 1)?,
            down_blocks,
            mid_block: MidBlock::new(&vb.pp("mid_block"), last, cfg, act)?,
            conv_norm_out: GroupNorm::new(&vb.pp("conv_norm_out"), last, g)?,
            conv_out: Conv2d::new(&vb.pp("conv_out"), last, 2 * cfg.latent_channels, 3, 1, 1)?,
            act,
        })
    }

    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(x)?;
        for b in &self.down_blocks {
            for r in &b.resnets {
                h = r.forward(&h)?;
            }
            if let Some(conv) = &b.resample {
                h = conv.forward(&h.f_constant_pad_nd([0, 1, 0, 1])?)?;
            }
        }
        h = self.mid_block.forward(&h)?;
        let h = self.act.forward(&self.conv_norm_out.forward(&h)?)?;
        self.conv_out.forward(&h)
    }
}

pub(super) struct Decoder {
    conv_in: Conv2d,
    mid_block: MidBlock,
    up_blocks: Vec<Block>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    act: Activation,
}

impl Decoder {
    /// diffusers' `Decoder(norm_type="group")`: up blocks of `layers_per_block + 1` resnets over
    /// the reversed channel list.
    pub(super) fn new(vb: &Vb<'_>, cfg: &AutoencoderKlConfig, act: Activation) -> Result<Self> {
        let bo: Vec<i64> = cfg.block_out_channels.iter().rev().copied().collect();
        let g = cfg.norm_num_groups;
        let mut out = bo[0];
        let mut up_blocks = Vec::with_capacity(bo.len());
        for (i, &c) in bo.iter().enumerate() {
            let cin = out;
            out = c;
            let b = vb.pp("up_blocks").pp(i);
            up_blocks.push(Block {
                resnets: resnets(&b, cfg.layers_per_block + 1, cin, out, g, act)?,
                resample: if i + 1 < bo.len() {
                    Some(Conv2d::new(
                        &b.pp("upsamplers").pp(0).pp("conv"),
                        out,
                        out,
                        3,
                        1,
                        1,
                    )?)
                } else {
                    None
                },
            });
        }
        let first = cfg.block_out_channels[0];
        Ok(Self {
            conv_in: Conv2d::new(&vb.pp("conv_in"), cfg.latent_channels, bo[0], 3, 1, 1)?,
            mid_block: MidBlock::new(&vb.pp("mid_block"), bo[0], cfg, act)?,
            up_blocks,
            conv_norm_out: GroupNorm::new(&vb.pp("conv_norm_out"), first, g)?,
            conv_out: Conv2d::new(&vb.pp("conv_out"), first, cfg.out_channels, 3, 1, 1)?,
            act,
        })
    }

    pub(super) fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(z)?;
        h = self.mid_block.forward(&h)?;
        for b in &self.up_blocks {
            for r in &b.resnets {
                h = r.forward(&h)?;
            }
            if let Some(conv) = &b.resample {
                let s = h.size();
                let up = h.f_upsample_nearest2d([s[2] * 2, s[3] * 2], 2.0, 2.0)?;
                h = conv.forward(&up)?;
            }
        }
        let h = self.act.forward(&self.conv_norm_out.forward(&h)?)?;
        self.conv_out.forward(&h)
    }
}
