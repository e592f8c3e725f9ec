//! The SDXL schedulers as diffusers 0.42.1 runs them, chosen by `scheduler_config.json`'s
//! `_class_name`: `EulerDiscreteScheduler` (SDXL base's), `EulerAncestralDiscreteScheduler`,
//! `DPMSolverMultistepScheduler` (DPM++ 2M / 2M SDE) and `DDIMScheduler`.
//!
//! Numbers follow diffusers' types (see [`common`]): the schedules are reproduced to the bit or
//! to float64 rounding, each step uses diffusers' float32 coefficients and op order, and the
//! random draws of the stochastic schedulers come, in diffusers' order, shapes and dtypes, from
//! the [`Noise`] source the caller passes, so a seeded CPU generator gives diffusers' results.
//!
//! A denoising loop:
//! ```no_run
//! # fn demo(unet: impl Fn(&tch::Tensor, f64) -> tch::Tensor) -> ltx_models::Result<()> {
//! use ltx_models::sdxl::schedulers::SdxlScheduler;
//! use tch::{Device, Kind, Tensor};
//! let mut s = SdxlScheduler::from_config_file("scheduler/scheduler_config.json".as_ref())?;
//! s.set_timesteps(30)?;
//! tch::manual_seed(42);
//! let mut noise = |shape: &[i64], kind: Kind| Ok(Tensor::f_randn(shape, (kind, Device::Cpu))?);
//! let mut x = noise(&[1, 4, 128, 128], Kind::Float)?.f_mul_scalar(s.init_noise_sigma())?;
//! for (i, t) in s.timesteps().into_iter().enumerate() {
//!     let eps = unet(&s.scale_model_input(&x, i)?, t);
//!     x = s.step(&eps, i, &x, &mut noise)?;
//! }
//! # Ok(()) }
//! ```

pub mod common;
pub mod ddim;
pub mod dpm_solver;
pub mod euler;
pub mod euler_ancestral;

use std::path::Path;

use serde::de::DeserializeOwned;
use serde_json::Value;
use tch::{Kind, Tensor};

pub use common::Noise;
pub use ddim::{Ddim, DdimConfig};
pub use dpm_solver::{DpmSolver, DpmSolverConfig};
pub use euler::{EulerDiscrete, EulerDiscreteConfig};
pub use euler_ancestral::{EulerAncestral, EulerAncestralConfig};

use crate::{ModelError, Result};

/// The `_class_name`s this module implements.
pub const SUPPORTED_SCHEDULERS: [&str; 4] = [
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DDIMScheduler",
];

/// One SDXL scheduler. After [`set_timesteps`](Self::set_timesteps), step `i` of a run is
/// `scale_model_input(x, i)` → UNet at `timesteps()[i]` → `step(out, i, x, noise)`. Euler,
/// Euler ancestral and DDIM steps are pure functions of the schedule; DPMSolver keeps its
/// previous predictions, so its steps must run in order and `set_timesteps` starts a new run.
#[derive(Debug)]
pub enum SdxlScheduler {
    EulerDiscrete(EulerDiscrete),
    EulerAncestral(EulerAncestral),
    DpmSolver(DpmSolver),
    Ddim(Ddim),
}

impl SdxlScheduler {
    /// Reads `scheduler_config.json` (Python's `NaN`/`Infinity`/`-Infinity`, which diffusers
    /// writes for e.g. `lambda_min_clipped`, are accepted).
    pub fn from_config_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let value = parse_python_json(&text).map_err(|source| ModelError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&value)
    }

    /// Builds the scheduler named by `_class_name`, diffusers' defaults for absent keys;
    /// unknown keys are ignored.
    pub fn from_json(config: &Value) -> Result<Self> {
        let supported = SUPPORTED_SCHEDULERS.join(", ");
        let class = config
            .get("_class_name")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                ModelError::UnsupportedConfig(format!(
                    "the scheduler config has no _class_name (supported: {supported})"
                ))
            })?;
        Ok(match class {
            "EulerDiscreteScheduler" => {
                Self::EulerDiscrete(EulerDiscrete::new(parse(config, class)?)?)
            }
            "EulerAncestralDiscreteScheduler" => {
                Self::EulerAncestral(EulerAncestral::new(parse(config, class)?)?)
            }
            "DPMSolverMultistepScheduler" => {
                Self::DpmSolver(DpmSolver::new(parse(config, class)?)?)
            }
            "DDIMScheduler" => Self::Ddim(Ddim::new(parse(config, class)?)?),
            other => {
                return Err(ModelError::UnsupportedConfig(format!(
                    "scheduler {other} is not implemented (supported: {supported})"
                )))
            }
        })
    }

    /// diffusers' class name.
    pub fn class_name(&self) -> &'static str {
        match self {
            Self::EulerDiscrete(_) => SUPPORTED_SCHEDULERS[0],
            Self::EulerAncestral(_) => SUPPORTED_SCHEDULERS[1],
            Self::DpmSolver(_) => SUPPORTED_SCHEDULERS[2],
            Self::Ddim(_) => SUPPORTED_SCHEDULERS[3],
        }
    }

    /// `set_timesteps(n)`; `n` must be at least 1. Starts a new run.
    pub fn set_timesteps(&mut self, n: usize) -> Result<()> {
        match self {
            Self::EulerDiscrete(s) => s.set_timesteps(n),
            Self::EulerAncestral(s) => s.set_timesteps(n),
            Self::DpmSolver(s) => s.set_timesteps(n),
            Self::Ddim(s) => s.set_timesteps(n),
        }
    }

    /// The timesteps the UNet receives, in order (Euler: float32 values, possibly
    /// fractional; DPMSolver and DDIM: integers). Empty before `set_timesteps`. May hold one
    /// entry more than requested, as diffusers' trailing spacing does for some `n`.
    pub fn timesteps(&self) -> Vec<f64> {
        match self {
            Self::EulerDiscrete(s) => s.timesteps().to_vec(),
            Self::EulerAncestral(s) => s.timesteps().to_vec(),
            Self::DpmSolver(s) => s.timesteps().iter().map(|&t| t as f64).collect(),
            Self::Ddim(s) => s.timesteps().iter().map(|&t| t as f64).collect(),
        }
    }

    /// The dtype of diffusers' `scheduler.timesteps`: float32 (Euler) or int64.
    pub fn timestep_kind(&self) -> Kind {
        match self {
            Self::EulerDiscrete(_) | Self::EulerAncestral(_) => Kind::Float,
            Self::DpmSolver(_) | Self::Ddim(_) => Kind::Int64,
        }
    }

    /// Timestep `i` as diffusers hands it to the UNet: a 0-d CPU tensor of
    /// [`timestep_kind`](Self::timestep_kind).
    pub fn timestep(&self, i: usize) -> Result<Tensor> {
        let ts = self.timesteps();
        common::check_index(i, ts.len())?;
        let t = match self.timestep_kind() {
            Kind::Int64 => Tensor::f_from_slice(&[ts[i] as i64])?,
            _ => Tensor::f_from_slice(&[ts[i] as f32])?,
        };
        Ok(t.f_reshape([0i64; 0])?)
    }

    /// The sigmas, one more than the timesteps (the final one); empty for DDIM, which steps by
    /// `alphas_cumprod`.
    pub fn sigmas(&self) -> &[f32] {
        match self {
            Self::EulerDiscrete(s) => s.sigmas(),
            Self::EulerAncestral(s) => s.sigmas(),
            Self::DpmSolver(s) => s.sigmas(),
            Self::Ddim(_) => &[],
        }
    }

    /// The training schedule's `alphas_cumprod` (float32, t ascending).
    pub fn alphas_cumprod(&self) -> &[f32] {
        match self {
            Self::EulerDiscrete(s) => s.alphas_cumprod(),
            Self::EulerAncestral(s) => s.alphas_cumprod(),
            Self::DpmSolver(s) => s.alphas_cumprod(),
            Self::Ddim(s) => s.alphas_cumprod(),
        }
    }

    /// The factor diffusers' pipelines multiply the initial N(0, 1) latents by (the value of a
    /// float32 tensor for the Euler schedulers, 1 for the others).
    pub fn init_noise_sigma(&self) -> f64 {
        match self {
            Self::EulerDiscrete(s) => s.init_noise_sigma(),
            Self::EulerAncestral(s) => s.init_noise_sigma(),
            Self::DpmSolver(_) | Self::Ddim(_) => 1.0,
        }
    }

    /// The `eta` of DDIM's step (diffusers' pipelines pass it only to schedulers whose `step`
    /// takes it, so the others ignore it). Must be finite and non-negative.
    pub fn set_eta(&mut self, eta: f64) -> Result<()> {
        if !eta.is_finite() || eta < 0.0 {
            return Err(ModelError::InvalidInput(format!(
                "eta must be a finite number >= 0, got {eta}"
            )));
        }
        if let Self::Ddim(s) = self {
            s.set_eta(eta);
        }
        Ok(())
    }

    /// The UNet input at step `i` (Euler: `x/√(σ_i²+1)`; the others: `x` itself).
    pub fn scale_model_input(&self, sample: &Tensor, i: usize) -> Result<Tensor> {
        match self {
            Self::EulerDiscrete(s) => s.scale_model_input(sample, i),
            Self::EulerAncestral(s) => s.scale_model_input(sample, i),
            Self::DpmSolver(s) => {
                common::check_index(i, s.timesteps().len())?;
                Ok(sample.shallow_clone())
            }
            Self::Ddim(s) => {
                common::check_index(i, s.timesteps().len())?;
                Ok(sample.shallow_clone())
            }
        }
    }

    /// Step `i`: the sample at step `i + 1` from the model output at step `i`, in the model
    /// output's dtype. `noise` is called for every random draw diffusers makes (Euler ancestral:
    /// each step; DPM++ SDE: each step, float32; DDIM: each step when eta > 0; Euler, DPM++ 2M:
    /// never).
    pub fn step(
        &mut self,
        model_output: &Tensor,
        i: usize,
        sample: &Tensor,
        noise: &mut Noise,
    ) -> Result<Tensor> {
        if model_output.size() != sample.size() {
            return Err(ModelError::InvalidInput(format!(
                "the model output has shape {:?}, the sample {:?}",
                model_output.size(),
                sample.size()
            )));
        }
        match self {
            Self::EulerDiscrete(s) => s.step(model_output, i, sample),
            Self::EulerAncestral(s) => s.step(model_output, i, sample, noise),
            Self::DpmSolver(s) => s.step(model_output, i, sample, noise),
            Self::Ddim(s) => s.step(model_output, i, sample, noise),
        }
    }
}

fn parse<T: DeserializeOwned>(config: &Value, class: &str) -> Result<T> {
    serde_json::from_value(config.clone())
        .map_err(|e| ModelError::UnsupportedConfig(format!("{class} config: {e}")))
}

/// Parses JSON as Python's `json` writes it: the bare tokens `NaN`, `Infinity` and `-Infinity`
/// (outside strings) become the strings `"NaN"`, `"Infinity"`, `"-Infinity"`.
pub fn parse_python_json(text: &str) -> serde_json::Result<Value> {
    let mut out = String::with_capacity(text.len() + 16);
    let (mut in_string, mut escaped) = (false, false);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
        } else if let Some(token) = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|t| rest.starts_with(t))
        {
            out.push('"');
            out.push_str(token);
            out.push('"');
            rest = &rest[token.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    serde_json::from_str(&out)
}
