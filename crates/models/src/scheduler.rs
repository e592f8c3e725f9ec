//! `FlowMatchEulerDiscreteScheduler` as diffusers 0.42 runs it for LTX-Video: sigmas from the
//! pipeline, exponential dynamic shift (or a fixed shift), optional stretch to a terminal
//! sigma, timesteps = σ·1000, a final σ = 0, and the Euler step `x + (σ_next − σ)·v`.
//! Sigma arithmetic is float32, as numpy does it in diffusers.

use serde::Deserialize;
use tch::{Kind, Tensor};

use crate::{ModelError, Result};

/// `scheduler/scheduler_config.json` (fields the LTX pipelines use; others are ignored).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct FlowMatchConfig {
    pub num_train_timesteps: usize,
    pub shift: f64,
    pub use_dynamic_shifting: bool,
    pub base_shift: f64,
    pub max_shift: f64,
    pub base_image_seq_len: usize,
    pub max_image_seq_len: usize,
    pub shift_terminal: Option<f64>,
    pub invert_sigmas: bool,
    pub use_karras_sigmas: bool,
    pub use_exponential_sigmas: bool,
    pub use_beta_sigmas: bool,
    pub time_shift_type: String,
    pub stochastic_sampling: bool,
}

impl Default for FlowMatchConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            shift: 1.0,
            use_dynamic_shifting: false,
            base_shift: 0.5,
            max_shift: 1.15,
            base_image_seq_len: 256,
            max_image_seq_len: 4096,
            shift_terminal: None,
            invert_sigmas: false,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            time_shift_type: "exponential".into(),
            stochastic_sampling: false,
        }
    }
}

impl FlowMatchConfig {
    /// Rejects the options LTX configs never set and this implementation does not support.
    pub fn validate(&self) -> Result<()> {
        let unsupported = [
            (self.invert_sigmas, "invert_sigmas"),
            (self.use_karras_sigmas, "use_karras_sigmas"),
            (self.use_exponential_sigmas, "use_exponential_sigmas"),
            (self.use_beta_sigmas, "use_beta_sigmas"),
            (self.stochastic_sampling, "stochastic_sampling"),
            (
                self.time_shift_type != "exponential",
                "time_shift_type other than exponential",
            ),
        ];
        match unsupported.iter().find(|(on, _)| *on) {
            Some((_, name)) => Err(ModelError::UnsupportedConfig(format!(
                "FlowMatchEulerDiscreteScheduler with {name}"
            ))),
            None => Ok(()),
        }
    }

    /// The pipeline's `calculate_shift`: linear in the token count, not clamped.
    pub fn mu(&self, image_seq_len: usize) -> f64 {
        let m = (self.max_shift - self.base_shift)
            / (self.max_image_seq_len as f64 - self.base_image_seq_len as f64);
        let b = self.base_shift - m * self.base_image_seq_len as f64;
        image_seq_len as f64 * m + b
    }
}

/// The schedule of one generation: `sigmas` has one more entry (0) than `timesteps`.
#[derive(Debug, Clone)]
pub struct FlowMatchSchedule {
    pub sigmas: Vec<f32>,
    pub timesteps: Vec<f32>,
}

impl FlowMatchSchedule {
    /// The LTX image-to-video schedule for `steps` steps over `image_seq_len` latent tokens:
    /// `sigmas = linspace(1, 1/N, N)`, shifted and stretched as configured.
    pub fn ltx(config: &FlowMatchConfig, steps: usize, image_seq_len: usize) -> Result<Self> {
        config.validate()?;
        if steps == 0 {
            return Err(ModelError::InvalidInput(
                "the number of inference steps must be at least 1".into(),
            ));
        }
        // np.linspace(1.0, 1/N, N) in float64 (i·step + start, the last value exactly 1/N),
        // then cast to float32 by set_timesteps.
        let n = steps as f64;
        let step = if steps > 1 {
            (1.0 / n - 1.0) / (n - 1.0)
        } else {
            0.0
        };
        let mut sigmas: Vec<f32> = (0..steps)
            .map(|i| {
                let x = if i + 1 == steps {
                    1.0 / n
                } else {
                    i as f64 * step + 1.0
                };
                x as f32
            })
            .collect();
        if config.use_dynamic_shifting {
            let e = config.mu(image_seq_len).exp() as f32;
            for s in &mut sigmas {
                *s = e / (e + (1.0 / *s - 1.0));
            }
        } else {
            let shift = config.shift as f32;
            for s in &mut sigmas {
                *s = shift * *s / (1.0 + (shift - 1.0) * *s);
            }
        }
        if let Some(terminal) = config.shift_terminal.filter(|t| *t != 0.0) {
            let last = 1.0 - sigmas[steps - 1];
            if last == 0.0 {
                // diffusers divides by zero here and denoises with NaN sigmas.
                return Err(ModelError::InvalidInput(format!(
                    "{steps} step(s) with shift_terminal {terminal}: the schedule ends at sigma 1, \
                     so it cannot be stretched to the terminal value; use at least 2 steps"
                )));
            }
            let scale = last / (1.0 - terminal as f32);
            for s in &mut sigmas {
                *s = 1.0 - (1.0 - *s) / scale;
            }
        }
        let train = config.num_train_timesteps as f32;
        let timesteps = sigmas.iter().map(|s| s * train).collect();
        sigmas.push(0.0);
        Ok(Self { sigmas, timesteps })
    }

    /// The Euler step from step `i` to `i + 1`: `x + (σ_{i+1} − σ_i)·v`, in float32, returned in
    /// `v`'s dtype as diffusers does.
    pub fn step(&self, i: usize, v: &Tensor, x: &Tensor) -> Result<Tensor> {
        let (Some(s), Some(next)) = (self.sigmas.get(i), self.sigmas.get(i + 1)) else {
            return Err(ModelError::InvalidInput(format!(
                "step {i} is past the end of a {}-step schedule",
                self.timesteps.len()
            )));
        };
        let x = x.f_to_kind(Kind::Float)?;
        let dt = f64::from(*next - *s);
        Ok((x + v.f_to_kind(Kind::Float)? * dt).f_to_kind(v.kind())?)
    }
}

/// diffusers' `linear_quadratic_schedule(n, threshold_noise=0.025)` (LTXConditionPipeline's
/// default sigmas), computed in doubles like Python and returned as float32 like
/// `torch.tensor`: `n/2` linear steps down to 1 − 0.025, then a quadratic to 0 (the last
/// value, 0, is dropped); `[1.0]` for fewer than 2 steps.
pub fn linear_quadratic_schedule(n: usize) -> Vec<f32> {
    if n < 2 {
        return vec![1.0];
    }
    let threshold = 0.025f64;
    let l = n / 2;
    let (lf, nf) = (l as f64, n as f64);
    let diff = lf - threshold * nf;
    let q = (n - l) as f64;
    let qc = diff / (lf * q * q);
    let lc = threshold / lf - 2.0 * diff / (q * q);
    let c = qc * (lf * lf);
    let lin = (0..l).map(|i| i as f64 * threshold / lf);
    let quad = (l..n).map(|i| {
        let i = i as f64;
        qc * (i * i) + lc * i + c
    });
    lin.chain(quad).map(|x| (1.0 - x) as f32).collect()
}

/// `LTXConditionPipeline`'s schedule (diffusers 0.42.1, `../shared/specs/ltx-condition.md`
/// §2.5): the given timesteps (default: the linear-quadratic sigmas × 1000) kept as they are,
/// the scheduler's sigmas `t/1000` shifted and stretched as configured with a terminal 0, then
/// the first steps dropped for `denoise_strength < 1`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConditionSchedule {
    /// The scheduler's sigmas, all of them (terminal 0 included): the per-token step looks
    /// for the next sigma here, not in the trimmed list.
    pub sigmas: Vec<f32>,
    /// The timesteps the denoising loop runs, after the trim.
    pub timesteps: Vec<f32>,
    /// With `denoise_strength < 1`: the first kept sigma, the noise level given latents are
    /// mixed to before the loop.
    pub latent_sigma: Option<f32>,
}

impl ConditionSchedule {
    pub fn new(
        config: &FlowMatchConfig,
        steps: usize,
        timesteps: Option<&[f64]>,
        denoise_strength: f64,
    ) -> Result<Self> {
        config.validate()?;
        if config.use_dynamic_shifting {
            return Err(ModelError::UnsupportedConfig(
                "LTXConditionPipeline with use_dynamic_shifting: diffusers needs mu, which this \
                 pipeline never passes (set use_dynamic_shifting to false)"
                    .into(),
            ));
        }
        if !(0.0..=1.0).contains(&denoise_strength) {
            return Err(ModelError::InvalidInput(format!(
                "denoise_strength must be in [0, 1], got {denoise_strength}"
            )));
        }
        let train = config.num_train_timesteps as f32;
        let given: Vec<f32> = match timesteps {
            Some([]) => {
                return Err(ModelError::InvalidInput(
                    "a custom timesteps list needs at least one value".into(),
                ))
            }
            Some(t) => t.iter().map(|&v| v as f32).collect(),
            None if steps == 0 => {
                return Err(ModelError::InvalidInput(
                    "the number of inference steps must be at least 1".into(),
                ))
            }
            None => linear_quadratic_schedule(steps)
                .into_iter()
                .map(|s| s * 1000.0)
                .collect(),
        };
        let n = given.len();
        let shift = config.shift as f32;
        let mut sigmas: Vec<f32> = given
            .iter()
            .map(|t| {
                let s = t / train;
                shift * s / (1.0 + (shift - 1.0) * s)
            })
            .collect();
        if let Some(terminal) = config.shift_terminal.filter(|t| *t != 0.0) {
            let last = 1.0 - sigmas[n - 1];
            let scale = last / (1.0 - terminal as f32);
            if scale == 0.0 {
                return Err(ModelError::InvalidInput(format!(
                    "shift_terminal {terminal}: the schedule ends at sigma 1 and cannot be stretched"
                )));
            }
            for s in &mut sigmas {
                *s = 1.0 - (1.0 - *s) / scale;
            }
        }
        sigmas.push(0.0);
        let (start, latent_sigma) = if denoise_strength < 1.0 {
            let keep = ((n as f64 * denoise_strength) as usize).min(n);
            let start = n - keep;
            (start, sigmas.get(start).copied())
        } else {
            (0, None)
        };
        Ok(Self {
            timesteps: given[start..].to_vec(),
            sigmas,
            latent_sigma,
        })
    }

    /// The per-token Euler step (`step(-v, t, x, per_token_timesteps=tt)`): each token moves
    /// from `σ = tt/1000` to the largest scheduler sigma below `σ − 1e-6` (0 if none),
    /// `x + (σ − σ_next)·(−v)`, in float32 and left there. `tt` is `[B, S]` or `[B, 1]`.
    pub fn step_per_token(&self, tt: &Tensor, v: &Tensor, x: &Tensor) -> Result<Tensor> {
        let dev = x.device();
        let sigmas = Tensor::from_slice(&self.sigmas)
            .f_to_device(dev)?
            .f_view([-1, 1, 1])?;
        let cur = tt.f_to_kind(Kind::Float)? / 1000.0;
        let lower = sigmas.f_lt_tensor(&(cur.f_unsqueeze(0)? - 1e-6))?;
        let (next, _) = (lower.f_to_kind(Kind::Float)? * &sigmas).f_max_dim(0, false)?;
        let dt = (cur - next).f_unsqueeze(-1)?;
        let x = x.f_to_kind(Kind::Float)?;
        Ok(x + dt * v.f_neg()?)
    }
}
