//! The residency manager's decisions for one device, as pure functions of sizes, the budget and
//! what the other families on the device hold (the worker gathers the numbers and carries the
//! decisions out).
//!
//! Before a job: the mode it needs on a device of its own is the configured one, or the first
//! more frugal rung that fits the budget ([`budget::choose`]); when the other families' device
//! bytes plus that estimate exceed the budget, they leave the device least recently used first
//! until it fits — re-placed into host memory (pinned copies kept for their next job) when they
//! can be and the host budget has room for them, else unloaded. Then the job's mode is chosen
//! again against what is left.

use ltx_pipelines::budget::{self, ComponentSizes, Decision, Workload};
use ltx_pipelines::OffloadMode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::family::FamilyId;
use crate::host_memory::gb;

/// Another family on the device, as the manager sees it before a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    pub family: FamilyId,
    /// Bytes of its weights on the device now.
    pub device_bytes: u64,
    /// When it last ran a job (larger: more recent).
    pub last_used: u64,
    /// Whether it can move its weights from the device into host memory and keep them there.
    pub can_offload: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EvictAction {
    /// Re-placed into host memory (pinned master copies), kept for its next job.
    Offloaded,
    /// Dropped: its next job loads it again.
    Unloaded,
}

/// A family moved off the device before a job, to make room for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Eviction {
    #[schema(value_type = String)]
    pub family: FamilyId,
    pub action: EvictAction,
    /// Its weight bytes that left the device.
    pub freed_bytes: u64,
    pub reason: String,
}

/// The families to move off the device so that a job of `family` needing `need` bytes fits
/// `budget` (device bytes the job may count on, other families' included), least recently used
/// first. `host_room`: host bytes the offloaded copies may still take under the host budget;
/// `None` when the device is the host (the CPU), where leaving means unloading.
pub fn make_room(
    family: FamilyId,
    need: u64,
    budget: u64,
    others: &[Holder],
    host_room: Option<u64>,
) -> Vec<Eviction> {
    let mut held: u64 = others.iter().map(|h| h.device_bytes).sum();
    let mut order: Vec<&Holder> = others.iter().filter(|h| h.device_bytes > 0).collect();
    order.sort_by_key(|h| h.last_used);
    let mut room = host_room;
    let mut out = Vec::new();
    for h in order {
        if held + need <= budget {
            break;
        }
        let why = format!(
            "{family} needs about {} and the other families hold {} of the {} budget",
            gb(need),
            gb(held),
            gb(budget)
        );
        let (action, reason) = match room {
            Some(r) if h.can_offload && h.device_bytes <= r => {
                room = Some(r - h.device_bytes);
                (
                    EvictAction::Offloaded,
                    format!("{why}: kept in host memory"),
                )
            }
            Some(r) if h.can_offload => (
                EvictAction::Unloaded,
                format!(
                    "{why}; host memory is short ({} left under the host budget, {} to keep): \
                     unloaded",
                    gb(r),
                    gb(h.device_bytes)
                ),
            ),
            Some(_) => (
                EvictAction::Unloaded,
                format!("{why}; its weights cannot move from the device to the host: unloaded"),
            ),
            None => (EvictAction::Unloaded, format!("{why}: unloaded")),
        };
        held -= h.device_bytes;
        out.push(Eviction {
            family: h.family,
            action,
            freed_bytes: h.device_bytes,
            reason,
        });
    }
    out
}

/// What the manager does before a job.
#[derive(Debug, Clone)]
pub struct Plan {
    pub evictions: Vec<Eviction>,
    /// The job's mode, chosen against the budget less what stays on the device.
    pub decision: Decision,
    /// Device bytes the other families keep.
    pub held_by_others: u64,
}

impl Plan {
    /// Whether the job's estimate fits what is left.
    pub fn fits(&self) -> bool {
        self.decision.estimate_bytes <= self.decision.budget_bytes
    }
}

/// The evictions and the mode for a job with workload `w` on a model of sizes `c`, configured
/// in `configured`, given the family's `budget` and the other families on the device.
pub fn plan(
    family: FamilyId,
    w: &Workload,
    c: &ComponentSizes,
    configured: (OffloadMode, usize),
    budget: u64,
    others: &[Holder],
    host_room: Option<u64>,
) -> Plan {
    // The rung the job needs on a device of its own: nothing is evicted for a mode that could
    // not fit anyway.
    let alone = budget::choose(w, c, configured, budget);
    let evictions = make_room(family, alone.estimate_bytes, budget, others, host_room);
    let held = others.iter().map(|h| h.device_bytes).sum::<u64>()
        - evictions.iter().map(|e| e.freed_bytes).sum::<u64>();
    Plan {
        decision: budget::choose(w, c, configured, budget.saturating_sub(held)),
        evictions,
        held_by_others: held,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GB: u64 = 1_000_000_000;

    fn holder(family: FamilyId, gb: u64, last_used: u64, can_offload: bool) -> Holder {
        Holder {
            family,
            device_bytes: gb * GB,
            last_used,
            can_offload,
        }
    }

    #[test]
    fn nothing_leaves_when_the_job_fits_beside_the_others() {
        let ltx = holder(FamilyId::Ltx, 6, 1, true);
        let e = make_room(FamilyId::InstantId, 8 * GB, 15 * GB, &[ltx], Some(100 * GB));
        assert!(e.is_empty(), "{e:?}");
        // Exactly at the budget still fits.
        let e = make_room(FamilyId::InstantId, 9 * GB, 15 * GB, &[ltx], Some(100 * GB));
        assert!(e.is_empty(), "{e:?}");
    }

    #[test]
    fn the_other_family_goes_to_the_host_when_there_is_room_there() {
        let ltx = holder(FamilyId::Ltx, 8, 1, true);
        let e = make_room(FamilyId::InstantId, 9 * GB, 15 * GB, &[ltx], Some(10 * GB));
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].family, FamilyId::Ltx);
        assert_eq!(e[0].action, EvictAction::Offloaded);
        assert_eq!(e[0].freed_bytes, 8 * GB);
        assert!(
            e[0].reason.contains("instantid needs about 9.00 GB"),
            "{}",
            e[0].reason
        );
        assert!(
            e[0].reason.contains("8.00 GB of the 15.00 GB budget"),
            "{}",
            e[0].reason
        );
    }

    #[test]
    fn short_host_memory_or_device_placed_weights_mean_unloading() {
        let ltx = holder(FamilyId::Ltx, 8, 1, true);
        let e = make_room(FamilyId::InstantId, 9 * GB, 15 * GB, &[ltx], Some(4 * GB));
        assert_eq!(e[0].action, EvictAction::Unloaded);
        assert!(
            e[0].reason.contains("host memory is short (4.00 GB left"),
            "{}",
            e[0].reason
        );
        let fixed = holder(FamilyId::Ltx, 8, 1, false);
        let e = make_room(
            FamilyId::InstantId,
            9 * GB,
            15 * GB,
            &[fixed],
            Some(100 * GB),
        );
        assert_eq!(e[0].action, EvictAction::Unloaded);
        assert!(e[0].reason.contains("cannot move"), "{}", e[0].reason);
        // On the CPU the device is the host: leaving means unloading.
        let e = make_room(FamilyId::InstantId, 9 * GB, 15 * GB, &[ltx], None);
        assert_eq!(e[0].action, EvictAction::Unloaded);
    }

    #[test]
    fn least_recently_used_leaves_first_and_only_as_many_as_needed() {
        let old = holder(FamilyId::Ltx, 4, 1, true);
        let recent = holder(FamilyId::InstantId, 4, 2, true);
        // 8 held + 9 needed > 15: one of them must go; 4 + 9 fits.
        let e = make_room(
            FamilyId::Ltx,
            9 * GB,
            15 * GB,
            &[recent, old],
            Some(100 * GB),
        );
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].family, FamilyId::Ltx);
        assert_eq!(e[0].freed_bytes, 4 * GB);
        // 14 needed: both go, the host room shrinking as copies are kept.
        let e = make_room(
            FamilyId::Ltx,
            14 * GB,
            15 * GB,
            &[recent, old],
            Some(6 * GB),
        );
        let got: Vec<_> = e.iter().map(|e| (e.family, e.action)).collect();
        assert_eq!(
            got,
            [
                (FamilyId::Ltx, EvictAction::Offloaded),
                (FamilyId::InstantId, EvictAction::Unloaded)
            ]
        );
    }

    #[test]
    fn families_holding_nothing_on_the_device_are_left_alone() {
        // A model-offloaded family between jobs holds no device bytes.
        let idle = holder(FamilyId::Ltx, 0, 0, true);
        let e = make_room(
            FamilyId::InstantId,
            20 * GB,
            15 * GB,
            &[idle],
            Some(100 * GB),
        );
        assert!(e.is_empty());
    }

    fn sizes() -> ComponentSizes {
        ComponentSizes {
            text_encoder: 2 * GB,
            transformer: 6 * GB,
            vae: GB / 2,
            upsampler: 0,
            transformer_remainder: GB / 2,
            transformer_max_unit: GB / 4,
            text_remainder: GB / 4,
            text_max_unit: GB / 10,
        }
    }

    fn workload() -> Workload {
        Workload {
            text_activations: GB / 10,
            transformer_activations: 2 * GB,
            decode_activations: 3 * GB,
            upsample_activations: 0,
        }
    }

    #[test]
    fn the_plan_evicts_for_the_configured_mode_then_runs_in_it() {
        let (w, c) = (workload(), sizes());
        // none: 8.5 GB weights + 3 GB decode = 11.5 GB; with 6 GB held that is over 15 GB.
        let other = holder(FamilyId::InstantId, 6, 1, true);
        let p = plan(
            FamilyId::Ltx,
            &w,
            &c,
            (OffloadMode::None, 2),
            15 * GB,
            &[other],
            Some(100 * GB),
        );
        assert_eq!(p.evictions.len(), 1);
        assert_eq!(p.held_by_others, 0);
        assert_eq!(p.decision.mode, OffloadMode::None);
        assert_eq!(p.decision.budget_bytes, 15 * GB);
        assert!(p.decision.reason.is_none());
        assert!(p.fits());
    }

    #[test]
    fn nothing_is_evicted_for_a_mode_that_cannot_fit_anyway() {
        let (w, c) = (workload(), sizes());
        // none needs 11.5 GB > 10 GB even alone; model needs 8 GB (transformer + activations),
        // which fits beside the 2 GB the other family holds.
        let other = holder(FamilyId::InstantId, 2, 1, true);
        let p = plan(
            FamilyId::Ltx,
            &w,
            &c,
            (OffloadMode::None, 2),
            10 * GB,
            &[other],
            Some(100 * GB),
        );
        assert!(p.evictions.is_empty(), "{:?}", p.evictions);
        assert_eq!(p.held_by_others, 2 * GB);
        assert_eq!(p.decision.mode, OffloadMode::Model);
        assert_eq!(p.decision.estimate_bytes, 8 * GB);
        assert_eq!(p.decision.budget_bytes, 8 * GB);
        assert!(p.decision.reason.unwrap().contains("using model"));
    }

    #[test]
    fn after_eviction_the_job_takes_the_first_rung_that_fits_what_is_left() {
        let (w, c) = (workload(), sizes());
        // The other family cannot leave (it is this device's only copy and the host is full):
        // it is unloaded, and the job runs in its configured mode.
        let pinned = holder(FamilyId::InstantId, 9, 1, true);
        let p = plan(
            FamilyId::Ltx,
            &w,
            &c,
            (OffloadMode::Model, 2),
            12 * GB,
            &[pinned],
            Some(GB),
        );
        assert_eq!(p.evictions[0].action, EvictAction::Unloaded);
        assert_eq!(p.decision.mode, OffloadMode::Model);
        assert!(p.fits());
    }
}
