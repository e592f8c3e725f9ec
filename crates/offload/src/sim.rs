//! A simulated two-stream device for checking the ring's ordering without a GPU and without
//! timing. Each stream is a FIFO of operations; events follow CUDA's rules (a wait waits for
//! the last record queued before the wait was queued). A seeded scheduler runs, at each step,
//! any stream whose head can run — so copies run as early and computes as late as the
//! dependencies allow, in many interleavings. A use is checked twice: when queued, the host
//! must have bound the unit to the slot (kernels take their pointers then); when it runs, the
//! slot must hold that unit's bytes. A missing wait shows up as a violation for some seed.

use crate::ring::RingBackend;
use crate::Result;

#[derive(Debug, Clone, Copy)]
enum Op {
    /// Wait until event `(kind, slot)` has run `target` records.
    Wait {
        event: Ev,
        target: u64,
    },
    Record {
        event: Ev,
    },
    Copy {
        unit: usize,
        slot: usize,
    },
    Use {
        unit: usize,
        slot: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ev {
    Copied(usize),
    Freed(usize),
}

#[derive(Debug, Default)]
struct Event {
    queued: u64,
    done: u64,
}

/// The simulated device; it implements [`RingBackend`].
pub struct SimDevice {
    copy: std::collections::VecDeque<Op>,
    compute: std::collections::VecDeque<Op>,
    copied: Vec<Event>,
    freed: Vec<Event>,
    /// What each slot physically holds.
    content: Vec<Option<usize>>,
    /// The unit the host last bound to each slot.
    bound: Vec<Option<usize>>,
    rng: u64,
    pub violations: Vec<String>,
    pub copies_run: u64,
    pub uses_run: u64,
    /// Test switches: drop one kind of wait to show the checker catches it.
    pub skip_wait_copied: bool,
    pub skip_wait_freed: bool,
}

impl SimDevice {
    pub fn new(slots: usize, seed: u64) -> Self {
        Self {
            copy: Default::default(),
            compute: Default::default(),
            copied: (0..slots).map(|_| Event::default()).collect(),
            freed: (0..slots).map(|_| Event::default()).collect(),
            content: vec![None; slots],
            bound: vec![None; slots],
            rng: seed | 1,
            violations: Vec::new(),
            copies_run: 0,
            uses_run: 0,
            skip_wait_copied: false,
            skip_wait_freed: false,
        }
    }

    fn event(&mut self, e: Ev) -> &mut Event {
        match e {
            Ev::Copied(s) => &mut self.copied[s],
            Ev::Freed(s) => &mut self.freed[s],
        }
    }

    fn wait_op(&mut self, e: Ev) -> Op {
        Op::Wait {
            event: e,
            target: self.event(e).queued,
        }
    }

    fn record_op(&mut self, e: Ev) -> Op {
        self.event(e).queued += 1;
        Op::Record { event: e }
    }

    /// The model's kernels for `unit` on the compute stream (what the forward queues between
    /// `before` and `after`).
    pub fn queue_use(&mut self, unit: usize, slot: usize) {
        // Kernels take their pointers when queued: the binding must be right now.
        if self.bound[slot] != Some(unit) {
            self.violations.push(format!(
                "unit {unit} queued on slot {slot} bound to {:?}",
                self.bound[slot]
            ));
        }
        self.compute.push_back(Op::Use { unit, slot });
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn runnable(&self, op: &Op) -> bool {
        match op {
            Op::Wait { event, target } => {
                let e = match event {
                    Ev::Copied(s) => &self.copied[*s],
                    Ev::Freed(s) => &self.freed[*s],
                };
                e.done >= *target
            }
            _ => true,
        }
    }

    fn run(&mut self, op: Op) {
        match op {
            Op::Wait { .. } => {}
            Op::Record { event } => self.event(event).done += 1,
            Op::Copy { unit, slot } => {
                self.content[slot] = Some(unit);
                self.copies_run += 1;
            }
            Op::Use { unit, slot } => {
                if self.content[slot] != Some(unit) {
                    self.violations.push(format!(
                        "unit {unit} computed from slot {slot} holding {:?}",
                        self.content[slot]
                    ));
                }
                self.uses_run += 1;
            }
        }
    }

    /// Runs up to `steps` operations, choosing randomly among the streams that can progress;
    /// returns how many ran.
    pub fn step(&mut self, steps: usize) -> usize {
        let mut ran = 0;
        for _ in 0..steps {
            let copy_ok = self.copy.front().is_some_and(|o| self.runnable(o));
            let comp_ok = self.compute.front().is_some_and(|o| self.runnable(o));
            let pick_copy = match (copy_ok, comp_ok) {
                (false, false) => break,
                (true, false) => true,
                (false, true) => false,
                (true, true) => self.next_random().is_multiple_of(2),
            };
            let op = if pick_copy {
                self.copy.pop_front()
            } else {
                self.compute.pop_front()
            };
            if let Some(op) = op {
                self.run(op);
                ran += 1;
            }
        }
        ran
    }

    /// Runs a random number of operations (the device progressing while the host works).
    pub fn progress(&mut self) {
        let n = (self.next_random() % 4) as usize;
        self.step(n);
    }

    /// Runs everything; false if the streams deadlocked.
    pub fn drain(&mut self) -> bool {
        while self.step(1) == 1 {}
        self.copy.is_empty() && self.compute.is_empty()
    }
}

impl RingBackend for SimDevice {
    fn copy(&mut self, unit: usize, slot: usize) -> Result<()> {
        if !self.skip_wait_freed {
            let w = self.wait_op(Ev::Freed(slot));
            self.copy.push_back(w);
        }
        self.copy.push_back(Op::Copy { unit, slot });
        let r = self.record_op(Ev::Copied(slot));
        self.copy.push_back(r);
        Ok(())
    }

    fn wait_copied(&mut self, slot: usize) -> Result<()> {
        if !self.skip_wait_copied {
            let w = self.wait_op(Ev::Copied(slot));
            self.compute.push_back(w);
        }
        Ok(())
    }

    fn bind(&mut self, unit: usize, slot: usize) -> Result<()> {
        self.bound[slot] = Some(unit);
        Ok(())
    }

    fn release(&mut self, slot: usize) -> Result<()> {
        let r = self.record_op(Ev::Freed(slot));
        self.compute.push_back(r);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::Ring;

    /// `passes` forwards over `units` units with `slots` slots; returns the device after.
    fn simulate(units: usize, slots: usize, passes: usize, seed: u64, dev: SimDevice) -> SimDevice {
        let mut ring = Ring::new(units, slots).unwrap();
        let mut dev = dev;
        for _ in 0..passes {
            for u in 0..units {
                let s = ring.before(&mut dev, u).unwrap();
                dev.progress();
                dev.queue_use(u, s);
                dev.progress();
                ring.after(&mut dev, u).unwrap();
                dev.progress();
            }
        }
        assert!(
            dev.drain(),
            "deadlock (units {units}, slots {slots}, seed {seed})"
        );
        dev
    }

    #[test]
    fn the_ring_is_ordered_in_every_interleaving() {
        for units in [1, 2, 3, 5, 8] {
            for slots in 1..=4 {
                for seed in 0..200 {
                    let k = slots.min(units);
                    let dev = simulate(units, slots, 3, seed, SimDevice::new(k, seed));
                    assert!(
                        dev.violations.is_empty(),
                        "units {units} slots {slots} seed {seed}: {:?}",
                        dev.violations
                    );
                    assert_eq!(dev.uses_run, 3 * units as u64);
                    if units > k {
                        // One copy per use, plus the k+1 the ring holds ahead for the next
                        // forward when the last one ends.
                        assert_eq!(dev.copies_run, 3 * units as u64 + k as u64);
                    } else {
                        assert_eq!(dev.copies_run, units as u64, "fits: copied once");
                    }
                }
            }
        }
    }

    #[test]
    fn a_missing_wait_is_caught() {
        for (skip_copied, skip_freed) in [(true, false), (false, true)] {
            let caught = (0..200).any(|seed| {
                let mut dev = SimDevice::new(2, seed);
                dev.skip_wait_copied = skip_copied;
                dev.skip_wait_freed = skip_freed;
                !simulate(6, 2, 2, seed, dev).violations.is_empty()
            });
            assert!(
                caught,
                "dropping the {} wait went unnoticed",
                if skip_copied {
                    "copy→compute"
                } else {
                    "compute→reuse"
                }
            );
        }
    }
}
