//! What the SDXL schedulers share, ported from diffusers 0.42.1 with its number types:
//! - the training noise schedule (betas → `alphas_cumprod` → sigmas) is computed by libtorch in
//!   float32, exactly as diffusers does it, so it is bit-identical on the same machine;
//! - the inference timesteps and sigmas follow numpy in float64 (`linspace`, `arange`, `round`
//!   half to even, `interp`, `_sigma_to_t`, the Karras and exponential ramps), then float32;
//! - the per-step coefficients are float32 scalars, as diffusers' 0-d tensors are; their `sqrt`,
//!   `log` and `exp` go through libtorch ([`sqrt32`], [`ln32`], [`exp32`]) because its
//!   vectorised kernels differ from libm's (and from IEEE `sqrt`) in the last bit.

use serde::{Deserialize, Deserializer};
use tch::{Device, Kind, Tensor};

use crate::{ModelError, Result};

/// The random draws of a step: a standard normal tensor of this shape and dtype, on the CPU, from
/// the job's seeded generator (`Tensor::randn(shape, (kind, Device::Cpu))` after
/// `tch::manual_seed(seed)` reproduces diffusers' `torch.Generator("cpu").manual_seed(seed)`).
/// The scheduler moves it to the sample's device, as diffusers' `randn_tensor` does.
pub type Noise<'a> = dyn FnMut(&[i64], Kind) -> Result<Tensor> + 'a;

/// `beta_schedule`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum BetaSchedule {
    #[serde(rename = "linear")]
    Linear,
    #[serde(rename = "scaled_linear")]
    ScaledLinear,
    #[serde(rename = "squaredcos_cap_v2")]
    SquaredcosCapV2,
}

/// `timestep_spacing` (Table 2 of "Common Diffusion Noise Schedules and Sample Steps are Flawed").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimestepSpacing {
    Linspace,
    Leading,
    Trailing,
}

/// `prediction_type`: what the UNet predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum PredictionType {
    #[serde(rename = "epsilon")]
    Epsilon,
    #[serde(rename = "v_prediction")]
    VPrediction,
    #[serde(rename = "sample", alias = "original_sample")]
    Sample,
    /// Accepted by DPMSolver's config but only meaningful with flow sigmas, which are not
    /// supported: rejected at load.
    #[serde(rename = "flow_prediction")]
    FlowPrediction,
}

/// `final_sigmas_type`: the sigma after the last step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum FinalSigmas {
    #[serde(rename = "zero")]
    Zero,
    #[serde(rename = "sigma_min")]
    SigmaMin,
}

/// A JSON `null` where diffusers accepts `None` (e.g. `"use_karras_sigmas": null`) reads as the
/// default, as Python's truthiness does.
pub fn null_as_default<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The fields of a scheduler config that define its training noise schedule.
#[derive(Debug, Clone, Copy)]
pub struct BetaParams<'a> {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub trained_betas: Option<&'a [f64]>,
    pub rescale_betas_zero_snr: bool,
}

/// The training schedule in float32: `alphas_cumprod[t]` and `sigmas[t] = √((1 − ᾱ)/ᾱ)`,
/// t ascending.
#[derive(Debug, Clone)]
pub struct TrainSchedule {
    pub alphas_cumprod: Vec<f32>,
    pub sigmas: Vec<f32>,
}

impl TrainSchedule {
    /// `__init__`'s betas and `alphas_cumprod`. `floor_last` applies the `2**-24` diffusers puts
    /// in the last `alphas_cumprod` after a zero-terminal-SNR rescale (Euler, Euler ancestral
    /// and DPMSolver do, DDIM does not).
    pub fn new(p: &BetaParams, floor_last: bool) -> Result<Self> {
        let n = p.num_train_timesteps;
        if n < 2 {
            return Err(ModelError::UnsupportedConfig(format!(
                "num_train_timesteps must be at least 2, got {n}"
            )));
        }
        let cpu = (Kind::Float, Device::Cpu);
        let betas = match p.trained_betas {
            Some(b) if b.len() != n => {
                return Err(ModelError::UnsupportedConfig(format!(
                    "trained_betas has {} values but num_train_timesteps is {n}",
                    b.len()
                )))
            }
            Some(b) => Tensor::f_from_slice(&b.iter().map(|&v| v as f32).collect::<Vec<_>>())?,
            None => match p.beta_schedule {
                BetaSchedule::Linear => {
                    Tensor::f_linspace(p.beta_start, p.beta_end, n as i64, cpu)?
                }
                BetaSchedule::ScaledLinear => {
                    Tensor::f_linspace(p.beta_start.powf(0.5), p.beta_end.powf(0.5), n as i64, cpu)?
                        .f_pow_tensor_scalar(2)?
                }
                BetaSchedule::SquaredcosCapV2 => {
                    Tensor::f_from_slice(&betas_for_alpha_bar_cosine(n))?
                }
            },
        };
        let betas = if p.rescale_betas_zero_snr {
            rescale_zero_terminal_snr(&betas)?
        } else {
            betas
        };
        let ac = betas.f_rsub_scalar(1.0)?.f_cumprod(0, Kind::Float)?;
        let mut alphas_cumprod = Vec::<f32>::try_from(&ac)?;
        if p.rescale_betas_zero_snr && floor_last {
            alphas_cumprod[n - 1] = 2f32.powi(-24);
        }
        let ac = Tensor::f_from_slice(&alphas_cumprod)?;
        let sigmas = ac
            .f_rsub_scalar(1.0)?
            .f_div(&ac)?
            .f_pow_tensor_scalar(0.5)?;
        Ok(Self {
            alphas_cumprod,
            sigmas: Vec::<f32>::try_from(&sigmas)?,
        })
    }

    /// `np.log(sigmas)` in float32 (numpy's SIMD logf may differ from this in the last bit).
    pub fn log_sigmas(&self) -> Vec<f32> {
        self.sigmas.iter().map(|s| s.ln()).collect()
    }
}

/// `betas_for_alpha_bar(n)` with the cosine transform, in doubles like Python, then float32.
fn betas_for_alpha_bar_cosine(n: usize) -> Vec<f32> {
    let alpha_bar = |t: f64| {
        ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
            .cos()
            .powf(2.0)
    };
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// `rescale_zero_terminal_snr` (arXiv 2305.08891, Algorithm 1), the same tensor ops in order.
fn rescale_zero_terminal_snr(betas: &Tensor) -> Result<Tensor> {
    let alphas_cumprod = betas.f_rsub_scalar(1.0)?.f_cumprod(0, Kind::Float)?;
    let sqrt = alphas_cumprod.f_sqrt()?;
    let first = sqrt.f_get(0)?;
    let last = sqrt.f_get(-1)?;
    let scale = first.f_div(&first.f_sub(&last)?)?;
    let sqrt = sqrt.f_sub(&last)?.f_mul(&scale)?;
    let bar = sqrt.f_pow_tensor_scalar(2)?;
    let n = bar.size()[0];
    let ratios = bar
        .f_narrow(0, 1, n - 1)?
        .f_div(&bar.f_narrow(0, 0, n - 1)?)?;
    let alphas = Tensor::f_cat(&[bar.f_narrow(0, 0, 1)?, ratios], 0)?;
    Ok(alphas.f_rsub_scalar(1.0)?)
}

/// `np.linspace(start, stop, num)` in float64: `i·step + start`, the last value exactly `stop`.
pub fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    let step = if num > 1 {
        (stop - start) / (num - 1) as f64
    } else {
        0.0
    };
    (0..num)
        .map(|i| {
            if num > 1 && i + 1 == num {
                stop
            } else {
                i as f64 * step + start
            }
        })
        .collect()
}

/// `np.arange(start, stop, step)` with float values: `ceil((stop − start)/step)` entries, the
/// first two `start` and `start + step`, the rest `start + i·((start + step) − start)` as numpy's
/// `fill` computes them (that length can exceed `round` expectations, e.g. 62 values for
/// `arange(1000, 0, -1000/61)`; diffusers inherits it).
pub fn arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil();
    if len.is_nan() || len <= 0.0 {
        return Vec::new();
    }
    let len = len as usize;
    let delta = (start + step) - start;
    (0..len)
        .map(|i| match i {
            0 => start,
            1 => start + step,
            _ => start + i as f64 * delta,
        })
        .collect()
}

/// `np.interp(x, arange(len(fp)), fp)` in float64, numpy's formula: `slope·(x − j) + fp[j]`,
/// exact at the knots, clamped outside.
pub fn interp(x: &[f64], fp: &[f32]) -> Vec<f64> {
    let last = fp.len() - 1;
    x.iter()
        .map(|&x| {
            if x.is_nan() {
                return x;
            }
            if x <= 0.0 {
                return f64::from(fp[0]);
            }
            if x >= last as f64 {
                return f64::from(fp[last]);
            }
            let j = x.floor() as usize;
            let (y0, y1) = (f64::from(fp[j]), f64::from(fp[j + 1]));
            if j as f64 == x {
                return y0;
            }
            // numpy divides by xp[j+1] − xp[j], which is 1 here.
            let slope = y1 - y0;
            let r = slope * (x - j as f64) + y0;
            if r.is_nan() {
                slope * (x - (j + 1) as f64) + y1
            } else {
                r
            }
        })
        .collect()
}

/// `_sigma_to_t`: the fractional training timestep of `sigma`, by linear interpolation in
/// log-sigma between the two neighbouring training sigmas (ascending `log_sigmas`).
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    // argmax of cumsum(dists >= 0): the last index whose log sigma is <= log_sigma, else 0.
    let low = log_sigmas
        .iter()
        .rposition(|&l| log_sigma - f64::from(l) >= 0.0)
        .unwrap_or(0)
        .min(log_sigmas.len() - 2);
    let (lo, hi) = (log_sigmas[low], log_sigmas[low + 1]);
    let w = ((f64::from(lo) - log_sigma) / f64::from(lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}

/// `_convert_to_karras` (rho 7) in float64.
pub fn karras(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let rho = 7.0;
    let min_inv = sigma_min.powf(1.0 / rho);
    let max_inv = sigma_max.powf(1.0 / rho);
    linspace(0.0, 1.0, n)
        .into_iter()
        .map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho))
        .collect()
}

/// `_convert_to_exponential` in float64: `exp(linspace(ln σ_max, ln σ_min, n))`.
pub fn exponential(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    linspace(sigma_max.ln(), sigma_min.ln(), n)
        .into_iter()
        .map(f64::exp)
        .collect()
}

/// numpy's `round` (half to even).
pub fn round(x: f64) -> f64 {
    x.round_ties_even()
}

/// The inference timesteps of Euler, Euler ancestral and DDIM for `timestep_spacing`, in
/// float64, before the cast each scheduler applies. `round_linspace` rounds the linspace values
/// (DDIM); Euler keeps them fractional.
pub fn spaced_timesteps(
    spacing: TimestepSpacing,
    n: usize,
    train: usize,
    steps_offset: i64,
    round_linspace: bool,
) -> Vec<f64> {
    match spacing {
        TimestepSpacing::Linspace => linspace(0.0, (train - 1) as f64, n)
            .into_iter()
            .rev()
            .map(|t| if round_linspace { round(t) } else { t })
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = train / n;
            (0..n)
                .rev()
                .map(|i| (i * ratio) as f64 + steps_offset as f64)
                .collect()
        }
        TimestepSpacing::Trailing => arange(train as f64, 0.0, -(train as f64 / n as f64))
            .into_iter()
            .map(|t| round(t) - 1.0)
            .collect(),
    }
}

/// DPMSolver's inference timesteps (before the int64 cast): `n + 1` points with the last
/// dropped for linspace and leading spacing, all from `last` (the clipped-lambda end, normally
/// `train`) except trailing's step `train/n`.
pub fn spaced_timesteps_dpm(
    spacing: TimestepSpacing,
    n: usize,
    train: usize,
    last: usize,
    steps_offset: i64,
) -> Vec<f64> {
    match spacing {
        TimestepSpacing::Linspace => linspace(0.0, last as f64 - 1.0, n + 1)
            .into_iter()
            .rev()
            .take(n)
            .map(round)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = last / (n + 1);
            (1..=n)
                .rev()
                .map(|i| (i * ratio) as f64 + steps_offset as f64)
                .collect()
        }
        TimestepSpacing::Trailing => arange(last as f64, 0.0, -(train as f64 / n as f64))
            .into_iter()
            .map(|t| round(t) - 1.0)
            .collect(),
    }
}

/// The number of inference steps must be at least 1 (diffusers divides by it).
pub fn check_steps(n: usize) -> Result<()> {
    if n == 0 {
        return Err(ModelError::InvalidInput(
            "the number of inference steps must be at least 1, got 0".into(),
        ));
    }
    Ok(())
}

/// The step index must name a step of the current schedule.
pub fn check_index(index: usize, steps: usize) -> Result<()> {
    if steps == 0 {
        return Err(ModelError::InvalidInput(
            "the scheduler has no timesteps: call set_timesteps first".into(),
        ));
    }
    if index >= steps {
        return Err(ModelError::InvalidInput(format!(
            "step index {index} is past the end of a {steps}-step schedule"
        )));
    }
    Ok(())
}

/// `c * x` for a leading float32 coefficient, as diffusers writes `sigma * model_output`: `c`
/// is a 0-d CPU tensor like diffusers' sigmas, so libtorch promotes as it does there (on the
/// CPU a leading coefficient is rounded to an fp16 operand's dtype, a trailing one is not).
pub fn cmul(c: f32, x: &Tensor) -> Result<Tensor> {
    Ok(scalar(c)?.f_mul(x)?)
}

/// `x * c` for a trailing float32 coefficient (see [`cmul`]).
pub fn mulc(x: &Tensor, c: f32) -> Result<Tensor> {
    Ok(x.f_mul(&scalar(c)?)?)
}

/// `x / c` for a float32 divisor (see [`cmul`]).
pub fn divc(x: &Tensor, c: f32) -> Result<Tensor> {
    Ok(x.f_div(&scalar(c)?)?)
}

fn scalar(c: f32) -> Result<Tensor> {
    Ok(Tensor::f_from_slice(&[c])?.f_reshape([0i64; 0])?)
}

/// `√x` of a float32 through libtorch, as diffusers' `t ** 0.5` / `torch.sqrt(t)` of a 0-d
/// tensor (libtorch's vectorised sqrt is not always correctly rounded).
pub fn sqrt32(x: f32) -> Result<f32> {
    unary32(x, Tensor::f_sqrt)
}

/// `ln x` of a float32 through libtorch, as diffusers' `torch.log` of a 0-d tensor.
pub fn ln32(x: f32) -> Result<f32> {
    unary32(x, Tensor::f_log)
}

/// `eˣ` of a float32 through libtorch, as diffusers' `torch.exp` of a 0-d tensor.
pub fn exp32(x: f32) -> Result<f32> {
    unary32(x, Tensor::f_exp)
}

fn unary32(x: f32, op: fn(&Tensor) -> std::result::Result<Tensor, tch::TchError>) -> Result<f32> {
    Ok(op(&Tensor::f_from_slice(&[x])?)?.f_double_value(&[0])? as f32)
}

/// One draw from `noise`, checked and moved to `like`'s device (diffusers' `randn_tensor` draws
/// on the CPU generator, then `.to(device)`).
pub fn draw(noise: &mut Noise, like: &Tensor, kind: Kind) -> Result<Tensor> {
    let shape = like.size();
    let n = noise(&shape, kind)?;
    if n.size() != shape || n.kind() != kind {
        return Err(ModelError::InvalidInput(format!(
            "the noise source returned {:?} {:?} for a request of {shape:?} {kind:?}",
            n.size(),
            n.kind()
        )));
    }
    Ok(n.f_to_device(like.device())?)
}
