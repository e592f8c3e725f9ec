//! Small building blocks shared by the models, each matching its PyTorch counterpart.

use tch::{Kind, Tensor};

use crate::weights::Vb;
use crate::Result;

/// `torch.nn.Linear`: `weight [out, in]`, optional `bias [out]`.
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(vb: &Vb<'_>, in_dim: i64, out_dim: i64, bias: bool) -> Result<Self> {
        Ok(Self {
            weight: vb.get("weight", &[out_dim, in_dim])?,
            bias: if bias {
                Some(vb.get("bias", &[out_dim])?)
            } else {
                None
            },
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_linear(&self.weight, self.bias.as_ref())?)
    }
}

/// diffusers' `RMSNorm` without weight: the variance in float32, the result in `x`'s dtype.
pub fn rms_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    let var = x
        .f_to_kind(Kind::Float)?
        .f_pow_tensor_scalar(2)?
        .f_mean_dim(-1, true, None::<Kind>)?;
    Ok((x * var.f_add_scalar(eps)?.f_rsqrt()?).f_to_kind(x.kind())?)
}

/// `torch.nn.RMSNorm(dim, eps)` with its weight.
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn new(vb: &Vb<'_>, dim: i64, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get("weight", &[dim])?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(rms_norm(x, self.eps)? * &self.weight)
    }
}

/// GELU with the tanh approximation (`gelu-approximate`, `gelu_new`).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    Ok(x.f_gelu("tanh")?)
}

/// diffusers' `get_timestep_embedding(t, dim, flip_sin_to_cos=True, downscale_freq_shift=0)`:
/// `[cos(t·f), sin(t·f)]` with `f_k = exp(−ln(10000)·k/(dim/2))`, in float32.
pub fn timestep_embedding(t: &Tensor, dim: i64) -> Result<Tensor> {
    let half = dim / 2;
    let k = Tensor::f_arange(half, (Kind::Float, t.device()))?;
    // Same operation order as diffusers (scale, then divide), so float32 rounding matches.
    let freqs = ((k * -(10000f64.ln())) / half as f64).f_exp()?;
    let args = t.f_to_kind(Kind::Float)?.f_unsqueeze(-1)? * freqs.f_unsqueeze(0)?;
    Ok(Tensor::f_cat(&[args.f_cos()?, args.f_sin()?], -1)?)
}

/// A VAE's posterior, diffusers' `DiagonalGaussianDistribution`: `mean` and `logvar` (the
/// encoders clamp it to [-30, 20]), `[B, latent, …]` for images and videos alike.
pub struct Posterior {
    pub mean: Tensor,
    pub logvar: Tensor,
}

impl Posterior {
    /// `exp(0.5 · logvar)`.
    pub fn std(&self) -> Result<Tensor> {
        Ok((&self.logvar * 0.5).f_exp()?)
    }

    /// The distribution's mode, its mean (diffusers' `latent_dist.mode()`).
    pub fn mode(&self) -> Tensor {
        self.mean.shallow_clone()
    }

    /// `mean + std · ε`, `ε` drawn from `rng` (on its device) in the posterior's dtype, then
    /// moved to the posterior's device. With a CPU generator seeded with `s` this equals
    /// diffusers' `latent_dist.sample(generator=torch.Generator("cpu").manual_seed(s))` on any
    /// device: `randn_tensor` draws on the CPU for a CPU generator. A CUDA generator draws
    /// other numbers, in diffusers as here.
    pub fn sample(&self, rng: &mut ltx_gpu::rng::Generator) -> Result<Tensor> {
        let noise = rng.randn_to(&self.mean.size(), self.mean.kind(), self.mean.device())?;
        Ok(self.mean.f_add(&self.std()?.f_mul(&noise)?)?)
    }
}
