//! The LTX-Video family: `LTXImageToVideoPipeline` jobs and the 0.9.7/0.9.8 multi-scale flow,
//! written as H.264 MP4s. Its estimates come from the configured model's configs read at
//! start-up ([`ModelFacts`]), so the residency manager decides before any weight loads.

use std::path::{Path, PathBuf};

use ltx_models::attention::AttentionBackend;
use ltx_models::ModelError;
use ltx_pipelines::demo::demo_pipeline;
use ltx_pipelines::multiscale::MultiscaleStage;
use ltx_pipelines::tiled_decode::TileConfig;
use ltx_pipelines::video::write_mp4;
use ltx_pipelines::{BudgetSpec, LtxI2vPipeline, MemoryOptions, MemoryReport, Progress};

use super::{default_dtype, Estimate, JobCtx, ModelFamily};
use crate::family::FamilyId;
use crate::jobs::{Stage, Work, WorkKind};
use crate::model_facts::ModelFacts;

/// What `/v1/system` and every job report as the LTX-Video model.
pub fn model_description(model: Option<&Path>) -> String {
    match model {
        Some(p) => p.display().to_string(),
        None => "demo (built-in tiny model with random weights: its videos are noise)".into(),
    }
}

/// The LTX-Video settings (`LTX_*`).
pub struct LtxSettings {
    /// A diffusers folder; `None`: the demo model.
    pub model: Option<PathBuf>,
    /// The multi-scale flow's latent upsampler (`LTX_UPSAMPLER`; the demo model has its own).
    pub upsampler: Option<PathBuf>,
    pub device: tch::Device,
    /// The offload mode (applied on CUDA; a no-op on the CPU).
    pub memory: MemoryOptions,
    pub budget: BudgetSpec,
    /// Tiled decoding settings, and whether the switch turns tiling on for every job.
    pub tiling: TileConfig,
    pub tiling_on: bool,
    pub attention: AttentionBackend,
    /// The configured model's configs and sizes, read at start-up.
    pub facts: ModelFacts,
}

pub struct LtxFamily {
    s: LtxSettings,
    loaded: Option<(LtxI2vPipeline, MemoryOptions)>,
}

impl LtxFamily {
    pub fn new(s: LtxSettings) -> Self {
        Self { s, loaded: None }
    }

    fn pipe(&mut self) -> Result<&mut LtxI2vPipeline, ModelError> {
        self.loaded
            .as_mut()
            .map(|(p, _)| p)
            .ok_or_else(|| ModelError::Memory("LTX-Video is not loaded".into()))
    }

    /// Attaches the upsampler for multi-scale jobs if the pipeline has none yet (it is placed
    /// by the pipeline's memory mode, so a re-placed model loads it again).
    fn ensure_upsampler(&mut self, ctx: &mut JobCtx<'_>) -> Result<(), ModelError> {
        let (upsampler, demo) = (self.s.upsampler.clone(), self.s.model.is_none());
        let pipe = self.pipe()?;
        if pipe.has_upsampler() {
            return Ok(());
        }
        ctx.stage(Stage::Loading);
        match (upsampler, demo) {
            (Some(path), _) => pipe.load_upsampler(&path),
            (None, true) => ltx_pipelines::demo::attach_demo_upsampler(pipe),
            (None, false) => Err(ModelError::UnsupportedConfig(
                "the multi-scale flow needs a latent upsampler: set LTX_UPSAMPLER".into(),
            )),
        }
    }
}

fn not_ltx() -> ModelError {
    ModelError::InvalidInput("not an LTX-Video job".into())
}

impl ModelFamily for LtxFamily {
    fn id(&self) -> FamilyId {
        FamilyId::Ltx
    }

    fn configured(&self) -> MemoryOptions {
        self.s.memory
    }

    fn vram_budget(&self) -> BudgetSpec {
        self.s.budget
    }

    fn attention(&self) -> AttentionBackend {
        self.s.attention
    }

    fn tiled(&self, work: &Work) -> bool {
        self.s.tiling_on || work.plan.tiled
    }

    fn estimate(&self, work: &Work, tiled: bool) -> Result<Estimate, ModelError> {
        let f = &self.s.facts;
        let tiling = tiled.then_some(&self.s.tiling);
        let mut sizes = f.sizes;
        let workload = match &work.kind {
            WorkKind::I2v(_, p) => {
                // The upsampler's weights count once a multi-scale job has attached it.
                if !self.loaded.as_ref().is_some_and(|(p, _)| p.has_upsampler()) {
                    sizes.upsampler = 0;
                }
                ltx_pipelines::ltx_i2v::i2v_workload(&f.transformer, &f.vae, f.dtype, tiling, p)
            }
            WorkKind::Multiscale(_, r) => {
                let mid = f.upsampler.as_ref().map_or(0, |u| u.mid_channels);
                ltx_pipelines::multiscale::multiscale_workload(
                    &f.transformer,
                    &f.vae,
                    f.dtype,
                    tiling,
                    mid,
                    &r.params,
                )?
            }
            WorkKind::InstantId(_) => return Err(not_ltx()),
        };
        Ok(Estimate { workload, sizes })
    }

    fn memory(&self) -> Option<MemoryReport> {
        self.loaded.as_ref().map(|(p, _)| p.memory_report())
    }

    fn placed(&self) -> Option<MemoryOptions> {
        self.loaded.as_ref().map(|(_, m)| *m)
    }

    fn load(&mut self, mem: MemoryOptions, work: &Work) -> Result<(), ModelError> {
        self.loaded = None;
        // The tokenizer's base length; the multi-scale flow re-pads its prompts to 256 tokens.
        let msl = match &work.kind {
            WorkKind::I2v(_, p) => p.max_sequence_length,
            _ => 128,
        };
        let device = self.s.device;
        tracing::info!(model = %model_description(self.s.model.as_deref()), ?device, mode = %mem.mode, prefetch = mem.prefetch, "loading LTX-Video");
        let model = self.s.model.clone();
        let pipe =
            LtxI2vPipeline::load_placed(device, default_dtype(device), mem, |opts| match &model {
                Some(dir) => LtxI2vPipeline::load(dir, opts, msl),
                None => demo_pipeline(opts, msl),
            })?;
        tracing::info!(weight_bytes = pipe.weight_bytes(), "LTX-Video loaded");
        self.loaded = Some((pipe, mem));
        Ok(())
    }

    fn generate(
        &mut self,
        work: &Work,
        tiled: bool,
        ctx: &mut JobCtx<'_>,
    ) -> Result<tch::Tensor, ModelError> {
        let tiling = tiled.then(|| self.s.tiling.clone());
        self.pipe()?.set_vae_tiling(tiling)?;
        let job = ctx.job;
        let cancelled = || job.cancel_requested();
        match &work.kind {
            WorkKind::I2v(v, params) => {
                let mut progress = |p: Progress| match p {
                    Progress::EncodingText => ctx.stage(Stage::EncodingText),
                    Progress::EncodingImage => ctx.stage(Stage::EncodingImage),
                    Progress::Denoising { step, total } => ctx.step(step, total),
                    Progress::Decoding => ctx.stage(Stage::Decoding),
                };
                self.pipe()?
                    .generate_u8(&v.image, params, &mut progress, &cancelled)
            }
            WorkKind::Multiscale(v, r) => {
                // A model re-placed for this job (mode change, out-of-memory retry) loads its
                // upsampler again.
                self.ensure_upsampler(ctx)?;
                let low = r.params.steps_lowres;
                let total = work.total_steps();
                let mut stage = |s: MultiscaleStage| match s {
                    MultiscaleStage::LowRes { step, .. } => ctx.step(step, total),
                    MultiscaleStage::Refine { step, .. } => ctx.step(low + step, total),
                    MultiscaleStage::Upsampling => ctx.stage(Stage::Upsampling),
                    MultiscaleStage::EncodingText => ctx.stage(Stage::EncodingText),
                    MultiscaleStage::LowResPass | MultiscaleStage::RefinePass => {
                        ctx.stage(Stage::EncodingImage)
                    }
                    MultiscaleStage::Decoding | MultiscaleStage::Resizing => {
                        ctx.stage(Stage::Decoding)
                    }
                };
                self.pipe()?
                    .generate_multiscale(&v.image, r, &mut stage, &cancelled)
            }
            WorkKind::InstantId(_) => Err(not_ltx()),
        }
    }

    fn write(
        &self,
        frames: tch::Tensor,
        work: &Work,
        path: &Path,
        ctx: &mut JobCtx<'_>,
    ) -> Result<(), String> {
        ctx.stage(Stage::WritingVideo);
        let fps = work.video().map(|v| v.fps).ok_or("not an LTX-Video job")?;
        let frames = frames
            .f_to_device(tch::Device::Cpu)
            .map_err(|e| format!("writing the video: {e}"))?;
        write_mp4(&frames, fps, path)
            .map(drop)
            .map_err(|e| format!("writing the video: {e}"))
    }

    fn unload(&mut self) -> bool {
        self.loaded.take().is_some()
    }
}
