//! Jobs: what was asked, where it stands, where its video is. The HTTP side reads and
//! cancels; only the worker moves a job forward. Updates go out on a watch channel so a
//! waiting request wakes when its job changes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ltx_pipelines::image::RgbImage;
use ltx_pipelines::multiscale::MultiscaleRequest;
use ltx_pipelines::I2vParams;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Done | Self::Failed | Self::Cancelled)
    }
}

/// What a running job is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Loading,
    EncodingText,
    EncodingImage,
    Denoising,
    /// The multi-scale flow's 2× latent upsample, between its two denoising passes.
    Upsampling,
    Decoding,
    WritingVideo,
}

impl Stage {
    pub const ALL: [Stage; 7] = [
        Stage::Loading,
        Stage::EncodingText,
        Stage::EncodingImage,
        Stage::Denoising,
        Stage::Upsampling,
        Stage::Decoding,
        Stage::WritingVideo,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Loading => "loading",
            Self::EncodingText => "encoding_text",
            Self::EncodingImage => "encoding_image",
            Self::Denoising => "denoising",
            Self::Upsampling => "upsampling",
            Self::Decoding => "decoding",
            Self::WritingVideo => "writing_video",
        }
    }
}

/// A job as clients see it (`GET /v1/jobs/{id}`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobStatus {
    /// 32 hex digits (128 random bits).
    pub id: String,
    pub state: JobState,
    /// What a running job is doing now.
    pub stage: Option<Stage>,
    /// Denoising step reached (of `total_steps`).
    pub step: usize,
    pub total_steps: usize,
    /// Why the job failed.
    pub error: Option<String>,
    /// Unix seconds.
    pub created_at: u64,
    /// Seconds the job waited in the queue.
    pub queued_seconds: Option<f64>,
    /// Seconds from leaving the queue to the end.
    pub run_seconds: Option<f64>,
    /// Seconds spent in each stage so far.
    pub timings: std::collections::BTreeMap<Stage, f64>,
    /// The model that serves (or served) the job.
    pub model: String,
    pub seed: u64,
    /// GPU only: the memory mode the job ran in, and why when it is not the configured one.
    pub memory: Option<JobMemory>,
    /// The host memory plan made at submission: the estimated peak resident memory of the
    /// process while the job runs, the budget it fits, and what was turned on to fit it.
    #[serde(default)]
    pub host_memory: Option<HostMemory>,
    /// Unix seconds after which the result may be deleted (set when the job is done).
    pub expires_at: Option<u64>,
    /// The result was deleted by the retention policy.
    #[serde(default)]
    pub expired: bool,
    /// What the job does differently from what was asked, and why (e.g. 96 requested frames
    /// become 89, as diffusers makes them).
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// How the residency manager placed a job's weights (GPU only).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct JobMemory {
    /// none, model or sequential.
    pub mode: String,
    /// Sequential mode: blocks copied ahead.
    pub prefetch: usize,
    /// The estimated peak device memory in that mode.
    pub estimate_bytes: u64,
    /// The VRAM budget it was checked against.
    pub budget_bytes: u64,
    /// Why the mode differs from the configured one.
    pub reason: Option<String>,
    /// What the out-of-memory ladder did, if it had to.
    pub fallback: Option<String>,
}

/// The host memory plan of a job (`LTX_HOST_BUDGET`), made when it was submitted.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HostMemory {
    /// The estimated peak resident memory of the server process while the job runs.
    pub estimate_bytes: u64,
    /// The host budget it was checked against.
    pub budget_bytes: u64,
    /// Whether the video is decoded in tiles.
    pub tiled_decode: bool,
    /// The attention backend the job runs with.
    pub attention: String,
    /// What differs from the configured settings to fit the budget, and why.
    pub reason: Option<String>,
}

/// What a job generates.
pub enum WorkKind {
    /// `LTXImageToVideoPipeline`.
    I2v(I2vParams),
    /// The 0.9.7/0.9.8 multi-scale flow (`POST /i2v`).
    Multiscale(Box<MultiscaleRequest>),
}

/// A validated request, ready for the worker.
pub struct Work {
    pub image: RgbImage,
    pub kind: WorkKind,
    /// The MP4's frame rate.
    pub fps: f64,
    pub warnings: Vec<String>,
    /// How it runs (tiling, attention), decided at submission.
    pub plan: crate::admission::JobPlan,
    pub host_memory: Option<HostMemory>,
}

impl Work {
    pub fn seed(&self) -> u64 {
        match &self.kind {
            WorkKind::I2v(p) => p.seed,
            WorkKind::Multiscale(r) => r.seed,
        }
    }

    /// Denoising steps the job will report (both passes of the multi-scale flow).
    pub fn total_steps(&self) -> usize {
        match &self.kind {
            WorkKind::I2v(p) => p.steps,
            WorkKind::Multiscale(r) => {
                let p = &r.params;
                p.steps_lowres + (p.steps_refine as f64 * p.denoise_strength) as usize
            }
        }
    }
}

pub struct Job {
    pub id: String,
    status: watch::Sender<JobStatus>,
    cancel: AtomicBool,
    work: Mutex<Option<Work>>,
    created: Instant,
    pub output: PathBuf,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Job {
    pub fn status(&self) -> JobStatus {
        self.status.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<JobStatus> {
        self.status.subscribe()
    }

    pub fn update(&self, f: impl FnOnce(&mut JobStatus)) {
        self.status.send_modify(f);
    }

    pub fn take_work(&self) -> Option<Work> {
        lock(&self.work).take()
    }

    pub fn cancel_requested(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    pub fn seconds_since_created(&self) -> f64 {
        self.created.elapsed().as_secs_f64()
    }

    /// Asks the job to stop: a queued job is cancelled at once, a running one at its next
    /// step boundary. Returns the state after the request.
    pub fn cancel(&self) -> JobState {
        self.cancel.store(true, Ordering::Relaxed);
        let mut state = JobState::Cancelled;
        self.status.send_modify(|s| {
            if s.state == JobState::Queued {
                s.state = JobState::Cancelled;
                s.stage = None;
            }
            state = s.state;
        });
        if state == JobState::Cancelled {
            lock(&self.work).take();
        }
        state
    }
}

/// All jobs of this process, by unguessable id.
#[derive(Default)]
pub struct JobStore {
    jobs: Mutex<HashMap<String, Arc<Job>>>,
}

/// 128 random bits, hex: ids cannot be guessed from one another.
fn new_id() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl JobStore {
    pub fn create(
        &self,
        work: Work,
        model: String,
        output_dir: &std::path::Path,
    ) -> Result<Arc<Job>, getrandom::Error> {
        let id = new_id()?;
        let created_at = unix_now();
        let status = JobStatus {
            id: id.clone(),
            state: JobState::Queued,
            stage: None,
            step: 0,
            total_steps: work.total_steps(),
            error: None,
            created_at,
            queued_seconds: None,
            run_seconds: None,
            timings: Default::default(),
            model,
            seed: work.seed(),
            memory: None,
            host_memory: work.host_memory.clone(),
            expires_at: None,
            expired: false,
            warnings: work.warnings.clone(),
        };
        let job = Arc::new(Job {
            output: output_dir.join(format!("{id}.mp4")),
            id: id.clone(),
            status: watch::Sender::new(status),
            cancel: AtomicBool::new(false),
            work: Mutex::new(Some(work)),
            created: Instant::now(),
        });
        lock(&self.jobs).insert(id, job.clone());
        Ok(job)
    }

    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        lock(&self.jobs).get(id).cloned()
    }

    /// Asks every unfinished job to stop; returns how many there were.
    pub fn cancel_all(&self) -> usize {
        let jobs: Vec<Arc<Job>> = lock(&self.jobs).values().cloned().collect();
        let mut cancelled = 0;
        for job in jobs.iter().filter(|j| !j.status().state.is_terminal()) {
            job.cancel();
            cancelled += 1;
        }
        cancelled
    }

    /// Whether a job is running on the worker.
    pub fn any_running(&self) -> bool {
        lock(&self.jobs)
            .values()
            .any(|j| j.status().state == JobState::Running)
    }

    /// Forgets a job (one that never reached the queue, or one past retention).
    pub fn remove(&self, id: &str) {
        lock(&self.jobs).remove(id);
    }

    /// Every job, in no particular order.
    pub fn all(&self) -> Vec<Arc<Job>> {
        lock(&self.jobs).values().cloned().collect()
    }

    /// Puts back a finished job found on disk at start-up.
    pub fn restore(&self, status: JobStatus, output: PathBuf) {
        let id = status.id.clone();
        let job = Arc::new(Job {
            id: id.clone(),
            status: watch::Sender::new(status),
            cancel: AtomicBool::new(false),
            work: Mutex::new(None),
            created: Instant::now(),
            output,
        });
        lock(&self.jobs).insert(id, job);
    }

    /// Jobs waiting or running.
    pub fn unfinished(&self) -> usize {
        lock(&self.jobs)
            .values()
            .filter(|j| !j.status().state.is_terminal())
            .count()
    }
}

/// Unix time in seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether `name` looks like a job id (so only our own files are ever deleted).
pub fn is_job_id(name: &str) -> bool {
    name.len() == 32 && name.bytes().all(|b| b.is_ascii_hexdigit())
}
