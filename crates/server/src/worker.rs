//! The worker: one OS thread that owns every tensor and the model, fed by a bounded channel.
//! The model loads on the first job (lazy loading), and each job either finishes with a video
//! on disk, fails with its error, or stops at a step boundary when cancelled; the thread keeps
//! serving after a failed job.

use std::path::PathBuf;
use std::sync::Arc;

use ltx_gpu::device::ResolvedDevice;
use ltx_models::ModelError;
use ltx_pipelines::demo::demo_pipeline;
use ltx_pipelines::video::write_mp4;
use ltx_pipelines::{LoadOptions, LtxI2vPipeline, Progress};
use tch::Kind;
use tokio::sync::mpsc;

use crate::jobs::{Job, JobState};
use crate::ServerError;

pub struct WorkerConfig {
    pub model: Option<PathBuf>,
    pub device: ResolvedDevice,
}

impl WorkerConfig {
    /// What `/v1/system` and every job report as the model.
    pub fn model_description(&self) -> String {
        match &self.model {
            Some(p) => p.display().to_string(),
            None => "demo (built-in tiny model with random weights: its videos are noise)".into(),
        }
    }
}

/// Starts the worker thread; it ends when every sender is dropped.
pub fn spawn(cfg: WorkerConfig, queue_size: usize) -> Result<mpsc::Sender<Arc<Job>>, ServerError> {
    let (tx, rx) = mpsc::channel(queue_size);
    std::thread::Builder::new()
        .name("ltx-worker".into())
        .spawn(move || run(cfg, rx))
        .map_err(ServerError::Worker)?;
    Ok(tx)
}

fn run(cfg: WorkerConfig, mut rx: mpsc::Receiver<Arc<Job>>) {
    let mut pipeline: Option<LtxI2vPipeline> = None;
    while let Some(job) = rx.blocking_recv() {
        let span = tracing::info_span!("job", id = %job.id);
        let _enter = span.enter();
        // A panic inside libtorch bindings fails this job, not the worker.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_job(&cfg, &mut pipeline, &job)
        }))
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            Err(Failure::Failed(format!("internal error: {what}")))
        });
        if let Err(f) = outcome {
            let error = match &f {
                Failure::Cancelled => None,
                Failure::Failed(e) => Some(e.clone()),
            };
            job.update(|s| {
                s.state = if error.is_some() {
                    JobState::Failed
                } else {
                    JobState::Cancelled
                };
                s.error = error.clone();
                s.stage = None;
                s.run_seconds = s.queued_seconds.map(|q| job.seconds_since_created() - q);
            });
            match error {
                Some(e) => tracing::warn!("failed: {e}"),
                None => tracing::info!("cancelled"),
            }
        }
        if let ResolvedDevice::Cuda(d) = &cfg.device {
            if let Err(e) = d.empty_cache() {
                tracing::warn!("emptying the CUDA cache after the job: {e}");
            }
        }
    }
    tracing::info!("worker stopped");
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

fn run_job(
    cfg: &WorkerConfig,
    pipeline: &mut Option<LtxI2vPipeline>,
    job: &Job,
) -> Result<(), Failure> {
    let Some(work) = job.take_work() else {
        return Ok(()); // cancelled while queued: already marked
    };
    let queued = job.seconds_since_created();
    job.update(|s| {
        s.state = JobState::Running;
        s.queued_seconds = Some(queued);
    });
    if job.cancel_requested() {
        return Err(Failure::Cancelled);
    }
    let pipe = match pipeline {
        Some(p) => p,
        None => {
            job.update(|s| s.stage = Some("loading"));
            let device = cfg.device.tch_device();
            let dtype = if device == tch::Device::Cpu {
                Kind::Float
            } else {
                Kind::BFloat16
            };
            let opts = LoadOptions { device, dtype };
            tracing::info!(model = %cfg.model_description(), ?device, "loading LTX-Video");
            let loaded = match &cfg.model {
                Some(dir) => LtxI2vPipeline::load(dir, opts, work.params.max_sequence_length)?,
                None => demo_pipeline(opts, work.params.max_sequence_length)?,
            };
            pipeline.insert(loaded)
        }
    };
    let mut progress = |p: Progress| {
        job.update(|s| match p {
            Progress::EncodingText => s.stage = Some("encoding_text"),
            Progress::EncodingImage => s.stage = Some("encoding_image"),
            Progress::Denoising { step, total } => {
                s.stage = Some("denoising");
                s.step = step;
                s.total_steps = total;
            }
            Progress::Decoding => s.stage = Some("decoding"),
        })
    };
    let frames = pipe.generate_cancellable(&work.image, &work.params, &mut progress, &|| {
        job.cancel_requested()
    })?;
    job.update(|s| s.stage = Some("writing_video"));
    let frames = frames
        .f_to_device(tch::Device::Cpu)
        .map_err(ModelError::from)?;
    write_mp4(&frames, work.fps, &job.output)
        .map_err(|e| Failure::Failed(format!("writing the video: {e}")))?;
    job.update(|s| {
        s.state = JobState::Done;
        s.stage = None;
        s.run_seconds = Some(job.seconds_since_created() - queued);
    });
    tracing::info!(path = %job.output.display(), "done");
    Ok(())
}
