//! Where the pipeline's weights live during a generation: every component resident (`none`),
//! each component onloaded while it runs and offloaded when another needs the room (`model`),
//! or the transformer and T5 streamed block by block with the rest model-offloaded
//! (`sequential`). Built from a pipeline loaded on the CPU; see [`crate::LtxI2vPipeline::place`].

use std::sync::Arc;

use ltx_models::Result;
use ltx_offload::weights::{ltx_transformer_unit, t5_unit, CHUNK_BYTES};
use ltx_offload::{OffloadMode, OffloadedWeights, Streamer};
use serde::Serialize;
use tch::{Device, Tensor};

/// How to place weights when a pipeline is loaded for a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryOptions {
    pub mode: OffloadMode,
    /// Sequential mode: units copied ahead of the one computing (the ring has this + 1 slots).
    pub prefetch: usize,
}

impl Default for MemoryOptions {
    fn default() -> Self {
        Self {
            mode: OffloadMode::None,
            prefetch: 2,
        }
    }
}

/// The parameter handles of each component, as the loaders handed them out.
#[derive(Default)]
pub struct ComponentParams {
    pub text_encoder: Vec<(String, Tensor)>,
    pub transformer: Vec<(String, Tensor)>,
    pub vae: Vec<(String, Tensor)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    TextEncoder,
    Transformer,
    Vae,
    /// The multi-scale flow's latent upsampler, once attached.
    Upsampler,
}

enum Placement {
    Model(OffloadedWeights),
    Streamed(Arc<Streamer>),
}

/// The weights' placement for a pipeline whose mode is `model` or `sequential`.
pub struct Memory {
    mode: OffloadMode,
    text: Placement,
    transformer: Placement,
    vae: Placement,
    upsampler: Option<Placement>,
    device: Device,
    active: Option<Component>,
}

/// What `Memory` holds, for reports.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct MemoryReport {
    pub mode: Option<OffloadMode>,
    /// Weight bytes on the device now.
    pub device_bytes: u64,
    /// Weight bytes in host memory (the master copies).
    pub host_bytes: u64,
    pub pinned: bool,
}

impl Placement {
    fn enter(&mut self) -> Result<()> {
        match self {
            Self::Model(w) => Ok(w.onload()?),
            Self::Streamed(_) => Ok(()),
        }
    }

    fn leave(&mut self) -> Result<()> {
        match self {
            Self::Model(w) => Ok(w.offload()?),
            Self::Streamed(_) => Ok(()),
        }
    }

    fn device_bytes(&self) -> u64 {
        match self {
            Self::Model(w) => w.device_bytes(),
            Self::Streamed(s) => s.device_bytes(),
        }
    }

    fn host_bytes(&self) -> u64 {
        match self {
            Self::Model(w) => w.host_bytes(),
            Self::Streamed(s) => s.host_bytes(),
        }
    }
}

/// What the pipeline must do with the streamers: install them as block hooks.
pub struct Streamers {
    pub text_encoder: Option<Arc<Streamer>>,
    pub transformer: Option<Arc<Streamer>>,
}

impl Memory {
    /// Moves the components' weights into host arenas (pinned for a CUDA `device`) and sets
    /// up the mode. `text_streamable`: the text encoder has block hooks (native T5).
    pub fn new(
        params: ComponentParams,
        device: Device,
        opts: MemoryOptions,
        text_streamable: bool,
    ) -> Result<(Self, Streamers)> {
        let model = |named: Vec<(String, Tensor)>| -> Result<Placement> {
            Ok(Placement::Model(OffloadedWeights::new(
                named,
                |_| None,
                device,
                CHUNK_BYTES,
            )?))
        };
        let stream = |named, unit_of| -> Result<Arc<Streamer>> {
            let w = OffloadedWeights::new(named, unit_of, device, CHUNK_BYTES)?;
            Ok(Arc::new(Streamer::new(w, opts.prefetch, device)?))
        };
        let mut streamers = Streamers {
            text_encoder: None,
            transformer: None,
        };
        let (text, transformer) = match opts.mode {
            OffloadMode::Sequential => {
                let tr = stream(params.transformer, ltx_transformer_unit as _)?;
                streamers.transformer = Some(tr.clone());
                let text = if text_streamable {
                    let s = stream(params.text_encoder, t5_unit as _)?;
                    streamers.text_encoder = Some(s.clone());
                    Placement::Streamed(s)
                } else {
                    model(params.text_encoder)?
                };
                (text, Placement::Streamed(tr))
            }
            OffloadMode::Model | OffloadMode::None => {
                (model(params.text_encoder)?, model(params.transformer)?)
            }
        };
        Ok((
            Self {
                mode: opts.mode,
                text,
                transformer,
                vae: model(params.vae)?,
                upsampler: None,
                device,
                active: None,
            },
            streamers,
        ))
    }

    fn placement(&mut self, c: Component) -> Result<&mut Placement> {
        Ok(match c {
            Component::TextEncoder => &mut self.text,
            Component::Transformer => &mut self.transformer,
            Component::Vae => &mut self.vae,
            Component::Upsampler => self.upsampler.as_mut().ok_or_else(|| {
                ltx_models::ModelError::Memory("no latent upsampler is attached".into())
            })?,
        })
    }

    /// Model-offloads the latent upsampler's weights (`params`, wherever they are now) like
    /// the other components: host master copies, on the device only while it upsamples. A
    /// previously attached upsampler is dropped.
    pub fn add_upsampler(&mut self, params: Vec<(String, Tensor)>) -> Result<()> {
        if self.active == Some(Component::Upsampler) {
            self.idle()?;
        }
        self.upsampler = Some(Placement::Model(OffloadedWeights::new(
            params,
            |_| None,
            self.device,
            CHUNK_BYTES,
        )?));
        Ok(())
    }

    /// Makes `c` usable on the device: the component that was active leaves first, so two
    /// model-offloaded components are never on the device together.
    pub fn enter(&mut self, c: Component) -> Result<()> {
        if self.active == Some(c) {
            return Ok(());
        }
        if let Some(prev) = self.active.take() {
            self.placement(prev)?.leave()?;
        }
        self.placement(c)?.enter()?;
        self.active = Some(c);
        Ok(())
    }

    /// Offloads whatever is active (after a generation).
    pub fn idle(&mut self) -> Result<()> {
        if let Some(prev) = self.active.take() {
            self.placement(prev)?.leave()?;
        }
        Ok(())
    }

    pub fn report(&self) -> MemoryReport {
        let all: Vec<&Placement> = [&self.text, &self.transformer, &self.vae]
            .into_iter()
            .chain(self.upsampler.as_ref())
            .collect();
        MemoryReport {
            mode: Some(self.mode),
            device_bytes: all.iter().map(|p| p.device_bytes()).sum(),
            host_bytes: all.iter().map(|p| p.host_bytes()).sum(),
            pinned: all.iter().all(|p| match p {
                Placement::Model(w) => w.pinned(),
                Placement::Streamed(s) => s.pinned(),
            }),
        }
    }
}
