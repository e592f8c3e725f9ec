//! The ring schedule of layer streaming, apart from any device. Units are used in order
//! 0, 1, …, n−1, then again from 0 (one model forward after another). With `slots` = k + 1,
//! while unit i computes, units i+1 … i+k are already copied or being copied; when unit i's
//! work is queued its slot is released and the copy of unit i+k+1 (mod n) into it is queued
//! behind that release. Every ordering is a device-side dependency, never a host wait:
//!
//! - copy stream: wait `freed[slot]` → copy unit → record `copied[slot]`;
//! - compute stream: wait `copied[slot]` → the unit's kernels → record `freed[slot]`.

use crate::{OffloadError, Result};

/// What the ring asks of the device.
pub trait RingBackend {
    /// Copy stream: wait until `slot`'s last release has happened, copy `unit` into it, then
    /// mark `slot` copied.
    fn copy(&mut self, unit: usize, slot: usize) -> Result<()>;
    /// Compute stream: later work waits until `slot`'s last copy has happened.
    fn wait_copied(&mut self, slot: usize) -> Result<()>;
    /// Host side: point `unit`'s tensors at `slot`.
    fn bind(&mut self, unit: usize, slot: usize) -> Result<()>;
    /// Compute stream: mark `slot` released once the work queued so far has run.
    fn release(&mut self, slot: usize) -> Result<()>;
}

/// Which unit each slot holds, and what to copy next.
#[derive(Debug, Clone)]
pub struct Ring {
    units: usize,
    /// `held[s]`: the unit slot `s` holds or is receiving.
    held: Vec<Option<usize>>,
    /// The slot of the unit being computed (between `before` and `after`).
    active: Option<(usize, usize)>,
    copies: u64,
}

impl Ring {
    /// A ring of `slots` slots (prefetch depth `slots − 1`) over `units` units.
    pub fn new(units: usize, slots: usize) -> Result<Self> {
        if slots == 0 {
            return Err(OffloadError::Invalid(
                "a ring needs at least one slot".into(),
            ));
        }
        Ok(Self {
            units,
            held: vec![None; slots.min(units.max(1))],
            active: None,
            copies: 0,
        })
    }

    pub fn slots(&self) -> usize {
        self.held.len()
    }

    /// Copies queued so far.
    pub fn copies(&self) -> u64 {
        self.copies
    }

    pub fn slot_of(&self, unit: usize) -> Option<usize> {
        self.held.iter().position(|h| *h == Some(unit))
    }

    fn queue_copy(&mut self, b: &mut dyn RingBackend, unit: usize, slot: usize) -> Result<()> {
        b.copy(unit, slot)?;
        self.held[slot] = Some(unit);
        self.copies += 1;
        Ok(())
    }

    /// Before unit `unit` computes: makes sure it (and the next k) are on their way, makes the
    /// compute stream wait for its copy, and binds its tensors to its slot.
    pub fn before(&mut self, b: &mut dyn RingBackend, unit: usize) -> Result<usize> {
        if unit >= self.units {
            return Err(OffloadError::Invalid(format!(
                "unit {unit} of a {}-unit ring",
                self.units
            )));
        }
        if let Some((u, _)) = self.active {
            return Err(OffloadError::Invalid(format!(
                "unit {unit} started before unit {u} ended"
            )));
        }
        if self.slot_of(unit).is_none() {
            // Cold start, or an order the ring did not expect: fetch `unit` and the units
            // after it into the slots holding nothing that is wanted.
            let k = self.slots();
            let wanted: Vec<usize> = (0..k).map(|d| (unit + d) % self.units).collect();
            for &u in &wanted {
                if self.slot_of(u).is_some() {
                    continue;
                }
                let free = (0..k)
                    .find(|s| self.held[*s].is_none_or(|h| !wanted.contains(&h)))
                    .ok_or_else(|| OffloadError::Invalid("no free slot".into()))?;
                self.queue_copy(b, u, free)?;
            }
        }
        let slot = self
            .slot_of(unit)
            .ok_or_else(|| OffloadError::Invalid(format!("unit {unit} has no slot")))?;
        b.wait_copied(slot)?;
        b.bind(unit, slot)?;
        self.active = Some((unit, slot));
        Ok(slot)
    }

    /// After unit `unit`'s work is queued: releases its slot and queues the copy of the unit
    /// k+1 ahead into it.
    pub fn after(&mut self, b: &mut dyn RingBackend, unit: usize) -> Result<()> {
        let slot = match self.active.take() {
            Some((u, s)) if u == unit => s,
            other => {
                return Err(OffloadError::Invalid(format!(
                    "unit {unit} ended, but {other:?} was running"
                )))
            }
        };
        b.release(slot)?;
        let next = (unit + self.slots()) % self.units;
        if self.units > self.slots() && self.slot_of(next).is_none() {
            self.queue_copy(b, next, slot)?;
        }
        Ok(())
    }
}
