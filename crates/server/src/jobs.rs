//! Jobs: what was asked, where it stands, where its video is. The HTTP side reads and
//! cancels; only the worker moves a job forward. Updates go out on a watch channel so a
//! waiting request wakes when its job changes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ltx_pipelines::image::RgbImage;
use ltx_pipelines::I2vParams;
use serde::Serialize;
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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

/// A job as clients see it (`GET /v1/jobs/{id}`).
#[derive(Debug, Clone, Serialize)]
pub struct JobStatus {
    pub id: String,
    pub state: JobState,
    /// loading, encoding_text, encoding_image, denoising, decoding, writing_video.
    pub stage: Option<&'static str>,
    pub step: usize,
    pub total_steps: usize,
    pub error: Option<String>,
    /// Unix seconds.
    pub created_at: u64,
    pub queued_seconds: Option<f64>,
    pub run_seconds: Option<f64>,
    pub model: String,
    pub seed: u64,
}

/// A validated request, ready for the worker.
pub struct Work {
    pub image: RgbImage,
    pub params: I2vParams,
    pub fps: f64,
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
        let created_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let status = JobStatus {
            id: id.clone(),
            state: JobState::Queued,
            stage: None,
            step: 0,
            total_steps: work.params.steps,
            error: None,
            created_at,
            queued_seconds: None,
            run_seconds: None,
            model,
            seed: work.params.seed,
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

    /// Forgets a job that never reached the queue.
    pub fn remove(&self, id: &str) {
        lock(&self.jobs).remove(id);
    }
}
