//! diffusers' `ResnetBlock2D` (`models/resnet.py`, `time_embedding_norm="default"`),
//! `Downsample2D` and `Upsample2D` with convolutions.

use tch::Tensor;

use super::layers::{Conv2d, GroupNorm};
use super::layout::Norms;
use crate::nn::Linear;
use crate::weights::Vb;
use crate::Result;

/// The time embedding as each resnet takes it: `silu(emb)`, or `emb` itself with
/// `resnet_skip_time_act`.
pub(crate) struct TimeInput {
    pub emb: Tensor,
    pub act: Tensor,
}

/// `norm1 → SiLU → conv1 → + time_emb_proj(silu(temb)) → norm2 → SiLU → conv2`, plus the
/// (1×1-projected if the width changes) input, over `output_scale_factor`.
pub(crate) struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    output_scale: f64,
    skip_time_act: bool,
}

impl ResnetBlock2D {
    pub fn new(vb: &Vb<'_>, cin: i64, cout: i64, norms: &Norms, output_scale: f64) -> Result<Self> {
        Ok(Self {
            norm1: GroupNorm::new(&vb.pp("norm1"), norms.groups, cin, norms.eps)?,
            conv1: Conv2d::same(&vb.pp("conv1"), cin, cout, 3)?,
            time_emb_proj: Linear::new(&vb.pp("time_emb_proj"), norms.temb_dim, cout, true)?,
            norm2: GroupNorm::new(&vb.pp("norm2"), norms.groups, cout, norms.eps)?,
            conv2: Conv2d::same(&vb.pp("conv2"), cout, cout, 3)?,
            conv_shortcut: if cin != cout {
                Some(Conv2d::same(&vb.pp("conv_shortcut"), cin, cout, 1)?)
            } else {
                None
            },
            output_scale,
            skip_time_act: norms.skip_time_act,
        })
    }

    pub fn forward(&self, x: &Tensor, temb: &TimeInput) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward(x)?.f_silu()?)?;
        let t = if self.skip_time_act {
            &temb.emb
        } else {
            &temb.act
        };
        let t = self
            .time_emb_proj
            .forward(t)?
            .f_unsqueeze(-1)?
            .f_unsqueeze(-1)?;
        let h = self.norm2.forward(&(h + t))?.f_silu()?;
        let h = self.conv2.forward(&h)?;
        let skip = match &self.conv_shortcut {
            Some(c) => c.forward(x)?,
            None => x.shallow_clone(),
        };
        let out = skip + h;
        Ok(if self.output_scale != 1.0 {
            out / self.output_scale
        } else {
            out
        })
    }
}

/// `Downsample2D(use_conv=True)`: 3×3 stride-2 convolution `downsamplers.0.conv`; with
/// `downsample_padding` 0, padded by one on the right and bottom first, as diffusers does.
pub(crate) struct Downsample2D {
    conv: Conv2d,
    pad_right: bool,
}

impl Downsample2D {
    pub fn new(vb: &Vb<'_>, channels: i64, padding: i64) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::new(&vb.pp("conv"), channels, channels, 3, 2, padding)?,
            pad_right: padding == 0,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.pad_right {
            self.conv.forward(&x.f_constant_pad_nd([0, 1, 0, 1])?)
        } else {
            self.conv.forward(x)
        }
    }
}

/// `Upsample2D(use_conv=True)`: nearest-neighbour resize, then the 3×3 `upsamplers.0.conv`.
pub(crate) struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    pub fn new(vb: &Vb<'_>, channels: i64) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::same(&vb.pp("conv"), channels, channels, 3)?,
        })
    }

    /// To `size` (the next skip tensor's height and width) or, without one, twice the size.
    /// Nearest with an explicit twice-the-size equals diffusers' `scale_factor=2`.
    pub fn forward(&self, x: &Tensor, size: Option<[i64; 2]>) -> Result<Tensor> {
        let s = x.size();
        let size = size.unwrap_or([s[2] * 2, s[3] * 2]);
        let up = x.f_upsample_nearest2d(size, None, None)?;
        self.conv.forward(&up)
    }
}
