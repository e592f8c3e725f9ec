//! Model families and where their weights are: what `/v1/system` and `/metrics` report, kept
//! up to date by the worker that owns the family's device.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A model family this server knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FamilyId {
    /// LTX-Video image-to-video.
    Ltx,
    /// InstantID identity-preserving portraits on SDXL.
    InstantId,
}

impl FamilyId {
    pub const ALL: [FamilyId; 2] = [FamilyId::Ltx, FamilyId::InstantId];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ltx => "ltx",
            Self::InstantId => "instantid",
        }
    }

    /// The family named `name` in routes (`/v1/models/{family}/unload`).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == name)
    }
}

impl std::fmt::Display for FamilyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FamilyState {
    /// Nothing loaded: the next job loads it.
    Unloaded,
    Loading,
    /// Every weight on the family's device.
    Resident,
    /// Weights kept on the host and moved to the GPU when used.
    Offloaded,
}

impl FamilyState {
    pub const ALL: [FamilyState; 4] = [
        FamilyState::Unloaded,
        FamilyState::Loading,
        FamilyState::Resident,
        FamilyState::Offloaded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unloaded => "unloaded",
            Self::Loading => "loading",
            Self::Resident => "resident",
            Self::Offloaded => "offloaded",
        }
    }
}

/// A memory mode as the API reports it (the wire form of [`ltx_pipelines::OffloadMode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OffloadMode {
    /// Whole components move to the GPU while they run.
    Model,
    /// Layer by layer, streamed from pinned host memory.
    Sequential,
    /// Everything stays on the device.
    None,
}

impl From<ltx_pipelines::OffloadMode> for OffloadMode {
    fn from(m: ltx_pipelines::OffloadMode) -> Self {
        match m {
            ltx_pipelines::OffloadMode::Model => Self::Model,
            ltx_pipelines::OffloadMode::Sequential => Self::Sequential,
            ltx_pipelines::OffloadMode::None => Self::None,
        }
    }
}

/// The offload mode asked for, the one in effect, and why they differ.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OffloadReport {
    pub requested: OffloadMode,
    pub effective: OffloadMode,
    pub note: Option<String>,
}

impl OffloadReport {
    pub fn new(requested: ltx_pipelines::OffloadMode, on_cuda: bool) -> Self {
        if on_cuda || requested == ltx_pipelines::OffloadMode::None {
            return Self {
                requested: requested.into(),
                effective: requested.into(),
                note: None,
            };
        }
        Self {
            requested: requested.into(),
            effective: OffloadMode::None,
            note: Some(format!(
                "{requested} offload moves weights between the GPU and the host: on the CPU \
                 device it is a no-op"
            )),
        }
    }
}

/// One family as `/v1/system` shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FamilyReport {
    pub name: &'static str,
    pub state: FamilyState,
    /// "cpu" or "cuda:N": the device whose worker runs this family's jobs.
    pub device: String,
    pub model: String,
    /// The attention backend its jobs run with (sdpa, sliced or math), unless a job's host
    /// memory plan chose another.
    pub attention: String,
    /// Bytes of weights on the GPU.
    pub gpu_bytes: u64,
    /// Bytes of weights in host memory.
    pub host_bytes: u64,
    pub offload: OffloadReport,
    /// Seconds the last load took.
    pub load_seconds: Option<f64>,
    /// How many times the family was loaded since start.
    pub loads: u64,
}

/// Shared between the worker (writes) and the routes (read).
#[derive(Clone)]
pub struct Family(Arc<Mutex<FamilyReport>>);

impl Family {
    pub fn new(report: FamilyReport) -> Self {
        Self(Arc::new(Mutex::new(report)))
    }

    pub fn get(&self) -> FamilyReport {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn update(&self, f: impl FnOnce(&mut FamilyReport)) {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// `POST /v1/models/{family}/unload` answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Unloaded {
    pub family: &'static str,
    /// Whether a model was loaded before.
    pub was_loaded: bool,
    /// Weight bytes released (GPU and host).
    pub freed_weight_bytes: u64,
    /// Bytes the CUDA allocator gave back to the driver (0 on the CPU).
    pub released_cache_bytes: u64,
    pub state: FamilyState,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offload_on_the_cpu_is_reported_as_a_no_op() {
        use ltx_pipelines::OffloadMode as Mode;
        let r = OffloadReport::new(Mode::Model, false);
        assert_eq!(r.effective, OffloadMode::None);
        assert!(r.note.unwrap().contains("model offload"));
        assert!(OffloadReport::new(Mode::None, true).note.is_none());
        let gpu = OffloadReport::new(Mode::Sequential, true);
        assert_eq!(gpu.effective, OffloadMode::Sequential);
        assert!(gpu.note.is_none());
    }
}
