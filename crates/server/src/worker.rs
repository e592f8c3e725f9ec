//! A device's worker: one OS thread that owns every tensor of the families placed on that
//! device, fed by a bounded channel of commands (run a job, unload a family) that it serves in
//! order. Each family loads on its first job (lazy loading). Before a job the device's
//! residency manager makes room for it ([`crate::residency`]); the job then finishes with its
//! file on disk, fails with its error, or stops at a step boundary when cancelled, and the
//! thread keeps serving after a failed job. After every job the CUDA allocator's cache is
//! released and the amount logged.

use std::sync::Arc;
use std::time::Instant;

use ltx_gpu::device::ResolvedDevice;
use ltx_models::ModelError;
use ltx_pipelines::budget::{self, estimate_peak, HostPlacement, LadderError};
use ltx_pipelines::{MemoryOptions, OffloadMode};
use tokio::sync::{mpsc, oneshot};

use crate::families::{Estimate, JobCtx, ModelFamily};
use crate::family::{Family, FamilyId, FamilyState, Unloaded};
use crate::host_memory::{resident_bytes, HostBudget, RUNTIME_BYTES};
use crate::jobs::{unix_now, Job, JobMemory, JobState, Stage, Work};
use crate::metrics::Metrics;
use crate::residency::{self, EvictAction, Eviction, Holder};
use crate::retention::{self, Retention};
use crate::ServerError;

/// A family on this worker's device, with the report it keeps up to date.
pub struct Slot {
    pub family: Box<dyn ModelFamily>,
    pub report: Family,
    /// The worker's job counter when the family last ran a job (least recently used leaves
    /// the device first).
    last_used: u64,
    /// The residency manager moved its resident weights to host memory: its next jobs run
    /// from those pinned copies (model offload) rather than reload, while that fits.
    kept_in_host: bool,
}

impl Slot {
    pub fn new(family: Box<dyn ModelFamily>, report: Family) -> Self {
        Self {
            family,
            report,
            last_used: 0,
            kept_in_host: false,
        }
    }
}

pub struct WorkerConfig {
    pub device: ResolvedDevice,
    pub families: Vec<Slot>,
    /// The host budget (`LTX_HOST_BUDGET`): room for offloaded copies, and on the CPU the
    /// device's memory.
    pub host: HostBudget,
    pub metrics: Arc<Metrics>,
    pub retention: Retention,
}

/// What the worker is asked to do, in queue order.
pub enum Command {
    Run(Arc<Job>),
    /// Drop a family's model and release its memory; the reply says what was freed.
    Unload(FamilyId, oneshot::Sender<Unloaded>),
}

/// Starts the worker thread; it ends when every sender is dropped.
pub fn spawn(cfg: WorkerConfig, queue_size: usize) -> Result<mpsc::Sender<Command>, ServerError> {
    let (tx, rx) = mpsc::channel(queue_size);
    let name = format!("worker-{}", device_name(&cfg.device));
    std::thread::Builder::new()
        .name(name)
        .spawn(move || Worker::new(cfg).run(rx))
        .map_err(ServerError::Worker)?;
    Ok(tx)
}

/// "cpu" or "cuda:N".
pub fn device_name(d: &ResolvedDevice) -> String {
    match d {
        ResolvedDevice::Cpu { .. } => "cpu".into(),
        ResolvedDevice::Cuda(d) => format!("cuda:{}", d.index()),
    }
}

pub(crate) struct Worker {
    device: ResolvedDevice,
    slots: Vec<Slot>,
    host: HostBudget,
    metrics: Arc<Metrics>,
    retention: Retention,
    jobs_run: u64,
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

/// The attention backend of one job (its family's, or its host plan's chunked attention);
/// the previous one comes back when the job ends, however it ends.
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

fn is_out_of_memory(e: &ModelError) -> bool {
    e.to_string().contains("out of memory")
}

/// The family's report from where its weights are now.
fn sync_report(slot: &Slot) {
    let m = slot.family.memory();
    slot.report.update(|f| match m {
        None => {
            f.state = FamilyState::Unloaded;
            f.gpu_bytes = 0;
            f.host_bytes = 0;
        }
        Some(m) => {
            f.state = if m.mode.is_some() {
                FamilyState::Offloaded
            } else {
                FamilyState::Resident
            };
            f.gpu_bytes = m.device_bytes;
            f.host_bytes = m.host_bytes;
        }
    });
}

/// Drops `slot`'s model; whether one was loaded.
fn unload_model(slot: &mut Slot) -> bool {
    slot.kept_in_host = false;
    slot.family.unload()
}

/// Loads `slot`'s model in `mem` for `work`, timing it into the report.
fn load(slot: &mut Slot, mem: MemoryOptions, work: &Work) -> Result<(), ModelError> {
    slot.kept_in_host = false;
    slot.report.update(|f| f.state = FamilyState::Loading);
    let t0 = Instant::now();
    slot.family.load(mem, work)?;
    let secs = t0.elapsed().as_secs_f64();
    slot.report.update(|f| {
        f.load_seconds = Some(secs);
        f.loads += 1;
    });
    sync_report(slot);
    tracing::info!(family = %slot.family.id(), seconds = secs, "loaded");
    Ok(())
}

/// Joins two optional reasons with "; ".
fn join(a: Option<String>, b: Option<&str>) -> Option<String> {
    match (a, b) {
        (Some(a), Some(b)) => Some(format!("{a}; {b}")),
        (a, b) => a.or(b.map(str::to_string)),
    }
}

impl Worker {
    pub(crate) fn new(cfg: WorkerConfig) -> Self {
        Self {
            device: cfg.device,
            slots: cfg.families,
            host: cfg.host,
            metrics: cfg.metrics,
            retention: cfg.retention,
            jobs_run: 0,
        }
    }

    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(command) = rx.blocking_recv() {
            match command {
                Command::Run(job) => self.run_job(&job),
                Command::Unload(family, reply) => {
                    let _ = reply.send(self.unload(family));
                }
            }
        }
        tracing::info!(device = %device_name(&self.device), "worker stopped");
    }

    fn slot_of(&self, family: FamilyId) -> Option<usize> {
        self.slots.iter().position(|s| s.family.id() == family)
    }

    /// Runs one job, then cleans up.
    pub(crate) fn run_job(&mut self, job: &Job) {
        let span = tracing::info_span!("job", id = %job.id);
        let _enter = span.enter();
        self.run_one(job);
        for slot in &self.slots {
            if slot.family.memory().is_some() {
                sync_report(slot);
            }
        }
        release_cache(&self.device, "after the job");
    }

    /// Runs one job to its final state, whatever happens inside.
    fn run_one(&mut self, job: &Job) {
        let family = FamilyId::parse(&job.status().family).unwrap_or(FamilyId::Ltx);
        let metrics = self.metrics.clone();
        let mut ctx = JobCtx::new(job, family, &metrics);
        // A panic inside libtorch bindings fails this job, not the worker.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.run_work(job, &mut ctx)
        }))
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            Err(Failure::Failed(format!("internal error: {what}")))
        });
        ctx.finish();
        for slot in &mut self.slots {
            if slot.report.get().state == FamilyState::Loading {
                // The load itself failed (or panicked): nothing stays loaded.
                unload_model(slot);
                sync_report(slot);
            }
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
                s.expires_at = Some(unix_now() + self.retention.max_age_s);
            }
        });
        if state == JobState::Done {
            if let Err(e) = retention::persist(job) {
                tracing::warn!("cannot write the job record beside the result: {e}");
            }
            tracing::info!(path = %job.output.display(), "done");
        }
        self.metrics.job_finished(family, state);
    }

    /// `Ok(None)`: the job had been cancelled while queued.
    fn run_work(&mut self, job: &Job, ctx: &mut JobCtx<'_>) -> Result<Option<()>, Failure> {
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
        let i = self.slot_of(work.family()).ok_or_else(|| {
            Failure::Failed(format!(
                "the {} family has no worker on {}",
                work.family(),
                device_name(&self.device)
            ))
        })?;
        self.jobs_run += 1;
        self.slots[i].last_used = self.jobs_run;
        // The family's attention backend, or the one the job's host plan chose.
        let backend = work
            .plan
            .attention
            .unwrap_or(self.slots[i].family.attention());
        let _attention = AttentionFor::set(backend);
        let mut tiled = self.slots[i].family.tiled(&work);
        // The residency manager: room for the job, and its mode.
        let (want, memory) = self.make_room(i, &work, &mut tiled)?;
        if self.slots[i].family.placed() != Some(want) {
            if unload_model(&mut self.slots[i]) {
                sync_report(&self.slots[i]);
                release_cache(&self.device, "before re-placing the model");
            }
            ctx.stage(Stage::Loading);
            load(&mut self.slots[i], want, &work)?;
        }
        if let Some(m) = memory {
            job.update(|s| s.memory = Some(m));
        }
        let on_cuda = matches!(self.device, ResolvedDevice::Cuda(_));
        let (slot, device) = (&mut self.slots[i], &self.device);
        // The out-of-memory ladder (GPU): after a CUDA out-of-memory everything the attempt
        // held is freed, the model re-placed one rung down, and the job retried once.
        let outcome = budget::run_with_ladder(
            (want.mode, want.prefetch),
            |mode, prefetch, retry| -> Result<tch::Tensor, ModelError> {
                if retry {
                    unload_model(slot);
                    sync_report(slot);
                    release_cache(device, "after running out of memory");
                    ctx.stage(Stage::Loading);
                    job.update(|s| s.step = 0);
                    load(slot, MemoryOptions { mode, prefetch }, &work)?;
                }
                slot.family.generate(&work, tiled, ctx)
            },
            |e| on_cuda && is_out_of_memory(e),
        );
        let result = match outcome {
            Ok((result, None)) => result,
            Ok((result, Some(note))) => {
                let mem = slot.family.placed();
                job.update(|s| {
                    let m = s.memory.get_or_insert_with(JobMemory::default);
                    if let Some(mem) = mem {
                        m.mode = mem.mode.to_string();
                        m.prefetch = mem.prefetch;
                    }
                    m.fallback = Some(note.clone());
                });
                result
            }
            Err(LadderError::Other(e)) => return Err(e.into()),
            Err(LadderError::OutOfMemory {
                mode,
                prefetch,
                retried,
                error,
            }) => {
                return Err(Failure::Failed(format!(
                    "CUDA out of memory in {mode} offload (prefetch {prefetch}){}: {error}. \
                     Lower the resolution{}.",
                    if retried {
                        ", after one retry a rung down"
                    } else {
                        ", the most frugal mode"
                    },
                    if work.video().is_some() {
                        " or the frame count"
                    } else {
                        ""
                    }
                )))
            }
        };
        let partial = retention::partial_path(&job.output);
        slot.family
            .write(result, &work, &partial, ctx)
            .map_err(Failure::Failed)?;
        std::fs::rename(&partial, &job.output)
            .map_err(|e| Failure::Failed(format!("writing the result: {e}")))?;
        Ok(Some(()))
    }

    /// The other families on this device, holding `bytes(report)` each.
    fn holders(&self, i: usize, on_device: bool) -> Vec<Holder> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .filter_map(|(_, s)| {
                let m = s.family.memory()?;
                Some(Holder {
                    family: s.family.id(),
                    device_bytes: if on_device {
                        m.device_bytes
                    } else {
                        m.host_bytes
                    },
                    last_used: s.last_used,
                    can_offload: s.family.can_offload(),
                })
            })
            .collect()
    }

    /// Makes room for `work` of family `i`: evicts what is in the way and returns the mode
    /// to run in, with the job's `memory` record. On CUDA the mode may be more frugal than
    /// configured, and tiling may be turned on (`tiled`) when even that would not fit.
    fn make_room(
        &mut self,
        i: usize,
        work: &Work,
        tiled: &mut bool,
    ) -> Result<(MemoryOptions, Option<JobMemory>), ModelError> {
        let configured = self.slots[i].family.configured();
        let id = self.slots[i].family.id();
        let ResolvedDevice::Cuda(d) = &self.device else {
            return self.make_room_on_host(i, work, *tiled);
        };
        let Ok((free, total)) = d.mem_info() else {
            return Ok((configured, None));
        };
        let reserved = d.memory_stats().map_or(0, |m| m.reserved_bytes);
        let family = &self.slots[i].family;
        let budget_bytes = family
            .vram_budget()
            .bytes(free as u64, total as u64, reserved);
        let others = self.holders(i, true);
        let host_room = self
            .host
            .budget_bytes
            .saturating_sub(resident_bytes().unwrap_or(0));
        let rung = (configured.mode, configured.prefetch);
        let plan_for = |tiled: bool| -> Result<(residency::Plan, Estimate), ModelError> {
            let e = family.estimate(work, tiled)?;
            let plan = residency::plan(
                id,
                &e.workload,
                &e.sizes,
                rung,
                budget_bytes,
                &others,
                Some(host_room),
            );
            Ok((plan, e))
        };
        let (mut plan, mut e) = plan_for(*tiled)?;
        let mut notes = Vec::new();
        if !plan.fits() && !*tiled {
            (plan, e) = plan_for(true)?;
            *tiled = true;
            notes.push("the untiled decode would not fit: VAE tiling on for this job");
        }
        let mut d = plan.decision;
        // Weights the manager moved to the host stay there while model offload fits: the
        // job runs from the pinned copies instead of reloading the model.
        let kept = family.placed().filter(|p| {
            self.slots[i].kept_in_host
                && p.mode == OffloadMode::Model
                && d.mode == OffloadMode::None
                && estimate_peak(&e.workload, &e.sizes, p.mode, p.prefetch) <= d.budget_bytes
        });
        if let Some(p) = kept {
            d.mode = p.mode;
            d.prefetch = p.prefetch;
            d.estimate_bytes = estimate_peak(&e.workload, &e.sizes, p.mode, p.prefetch);
            notes.push(
                "its weights were moved to host memory to make room earlier: model offload from \
                 the pinned copies, no reload",
            );
        }
        let reason = notes.into_iter().fold(d.reason, |r, n| join(r, Some(n)));
        if let Some(why) = &reason {
            tracing::info!("residency: {why}");
        }
        let evicted = self.evict(&plan.evictions);
        let want = MemoryOptions {
            mode: d.mode,
            prefetch: d.prefetch,
        };
        Ok((
            want,
            Some(JobMemory {
                mode: d.mode.to_string(),
                prefetch: d.prefetch,
                estimate_bytes: d.estimate_bytes,
                budget_bytes: d.budget_bytes,
                held_by_others_bytes: plan.held_by_others,
                reason,
                fallback: None,
                evicted,
            }),
        ))
    }

    /// The CPU device: its memory is the host's. The job's estimated peak and the other
    /// families' weights must fit the host budget (beyond the process's start-up memory and
    /// runtime); the least recently used family is unloaded when they do not.
    fn make_room_on_host(
        &mut self,
        i: usize,
        work: &Work,
        tiled: bool,
    ) -> Result<(MemoryOptions, Option<JobMemory>), ModelError> {
        let family = &self.slots[i].family;
        let configured = family.configured();
        let others = self.holders(i, false);
        if others.iter().all(|h| h.device_bytes == 0) {
            return Ok((configured, None));
        }
        let e = family.estimate(work, tiled)?;
        let need = budget::estimate_host_peak(&e.workload, &e.sizes, HostPlacement::Cpu, 0);
        let budget_bytes = self
            .host
            .budget_bytes
            .saturating_sub(self.host.baseline_bytes + RUNTIME_BYTES);
        let plan = residency::make_room(family.id(), need, budget_bytes, &others, None);
        if plan.is_empty() {
            return Ok((configured, None));
        }
        let freed: u64 = plan.iter().map(|e| e.freed_bytes).sum();
        let held = others.iter().map(|h| h.device_bytes).sum::<u64>() - freed;
        let evicted = self.evict(&plan);
        Ok((
            configured,
            Some(JobMemory {
                mode: ltx_pipelines::OffloadMode::None.to_string(),
                prefetch: configured.prefetch,
                estimate_bytes: need,
                budget_bytes: budget_bytes.saturating_sub(held),
                held_by_others_bytes: held,
                reason: None,
                fallback: None,
                evicted,
            }),
        ))
    }

    /// Carries out the evictions; an offload that fails becomes an unload.
    fn evict(&mut self, plan: &[Eviction]) -> Vec<Eviction> {
        let mut done = Vec::with_capacity(plan.len());
        for e in plan {
            let Some(j) = self.slot_of(e.family) else {
                continue;
            };
            let slot = &mut self.slots[j];
            let mut e = e.clone();
            if e.action == EvictAction::Offloaded {
                match slot.family.offload_to_host() {
                    Ok(()) => slot.kept_in_host = true,
                    Err(err) => {
                        tracing::warn!(family = %e.family, "offloading to the host failed: {err}");
                        e.action = EvictAction::Unloaded;
                        e.reason = format!("{}; offloading failed ({err}): unloaded", e.reason);
                    }
                }
            }
            if e.action == EvictAction::Unloaded {
                unload_model(slot);
            }
            sync_report(slot);
            let released = release_cache(&self.device, "after evicting a family");
            tracing::info!(
                family = %e.family,
                action = ?e.action,
                freed_bytes = e.freed_bytes,
                released_cache_bytes = released,
                "residency: {}",
                e.reason
            );
            done.push(e);
        }
        done
    }

    fn unload(&mut self, family: FamilyId) -> Unloaded {
        let Some(i) = self.slot_of(family) else {
            return Unloaded {
                family: family.as_str(),
                was_loaded: false,
                freed_weight_bytes: 0,
                released_cache_bytes: 0,
                state: FamilyState::Unloaded,
            };
        };
        let slot = &mut self.slots[i];
        let report = slot.report.get();
        let was_loaded = unload_model(slot);
        let freed_weight_bytes = if was_loaded {
            report.gpu_bytes + report.host_bytes
        } else {
            0
        };
        sync_report(slot);
        let released_cache_bytes = release_cache(&self.device, "after unloading");
        tracing::info!(%family, was_loaded, freed_weight_bytes, "unloaded");
        Unloaded {
            family: family.as_str(),
            was_loaded,
            freed_weight_bytes,
            released_cache_bytes,
            state: FamilyState::Unloaded,
        }
    }
}
