//! Jobs: what was asked, where it stands, where its result (an MP4 or a PNG) is. The HTTP
//! side reads and cancels; only the family's worker moves a job forward. Updates go out on a watch channel so a
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

use crate::family::FamilyId;

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
    /// InstantID: the face photo's detection and embedding, done when the job was submitted.
    FaceAnalysis,
    Loading,
    EncodingText,
    EncodingImage,
    Denoising,
    /// The multi-scale flow's 2× latent upsample, between its two denoising passes.
    Upsampling,
    Decoding,
    WritingVideo,
    WritingImage,
}

impl Stage {
    pub const ALL: [Stage; 9] = [
        Stage::FaceAnalysis,
        Stage::Loading,
        Stage::EncodingText,
        Stage::EncodingImage,
        Stage::Denoising,
        Stage::Upsampling,
        Stage::Decoding,
        Stage::WritingVideo,
        Stage::WritingImage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::FaceAnalysis => "face_analysis",
            Self::Loading => "loading",
            Self::EncodingText => "encoding_text",
            Self::EncodingImage => "encoding_image",
            Self::Denoising => "denoising",
            Self::Upsampling => "upsampling",
            Self::Decoding => "decoding",
            Self::WritingVideo => "writing_video",
            Self::WritingImage => "writing_image",
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
    /// The model family that runs the job: `ltx` or `instantid`.
    #[serde(default = "ltx_family")]
    pub family: String,
    /// The model that serves (or served) the job.
    pub model: String,
    pub seed: u64,
    /// The residency manager's decision: on a GPU the memory mode the job ran in (and why
    /// when it is not the configured one); on any device what it evicted to make room.
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

fn ltx_family() -> String {
    "ltx".into()
}

/// How the residency manager placed a job's weights. On a GPU it is always set; on the CPU
/// device (where host memory is the device's) only when another family was unloaded to make
/// room, and the bytes are host bytes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct JobMemory {
    /// none, model or sequential.
    pub mode: String,
    /// Sequential mode: blocks copied ahead.
    pub prefetch: usize,
    /// The estimated peak device memory in that mode.
    pub estimate_bytes: u64,
    /// What it was checked against: the family's VRAM budget less what other families still
    /// hold on the device.
    pub budget_bytes: u64,
    /// Bytes other families kept on the device while the job ran.
    #[serde(default)]
    pub held_by_others_bytes: u64,
    /// Why the mode differs from the configured one.
    pub reason: Option<String>,
    /// What the out-of-memory ladder did, if it had to.
    pub fallback: Option<String>,
    /// Families moved off the device before the job, to make room for it.
    #[serde(default)]
    pub evicted: Vec<crate::residency::Eviction>,
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

/// An LTX-Video job's input: the condition image and the MP4's frame rate.
pub struct VideoInput {
    pub image: RgbImage,
    pub fps: f64,
}

/// An InstantID job: the face conditioning analysed at submission and the settings.
pub struct InstantIdWork {
    pub face: ltx_pipelines::instantid::FaceConditioning,
    pub params: ltx_pipelines::instantid::InstantIdParams,
    /// Another scheduler class than the model's (one of the SDXL module's).
    pub scheduler: Option<&'static str>,
    /// Seconds the face analysis took at submission (the job's `face_analysis` stage).
    pub face_seconds: f64,
}

/// What a job generates.
pub enum WorkKind {
    /// `LTXImageToVideoPipeline`.
    I2v(VideoInput, I2vParams),
    /// The 0.9.7/0.9.8 multi-scale flow (`POST /i2v`).
    Multiscale(VideoInput, Box<MultiscaleRequest>),
    /// InstantID (`POST /v1/instantid`, `POST /instantid`): a PNG portrait.
    InstantId(Box<InstantIdWork>),
}

/// A validated request, ready for the worker.
pub struct Work {
    pub kind: WorkKind,
    pub warnings: Vec<String>,
    /// How it runs (tiling, attention), decided at submission.
    pub plan: crate::admission::JobPlan,
    pub host_memory: Option<HostMemory>,
}

impl Work {
    /// A job with no plan yet (the planner adds one when it admits the job).
    pub fn new(kind: WorkKind, warnings: Vec<String>) -> Self {
        Self {
            kind,
            warnings,
            plan: Default::default(),
            host_memory: None,
        }
    }

    /// The family whose worker runs it.
    pub fn family(&self) -> FamilyId {
        match &self.kind {
            WorkKind::I2v(..) | WorkKind::Multiscale(..) => FamilyId::Ltx,
            WorkKind::InstantId(_) => FamilyId::InstantId,
        }
    }

    /// The result's file extension: `mp4` or `png`.
    pub fn extension(&self) -> &'static str {
        match &self.kind {
            WorkKind::I2v(..) | WorkKind::Multiscale(..) => "mp4",
            WorkKind::InstantId(_) => "png",
        }
    }

    /// The condition image and frame rate of an LTX-Video job.
    pub fn video(&self) -> Option<&VideoInput> {
        match &self.kind {
            WorkKind::I2v(v, _) | WorkKind::Multiscale(v, _) => Some(v),
            WorkKind::InstantId(_) => None,
        }
    }

    pub fn seed(&self) -> u64 {
        match &self.kind {
            WorkKind::I2v(_, p) => p.seed,
            WorkKind::Multiscale(_, r) => r.seed,
            WorkKind::InstantId(w) => w.params.seed,
        }
    }

    /// What the job's timings hold before it runs: the face analysis done at submission.
    fn timings_at_submission(&self) -> std::collections::BTreeMap<Stage, f64> {
        match &self.kind {
            WorkKind::InstantId(w) => [(Stage::FaceAnalysis, w.face_seconds)].into(),
            _ => Default::default(),
        }
    }

    /// Denoising steps the job will report (both passes of the multi-scale flow).
    pub fn total_steps(&self) -> usize {
        match &self.kind {
            WorkKind::I2v(_, p) => p.steps,
            WorkKind::Multiscale(_, r) => {
                let p = &r.params;
                p.steps_lowres + (p.steps_refine as f64 * p.denoise_strength) as usize
            }
            WorkKind::InstantId(w) => w.params.steps,
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
            timings: work.timings_at_submission(),
            family: work.family().as_str().to_string(),
            model,
            seed: work.seed(),
            memory: None,
            host_memory: work.host_memory.clone(),
            expires_at: None,
            expired: false,
            warnings: work.warnings.clone(),
        };
        let job = Arc::new(Job {
            output: output_dir.join(format!("{id}.{}", work.extension())),
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

    /// Whether a job is running on a worker.
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
