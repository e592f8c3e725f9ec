//! The worker: one OS thread that owns every tensor and the model, fed by a bounded channel of
//! commands (run a job, unload the model). The model loads on the first job (lazy loading),
//! and each job either finishes with a video on disk, fails with its error, or stops at a
//! step boundary when cancelled; the thread keeps serving after a failed job. After every
//! job the CUDA allocator's cache is released and the amount logged.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use ltx_gpu::device::ResolvedDevice;
use ltx_models::ModelError;
use ltx_pipelines::budget::{self, LadderError};
use ltx_pipelines::demo::demo_pipeline;
use ltx_pipelines::multiscale::MultiscaleStage;
use ltx_pipelines::tiled_decode::TileConfig;
use ltx_pipelines::video::write_mp4;
use ltx_pipelines::{BudgetSpec, LtxI2vPipeline, MemoryOptions, Progress};
use tch::Kind;
use tokio::sync::{mpsc, oneshot};

use crate::family::{Family, FamilyState, Unloaded};
use crate::jobs::{unix_now, Job, JobMemory, JobState, Stage, WorkKind};
use crate::metrics::Metrics;
use crate::retention::{self, Retention};
use crate::ServerError;

pub struct WorkerConfig {
    pub model: Option<PathBuf>,
    /// The multi-scale flow's latent upsampler (`LTX_UPSAMPLER`; the demo model has its own).
    pub upsampler: Option<PathBuf>,
    pub device: ResolvedDevice,
    /// The offload mode (applied on CUDA; a no-op on the CPU).
    pub memory: MemoryOptions,
    /// VRAM budget for the residency manager (CUDA only).
    pub budget: BudgetSpec,
    /// Tiled decoding settings, and whether the switch turns tiling on for every job.
    pub tiling: TileConfig,
    pub tiling_on: bool,
    pub family: Family,
    pub metrics: Arc<Metrics>,
    pub retention: Retention,
}

/// What the worker is asked to do, in queue order.
pub enum Command {
    Run(Arc<Job>),
    /// Drop the model and release its memory; the reply says what was freed.
    Unload(oneshot::Sender<Unloaded>),
}

/// What `/v1/system` and every job report as the model.
pub fn model_description(model: Option<&std::path::Path>) -> String {
    match model {
        Some(p) => p.display().to_string(),
        None => "demo (built-in tiny model with random weights: its videos are noise)".into(),
    }
}

/// Starts the worker thread; it ends when every sender is dropped.
pub fn spawn(cfg: WorkerConfig, queue_size: usize) -> Result<mpsc::Sender<Command>, ServerError> {
    let (tx, rx) = mpsc::channel(queue_size);
    std::thread::Builder::new()
        .name("ltx-worker".into())
        .spawn(move || run(cfg, rx))
        .map_err(ServerError::Worker)?;
    Ok(tx)
}

/// The loaded model and the memory mode it was placed in.
struct Loaded {
    pipe: LtxI2vPipeline,
    mem: MemoryOptions,
}

/// Attaches the upsampler for multi-scale jobs if the pipeline has none yet (it is placed by
/// the pipeline's memory mode, so a re-placed model loads it again).
fn ensure_upsampler(cfg: &WorkerConfig, pipe: &mut LtxI2vPipeline) -> Result<(), ModelError> {
    if pipe.has_upsampler() {
        return Ok(());
    }
    match (&cfg.upsampler, &cfg.model) {
        (Some(path), _) => pipe.load_upsampler(path),
        (None, None) => ltx_pipelines::demo::attach_demo_upsampler(pipe),
        (None, Some(_)) => Err(ModelError::UnsupportedConfig(
            "the multi-scale flow needs a latent upsampler: set LTX_UPSAMPLER".into(),
        )),
    }
}

fn run(cfg: WorkerConfig, mut rx: mpsc::Receiver<Command>) {
    let mut pipeline: Option<Loaded> = None;
    while let Some(command) = rx.blocking_recv() {
        match command {
            Command::Run(job) => {
                let span = tracing::info_span!("job", id = %job.id);
                let _enter = span.enter();
                run_one(&cfg, &mut pipeline, &job);
                if let Some(l) = &pipeline {
                    report_placement(&cfg, &l.pipe);
                }
                release_cache(&cfg.device, "after the job");
                let trimmed = crate::host_memory::release_host_memory();
                tracing::info!(released_bytes = trimmed, "host heap trimmed after the job");
            }
            Command::Unload(reply) => {
                let was_loaded = pipeline.take().is_some();
                let report = cfg.family.get();
                let freed_weight_bytes = report.gpu_bytes + report.host_bytes;
                cfg.family.update(|f| {
                    f.state = FamilyState::Unloaded;
                    f.gpu_bytes = 0;
                    f.host_bytes = 0;
                });
                let released_cache_bytes = release_cache(&cfg.device, "after unloading");
                let trimmed = crate::host_memory::release_host_memory();
                tracing::info!(
                    released_bytes = trimmed,
                    "host heap trimmed after unloading"
                );
                tracing::info!(was_loaded, freed_weight_bytes, "unloaded LTX-Video");
                let _ = reply.send(Unloaded {
                    family: report.name,
                    was_loaded,
                    freed_weight_bytes,
                    released_cache_bytes,
                    state: FamilyState::Unloaded,
                });
            }
        }
    }
    tracing::info!("worker stopped");
}

/// Empties torch's CUDA cache; returns (and logs) the bytes given back to the driver.
fn release_cache(device: &ResolvedDevice, when: &str) -> u64 {
    let ResolvedDevice::Cuda(d) = device else {
        return 0;
    };
    let reserved = |d: &ltx_gpu::cuda::CudaDevice| d.memory_stats().map(|m| m.reserved_bytes);
    let before = reserved(d);
    if let Err(e) = d.empty_cache() {
        tracing::warn!("emptying the CUDA cache {when}: {e}");
        return 0;
    }
    match (before, reserved(d)) {
        (Ok(b), Ok(a)) => {
            let freed = b.saturating_sub(a);
            tracing::info!(
                freed_bytes = freed,
                reserved_bytes = a,
                "CUDA cache emptied {when}"
            );
            freed
        }
        _ => 0,
    }
}

/// Runs one job to its final state, whatever happens inside.
fn run_one(cfg: &WorkerConfig, pipeline: &mut Option<Loaded>, job: &Job) {
    let mut timer = StageTimer::new(&cfg.metrics);
    // A panic inside libtorch bindings fails this job, not the worker.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_job(cfg, pipeline, job, &mut timer)
    }))
    .unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        Err(Failure::Failed(format!("internal error: {what}")))
    });
    timer.finish(job);
    if cfg.family.get().state == FamilyState::Loading {
        // The load itself failed (or panicked): nothing stays loaded.
        *pipeline = None;
        cfg.family.update(|f| f.state = FamilyState::Unloaded);
    }
    let state = match outcome {
        Ok(Some(())) => JobState::Done,
        Ok(None) => return, // cancelled while queued: already final
        Err(Failure::Cancelled) => JobState::Cancelled,
        Err(Failure::Failed(_)) => JobState::Failed,
    };
    if let Err(Failure::Failed(e)) = &outcome {
        tracing::warn!("failed: {e}");
        let _ = std::fs::remove_file(retention::partial_path(&job.output));
        job.update(|s| s.error = Some(e.clone()));
    } else if state == JobState::Cancelled {
        tracing::info!("cancelled");
        let _ = std::fs::remove_file(retention::partial_path(&job.output));
    }
    job.update(|s| {
        s.state = state;
        s.stage = None;
        s.run_seconds = s.queued_seconds.map(|q| job.seconds_since_created() - q);
        if state == JobState::Done {
            s.expires_at = Some(unix_now() + cfg.retention.max_age_s);
        }
    });
    if state == JobState::Done {
        if let Err(e) = retention::persist(job) {
            tracing::warn!("cannot write the job record beside the video: {e}");
        }
        tracing::info!(path = %job.output.display(), "done");
    }
    cfg.metrics.job_finished(state);
}

/// The attention backend of one job (the host plan's chunked attention); the configured one
/// comes back when the job ends, however it ends. Only the worker thread runs models.
struct AttentionFor(ltx_models::attention::AttentionBackend);

impl AttentionFor {
    fn set(b: ltx_models::attention::AttentionBackend) -> Self {
        let before = ltx_models::attention::backend();
        ltx_models::attention::set_backend(b);
        tracing::info!(attention = %b, "attention backend for this job");
        Self(before)
    }
}

impl Drop for AttentionFor {
    fn drop(&mut self) {
        ltx_models::attention::set_backend(self.0);
    }
}

/// Why a job did not finish.
enum Failure {
    Cancelled,
    Failed(String),
}

impl From<ModelError> for Failure {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::Cancelled => Self::Cancelled,
            other => Self::Failed(other.to_string()),
        }
    }
}

/// Times the stages of one job: into the job's `timings` and the stage histogram.
struct StageTimer<'a> {
    metrics: &'a Metrics,
    current: Option<(Stage, Instant)>,
}

impl<'a> StageTimer<'a> {
    fn new(metrics: &'a Metrics) -> Self {
        Self {
            metrics,
            current: None,
        }
    }

    /// Ends the current stage (if another) and starts `stage`.
    fn enter(&mut self, job: &Job, stage: Stage) {
        if self.current.is_some_and(|(s, _)| s == stage) {
            return;
        }
        self.finish(job);
        self.current = Some((stage, Instant::now()));
        job.update(|s| s.stage = Some(stage));
    }

    fn finish(&mut self, job: &Job) {
        if let Some((stage, t0)) = self.current.take() {
            let secs = t0.elapsed().as_secs_f64();
            self.metrics.stage_seconds(stage, secs);
            job.update(|s| *s.timings.entry(stage).or_default() += secs);
        }
    }
}

fn load(
    cfg: &WorkerConfig,
    mem: MemoryOptions,
    max_sequence_length: usize,
) -> Result<Loaded, ModelError> {
    let device = cfg.device.tch_device();
    let dtype = if device == tch::Device::Cpu {
        Kind::Float
    } else {
        Kind::BFloat16
    };
    tracing::info!(model = %model_description(cfg.model.as_deref()), ?device, mode = %mem.mode, prefetch = mem.prefetch, "loading LTX-Video");
    let t0 = Instant::now();
    cfg.family.update(|f| f.state = FamilyState::Loading);
    let loaded = LtxI2vPipeline::load_placed(device, dtype, mem, |opts| match &cfg.model {
        Some(dir) => LtxI2vPipeline::load(dir, opts, max_sequence_length),
        None => demo_pipeline(opts, max_sequence_length),
    })?;
    let secs = t0.elapsed().as_secs_f64();
    cfg.family.update(|f| {
        f.load_seconds = Some(secs);
        f.loads += 1;
    });
    let mut loaded = loaded;
    loaded.set_vae_tiling(cfg.tiling_on.then(|| cfg.tiling.clone()))?;
    report_placement(cfg, &loaded);
    tracing::info!(
        weight_bytes = loaded.weight_bytes(),
        seconds = secs,
        "LTX-Video loaded"
    );
    Ok(Loaded { pipe: loaded, mem })
}

fn is_out_of_memory(e: &ModelError) -> bool {
    e.to_string().contains("out of memory")
}

/// GPU only: the mode this job should run in, given the budget and the loaded model's sizes;
/// when even that would not fit and tiling is off, tiling is turned on for the job (the
/// returned flag).
fn decide(
    cfg: &WorkerConfig,
    pipe: &mut LtxI2vPipeline,
    work: &WorkKind,
    tiling_on: bool,
) -> Result<Option<(budget::Decision, bool)>, ModelError> {
    let workload = |pipe: &LtxI2vPipeline| match work {
        WorkKind::I2v(p) => Ok(pipe.workload(p)),
        WorkKind::Multiscale(r) => pipe.multiscale_workload(&r.params),
    };
    pipe.set_vae_tiling(tiling_on.then(|| cfg.tiling.clone()))?;
    let ResolvedDevice::Cuda(d) = &cfg.device else {
        return Ok(None);
    };
    let Ok((free, total)) = d.mem_info() else {
        return Ok(None);
    };
    let reserved = d.memory_stats().map_or(0, |m| m.reserved_bytes);
    let budget_bytes = cfg.budget.bytes(free as u64, total as u64, reserved);
    let configured = (cfg.memory.mode, cfg.memory.prefetch);
    let d = budget::choose(
        &workload(pipe)?,
        &pipe.component_sizes(),
        configured,
        budget_bytes,
    );
    if d.estimate_bytes <= budget_bytes || tiling_on {
        return Ok(Some((d, false)));
    }
    pipe.set_vae_tiling(Some(cfg.tiling.clone()))?;
    let tiled = budget::choose(
        &workload(pipe)?,
        &pipe.component_sizes(),
        configured,
        budget_bytes,
    );
    Ok(Some((tiled, true)))
}

/// Where the loaded model's weights are now, into the family report.
fn report_placement(cfg: &WorkerConfig, pipe: &LtxI2vPipeline) {
    let m = pipe.memory_report();
    cfg.family.update(|f| {
        f.state = if m.mode.is_some() {
            FamilyState::Offloaded
        } else {
            FamilyState::Resident
        };
        f.gpu_bytes = m.device_bytes;
        f.host_bytes = m.host_bytes;
    });
}

/// `Ok(None)`: the job had been cancelled while queued.
fn run_job(
    cfg: &WorkerConfig,
    pipeline: &mut Option<Loaded>,
    job: &Job,
    timer: &mut StageTimer<'_>,
) -> Result<Option<()>, Failure> {
    let Some(work) = job.take_work() else {
        return Ok(None);
    };
    let queued = job.seconds_since_created();
    job.update(|s| {
        s.state = JobState::Running;
        s.queued_seconds = Some(queued);
    });
    if job.cancel_requested() {
        return Err(Failure::Cancelled);
    }
    // The tokenizer's base length; the multi-scale flow re-pads its prompts to 256 tokens.
    let msl = match &work.kind {
        WorkKind::I2v(p) => p.max_sequence_length,
        WorkKind::Multiscale(_) => 128,
    };
    if pipeline.is_none() {
        timer.enter(job, Stage::Loading);
        *pipeline = Some(load(cfg, cfg.memory, msl)?);
    }
    // The host plan made at submission: tiling and the attention backend for this job.
    let _attention = work.plan.attention.map(AttentionFor::set);
    let planned_tiling = cfg.tiling_on || work.plan.tiled;
    // The residency manager (GPU): a job that would not fit runs in a more frugal mode, with
    // tiled decoding if even that would not fit.
    let mut job_tiling = planned_tiling;
    if let Some(loaded) = pipeline.as_mut() {
        // A multi-scale job's estimate counts the upsampler, so attach it first.
        if matches!(work.kind, WorkKind::Multiscale(_)) && !loaded.pipe.has_upsampler() {
            timer.enter(job, Stage::Loading);
            ensure_upsampler(cfg, &mut loaded.pipe)?;
        }
        if let Some((d, tiling)) = decide(cfg, &mut loaded.pipe, &work.kind, planned_tiling)? {
            job_tiling |= tiling;
            let want = MemoryOptions {
                mode: d.mode,
                prefetch: d.prefetch,
            };
            let mut reason = d.reason.clone();
            if tiling {
                let why = "the untiled decode would not fit: VAE tiling on for this job";
                reason = Some(match reason {
                    Some(r) => format!("{r}; {why}"),
                    None => why.to_string(),
                });
            }
            if let Some(why) = &reason {
                tracing::info!("residency: {why}");
            }
            if want != loaded.mem {
                *pipeline = None;
                release_cache(&cfg.device, "before re-placing the model");
                timer.enter(job, Stage::Loading);
                let mut l = load(cfg, want, msl)?;
                l.pipe
                    .set_vae_tiling((planned_tiling || tiling).then(|| cfg.tiling.clone()))?;
                *pipeline = Some(l);
            }
            job.update(|s| {
                s.memory = Some(JobMemory {
                    mode: d.mode.to_string(),
                    prefetch: d.prefetch,
                    estimate_bytes: d.estimate_bytes,
                    budget_bytes: d.budget_bytes,
                    reason: reason.clone(),
                    fallback: None,
                })
            });
        }
    }
    let on_cuda = matches!(cfg.device, ResolvedDevice::Cuda(_));
    let start = pipeline
        .as_ref()
        .map(|l| (l.mem.mode, l.mem.prefetch))
        .ok_or_else(|| Failure::Failed("the model is not loaded".into()))?;
    // The out-of-memory ladder (GPU): after a CUDA out-of-memory everything the attempt held
    // is freed, the model re-placed one rung down, and the job retried once.
    let outcome = budget::run_with_ladder(
        start,
        |mode, prefetch, retry| -> Result<tch::Tensor, ModelError> {
            if retry {
                *pipeline = None;
                release_cache(&cfg.device, "after running out of memory");
                timer.enter(job, Stage::Loading);
                job.update(|s| s.step = 0);
                let mut l = load(cfg, MemoryOptions { mode, prefetch }, msl)?;
                l.pipe
                    .set_vae_tiling(job_tiling.then(|| cfg.tiling.clone()))?;
                *pipeline = Some(l);
            }
            let loaded = pipeline
                .as_mut()
                .ok_or_else(|| ModelError::Memory("the model is not loaded".into()))?;
            let mut progress = |p: Progress| match p {
                Progress::EncodingText => timer.enter(job, Stage::EncodingText),
                Progress::EncodingImage => timer.enter(job, Stage::EncodingImage),
                Progress::Denoising { step, total } => {
                    timer.enter(job, Stage::Denoising);
                    job.update(|s| {
                        s.step = step;
                        s.total_steps = total;
                    });
                }
                Progress::Decoding => timer.enter(job, Stage::Decoding),
            };
            match &work.kind {
                WorkKind::I2v(params) => {
                    loaded
                        .pipe
                        .generate_u8(&work.image, params, &mut progress, &|| {
                            job.cancel_requested()
                        })
                }
                WorkKind::Multiscale(r) => {
                    // A model re-placed for this job (mode change, out-of-memory retry)
                    // loads its upsampler again.
                    if !loaded.pipe.has_upsampler() {
                        timer.enter(job, Stage::Loading);
                        ensure_upsampler(cfg, &mut loaded.pipe)?;
                    }
                    let low = r.params.steps_lowres;
                    let total = work.total_steps();
                    let mut stage = |s: MultiscaleStage| {
                        let step = match s {
                            MultiscaleStage::LowRes { step, .. } => Some(step),
                            MultiscaleStage::Refine { step, .. } => Some(low + step),
                            MultiscaleStage::Upsampling => {
                                timer.enter(job, Stage::Upsampling);
                                None
                            }
                            MultiscaleStage::EncodingText => {
                                timer.enter(job, Stage::EncodingText);
                                None
                            }
                            MultiscaleStage::LowResPass | MultiscaleStage::RefinePass => {
                                timer.enter(job, Stage::EncodingImage);
                                None
                            }
                            MultiscaleStage::Decoding | MultiscaleStage::Resizing => {
                                timer.enter(job, Stage::Decoding);
                                None
                            }
                        };
                        if let Some(step) = step {
                            timer.enter(job, Stage::Denoising);
                            job.update(|s| {
                                s.step = step;
                                s.total_steps = total;
                            });
                        }
                    };
                    loaded
                        .pipe
                        .generate_multiscale(&work.image, r, &mut stage, &|| job.cancel_requested())
                }
            }
        },
        |e| on_cuda && is_out_of_memory(e),
    );
    let frames = match outcome {
        Ok((frames, None)) => frames,
        Ok((frames, Some(note))) => {
            let mem = pipeline.as_ref().map(|l| l.mem);
            job.update(|s| {
                let m = s.memory.get_or_insert_with(JobMemory::default);
                if let Some(mem) = mem {
                    m.mode = mem.mode.to_string();
                    m.prefetch = mem.prefetch;
                }
                m.fallback = Some(note.clone());
            });
            frames
        }
        Err(LadderError::Other(e)) => return Err(e.into()),
        Err(LadderError::OutOfMemory {
            mode,
            prefetch,
            retried,
            error,
        }) => {
            return Err(Failure::Failed(format!(
                "CUDA out of memory in {mode} offload (prefetch {prefetch}){}: {error}. Lower \
                 the resolution or the frame count.",
                if retried {
                    ", after one retry a rung down"
                } else {
                    ", the most frugal mode"
                }
            )))
        }
    };
    timer.enter(job, Stage::WritingVideo);
    let frames = frames
        .f_to_device(tch::Device::Cpu)
        .map_err(ModelError::from)?;
    let partial = retention::partial_path(&job.output);
    write_mp4(&frames, work.fps, &partial)
        .map_err(|e| Failure::Failed(format!("writing the video: {e}")))?;
    std::fs::rename(&partial, &job.output)
        .map_err(|e| Failure::Failed(format!("writing the video: {e}")))?;
    Ok(Some(()))
}
