//! `EulerDiscreteScheduler` (diffusers 0.42.1), SDXL base's scheduler: sigmas interpolated at
//! the spaced timesteps (or Karras / exponential ramps), a final sigma, the input scaled by
//! `1/√(σ²+1)` and the Euler step `x + (σ_{i+1} − σ_i)·(x − x̂₀)/σ_i`. The churn options of
//! `step` (`s_churn` and friends) stay at diffusers' defaults, which the pipelines never change,
//! so this scheduler draws no noise.

use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use super::common::{
    check_index, check_steps, cmul, divc, exponential, interp, karras, ln32, mulc, null_as_default,
    sigma_to_t, spaced_timesteps, sqrt32, BetaParams, BetaSchedule, FinalSigmas, PredictionType,
    TimestepSpacing, TrainSchedule,
};
use crate::{ModelError, Result};

/// `interpolation_type`: how sigmas between training timesteps are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Interpolation {
    #[serde(rename = "linear")]
    Linear,
    #[serde(rename = "log_linear")]
    LogLinear,
}

/// `timestep_type`: `continuous` (with v-prediction) gives the UNet `0.25·ln σ` instead of `t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TimestepType {
    #[serde(rename = "discrete")]
    Discrete,
    #[serde(rename = "continuous")]
    Continuous,
}

/// `scheduler_config.json` of an `EulerDiscreteScheduler`, with diffusers' defaults; other keys
/// are ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct EulerDiscreteConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: PredictionType,
    pub interpolation_type: Interpolation,
    #[serde(deserialize_with = "null_as_default")]
    pub use_karras_sigmas: bool,
    #[serde(deserialize_with = "null_as_default")]
    pub use_exponential_sigmas: bool,
    #[serde(deserialize_with = "null_as_default")]
    pub use_beta_sigmas: bool,
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    pub timestep_spacing: TimestepSpacing,
    pub timestep_type: TimestepType,
    pub steps_offset: i64,
    #[serde(deserialize_with = "null_as_default")]
    pub rescale_betas_zero_snr: bool,
    pub final_sigmas_type: FinalSigmas,
}

impl Default for EulerDiscreteConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            prediction_type: PredictionType::Epsilon,
            interpolation_type: Interpolation::Linear,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            sigma_min: None,
            sigma_max: None,
            timestep_spacing: TimestepSpacing::Linspace,
            timestep_type: TimestepType::Discrete,
            steps_offset: 0,
            rescale_betas_zero_snr: false,
            final_sigmas_type: FinalSigmas::Zero,
        }
    }
}

/// An `EulerDiscreteScheduler` and its current schedule.
#[derive(Debug, Clone)]
pub struct EulerDiscrete {
    config: EulerDiscreteConfig,
    train: TrainSchedule,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    init_noise_sigma: f64,
}

impl EulerDiscrete {
    pub fn new(config: EulerDiscreteConfig) -> Result<Self> {
        let unsupported = |what: &str| {
            Err(ModelError::UnsupportedConfig(format!(
                "EulerDiscreteScheduler with {what}"
            )))
        };
        let ramps = [
            config.use_karras_sigmas,
            config.use_exponential_sigmas,
            config.use_beta_sigmas,
        ];
        if ramps.iter().filter(|on| **on).count() > 1 {
            return unsupported(
                "more than one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas",
            );
        }
        if config.use_beta_sigmas {
            return unsupported("use_beta_sigmas (scipy's beta quantiles are not ported)");
        }
        if config.prediction_type == PredictionType::FlowPrediction {
            return unsupported("prediction_type flow_prediction");
        }
        let train = TrainSchedule::new(
            &BetaParams {
                num_train_timesteps: config.num_train_timesteps,
                beta_start: config.beta_start,
                beta_end: config.beta_end,
                beta_schedule: config.beta_schedule,
                trained_betas: config.trained_betas.as_deref(),
                rescale_betas_zero_snr: config.rescale_betas_zero_snr,
            },
            true,
        )?;
        // Before set_timesteps, of the training sigmas (as diffusers' `__init__` sets them).
        let init_noise_sigma = init_noise_sigma(&train.sigmas, config.timestep_spacing)?;
        Ok(Self {
            config,
            train,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            init_noise_sigma,
        })
    }

    pub fn config(&self) -> &EulerDiscreteConfig {
        &self.config
    }

    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.train.alphas_cumprod
    }

    /// `set_timesteps(n)`: float32 timesteps and sigmas (one more: the final sigma).
    pub fn set_timesteps(&mut self, n: usize) -> Result<()> {
        check_steps(n)?;
        let c = &self.config;
        let spaced: Vec<f32> = spaced_timesteps(
            c.timestep_spacing,
            n,
            c.num_train_timesteps,
            c.steps_offset,
            false,
        )
        .into_iter()
        .map(|t| t as f32)
        .collect();
        let train = &self.train.sigmas;
        let mut sigmas: Vec<f64> = match c.interpolation_type {
            Interpolation::Linear => interp(
                &spaced.iter().map(|&t| f64::from(t)).collect::<Vec<_>>(),
                train,
            ),
            // torch.linspace(log σ_max, log σ_min, n + 1).exp() in float32 (n + 1 sigmas for n
            // timesteps, as diffusers has it).
            Interpolation::LogLinear => {
                let (hi, lo) = (train[train.len() - 1].ln(), train[0].ln());
                let s = Tensor::f_linspace(
                    f64::from(hi),
                    f64::from(lo),
                    n as i64 + 1,
                    (Kind::Float, Device::Cpu),
                )?
                .f_exp()?;
                Vec::<f64>::try_from(&s)?
            }
        };
        let mut timesteps: Vec<f64> = spaced.iter().map(|&t| f64::from(t)).collect();
        if c.use_karras_sigmas || c.use_exponential_sigmas {
            let min = c.sigma_min.unwrap_or(sigmas[sigmas.len() - 1]);
            let max = c.sigma_max.unwrap_or(sigmas[0]);
            sigmas = if c.use_karras_sigmas {
                karras(min, max, n)
            } else {
                exponential(min, max, n)
            };
            let log_sigmas = self.train.log_sigmas();
            timesteps = sigmas
                .iter()
                .map(|&s| f64::from(sigma_to_t(s, &log_sigmas) as f32))
                .collect();
        }
        let last = match c.final_sigmas_type {
            FinalSigmas::Zero => 0.0,
            FinalSigmas::SigmaMin => f64::from(train[0]),
        };
        sigmas.push(last);
        let sigmas: Vec<f32> = sigmas.into_iter().map(|s| s as f32).collect();
        if c.timestep_type == TimestepType::Continuous
            && c.prediction_type == PredictionType::VPrediction
        {
            timesteps = sigmas[..sigmas.len() - 1]
                .iter()
                .map(|&s| Ok(f64::from(0.25 * ln32(s)?)))
                .collect::<Result<_>>()?;
        }
        self.init_noise_sigma = init_noise_sigma(&sigmas, c.timestep_spacing)?;
        self.timesteps = timesteps;
        self.sigmas = sigmas;
        Ok(())
    }

    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    pub fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }

    pub fn scale_model_input(&self, sample: &Tensor, i: usize) -> Result<Tensor> {
        check_index(i, self.timesteps.len())?;
        scale_by_sigma(sample, self.sigmas[i])
    }

    /// One Euler step from step `i` to `i + 1`, in float32, returned in the model output's
    /// dtype (diffusers' op order and types, so fp16 outputs round where diffusers' do).
    pub fn step(&self, model_output: &Tensor, i: usize, sample: &Tensor) -> Result<Tensor> {
        check_index(i, self.timesteps.len())?;
        let sample = sample.f_to_kind(Kind::Float)?;
        // gamma is 0 with the default churn, so sigma_hat = sigma.
        let sigma = self.sigmas[i];
        let pred = x0_prediction(self.config.prediction_type, model_output, &sample, sigma)?;
        let derivative = divc(&sample.f_sub(&pred)?, sigma)?;
        let dt = self.sigmas[i + 1] - sigma;
        let prev = sample.f_add(&mulc(&derivative, dt)?)?;
        Ok(prev.f_to_kind(model_output.kind())?)
    }
}

/// `init_noise_sigma`: σ_max for linspace/trailing spacing, `√(σ_max² + 1)` for leading.
pub(super) fn init_noise_sigma(sigmas: &[f32], spacing: TimestepSpacing) -> Result<f64> {
    let max = sigmas.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    Ok(f64::from(match spacing {
        TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
        TimestepSpacing::Leading => sqrt32(max * max + 1.0)?,
    }))
}

/// `sample / √(σ² + 1)`.
pub(super) fn scale_by_sigma(sample: &Tensor, sigma: f32) -> Result<Tensor> {
    divc(sample, sqrt32(sigma * sigma + 1.0)?)
}

/// The denoised estimate x̂₀ of the Euler schedulers at noise level `sigma`.
pub(super) fn x0_prediction(
    prediction: PredictionType,
    model_output: &Tensor,
    sample: &Tensor,
    sigma: f32,
) -> Result<Tensor> {
    Ok(match prediction {
        PredictionType::Epsilon => sample.f_sub(&cmul(sigma, model_output)?)?,
        PredictionType::VPrediction => {
            let c = sigma * sigma + 1.0;
            mulc(model_output, -sigma / sqrt32(c)?)?.f_add(&divc(sample, c)?)?
        }
        PredictionType::Sample => model_output.shallow_clone(),
        PredictionType::FlowPrediction => {
            return Err(ModelError::UnsupportedConfig(
                "prediction_type flow_prediction in an Euler scheduler".into(),
            ))
        }
    })
}
