//! The InstantID family: InstantX's pipeline on an SDXL model (or the built-in demo family),
//! from the face conditioning analysed at submission to a PNG portrait. Its first estimate
//! comes from the configs ([`InstantIdFacts`]); once loaded, from the pipeline. A model loaded
//! resident on a GPU can leave the device for pinned host memory (`model` offload) and keep
//! serving from there without a reload.

use std::path::{Path, PathBuf};

use ltx_models::attention::AttentionBackend;
use ltx_models::ModelError;
use ltx_pipelines::instantid::demo::demo_instantid;
use ltx_pipelines::instantid::{instantid_workload, InstantIdModels, InstantIdPaths};
use ltx_pipelines::instantid::{InstantIdLoadOptions, InstantIdPipeline};
use ltx_pipelines::{BudgetSpec, MemoryOptions, MemoryReport, OffloadMode, Progress};

use super::instantid_facts::InstantIdFacts;
use super::{default_dtype, Estimate, JobCtx, ModelFamily};
use crate::config_instantid::InstantIdConfig;
use crate::devices::{self, Served};
use crate::family::FamilyId;
use crate::jobs::{InstantIdWork, Stage, Work, WorkKind};
use crate::ServerError;

/// What `/v1/system` and every job report as the InstantID model.
pub fn model_description(paths: Option<&InstantIdPaths>) -> String {
    match paths {
        Some(p) => format!(
            "{} + {} + {}",
            p.sdxl.display(),
            p.controlnet.display(),
            p.ip_adapter.display()
        ),
        None => "demo (built-in tiny SDXL, IdentityNet and Resampler with random weights: its \
                 portraits are noise)"
            .into(),
    }
}

/// The InstantID settings (`INSTANTID_*`).
pub struct InstantIdSettings {
    /// The SDXL folder, IdentityNet and IP-Adapter; `None`: the demo family.
    pub paths: Option<InstantIdPaths>,
    pub device: tch::Device,
    pub memory: MemoryOptions,
    pub budget: BudgetSpec,
    /// The switch: decode every portrait in tiles.
    pub tiling_on: bool,
    pub attention: AttentionBackend,
    /// The configured models' shapes, sizes and decode tile, read at start-up.
    pub facts: InstantIdFacts,
    /// Where scheduler configs for a job's scheduler override are written.
    pub scratch: PathBuf,
}

/// The family as `INSTANTID_*` configure it, on its resolved device, with its configs read.
pub fn served(c: &InstantIdConfig) -> Result<Served, ServerError> {
    let device = devices::resolve("INSTANTID_DEVICE", c.instantid_device)?;
    let paths = match (
        &c.instantid_model,
        &c.instantid_controlnet,
        &c.instantid_ip_adapter,
    ) {
        (Some(sdxl), Some(controlnet), Some(ip_adapter)) => Some(InstantIdPaths {
            sdxl: sdxl.clone(),
            controlnet: controlnet.clone(),
            ip_adapter: ip_adapter.clone(),
        }),
        _ => {
            tracing::warn!("no INSTANTID_MODEL configured: serving the InstantID demo family (random weights, portraits are noise)");
            None
        }
    };
    let tch_device = device.tch_device();
    let opts = InstantIdLoadOptions::new(tch_device, default_dtype(tch_device));
    let facts = InstantIdFacts::read(paths.as_ref(), &opts)
        .map_err(|e| ServerError::Config(format!("the configured InstantID model: {e}")))?;
    let attention = c.attention_backend().map_err(ServerError::Config)?;
    let report = crate::routes::initial_report(
        FamilyId::InstantId,
        &device,
        model_description(paths.as_ref()),
        attention,
        c.offload(),
    );
    let family = InstantIdFamily::new(InstantIdSettings {
        paths,
        device: tch_device,
        memory: c.memory(),
        budget: c
            .instantid_vram_budget
            .parse()
            .map_err(ServerError::Config)?,
        tiling_on: c.instantid_enable_vae_tiling,
        attention,
        facts,
        scratch: std::env::temp_dir().join(format!("ltx-i2v-schedulers-{}", std::process::id())),
    });
    Ok(Served {
        family: Box::new(family),
        report,
        configured: c.instantid_device,
        device,
    })
}

struct Loaded {
    pipe: InstantIdPipeline,
    mem: MemoryOptions,
    /// The model's own scheduler config (a job's override is applied around the job).
    scheduler: serde_json::Value,
}

pub struct InstantIdFamily {
    s: InstantIdSettings,
    loaded: Option<Loaded>,
}

fn instantid(work: &Work) -> Result<&InstantIdWork, ModelError> {
    match &work.kind {
        WorkKind::InstantId(w) => Ok(w),
        _ => Err(ModelError::InvalidInput("not an InstantID job".into())),
    }
}

/// The keypoint image's `(height, width)`: the size a job without width/height makes.
fn keypoint_size(w: &InstantIdWork) -> (usize, usize) {
    (w.face.keypoints.height, w.face.keypoints.width)
}

impl InstantIdFamily {
    pub fn new(s: InstantIdSettings) -> Self {
        Self { s, loaded: None }
    }

    fn loaded(&mut self) -> Result<&mut Loaded, ModelError> {
        self.loaded
            .as_mut()
            .ok_or_else(|| ModelError::Memory("InstantID is not loaded".into()))
    }

    /// Writes `config` for `set_scheduler_config_file` (the pipeline takes schedulers from
    /// files).
    fn use_scheduler(&mut self, config: &serde_json::Value, name: &str) -> Result<(), ModelError> {
        let path = self.s.scratch.join(format!("{name}.json"));
        let io = |source| ModelError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.s.scratch).map_err(io)?;
        std::fs::write(&path, config.to_string()).map_err(io)?;
        self.loaded()?
            .pipe
            .models_mut()
            .set_scheduler_config_file(&path)
    }
}

impl ModelFamily for InstantIdFamily {
    fn id(&self) -> FamilyId {
        FamilyId::InstantId
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

    fn tiled(&self, _work: &Work) -> bool {
        self.s.tiling_on
    }

    fn estimate(&self, work: &Work, tiled: bool) -> Result<Estimate, ModelError> {
        let w = instantid(work)?;
        let kps = keypoint_size(w);
        match &self.loaded {
            Some(l) => {
                let tile = l.pipe.default_vae_tiling(self.s.facts.tile.mode);
                let workload = instantid_workload(
                    &ltx_pipelines::instantid::InstantIdShapes::of_models(l.pipe.models())?,
                    tiled.then_some(&tile),
                    &w.params,
                    kps,
                )?;
                Ok(Estimate {
                    workload,
                    sizes: l.pipe.component_sizes(),
                })
            }
            None => Ok(Estimate {
                workload: instantid_workload(
                    &self.s.facts.shapes,
                    tiled.then_some(&self.s.facts.tile),
                    &w.params,
                    kps,
                )?,
                sizes: self.s.facts.sizes,
            }),
        }
    }

    fn memory(&self) -> Option<MemoryReport> {
        self.loaded.as_ref().map(|l| l.pipe.memory_report())
    }

    fn placed(&self) -> Option<MemoryOptions> {
        self.loaded.as_ref().map(|l| l.mem)
    }

    fn load(&mut self, mem: MemoryOptions, _work: &Work) -> Result<(), ModelError> {
        self.loaded = None;
        let device = self.s.device;
        tracing::info!(model = %model_description(self.s.paths.as_ref()), ?device, mode = %mem.mode, prefetch = mem.prefetch, "loading InstantID");
        let paths = self.s.paths.clone();
        let pipe =
            InstantIdPipeline::load_placed(
                device,
                default_dtype(device),
                mem,
                |opts| match &paths {
                    Some(p) => InstantIdModels::load(p, opts),
                    None => demo_instantid(opts),
                },
            )?;
        tracing::info!(weight_bytes = pipe.weight_bytes(), "InstantID loaded");
        let scheduler = pipe.models().scheduler_config().clone();
        self.loaded = Some(Loaded {
            pipe,
            mem,
            scheduler,
        });
        Ok(())
    }

    fn generate(
        &mut self,
        work: &Work,
        tiled: bool,
        ctx: &mut JobCtx<'_>,
    ) -> Result<tch::Tensor, ModelError> {
        let w = instantid(work)?;
        let mode = self.s.facts.tile.mode;
        let l = self.loaded()?;
        let tile = tiled.then(|| l.pipe.default_vae_tiling(mode));
        l.pipe.set_vae_tiling(tile)?;
        let own = l.scheduler.clone();
        if let Some(class) = w.scheduler {
            let mut config = own.clone();
            config["_class_name"] = serde_json::Value::from(class);
            self.use_scheduler(&config, "job-scheduler")?;
        }
        let job = ctx.job;
        let cancelled = || job.cancel_requested();
        let mut progress = |p: Progress| match p {
            Progress::EncodingText => ctx.stage(Stage::EncodingText),
            Progress::EncodingImage => ctx.stage(Stage::EncodingImage),
            Progress::Denoising { step, total } => ctx.step(step, total),
            Progress::Decoding => ctx.stage(Stage::Decoding),
        };
        let out = self
            .loaded()?
            .pipe
            .generate(&w.face, &w.params, &mut progress, &cancelled);
        if w.scheduler.is_some() {
            // The model's own scheduler for the next job, whatever this one did.
            self.use_scheduler(&own, "model-scheduler")?;
        }
        out
    }

    fn write(
        &self,
        image: tch::Tensor,
        _work: &Work,
        path: &Path,
        ctx: &mut JobCtx<'_>,
    ) -> Result<(), String> {
        ctx.stage(Stage::WritingImage);
        let fail = |e: &dyn std::fmt::Display| format!("writing the image: {e}");
        let img = ltx_pipelines::instantid::to_rgb_image(&image).map_err(|e| fail(&e))?;
        img.save_with_format(path, image::ImageFormat::Png)
            .map_err(|e| fail(&e))
    }

    fn can_offload(&self) -> bool {
        // A resident pipeline on a GPU can be placed once into host memory.
        self.loaded
            .as_ref()
            .is_some_and(|l| l.mem.mode == OffloadMode::None && l.pipe.device().is_cuda())
    }

    fn offload_to_host(&mut self) -> Result<(), ModelError> {
        if !self.can_offload() {
            return Err(ModelError::Memory(
                "InstantID is not resident on a GPU: nothing to move to the host".into(),
            ));
        }
        let device = self.s.device;
        let l = self.loaded()?;
        let mem = MemoryOptions {
            mode: OffloadMode::Model,
            prefetch: l.mem.prefetch,
        };
        l.pipe.place(device, mem)?;
        l.mem = mem;
        Ok(())
    }

    fn unload(&mut self) -> bool {
        self.loaded.take().is_some()
    }
}
