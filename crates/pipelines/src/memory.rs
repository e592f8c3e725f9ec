//! Where a pipeline's weights live during a generation, for every pipeline (LTX-Video,
//! InstantID): every component resident (`none`), each component onloaded while it runs and
//! offloaded when another needs the room (`model`), or its big modules streamed block by block
//! with the rest model-offloaded (`sequential`).
//!
//! A [`Memory`] is a list of parts, each belonging to a [`Component`] (the stage that uses it)
//! and placed one of three ways: model-offloaded ([`OffloadedWeights`], on the device while
//! its component is entered), streamed for the pipeline's lifetime (a [`Streamer`] installed
//! as the model's block hooks: its slots and remainder stay on the device — LTX's transformer
//! and T5), or streamed while its component is entered ([`StreamHooks`]: the streamer is made
//! when the component is entered and taken apart when it leaves, so nothing of it stays on the
//! device between generations — InstantID's UNet and IdentityNet). Entering a component
//! leaves the previous one first. See [`crate::LtxI2vPipeline::place`] and
//! [`crate::instantid::InstantIdPipeline::place`].

use std::sync::{Arc, Mutex};

use ltx_models::hooks::BlockHooks;
use ltx_models::{ModelError, Result};
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
    /// The text encoder(s).
    TextEncoder,
    /// The denoising stage's networks (LTX's transformer; InstantID's UNet, IdentityNet and
    /// face Resampler).
    Transformer,
    Vae,
    /// The multi-scale flow's latent upsampler, once attached.
    Upsampler,
}

/// Block hooks a model keeps for good, with the streamer behind them made only while the
/// model's component is entered ([`Memory::add_streamed_while_entered`]).
pub struct StreamHooks {
    current: Mutex<Option<Arc<Streamer>>>,
}

impl StreamHooks {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Arc<Streamer>>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn streamer(&self) -> Result<Arc<Streamer>> {
        self.lock().clone().ok_or_else(|| {
            ModelError::Memory(
                "a streamed model ran while its component was not entered (no streamer)".into(),
            )
        })
    }
}

impl BlockHooks for StreamHooks {
    fn before(&self, block: usize) -> Result<()> {
        self.streamer()?.before(block)
    }

    fn after(&self, block: usize) -> Result<()> {
        self.streamer()?.after(block)
    }
}

/// A part streamed while its component is entered.
struct EnteredStream {
    /// The master copies while no streamer holds them (None only after a failed start).
    weights: Option<OffloadedWeights>,
    hooks: Arc<StreamHooks>,
    prefetch: usize,
    device: Device,
}

enum Placement {
    Model(OffloadedWeights),
    Streamed(Arc<Streamer>),
    StreamedWhileEntered(EnteredStream),
}

/// The weights' placement for a pipeline whose mode is `model` or `sequential`.
pub struct Memory {
    mode: OffloadMode,
    prefetch: usize,
    device: Device,
    parts: Vec<(Component, Placement)>,
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

impl EnteredStream {
    fn enter(&mut self) -> Result<()> {
        let mut current = self.hooks.lock();
        if current.is_some() {
            return Ok(());
        }
        let weights = self.weights.take().ok_or_else(|| {
            ModelError::Memory(
                "a streamed model's weights were lost when its streamer failed to start; \
                 load the model again"
                    .into(),
            )
        })?;
        *current = Some(Arc::new(Streamer::new(
            weights,
            self.prefetch,
            self.device,
        )?));
        Ok(())
    }

    fn leave(&mut self) -> Result<()> {
        let mut current = self.hooks.lock();
        let Some(s) = current.take() else {
            return Ok(());
        };
        match Arc::try_unwrap(s) {
            Ok(s) => {
                self.weights = Some(s.into_weights()?);
                Ok(())
            }
            Err(s) => {
                *current = Some(s);
                Err(ModelError::Memory(
                    "a streamed model's streamer is still in use".into(),
                ))
            }
        }
    }
}

impl Placement {
    fn enter(&mut self) -> Result<()> {
        match self {
            Self::Model(w) => Ok(w.onload()?),
            Self::Streamed(_) => Ok(()),
            Self::StreamedWhileEntered(s) => s.enter(),
        }
    }

    fn leave(&mut self) -> Result<()> {
        match self {
            Self::Model(w) => Ok(w.offload()?),
            Self::Streamed(_) => Ok(()),
            Self::StreamedWhileEntered(s) => s.leave(),
        }
    }

    fn device_bytes(&self) -> u64 {
        match self {
            Self::Model(w) => w.device_bytes(),
            Self::Streamed(s) => s.device_bytes(),
            Self::StreamedWhileEntered(s) => {
                s.hooks.lock().as_ref().map_or(0, |s| s.device_bytes())
            }
        }
    }

    fn host_bytes(&self) -> u64 {
        match self {
            Self::Model(w) => w.host_bytes(),
            Self::Streamed(s) => s.host_bytes(),
            Self::StreamedWhileEntered(s) => match (&s.weights, s.hooks.lock().as_ref()) {
                (Some(w), _) => w.host_bytes(),
                (None, Some(st)) => st.host_bytes(),
                (None, None) => 0,
            },
        }
    }

    fn pinned(&self) -> bool {
        match self {
            Self::Model(w) => w.pinned(),
            Self::Streamed(s) => s.pinned(),
            Self::StreamedWhileEntered(s) => match (&s.weights, s.hooks.lock().as_ref()) {
                (Some(w), _) => w.pinned(),
                (None, Some(st)) => st.pinned(),
                (None, None) => false,
            },
        }
    }
}

/// What the pipeline must do with the streamers: install them as block hooks.
pub struct Streamers {
    pub text_encoder: Option<Arc<Streamer>>,
    pub transformer: Option<Arc<Streamer>>,
}

fn missing(c: Component) -> ModelError {
    ModelError::Memory(match c {
        Component::Upsampler => "no latent upsampler is attached".into(),
        other => format!("no {other:?} weights are placed"),
    })
}

impl Memory {
    /// A placement without parts yet, for `device` in `opts`' mode (the prefetch is the
    /// streamed parts').
    pub fn empty(device: Device, opts: MemoryOptions) -> Self {
        Self {
            mode: opts.mode,
            prefetch: opts.prefetch,
            device,
            parts: Vec::new(),
            active: None,
        }
    }

    /// LTX-Video's placement: moves the components' weights into host arenas (pinned for a
    /// CUDA `device`) and sets up the mode. `text_streamable`: the text encoder has block hooks
    /// (native T5).
    pub fn new(
        params: ComponentParams,
        device: Device,
        opts: MemoryOptions,
        text_streamable: bool,
    ) -> Result<(Self, Streamers)> {
        let mut m = Self::empty(device, opts);
        let mut streamers = Streamers {
            text_encoder: None,
            transformer: None,
        };
        match opts.mode {
            OffloadMode::Sequential => {
                let tr = m.add_streamed(
                    Component::Transformer,
                    params.transformer,
                    ltx_transformer_unit,
                )?;
                streamers.transformer = Some(tr);
                if text_streamable {
                    let s = m.add_streamed(Component::TextEncoder, params.text_encoder, t5_unit)?;
                    streamers.text_encoder = Some(s);
                } else {
                    m.add_model(Component::TextEncoder, params.text_encoder)?;
                }
            }
            OffloadMode::Model | OffloadMode::None => {
                m.add_model(Component::TextEncoder, params.text_encoder)?;
                m.add_model(Component::Transformer, params.transformer)?;
            }
        }
        m.add_model(Component::Vae, params.vae)?;
        Ok((m, streamers))
    }

    /// Model-offloads `params` (wherever they are now) as a part of `c`: host master copies
    /// (pinned for CUDA), on the device only while `c` is entered.
    pub fn add_model(&mut self, c: Component, params: Vec<(String, Tensor)>) -> Result<()> {
        let w = OffloadedWeights::new(params, |_| None, self.device, CHUNK_BYTES)?;
        self.parts.push((c, Placement::Model(w)));
        Ok(())
    }

    /// Streams `params`, grouped into units by `unit_of`, for as long as this placement lives:
    /// install the returned streamer as the model's block hooks.
    pub fn add_streamed(
        &mut self,
        c: Component,
        params: Vec<(String, Tensor)>,
        unit_of: impl Fn(&str) -> Option<usize>,
    ) -> Result<Arc<Streamer>> {
        let w = OffloadedWeights::new(params, unit_of, self.device, CHUNK_BYTES)?;
        let s = Arc::new(Streamer::new(w, self.prefetch, self.device)?);
        self.parts.push((c, Placement::Streamed(s.clone())));
        Ok(s)
    }

    /// Streams `params`, grouped into units by `unit_of`, while `c` is entered: the streamer
    /// (its slots and the resident remainder) is made on entering and taken apart on leaving.
    /// Install the returned hooks as the model's block hooks.
    pub fn add_streamed_while_entered(
        &mut self,
        c: Component,
        params: Vec<(String, Tensor)>,
        unit_of: impl Fn(&str) -> Option<usize>,
    ) -> Result<Arc<StreamHooks>> {
        let w = OffloadedWeights::new(params, unit_of, self.device, CHUNK_BYTES)?;
        if w.num_units() == 0 {
            return Err(ModelError::Memory(format!(
                "{c:?}: a streamed model has no streaming units"
            )));
        }
        let hooks = Arc::new(StreamHooks {
            current: Mutex::new(None),
        });
        self.parts.push((
            c,
            Placement::StreamedWhileEntered(EnteredStream {
                weights: Some(w),
                hooks: hooks.clone(),
                prefetch: self.prefetch,
                device: self.device,
            }),
        ));
        Ok(hooks)
    }

    /// Model-offloads the latent upsampler's weights (`params`, wherever they are now) like
    /// the other components: host master copies, on the device only while it upsamples. A
    /// previously attached upsampler is dropped.
    pub fn add_upsampler(&mut self, params: Vec<(String, Tensor)>) -> Result<()> {
        if self.active == Some(Component::Upsampler) {
            self.idle()?;
        }
        self.parts.retain(|(c, _)| *c != Component::Upsampler);
        self.add_model(Component::Upsampler, params)
    }

    fn leave(&mut self, c: Component) -> Result<()> {
        let mut first_error = None;
        for (_, p) in self.parts.iter_mut().filter(|(pc, _)| *pc == c) {
            if let Err(e) = p.leave() {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Makes `c` usable on the device: the component that was active leaves first, so two
    /// model-offloaded components are never on the device together.
    pub fn enter(&mut self, c: Component) -> Result<()> {
        if self.active == Some(c) {
            return Ok(());
        }
        if let Some(prev) = self.active.take() {
            self.leave(prev)?;
        }
        if !self.parts.iter().any(|(pc, _)| *pc == c) {
            return Err(missing(c));
        }
        // Active before its parts enter, so that `idle` also undoes a partial entry.
        self.active = Some(c);
        for (_, p) in self.parts.iter_mut().filter(|(pc, _)| *pc == c) {
            p.enter()?;
        }
        Ok(())
    }

    /// Offloads whatever is active (after a generation).
    pub fn idle(&mut self) -> Result<()> {
        match self.active.take() {
            Some(prev) => self.leave(prev),
            None => Ok(()),
        }
    }

    pub fn mode(&self) -> OffloadMode {
        self.mode
    }

    pub fn report(&self) -> MemoryReport {
        let all = || self.parts.iter().map(|(_, p)| p);
        MemoryReport {
            mode: Some(self.mode),
            device_bytes: all().map(Placement::device_bytes).sum(),
            host_bytes: all().map(Placement::host_bytes).sum(),
            pinned: all().all(Placement::pinned),
        }
    }
}
