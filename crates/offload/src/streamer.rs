//! Layer streaming: a component's units run from a ring of device slots fed by a copy stream
//! ([`crate::ring`] decides what goes where; this module does it on a device).

use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaEvent, CudaStream};
use ltx_gpu::stream::TorchStream;
use ltx_gpu::CudaDevice;
use ltx_models::hooks::BlockHooks;
use tch::{Device, Kind, Tensor};

use crate::ring::{Ring, RingBackend};
use crate::weights::OffloadedWeights;
use crate::{OffloadError, Result};

/// The CUDA side: a dedicated copy stream and one pair of events per slot.
struct CudaSide {
    dev: CudaDevice,
    copy: TorchStream,
    copy_cu: Arc<CudaStream>,
    copied: Vec<CudaEvent>,
    freed: Vec<CudaEvent>,
}

struct State {
    /// First, so it is dropped first: its drop waits for copies still in flight before the
    /// slots they write are given back to the allocator.
    cuda: Option<CudaSide>,
    weights: OffloadedWeights,
    /// Device buffers of `max_unit_bytes` each (plain host tensors for a CPU "device").
    slots: Vec<Tensor>,
    ring: Ring,
    /// The always-resident remainder on the device.
    _remainder: Tensor,
    /// Test instrumentation: what the backend was asked, in order.
    log: Option<Vec<String>>,
}

impl Drop for CudaSide {
    fn drop(&mut self) {
        // Prefetches for the next forward may still be copying into the slots.
        if let Err(e) = self.copy_cu.synchronize() {
            tracing::warn!("waiting for the streamer's copies: {e}");
        }
    }
}

struct Backend<'a> {
    weights: &'a mut OffloadedWeights,
    slots: &'a [Tensor],
    cuda: Option<&'a CudaSide>,
    log: Option<&'a mut Vec<String>>,
}

impl Backend<'_> {
    fn note(&mut self, what: impl FnOnce() -> String) {
        if let Some(l) = self.log.as_deref_mut() {
            l.push(what());
        }
    }

    fn compute_stream(c: &CudaSide) -> Result<Arc<CudaStream>> {
        Ok(c.dev.current_stream()?.as_cudarc(&c.dev))
    }
}

impl RingBackend for Backend<'_> {
    fn copy(&mut self, unit: usize, slot: usize) -> Result<()> {
        self.note(|| format!("copy {unit}->{slot}"));
        let src = self.weights.unit_host(unit)?;
        let dst = self.slots[slot].f_narrow(0, 0, src.numel() as i64)?;
        match self.cuda {
            Some(c) => {
                let _on_copy_stream = c.dev.use_stream(c.copy)?;
                c.copy_cu.wait(&c.freed[slot])?;
                ltx_gpu::copy_into(&dst, &src, true)?;
                c.copied[slot].record(&c.copy_cu)?;
            }
            None => ltx_gpu::copy_into(&dst, &src, false)?,
        }
        Ok(())
    }

    fn wait_copied(&mut self, slot: usize) -> Result<()> {
        self.note(|| format!("wait {slot}"));
        if let Some(c) = self.cuda {
            Self::compute_stream(c)?.wait(&c.copied[slot])?;
        }
        Ok(())
    }

    fn bind(&mut self, unit: usize, slot: usize) -> Result<()> {
        self.note(|| format!("bind {unit}->{slot}"));
        self.weights.bind_unit(unit, &self.slots[slot])
    }

    fn release(&mut self, slot: usize) -> Result<()> {
        self.note(|| format!("release {slot}"));
        if let Some(c) = self.cuda {
            let compute = Self::compute_stream(c)?;
            c.freed[slot].record(&compute)?;
        }
        Ok(())
    }
}

/// A component streamed unit by unit; install it as the model's [`BlockHooks`].
pub struct Streamer {
    state: Mutex<State>,
    device: Device,
    slots: usize,
    slot_bytes: usize,
    remainder_bytes: usize,
}

impl Streamer {
    /// Streams `weights` on `device` with `prefetch` units copied ahead of the one computing
    /// (k; the ring has k + 1 slots). On `Device::Cpu` the slots are a second host buffer and
    /// copies are immediate (the numerics and the schedule, without a GPU).
    pub fn new(mut weights: OffloadedWeights, prefetch: usize, device: Device) -> Result<Self> {
        let units = weights.num_units();
        let ring = Ring::new(units, prefetch + 1)?;
        let slot_bytes = weights.max_unit_bytes();
        let cuda = match device {
            Device::Cuda(i) => {
                let dev = ltx_gpu::cuda::open(i)
                    .map_err(|e| OffloadError::Gpu(ltx_gpu::GpuError::CudaUnavailable(e)))?;
                let copy = dev.stream_from_pool(false)?;
                let copy_cu = copy.as_cudarc(&dev);
                let ctx = dev.context().clone();
                let events = |n: usize| -> Result<Vec<CudaEvent>> {
                    (0..n).map(|_| Ok(ctx.new_event(None)?)).collect()
                };
                Some(CudaSide {
                    copied: events(ring.slots())?,
                    freed: events(ring.slots())?,
                    dev,
                    copy,
                    copy_cu,
                })
            }
            Device::Cpu => None,
            other => {
                return Err(OffloadError::Invalid(format!(
                    "layer streaming needs a CUDA device or the CPU, not {other:?}"
                )))
            }
        };
        let slots = (0..ring.slots())
            .map(|_| Ok(Tensor::f_empty([slot_bytes as i64], (Kind::Uint8, device))?))
            .collect::<Result<Vec<_>>>()?;
        let remainder = weights.onload_remainder(device)?;
        let remainder_bytes = weights.remainder_bytes();
        Ok(Self {
            slots: ring.slots(),
            state: Mutex::new(State {
                cuda,
                weights,
                slots,
                ring,
                _remainder: remainder,
                log: None,
            }),
            device,
            slot_bytes,
            remainder_bytes,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Slots in the ring (prefetch depth + 1, at most the number of units).
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Bytes of weights on the device: the slots and the resident remainder.
    pub fn device_bytes(&self) -> u64 {
        (self.slots * self.slot_bytes + self.remainder_bytes) as u64
    }

    /// Whether the master copies are page-locked.
    pub fn pinned(&self) -> bool {
        self.lock().weights.pinned()
    }

    pub fn host_bytes(&self) -> u64 {
        self.lock().weights.host_bytes()
    }

    pub fn weight_bytes(&self) -> u64 {
        self.lock().weights.weight_bytes()
    }

    /// Unit copies queued so far.
    pub fn copies(&self) -> u64 {
        self.lock().ring.copies()
    }

    /// Ends streaming: every module points at its host copy again; the slots are freed once
    /// the work queued on them has run (the caching allocator orders that on the streams).
    pub fn into_weights(self) -> Result<OffloadedWeights> {
        let state = self.state.into_inner().unwrap_or_else(|p| p.into_inner());
        let mut weights = state.weights;
        weights.offload()?;
        Ok(weights)
    }

    /// Starts recording the backend calls (tests).
    pub fn record_calls(&self) {
        self.lock().log = Some(Vec::new());
    }

    /// The calls recorded since [`Streamer::record_calls`].
    pub fn take_calls(&self) -> Vec<String> {
        self.lock()
            .log
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    fn with_ring<T>(
        &self,
        f: impl FnOnce(&mut Ring, &mut dyn RingBackend) -> Result<T>,
    ) -> Result<T> {
        let mut guard = self.lock();
        let State {
            weights,
            slots,
            ring,
            cuda,
            log,
            ..
        } = &mut *guard;
        let mut backend = Backend {
            weights,
            slots,
            cuda: cuda.as_ref(),
            log: log.as_mut(),
        };
        f(ring, &mut backend)
    }
}

impl BlockHooks for Streamer {
    fn before(&self, block: usize) -> ltx_models::Result<()> {
        self.with_ring(|ring, b| ring.before(b, block).map(|_| ()))
            .map_err(Into::into)
    }

    fn after(&self, block: usize) -> ltx_models::Result<()> {
        self.with_ring(|ring, b| ring.after(b, block))
            .map_err(Into::into)
    }
}
