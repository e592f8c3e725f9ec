//! The devices' workers. Each family's device setting (`LTX_DEVICE`, `INSTANTID_DEVICE`) is
//! resolved at start; families on the same resolved device share one worker (their jobs run in
//! order, under one residency manager), families on different devices get one worker each
//! (their jobs run concurrently). Every worker has its own bounded queue.

use std::sync::Arc;

use ltx_gpu::device::ResolvedDevice;
use ltx_gpu::DeviceSpec;
use serde::Serialize;
use tokio::sync::mpsc;
use utoipa::ToSchema;

use crate::families::ModelFamily;
use crate::family::{Family, FamilyId};
use crate::host_memory::HostBudget;
use crate::metrics::{Metrics, WorkerGauge};
use crate::retention::Retention;
use crate::worker::{self, device_name, Command, Slot, WorkerConfig};
use crate::ServerError;

/// A family's device as configured and as resolved on this machine.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeviceChoice {
    pub configured: String,
    /// "cpu" or "cuda:N".
    pub using: String,
    /// Why `auto` chose the CPU.
    pub fallback_reason: Option<String>,
}

impl DeviceChoice {
    pub fn new(configured: DeviceSpec, resolved: &ResolvedDevice) -> Self {
        Self {
            configured: configured.to_string(),
            using: device_name(resolved),
            fallback_reason: match resolved {
                ResolvedDevice::Cpu { cuda_unavailable } => {
                    cuda_unavailable.as_ref().map(ToString::to_string)
                }
                ResolvedDevice::Cuda(_) => None,
            },
        }
    }
}

/// Resolves `spec` (the setting `setting`): an explicit `cuda:N` that is not usable stops the
/// server with the reason; `auto` falls back to the CPU and says why.
pub fn resolve(setting: &'static str, spec: DeviceSpec) -> Result<ResolvedDevice, ServerError> {
    let resolved = spec
        .resolve()
        .map_err(|source| ServerError::Device { setting, source })?;
    match &resolved {
        ResolvedDevice::Cpu {
            cuda_unavailable: Some(why),
        } => tracing::warn!("{setting}=auto: using the CPU ({why})"),
        other => tracing::info!(device = ?other.tch_device(), "{setting}"),
    }
    Ok(resolved)
}

/// A family to serve: the model, its report, its device.
pub struct Served {
    pub family: Box<dyn ModelFamily>,
    pub report: Family,
    pub configured: DeviceSpec,
    pub device: ResolvedDevice,
}

/// A served family and where its jobs go.
pub struct FamilyEntry {
    pub id: FamilyId,
    pub report: Family,
    pub device: DeviceChoice,
    /// Index of its worker.
    worker: usize,
}

/// One device's worker, as the routes see it.
pub struct WorkerHandle {
    /// "cpu" or "cuda:N".
    pub device: String,
    pub families: Vec<FamilyId>,
    pub queue: mpsc::Sender<Command>,
}

/// The workers and the families they serve.
pub struct Workers {
    pub families: Vec<FamilyEntry>,
    pub workers: Vec<WorkerHandle>,
}

impl Workers {
    /// Groups the families by device and starts one worker per device.
    pub fn start(
        served: Vec<Served>,
        host: HostBudget,
        metrics: Arc<Metrics>,
        retention: Retention,
        queue_size: usize,
    ) -> Result<Self, ServerError> {
        let mut groups: Vec<(String, ResolvedDevice, Vec<Slot>)> = Vec::new();
        let mut families = Vec::new();
        for s in served {
            let name = device_name(&s.device);
            let worker = match groups.iter().position(|(n, _, _)| *n == name) {
                Some(i) => i,
                None => {
                    groups.push((name.clone(), s.device.clone(), Vec::new()));
                    groups.len() - 1
                }
            };
            families.push(FamilyEntry {
                id: s.family.id(),
                report: s.report.clone(),
                device: DeviceChoice::new(s.configured, &s.device),
                worker,
            });
            groups[worker].2.push(Slot::new(s.family, s.report));
        }
        let mut workers = Vec::new();
        for (name, device, slots) in groups {
            let ids: Vec<FamilyId> = slots.iter().map(|s| s.family.id()).collect();
            tracing::info!(device = %name, families = ?ids, "starting the worker");
            let queue = worker::spawn(
                WorkerConfig {
                    device,
                    families: slots,
                    host,
                    metrics: metrics.clone(),
                    retention,
                },
                queue_size,
            )?;
            workers.push(WorkerHandle {
                device: name,
                families: ids,
                queue,
            });
        }
        Ok(Self { families, workers })
    }

    pub fn family(&self, id: FamilyId) -> Option<&FamilyEntry> {
        self.families.iter().find(|f| f.id == id)
    }

    /// The queue of the worker that runs `id`'s jobs.
    pub fn queue(&self, id: FamilyId) -> Option<&mpsc::Sender<Command>> {
        self.family(id).map(|f| &self.workers[f.worker].queue)
    }

    /// Each worker's queue now.
    pub fn gauges(&self) -> Vec<WorkerGauge> {
        self.workers
            .iter()
            .map(|w| WorkerGauge {
                device: w.device.clone(),
                queue_depth: w.queue.max_capacity() - w.queue.capacity(),
                queue_capacity: w.queue.max_capacity(),
            })
            .collect()
    }

    /// Whether every worker still takes commands.
    pub fn all_running(&self) -> bool {
        self.workers.iter().all(|w| !w.queue.is_closed())
    }
}
