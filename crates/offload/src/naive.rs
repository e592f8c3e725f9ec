//! The baseline that streaming is measured against: accelerate-style sequential offload. Before
//! each unit its weights are copied to the device synchronously from pageable host memory on
//! the compute stream (no prefetch, no copy stream); after it they point back at the host.

use std::sync::Mutex;

use ltx_models::hooks::BlockHooks;
use tch::Device;

use crate::weights::OffloadedWeights;

pub struct SyncCopyHooks {
    weights: Mutex<OffloadedWeights>,
    device: Device,
}

impl SyncCopyHooks {
    /// `weights` should be pageable ([`OffloadedWeights::with_pinning`] with `pin: false`).
    pub fn new(weights: OffloadedWeights, device: Device) -> Self {
        Self {
            weights: Mutex::new(weights),
            device,
        }
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut OffloadedWeights) -> crate::Result<T>,
    ) -> ltx_models::Result<T> {
        let mut w = self.weights.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut w).map_err(Into::into)
    }
}

impl BlockHooks for SyncCopyHooks {
    fn before(&self, block: usize) -> ltx_models::Result<()> {
        let device = self.device;
        self.with(|w| {
            for (mut module, host) in w.unit_params(block)? {
                let on = host.f_to_device_(device, host.kind(), false, false)?;
                module.f_set_data(&on)?;
            }
            Ok(())
        })
    }

    fn after(&self, block: usize) -> ltx_models::Result<()> {
        self.with(|w| {
            for (mut module, host) in w.unit_params(block)? {
                module.f_set_data(&host)?;
            }
            Ok(())
        })
    }
}
