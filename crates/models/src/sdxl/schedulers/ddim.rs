//! `DDIMScheduler` (diffusers 0.42.1): integer timesteps, the step from `alphas_cumprod[t]` to
//! `alphas_cumprod[t − T/N]` (or the final alpha), optional clipping of x̂₀, and with `eta > 0`
//! one noise draw per step in the model output's dtype. The sample keeps its dtype (diffusers'
//! DDIM does not upcast).

use serde::Deserialize;
use tch::Tensor;

use super::common::{
    check_index, check_steps, cmul, divc, draw, null_as_default, spaced_timesteps, sqrt32,
    BetaParams, BetaSchedule, Noise, PredictionType, TimestepSpacing, TrainSchedule,
};
use crate::{ModelError, Result};

/// `scheduler_config.json` of a `DDIMScheduler`, with diffusers' defaults; other keys are
/// ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DdimConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub trained_betas: Option<Vec<f64>>,
    #[serde(deserialize_with = "null_as_default")]
    pub clip_sample: bool,
    #[serde(deserialize_with = "null_as_default")]
    pub set_alpha_to_one: bool,
    pub steps_offset: i64,
    pub prediction_type: PredictionType,
    #[serde(deserialize_with = "null_as_default")]
    pub thresholding: bool,
    pub clip_sample_range: f64,
    pub timestep_spacing: TimestepSpacing,
    #[serde(deserialize_with = "null_as_default")]
    pub rescale_betas_zero_snr: bool,
}

impl Default for DdimConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            clip_sample: true,
            set_alpha_to_one: true,
            steps_offset: 0,
            prediction_type: PredictionType::Epsilon,
            thresholding: false,
            clip_sample_range: 1.0,
            timestep_spacing: TimestepSpacing::Leading,
            rescale_betas_zero_snr: false,
        }
    }
}

/// A `DDIMScheduler`, its current schedule and the pipeline's `eta`.
#[derive(Debug, Clone)]
pub struct Ddim {
    config: DdimConfig,
    train: TrainSchedule,
    final_alpha_cumprod: f32,
    timesteps: Vec<i64>,
    num_inference_steps: usize,
    eta: f64,
}

impl Ddim {
    pub fn new(config: DdimConfig) -> Result<Self> {
        if config.thresholding {
            return Err(ModelError::UnsupportedConfig(
                "DDIMScheduler with thresholding (dynamic thresholding is for pixel-space \
                 models, not SDXL)"
                    .into(),
            ));
        }
        if config.prediction_type == PredictionType::FlowPrediction {
            return Err(ModelError::UnsupportedConfig(
                "DDIMScheduler with prediction_type flow_prediction".into(),
            ));
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
            false,
        )?;
        let final_alpha_cumprod = if config.set_alpha_to_one {
            1.0
        } else {
            train.alphas_cumprod[0]
        };
        Ok(Self {
            config,
            train,
            final_alpha_cumprod,
            timesteps: Vec::new(),
            num_inference_steps: 0,
            eta: 0.0,
        })
    }

    pub fn config(&self) -> &DdimConfig {
        &self.config
    }

    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.train.alphas_cumprod
    }

    /// The `eta` diffusers' pipelines pass to `step` (0: deterministic DDIM; 1: DDPM-like).
    pub fn set_eta(&mut self, eta: f64) {
        self.eta = eta;
    }

    /// `set_timesteps(n)`: int64 timesteps; every one must index `alphas_cumprod`.
    pub fn set_timesteps(&mut self, n: usize) -> Result<()> {
        check_steps(n)?;
        let c = &self.config;
        let train = c.num_train_timesteps;
        if n > train {
            return Err(ModelError::InvalidInput(format!(
                "{n} inference steps: DDIM allows at most num_train_timesteps = {train}"
            )));
        }
        let timesteps: Vec<i64> =
            spaced_timesteps(c.timestep_spacing, n, train, c.steps_offset, true)
                .into_iter()
                .map(|t| t as i64)
                .collect();
        if let Some(t) = timesteps.iter().find(|&&t| t < 0 || t >= train as i64) {
            return Err(ModelError::InvalidInput(format!(
                "{n} inference steps with steps_offset {} give timestep {t}, outside the \
                 {train} training timesteps",
                c.steps_offset
            )));
        }
        self.timesteps = timesteps;
        self.num_inference_steps = n;
        Ok(())
    }

    pub fn timesteps(&self) -> &[i64] {
        &self.timesteps
    }

    /// `alphas_cumprod[t]` (training schedule; the DDIM analogue of a sigma).
    fn alpha(&self, t: i64) -> f32 {
        if t >= 0 {
            self.train.alphas_cumprod[t as usize]
        } else {
            self.final_alpha_cumprod
        }
    }

    /// One DDIM step from step `i`. Draws one noise tensor (model output's shape and dtype)
    /// only when `eta > 0`.
    pub fn step(
        &self,
        model_output: &Tensor,
        i: usize,
        sample: &Tensor,
        noise: &mut Noise,
    ) -> Result<Tensor> {
        check_index(i, self.timesteps.len())?;
        let t = self.timesteps[i];
        // diffusers steps back by T/N whatever the spacing (N as requested, even where trailing
        // spacing gave one timestep more).
        let prev_t = t - (self.config.num_train_timesteps / self.num_inference_steps) as i64;
        let a = self.alpha(t);
        let a_prev = self.alpha(prev_t);
        let b = 1.0 - a;
        let (sa, sb) = (sqrt32(a)?, sqrt32(b)?);
        let (pred_x0, pred_eps) = match self.config.prediction_type {
            PredictionType::Epsilon => (
                divc(&sample.f_sub(&cmul(sb, model_output)?)?, sa)?,
                model_output.shallow_clone(),
            ),
            PredictionType::Sample => (
                model_output.shallow_clone(),
                divc(&sample.f_sub(&cmul(sa, model_output)?)?, sb)?,
            ),
            PredictionType::VPrediction => (
                cmul(sa, sample)?.f_sub(&cmul(sb, model_output)?)?,
                cmul(sa, model_output)?.f_add(&cmul(sb, sample)?)?,
            ),
            PredictionType::FlowPrediction => {
                return Err(ModelError::UnsupportedConfig(
                    "DDIMScheduler with prediction_type flow_prediction".into(),
                ))
            }
        };
        let pred_x0 = if self.config.clip_sample {
            let r = self.config.clip_sample_range;
            pred_x0.f_clamp(-r, r)?
        } else {
            pred_x0
        };
        let variance = ((1.0 - a_prev) / b) * (1.0 - a / a_prev);
        // eta is a Python float multiplied into a float32 0-d tensor.
        let std_dev = self.eta as f32 * sqrt32(variance)?;
        let direction = cmul(sqrt32(1.0 - a_prev - std_dev * std_dev)?, &pred_eps)?;
        let prev = cmul(sqrt32(a_prev)?, &pred_x0)?.f_add(&direction)?;
        if self.eta > 0.0 {
            let n = draw(noise, model_output, model_output.kind())?;
            return Ok(prev.f_add(&cmul(std_dev, &n)?)?);
        }
        Ok(prev)
    }
}
