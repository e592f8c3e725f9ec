//! What is decided when a request arrives, from the configured model's config files (no
//! weights loaded): the model's own rules (the scheduler's minimum steps with
//! `shift_terminal`, the multi-scale flow's scheduler and upsampler), and the host memory plan
//! — the job's estimated peak resident memory against `LTX_HOST_BUDGET`, with tiled decoding
//! (and chunked attention) turned on when that brings it under the budget, else a `422`
//! naming both numbers. The worker keeps its own checks as a backstop.

use ltx_models::attention::AttentionBackend;
use ltx_models::scheduler::{ConditionSchedule, FlowMatchSchedule};
use ltx_models::ModelError;
use ltx_pipelines::budget::{self, Workload};
use ltx_pipelines::tiled_decode::TileConfig;

use crate::host_memory::{gb, HostBudget, RUNTIME_BYTES};
use crate::jobs::{HostMemory, Work, WorkKind};

/// An LTX-Video job, as the planner sees it.
#[derive(Clone, Copy)]
enum Flow<'a> {
    I2v(&'a ltx_pipelines::I2vParams),
    Multiscale(&'a ltx_pipelines::multiscale::MultiscaleRequest),
}
use crate::model_facts::ModelFacts;
use crate::ApiError;

/// How a job runs, decided at submission.
#[derive(Debug, Clone, Default)]
pub struct JobPlan {
    /// Decode in tiles (the switch, or the plan to fit the host budget).
    pub tiled: bool,
    /// The attention backend for this job, when it is not the configured one.
    pub attention: Option<AttentionBackend>,
}

/// The configuration the planner works from.
pub struct Planner {
    pub facts: ModelFacts,
    pub host: HostBudget,
    pub tiling: TileConfig,
    pub tiling_on: bool,
    pub attention: AttentionBackend,
}

fn invalid(field: &'static str, e: ModelError) -> ApiError {
    let message = match e {
        ModelError::InvalidInput(m) | ModelError::UnsupportedConfig(m) => m,
        other => other.to_string(),
    };
    ApiError::Invalid { field, message }
}

impl Planner {
    /// The model's rules for `work`, then its memory plan (stored in `work`).
    /// Jobs of other families pass through (their own rules applied when they were validated).
    pub fn admit(&self, work: &mut Work, upsampler: bool) -> Result<(), ApiError> {
        let (video, flow) = match &work.kind {
            WorkKind::I2v(v, p) => (v, Flow::I2v(p)),
            WorkKind::Multiscale(v, r) => (v, Flow::Multiscale(r)),
            WorkKind::InstantId(_) => return Ok(()),
        };
        let image = (video.image.width * video.image.height * 3) as u64;
        self.model_rules(flow, upsampler)?;
        let (plan, host) = self.plan(flow, image)?;
        work.plan = plan;
        work.host_memory = Some(host);
        Ok(())
    }

    /// Rules that depend on the configured model, as the worker's pipeline would apply them.
    fn model_rules(&self, kind: Flow<'_>, upsampler: bool) -> Result<(), ApiError> {
        let f = &self.facts;
        match kind {
            Flow::I2v(p) => {
                FlowMatchSchedule::ltx(&f.scheduler, p.steps, self.tokens(kind) as usize)
                    .map_err(|e| invalid("steps", e))?;
            }
            Flow::Multiscale(r) => {
                if !upsampler || f.upsampler.is_none() {
                    return Err(ApiError::Invalid {
                        field: "pipeline",
                        message: "the multi-scale pipeline needs the latent upsampler, and this \
                                  server has none: set LTX_UPSAMPLER"
                            .into(),
                    });
                }
                let p = &r.params;
                let schedule = |field, steps, strength| {
                    ConditionSchedule::new(&f.scheduler, steps, None, strength).map_err(|e| match e
                    {
                        ModelError::UnsupportedConfig(m) => ApiError::Invalid {
                            field: "pipeline",
                            message: format!("the configured model cannot run it: {m}"),
                        },
                        e => invalid(field, e),
                    })
                };
                schedule("steps", p.steps_lowres, 1.0)?;
                schedule("steps_refine", p.steps_refine, p.denoise_strength)?;
            }
        }
        Ok(())
    }

    /// Latent tokens of the job's largest transformer pass.
    fn tokens(&self, kind: Flow<'_>) -> u64 {
        let v = &self.facts.vae;
        let (sr, tr) = (v.spatial_ratio(), v.temporal_ratio());
        let (frames, w, h) = match kind {
            Flow::I2v(p) => (p.num_frames, p.width, p.height),
            Flow::Multiscale(r) => match r.params.pass_sizes() {
                Ok((_, (w2, h2))) => (r.params.output_frames(), w2, h2),
                Err(_) => (r.params.output_frames(), 0, 0),
            },
        };
        (((frames - 1) / tr + 1) * (h / sr) * (w / sr)) as u64
    }

    /// The job's estimated peak resident memory with or without tiling and with `attention`.
    fn estimate(
        &self,
        kind: Flow<'_>,
        image: u64,
        tiled: bool,
        attention: AttentionBackend,
    ) -> Result<u64, ApiError> {
        let f = &self.facts;
        let tiling = tiled.then_some(&self.tiling);
        let (mut w, cfg, video): (Workload, bool, u64) = match kind {
            Flow::I2v(p) => (
                ltx_pipelines::ltx_i2v::i2v_workload(&f.transformer, &f.vae, f.dtype, tiling, p),
                p.guidance_scale > 1.0,
                (p.num_frames * p.height * p.width * 3) as u64,
            ),
            Flow::Multiscale(r) => {
                let mid = f.upsampler.as_ref().map_or(0, |u| u.mid_channels);
                let w = ltx_pipelines::multiscale::multiscale_workload(
                    &f.transformer,
                    &f.vae,
                    f.dtype,
                    tiling,
                    mid,
                    &r.params,
                )
                .map_err(|e| invalid("body", e))?;
                let p = &r.params;
                (
                    w,
                    p.guidance_scale > 1.0,
                    (p.output_frames() * p.height * p.width * 3) as u64,
                )
            }
        };
        if attention == AttentionBackend::Math {
            let s = self.tokens(kind);
            let heads = f.transformer.num_attention_heads as u64;
            w.transformer_activations +=
                budget::attention_scores_bytes(if cfg { 2 } else { 1 }, heads, s, s);
        }
        let job = budget::estimate_host_peak(&w, &f.sizes, f.placement, video);
        Ok(self.host.baseline_bytes + RUNTIME_BYTES + job + image)
    }

    /// The configured settings if the job fits the budget, else the first of tiled decoding,
    /// then tiled decoding with chunked attention, that does; else a 422 naming the most
    /// frugal estimate and the budget.
    fn plan(&self, kind: Flow<'_>, image: u64) -> Result<(JobPlan, HostMemory), ApiError> {
        let budget = self.host.budget_bytes;
        let configured = (self.tiling_on, self.attention);
        let mut tries = vec![configured, (true, self.attention)];
        if self.attention == AttentionBackend::Math {
            tries.push((true, AttentionBackend::Sliced));
        }
        tries.dedup();
        let first = self.estimate(kind, image, configured.0, configured.1)?;
        let mut last = first;
        for (tiled, attention) in tries {
            let estimate = self.estimate(kind, image, tiled, attention)?;
            last = estimate;
            if estimate > budget {
                continue;
            }
            let mut changes = Vec::new();
            if tiled != configured.0 {
                changes.push("VAE tiling on".to_string());
            }
            if attention != configured.1 {
                changes.push(format!("{attention} attention"));
            }
            let reason = (!changes.is_empty()).then(|| {
                format!(
                    "about {} of host memory as configured, over the {} host budget: {} for \
                     this job (about {})",
                    gb(first),
                    gb(budget),
                    changes.join(", "),
                    gb(estimate)
                )
            });
            let plan = JobPlan {
                tiled,
                attention: (attention != configured.1).then_some(attention),
            };
            let host = HostMemory {
                estimate_bytes: estimate,
                budget_bytes: budget,
                tiled_decode: tiled,
                attention: attention.as_str().to_string(),
                reason,
            };
            return Ok((plan, host));
        }
        Err(ApiError::InsufficientMemory {
            estimate_bytes: last,
            budget_bytes: budget,
        })
    }
}
