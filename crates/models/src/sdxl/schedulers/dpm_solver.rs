//! `DPMSolverMultistepScheduler` (diffusers 0.42.1) with `algorithm_type` `dpmsolver++`
//! ("DPM++ 2M") and `sde-dpmsolver++` ("DPM++ 2M SDE"), solver orders 1–3, midpoint or Heun
//! second-order updates, Karras / exponential / Lu-lambda sigmas, `lower_order_final`,
//! `euler_at_final` and `final_sigmas_type`.
//!
//! Multistep state: the last `solver_order` data predictions and the count of lower-order
//! warm-up steps live in the scheduler, so `step` takes `&mut self`, steps must run in order
//! (an out-of-order index is an error) and `set_timesteps` starts a new run.

use serde::{Deserialize, Deserializer};
use tch::{Kind, Tensor};

use super::common::{
    check_index, check_steps, cmul, divc, draw, exp32, exponential, interp, karras, linspace, ln32,
    null_as_default, round, sigma_to_t, spaced_timesteps_dpm, sqrt32, BetaParams, BetaSchedule,
    FinalSigmas, Noise, PredictionType, TimestepSpacing, TrainSchedule,
};
use crate::{ModelError, Result};

/// `algorithm_type`. `deis` is mapped to `dpmsolver++` as diffusers does; the deprecated
/// first-generation `dpmsolver` / `sde-dpmsolver` are recognised and refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Algorithm {
    #[serde(rename = "dpmsolver++", alias = "deis")]
    DpmSolverPlusPlus,
    #[serde(rename = "sde-dpmsolver++")]
    SdeDpmSolverPlusPlus,
    #[serde(rename = "dpmsolver")]
    DpmSolver,
    #[serde(rename = "sde-dpmsolver")]
    SdeDpmSolver,
}

/// `solver_type` of the second-order update (`logrho`, `bh1`, `bh2` map to midpoint, as in
/// diffusers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SolverType {
    #[serde(rename = "midpoint", alias = "logrho", alias = "bh1", alias = "bh2")]
    Midpoint,
    #[serde(rename = "heun")]
    Heun,
}

/// `scheduler_config.json` of a `DPMSolverMultistepScheduler`, with diffusers' defaults; other
/// keys are ignored. `sigma_min`/`sigma_max` are not parameters of this class, but diffusers'
/// `from_config` keeps any extra key and the Karras and exponential ramps then use them.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DpmSolverConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub trained_betas: Option<Vec<f64>>,
    pub solver_order: usize,
    pub prediction_type: PredictionType,
    #[serde(deserialize_with = "null_as_default")]
    pub thresholding: bool,
    pub algorithm_type: Algorithm,
    pub solver_type: SolverType,
    #[serde(deserialize_with = "null_as_default")]
    pub lower_order_final: bool,
    #[serde(deserialize_with = "null_as_default")]
    pub euler_at_final: bool,
    #[serde(deserialize_with = "null_as_default")]
    pub use_karras_sigmas: bool,
    #[serde(deserialize_with = "null_as_default")]
    pub use_exponential_sigmas: bool,
    #[serde(deserialize_with = "null_as_default")]
    pub use_beta_sigmas: bool,
    #[serde(deserialize_with = "null_as_default")]
    pub use_lu_lambdas: bool,
    #[serde(deserialize_with = "null_as_default")]
    pub use_flow_sigmas: bool,
    pub final_sigmas_type: FinalSigmas,
    #[serde(deserialize_with = "float_or_python_constant")]
    pub lambda_min_clipped: f64,
    pub variance_type: Option<String>,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: i64,
    #[serde(deserialize_with = "null_as_default")]
    pub rescale_betas_zero_snr: bool,
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
}

impl Default for DpmSolverConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            solver_order: 2,
            prediction_type: PredictionType::Epsilon,
            thresholding: false,
            algorithm_type: Algorithm::DpmSolverPlusPlus,
            solver_type: SolverType::Midpoint,
            lower_order_final: true,
            euler_at_final: false,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            use_lu_lambdas: false,
            use_flow_sigmas: false,
            final_sigmas_type: FinalSigmas::Zero,
            lambda_min_clipped: f64::NEG_INFINITY,
            variance_type: None,
            timestep_spacing: TimestepSpacing::Linspace,
            steps_offset: 0,
            rescale_betas_zero_snr: false,
            sigma_min: None,
            sigma_max: None,
        }
    }
}

/// A number, or one of Python's JSON constants as a string (`"-Infinity"`, `"Infinity"`,
/// `"NaN"`; [`super::parse_python_json`] turns the bare tokens into these strings).
fn float_or_python_constant<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum F {
        Num(f64),
        Text(String),
    }
    match F::deserialize(d)? {
        F::Num(v) => Ok(v),
        F::Text(t) => match t.as_str() {
            "-Infinity" => Ok(f64::NEG_INFINITY),
            "Infinity" => Ok(f64::INFINITY),
            "NaN" => Ok(f64::NAN),
            other => Err(serde::de::Error::custom(format!(
                "expected a number, got the string {other:?}"
            ))),
        },
    }
}

/// A `DPMSolverMultistepScheduler`, its current schedule and multistep state.
#[derive(Debug)]
pub struct DpmSolver {
    config: DpmSolverConfig,
    train: TrainSchedule,
    /// λ(t) = ln α_t − ln σ_t of the training schedule, float32 as diffusers computes it.
    lambdas: Vec<f32>,
    timesteps: Vec<i64>,
    sigmas: Vec<f32>,
    /// The last `solver_order` data predictions, oldest first.
    outputs: Vec<Option<Tensor>>,
    lower_order_nums: usize,
    next_step: Option<usize>,
}

impl DpmSolver {
    pub fn new(config: DpmSolverConfig) -> Result<Self> {
        let unsupported = |what: String| {
            Err(ModelError::UnsupportedConfig(format!(
                "DPMSolverMultistepScheduler with {what}"
            )))
        };
        let c = &config;
        if matches!(
            c.algorithm_type,
            Algorithm::DpmSolver | Algorithm::SdeDpmSolver
        ) {
            return unsupported(format!(
                "algorithm_type {:?} (deprecated in diffusers; use dpmsolver++ or sde-dpmsolver++)",
                c.algorithm_type
            ));
        }
        if !(1..=3).contains(&c.solver_order) {
            return unsupported(format!("solver_order {} (1, 2 or 3)", c.solver_order));
        }
        let ramps = [
            c.use_karras_sigmas,
            c.use_exponential_sigmas,
            c.use_beta_sigmas,
        ];
        if ramps.iter().filter(|on| **on).count() > 1 {
            return unsupported(
                "more than one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas"
                    .into(),
            );
        }
        let refused = [
            (
                c.thresholding,
                "thresholding (for pixel-space models, not SDXL)",
            ),
            (
                c.use_beta_sigmas,
                "use_beta_sigmas (scipy's beta quantiles are not ported)",
            ),
            (
                c.use_flow_sigmas,
                "use_flow_sigmas (flow-matching models, not SDXL)",
            ),
            (
                c.prediction_type == PredictionType::FlowPrediction,
                "prediction_type flow_prediction",
            ),
            (
                matches!(
                    c.variance_type.as_deref(),
                    Some("learned" | "learned_range")
                ),
                "a learned variance_type",
            ),
        ];
        if let Some((_, what)) = refused.iter().find(|(on, _)| *on) {
            return unsupported((*what).into());
        }
        let train = TrainSchedule::new(
            &BetaParams {
                num_train_timesteps: c.num_train_timesteps,
                beta_start: c.beta_start,
                beta_end: c.beta_end,
                beta_schedule: c.beta_schedule,
                trained_betas: c.trained_betas.as_deref(),
                rescale_betas_zero_snr: c.rescale_betas_zero_snr,
            },
            true,
        )?;
        let ac = Tensor::f_from_slice(&train.alphas_cumprod)?;
        let lambdas = ac
            .f_sqrt()?
            .f_log()?
            .f_sub(&ac.f_rsub_scalar(1.0)?.f_sqrt()?.f_log()?)?;
        Ok(Self {
            lambdas: Vec::<f32>::try_from(&lambdas)?,
            outputs: Vec::new(),
            config,
            train,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            lower_order_nums: 0,
            next_step: None,
        })
    }

    pub fn config(&self) -> &DpmSolverConfig {
        &self.config
    }

    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.train.alphas_cumprod
    }

    /// `set_timesteps(n)`: int64 timesteps, float32 sigmas with the final one; resets the
    /// multistep state.
    pub fn set_timesteps(&mut self, n: usize) -> Result<()> {
        check_steps(n)?;
        let c = &self.config;
        let train_n = c.num_train_timesteps;
        // searchsorted(flip(λ), lambda_min_clipped): λ is decreasing in t.
        let clip = c.lambda_min_clipped as f32;
        let clipped = self.lambdas.iter().rev().take_while(|&&l| l < clip).count();
        let last = train_n - clipped;
        let mut timesteps: Vec<f64> =
            spaced_timesteps_dpm(c.timestep_spacing, n, train_n, last, c.steps_offset);
        let train = &self.train.sigmas;
        let log_sigmas = self.train.log_sigmas();
        // The ramps run from the flipped training sigmas: sigma_min = σ(0), sigma_max = σ(T−1).
        let (min, max) = (
            c.sigma_min.unwrap_or(f64::from(train[0])),
            c.sigma_max.unwrap_or(f64::from(train[train.len() - 1])),
        );
        let to_t = |sigmas: &[f64], rounded: bool| -> Vec<f64> {
            sigmas
                .iter()
                .map(|&s| sigma_to_t(s, &log_sigmas))
                .map(|t| if rounded { round(t) } else { t })
                .collect()
        };
        let round_ramp = c.beta_schedule != BetaSchedule::SquaredcosCapV2;
        let mut sigmas = if c.use_karras_sigmas {
            let s = karras(min, max, n);
            timesteps = to_t(&s, round_ramp);
            s
        } else if c.use_lu_lambdas {
            let (lo, hi) = (
                f64::from(log_sigmas[0]),
                f64::from(log_sigmas[log_sigmas.len() - 1]),
            );
            let s: Vec<f64> = linspace(0.0, 1.0, n)
                .into_iter()
                .map(|r| (hi + r * (lo - hi)).exp())
                .collect();
            timesteps = to_t(&s, round_ramp);
            s
        } else if c.use_exponential_sigmas {
            let s = exponential(min, max, n);
            timesteps = to_t(&s, false);
            s
        } else {
            interp(&timesteps, train)
        };
        sigmas.push(match c.final_sigmas_type {
            FinalSigmas::Zero => 0.0,
            FinalSigmas::SigmaMin => f64::from(train[0]),
        });
        self.sigmas = sigmas.into_iter().map(|s| s as f32).collect();
        // torch's float64 → int64 cast truncates (the rounded ramps are already integral).
        self.timesteps = timesteps.into_iter().map(|t| t as i64).collect();
        self.outputs = (0..c.solver_order).map(|_| None).collect();
        self.lower_order_nums = 0;
        self.next_step = None;
        Ok(())
    }

    pub fn timesteps(&self) -> &[i64] {
        &self.timesteps
    }

    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// α_σ = 1/√(σ²+1), σ_σ = σ·α_σ, λ = ln α − ln σ, float32.
    fn alpha_sigma_lambda(&self, index: usize) -> Result<(f32, f32, f32)> {
        let s = self.sigmas[index];
        let alpha = 1.0 / sqrt32(s * s + 1.0)?;
        let sigma = s * alpha;
        Ok((alpha, sigma, ln32(alpha)? - ln32(sigma)?))
    }

    /// One multistep update from step `i`. `i` must be the step after the previous call (the
    /// first call may start anywhere). With `sde-dpmsolver++` it draws one float32 noise tensor
    /// of the model output's shape, at every step, as diffusers does.
    pub fn step(
        &mut self,
        model_output: &Tensor,
        i: usize,
        sample: &Tensor,
        noise: &mut Noise,
    ) -> Result<Tensor> {
        let n = self.timesteps.len();
        check_index(i, n)?;
        if let Some(next) = self.next_step.filter(|&next| next != i) {
            return Err(ModelError::InvalidInput(format!(
                "DPMSolverMultistepScheduler steps run in order: expected step {next}, got {i} \
                 (call set_timesteps to start a new run)"
            )));
        }
        let c = &self.config;
        let lower_final = i == n - 1
            && (c.euler_at_final
                || (c.lower_order_final && n < 15)
                || c.final_sigmas_type == FinalSigmas::Zero);
        let lower_second = i + 2 == n && c.lower_order_final && n < 15;

        let (alpha_s, sigma_s, _) = self.alpha_sigma_lambda(i)?;
        let x0 = match c.prediction_type {
            PredictionType::Epsilon => {
                divc(&sample.f_sub(&cmul(sigma_s, model_output)?)?, alpha_s)?
            }
            PredictionType::Sample => model_output.shallow_clone(),
            PredictionType::VPrediction => {
                cmul(alpha_s, sample)?.f_sub(&cmul(sigma_s, model_output)?)?
            }
            PredictionType::FlowPrediction => {
                return Err(ModelError::UnsupportedConfig(
                    "DPMSolverMultistepScheduler with prediction_type flow_prediction".into(),
                ))
            }
        };
        self.outputs.rotate_left(1);
        if let Some(slot) = self.outputs.last_mut() {
            *slot = Some(x0);
        }
        let sample = sample.f_to_kind(Kind::Float)?;
        let sde = c.algorithm_type == Algorithm::SdeDpmSolverPlusPlus;
        let noise = if sde {
            Some(draw(noise, model_output, Kind::Float)?)
        } else {
            None
        };
        let order = if c.solver_order == 1 || self.lower_order_nums < 1 || lower_final {
            1
        } else if c.solver_order == 2 || self.lower_order_nums < 2 || lower_second {
            2
        } else {
            3
        };
        let prev = self.update(order, i, &sample, noise.as_ref())?;
        if self.lower_order_nums < self.config.solver_order {
            self.lower_order_nums += 1;
        }
        self.next_step = Some(i + 1);
        Ok(prev.f_to_kind(model_output.kind())?)
    }

    /// The order-`order` update from step `i` to `i + 1`, diffusers' formulas term by term:
    /// float32 coefficients, applied to tensors left to right.
    fn update(
        &self,
        order: usize,
        i: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        let k = self.outputs.len();
        let m = |back: usize| -> Result<&Tensor> {
            self.outputs[k - 1 - back].as_ref().ok_or_else(|| {
                ModelError::InvalidInput(format!("no model output {back} step(s) back"))
            })
        };
        let (alpha_t, sigma_t, lambda_t) = self.alpha_sigma_lambda(i + 1)?;
        let (_, sigma_s0, lambda_s0) = self.alpha_sigma_lambda(i)?;
        let h = lambda_t - lambda_s0;
        let sde = self.config.algorithm_type == Algorithm::SdeDpmSolverPlusPlus;
        let e = exp32(-h)?;
        let e2 = exp32(-2.0 * h)?;
        let ratio = sigma_t / sigma_s0;
        // First two terms: the decayed sample and the D0 (latest prediction) term.
        let (c_sample, c_d0) = if sde {
            (ratio * e, alpha_t * (1.0 - e2))
        } else {
            (ratio, -(alpha_t * (e - 1.0)))
        };
        let mut terms: Vec<(f32, Tensor)> = vec![(c_sample, sample.shallow_clone())];
        terms.push((c_d0, m(0)?.shallow_clone()));
        let heun = self.config.solver_type == SolverType::Heun;
        if order == 2 {
            let (_, _, lambda_s1) = self.alpha_sigma_lambda(i - 1)?;
            let r0 = (lambda_s0 - lambda_s1) / h;
            let d1 = cmul(1.0 / r0, &m(0)?.f_sub(m(1)?)?)?;
            let c_d1 = match (sde, heun) {
                (false, false) => -(0.5 * (alpha_t * (e - 1.0))),
                (false, true) => alpha_t * ((e - 1.0) / h + 1.0),
                (true, false) => 0.5 * (alpha_t * (1.0 - e2)),
                (true, true) => alpha_t * ((1.0 - e2) / (-2.0 * h) + 1.0),
            };
            terms.push((c_d1, d1));
        } else if order == 3 {
            let (_, _, lambda_s1) = self.alpha_sigma_lambda(i - 1)?;
            let (_, _, lambda_s2) = self.alpha_sigma_lambda(i - 2)?;
            let (r0, r1) = ((lambda_s0 - lambda_s1) / h, (lambda_s1 - lambda_s2) / h);
            let d1_0 = cmul(1.0 / r0, &m(0)?.f_sub(m(1)?)?)?;
            let d1_1 = cmul(1.0 / r1, &m(1)?.f_sub(m(2)?)?)?;
            let diff = d1_0.f_sub(&d1_1)?;
            let d1 = d1_0.f_add(&cmul(r0 / (r0 + r1), &diff)?)?;
            let d2 = cmul(1.0 / (r0 + r1), &diff)?;
            let (c_d1, c_d2) = if sde {
                let two_h = 2.0 * h;
                (
                    alpha_t * ((1.0 - e2) / (-2.0 * h) + 1.0),
                    alpha_t * ((1.0 - e2 - 2.0 * h) / (two_h * two_h) - 0.5),
                )
            } else {
                (
                    alpha_t * ((e - 1.0) / h + 1.0),
                    -(alpha_t * ((e - 1.0 + h) / (h * h) - 0.5)),
                )
            };
            terms.push((c_d1, d1));
            terms.push((c_d2, d2));
        }
        if let Some(noise) = noise {
            terms.push((sigma_t * sqrt32(1.0 - e2)?, noise.shallow_clone()));
        }
        // diffusers' `a - c·D` is `a + (−c)·D` to the bit (negation is exact, also in fp16).
        let mut acc = cmul(terms[0].0, &terms[0].1)?;
        for (c, t) in &terms[1..] {
            acc = acc.f_add(&cmul(*c, t)?)?;
        }
        Ok(acc)
    }
}
