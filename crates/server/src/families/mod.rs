//! Model families behind one interface. A family loads lazily, says what a job needs in each
//! memory mode, runs a job with progress and cancellation, writes its result, and leaves the
//! device when the residency manager asks (offloaded to host memory, or unloaded). The worker
//! and the residency manager know families only through [`ModelFamily`]; a third family is a
//! new module here.

pub mod instantid;
pub mod instantid_facts;
pub mod ltx;

use std::path::Path;
use std::time::Instant;

use ltx_models::attention::AttentionBackend;
use ltx_models::ModelError;
use ltx_pipelines::budget::{ComponentSizes, Workload};
use ltx_pipelines::{BudgetSpec, MemoryOptions, MemoryReport};

use crate::family::FamilyId;
use crate::jobs::{Job, Stage, Work};
use crate::metrics::Metrics;

/// A job's memory needs in every mode: its working memory beside the weights, and the weights.
#[derive(Debug, Clone, Copy)]
pub struct Estimate {
    pub workload: Workload,
    pub sizes: ComponentSizes,
}

/// One model family as the worker of its device sees it.
pub trait ModelFamily: Send {
    fn id(&self) -> FamilyId;

    /// The memory mode the settings ask for (`*_ENABLE_CPU_OFFLOAD`, …).
    fn configured(&self) -> MemoryOptions;

    /// The family's VRAM budget (`*_VRAM_BUDGET`): device memory its jobs may count on, the
    /// other families' weights included.
    fn vram_budget(&self) -> BudgetSpec;

    /// The attention backend its jobs run with.
    fn attention(&self) -> AttentionBackend;

    /// Whether `work` decodes in tiles before the residency manager has a say (the family's
    /// switch, or the job's host memory plan).
    fn tiled(&self, work: &Work) -> bool;

    /// What `work` needs, from the model's configs (nothing has to be loaded), decoding in
    /// tiles or not.
    fn estimate(&self, work: &Work, tiled: bool) -> Result<Estimate, ModelError>;

    /// Where the loaded model's weights are; `None` when nothing is loaded.
    fn memory(&self) -> Option<MemoryReport>;

    /// The mode the loaded model is placed in; `None` when nothing is loaded.
    fn placed(&self) -> Option<MemoryOptions>;

    /// Loads the model in mode `mem` for `work` (dropping any loaded one first).
    fn load(&mut self, mem: MemoryOptions, work: &Work) -> Result<(), ModelError>;

    /// Runs `work` on the loaded model: progress goes to `ctx`, and a cancelled job stops at
    /// its next step boundary with [`ModelError::Cancelled`]. Returns the result as a tensor.
    fn generate(
        &mut self,
        work: &Work,
        tiled: bool,
        ctx: &mut JobCtx<'_>,
    ) -> Result<tch::Tensor, ModelError>;

    /// Writes `result` as the job's file at `path` (the worker then renames it into place).
    fn write(
        &self,
        result: tch::Tensor,
        work: &Work,
        path: &Path,
        ctx: &mut JobCtx<'_>,
    ) -> Result<(), String>;

    /// Whether [`ModelFamily::offload_to_host`] can move the device-resident weights into
    /// host memory (else the residency manager unloads the family to make room).
    fn can_offload(&self) -> bool {
        false
    }

    /// Moves the device-resident weights into (pinned) host memory, kept for the next job.
    fn offload_to_host(&mut self) -> Result<(), ModelError> {
        Err(ModelError::Memory(format!(
            "{}: its weights cannot move from the device to the host",
            self.id()
        )))
    }

    /// Drops the model; whether one was loaded.
    fn unload(&mut self) -> bool;
}

/// A running job as a family sees it: progress into the job's status, stage times into its
/// timings and the metrics, cancellation.
pub struct JobCtx<'a> {
    pub job: &'a Job,
    family: FamilyId,
    metrics: &'a Metrics,
    current: Option<(Stage, Instant)>,
}

impl<'a> JobCtx<'a> {
    pub fn new(job: &'a Job, family: FamilyId, metrics: &'a Metrics) -> Self {
        Self {
            job,
            family,
            metrics,
            current: None,
        }
    }

    /// Ends the current stage (if another) and starts `stage`.
    pub fn stage(&mut self, stage: Stage) {
        if self.current.is_some_and(|(s, _)| s == stage) {
            return;
        }
        self.finish();
        self.current = Some((stage, Instant::now()));
        self.job.update(|s| s.stage = Some(stage));
    }

    /// Denoising step `step` of `total`.
    pub fn step(&mut self, step: usize, total: usize) {
        self.stage(Stage::Denoising);
        self.job.update(|s| {
            s.step = step;
            s.total_steps = total;
        });
    }

    /// Ends the current stage, into the job's timings and the stage histogram.
    pub fn finish(&mut self) {
        if let Some((stage, t0)) = self.current.take() {
            let secs = t0.elapsed().as_secs_f64();
            self.metrics.stage_seconds(self.family, stage, secs);
            self.job
                .update(|s| *s.timings.entry(stage).or_default() += secs);
        }
    }
}

/// The dtype a family loads in: float32 on the CPU, bf16 on CUDA.
pub fn default_dtype(device: tch::Device) -> tch::Kind {
    if device == tch::Device::Cpu {
        tch::Kind::Float
    } else {
        tch::Kind::BFloat16
    }
}
