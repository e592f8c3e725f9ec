//! `EulerAncestralDiscreteScheduler` (diffusers 0.42.1): Euler's sigmas (linear interpolation,
//! final 0) and an ancestral step: a deterministic Euler step down to `σ_down`, then fresh noise
//! of standard deviation `σ_up`, one draw per step in the model output's dtype.

use serde::Deserialize;
use tch::{Kind, Tensor};

use super::common::{
    check_index, check_steps, divc, draw, interp, mulc, null_as_default, spaced_timesteps, sqrt32,
    BetaParams, BetaSchedule, Noise, PredictionType, TimestepSpacing, TrainSchedule,
};
use super::euler::{init_noise_sigma, scale_by_sigma, x0_prediction};
use crate::{ModelError, Result};

/// `scheduler_config.json` of an `EulerAncestralDiscreteScheduler`, with diffusers' defaults;
/// other keys are ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct EulerAncestralConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: PredictionType,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: i64,
    #[serde(deserialize_with = "null_as_default")]
    pub rescale_betas_zero_snr: bool,
}

impl Default for EulerAncestralConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            prediction_type: PredictionType::Epsilon,
            timestep_spacing: TimestepSpacing::Linspace,
            steps_offset: 0,
            rescale_betas_zero_snr: false,
        }
    }
}

/// An `EulerAncestralDiscreteScheduler` and its current schedule.
#[derive(Debug, Clone)]
pub struct EulerAncestral {
    config: EulerAncestralConfig,
    train: TrainSchedule,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    init_noise_sigma: f64,
}

impl EulerAncestral {
    pub fn new(config: EulerAncestralConfig) -> Result<Self> {
        if !matches!(
            config.prediction_type,
            PredictionType::Epsilon | PredictionType::VPrediction
        ) {
            // diffusers raises NotImplementedError for "sample" in step.
            return Err(ModelError::UnsupportedConfig(format!(
                "EulerAncestralDiscreteScheduler with prediction_type {:?} (epsilon or \
                 v_prediction only)",
                config.prediction_type
            )));
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

    pub fn config(&self) -> &EulerAncestralConfig {
        &self.config
    }

    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.train.alphas_cumprod
    }

    /// `set_timesteps(n)`: float32 timesteps, sigmas interpolated at them plus a final 0.
    pub fn set_timesteps(&mut self, n: usize) -> Result<()> {
        check_steps(n)?;
        let c = &self.config;
        let timesteps: Vec<f64> = spaced_timesteps(
            c.timestep_spacing,
            n,
            c.num_train_timesteps,
            c.steps_offset,
            false,
        )
        .into_iter()
        .map(|t| f64::from(t as f32))
        .collect();
        let mut sigmas = interp(&timesteps, &self.train.sigmas);
        sigmas.push(0.0);
        self.sigmas = sigmas.into_iter().map(|s| s as f32).collect();
        self.init_noise_sigma = init_noise_sigma(&self.sigmas, c.timestep_spacing)?;
        self.timesteps = timesteps;
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

    /// One ancestral step from step `i`; draws one noise tensor of the model output's shape and
    /// dtype (also at the last step, where `σ_up` is 0), as diffusers does.
    pub fn step(
        &self,
        model_output: &Tensor,
        i: usize,
        sample: &Tensor,
        noise: &mut Noise,
    ) -> Result<Tensor> {
        check_index(i, self.timesteps.len())?;
        let (from, to) = (self.sigmas[i], self.sigmas[i + 1]);
        let sample = sample.f_to_kind(Kind::Float)?;
        let pred = x0_prediction(self.config.prediction_type, model_output, &sample, from)?;
        let up = sqrt32(to * to * (from * from - to * to) / (from * from))?;
        let down = sqrt32(to * to - up * up)?;
        let derivative = divc(&sample.f_sub(&pred)?, from)?;
        let dt = down - from;
        let prev = sample.f_add(&mulc(&derivative, dt)?)?;
        let n = draw(noise, model_output, model_output.kind())?;
        let prev = prev.f_add(&mulc(&n, up)?)?;
        Ok(prev.f_to_kind(model_output.kind())?)
    }
}
