//! Small PyTorch modules the SDXL networks are made of (`nn.Conv2d`, `nn.GroupNorm`,
//! `nn.LayerNorm`, diffusers' `Timesteps` / `TimestepEmbedding`), and the hook calls around
//! the streaming units.

use std::cell::Cell;

use tch::{Kind, Tensor};

use crate::hooks::BlockHooks;
use crate::nn::Linear;
use crate::weights::Vb;
use crate::{ModelError, Result};

/// `nn.Conv2d` with square kernel, stride and padding.
pub(crate) struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: i64,
    padding: i64,
}

impl Conv2d {
    pub fn new(
        vb: &Vb<'_>,
        cin: i64,
        cout: i64,
        kernel: i64,
        stride: i64,
        padding: i64,
    ) -> Result<Self> {
        Ok(Self {
            weight: vb.get("weight", &[cout, cin, kernel, kernel])?,
            bias: Some(vb.get("bias", &[cout])?),
            stride,
            padding,
        })
    }

    /// Kernel `k`, stride 1, "same" padding.
    pub fn device(&self) -> tch::Device {
        self.weight.device()
    }

    pub fn same(vb: &Vb<'_>, cin: i64, cout: i64, k: i64) -> Result<Self> {
        Self::new(vb, cin, cout, k, 1, (k - 1) / 2)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (s, p) = (self.stride, self.padding);
        Ok(x.f_conv2d(&self.weight, self.bias.as_ref(), [s, s], [p, p], [1, 1], 1)?)
    }
}

/// `nn.GroupNorm` with affine parameters.
pub(crate) struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: i64,
    eps: f64,
}

impl GroupNorm {
    pub fn new(vb: &Vb<'_>, groups: i64, channels: i64, eps: f64) -> Result<Self> {
        if groups <= 0 || channels % groups != 0 {
            return Err(ModelError::UnsupportedConfig(format!(
                "GroupNorm: {channels} channels do not split into {groups} groups"
            )));
        }
        Ok(Self {
            weight: vb.get("weight", &[channels])?,
            bias: vb.get("bias", &[channels])?,
            groups,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_group_norm(
            self.groups,
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            true,
        )?)
    }
}

/// `nn.LayerNorm` over the last axis, with affine parameters.
pub(crate) struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    dim: i64,
    eps: f64,
}

impl LayerNorm {
    pub fn new(vb: &Vb<'_>, dim: i64, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get("weight", &[dim])?,
            bias: vb.get("bias", &[dim])?,
            dim,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_layer_norm(
            [self.dim],
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            true,
        )?)
    }
}

/// diffusers' `get_timestep_embedding(t, dim, flip_sin_to_cos, downscale_freq_shift)` for 1-D
/// `t`: `[sin, cos]` of `t·exp(−ln(10⁴)·k/(dim/2 − shift))` (`[cos, sin]` when flipped), zero
/// padded to an odd `dim`; float32, with diffusers' operation order so rounding matches.
pub(crate) fn sinusoid(t: &Tensor, dim: i64, flip_sin_to_cos: bool, shift: f64) -> Result<Tensor> {
    let half = dim / 2;
    let k = Tensor::f_arange(half, (Kind::Float, t.device()))?;
    let freqs = ((k * -(10000f64.ln())) / (half as f64 - shift)).f_exp()?;
    let args = t.f_to_kind(Kind::Float)?.f_unsqueeze(-1)? * freqs.f_unsqueeze(0)?;
    let (sin, cos) = (args.f_sin()?, args.f_cos()?);
    let mut emb = if flip_sin_to_cos {
        Tensor::f_cat(&[cos, sin], -1)?
    } else {
        Tensor::f_cat(&[sin, cos], -1)?
    };
    if dim % 2 == 1 {
        emb = emb.f_constant_pad_nd([0, 1])?;
    }
    Ok(emb)
}

/// diffusers' `TimestepEmbedding` as SDXL uses it: `linear_2(silu(linear_1(x)))`.
pub(crate) struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    pub fn new(vb: &Vb<'_>, input_dim: i64, dim: i64) -> Result<Self> {
        Ok(Self {
            linear_1: Linear::new(&vb.pp("linear_1"), input_dim, dim, true)?,
            linear_2: Linear::new(&vb.pp("linear_2"), dim, dim, true)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.linear_2.forward(&self.linear_1.forward(x)?.f_silu()?)
    }
}

/// Numbers the streaming units of one forward pass in call order and calls the hooks (if any)
/// around each.
pub(crate) struct Stream<'a> {
    hooks: Option<&'a dyn BlockHooks>,
    next: Cell<usize>,
}

impl<'a> Stream<'a> {
    pub fn new(hooks: Option<&'a dyn BlockHooks>) -> Self {
        Self {
            hooks,
            next: Cell::new(0),
        }
    }

    pub fn unit<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let i = self.next.get();
        self.next.set(i + 1);
        if let Some(h) = self.hooks {
            h.before(i)?;
        }
        let out = f()?;
        if let Some(h) = self.hooks {
            h.after(i)?;
        }
        Ok(out)
    }
}
