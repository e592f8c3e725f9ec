//! What the configured model's config files say, read once at start-up without loading a
//! weight: the component configs (for the submission-time rules and the residency manager's
//! formulas) and each component's weight bytes (from shape-only stores: the modules are built
//! with tensors that have shapes and no memory).

use std::path::Path;

use ltx_models::ltx::{LtxLatentUpsampler, LtxTransformer, LtxTransformerConfig, LtxVae};
use ltx_models::ltx::{LtxUpsamplerConfig, LtxVaeConfig};
use ltx_models::scheduler::FlowMatchConfig;
use ltx_models::t5::T5Encoder;
use ltx_models::text_encoder::TextEncoder;
use ltx_models::weights::WeightStore;
use ltx_models::ModelError;
use ltx_pipelines::budget::{ComponentSizes, HostPlacement};
use ltx_pipelines::memory::ComponentParams;
use tch::Kind;

/// The configured model as the rules and the memory planner need it.
#[derive(Debug, Clone)]
pub struct ModelFacts {
    pub transformer: LtxTransformerConfig,
    pub vae: LtxVaeConfig,
    pub scheduler: FlowMatchConfig,
    /// Weight bytes per component, in the dtype the worker loads (upsampler included).
    pub sizes: ComponentSizes,
    /// The multi-scale flow's latent upsampler, when one is available.
    pub upsampler: Option<LtxUpsamplerConfig>,
    /// float32 on the CPU, bf16 on CUDA (as the worker loads).
    pub dtype: Kind,
    pub placement: HostPlacement,
}

/// Output sizes and frame counts the model's VAE can make.
#[derive(Debug, Clone, Copy)]
pub struct Multiples {
    /// Width and height: multiples of this (the VAE's spatial compression).
    pub size: i64,
    /// Frames: `frames·k + 1` (the VAE's temporal compression).
    pub frames: i64,
}

fn bytes_of(store: &WeightStore) -> Vec<(String, tch::Tensor)> {
    store.take_params()
}

impl ModelFacts {
    /// Reads `model` (a diffusers folder; None: the demo model) and `upsampler` (None: the
    /// demo's own with the demo model, else no multi-scale flow) for a worker on `placement`.
    pub fn read(
        model: Option<&Path>,
        upsampler: Option<&Path>,
        placement: HostPlacement,
    ) -> Result<Self, ModelError> {
        let dtype = match placement {
            HostPlacement::Cpu => Kind::Float,
            HostPlacement::Cuda(_) => Kind::BFloat16,
        };
        let (t5, transformer, vae, scheduler, text_file) = match model {
            None => {
                let s = ltx_pipelines::demo::RandomShapes::demo();
                let sched = ltx_pipelines::demo::demo_scheduler();
                (Some(s.text_encoder), s.transformer, s.vae, sched, None)
            }
            Some(dir) => {
                let read = |p: &str| dir.join(p);
                let te = read("text_encoder");
                let (t5, file) = match TextEncoder::torchscript_in(&te) {
                    Some(ts) => (None, Some(ts)),
                    None => (
                        Some(ltx_models::config::read_config(&te.join("config.json"))?),
                        None,
                    ),
                };
                (
                    t5,
                    ltx_models::config::read_config(&read("transformer/config.json"))?,
                    ltx_models::config::read_config(&read("vae/config.json"))?,
                    ltx_models::config::read_config(&read("scheduler/scheduler_config.json"))?,
                    file,
                )
            }
        };
        scheduler.validate()?;
        let mut params = ComponentParams::default();
        let store = WeightStore::shapes_only(dtype);
        if let Some(cfg) = t5.clone() {
            T5Encoder::new(&store.root(), cfg)?;
            params.text_encoder = bytes_of(&store);
        }
        LtxTransformer::new(&store.root(), transformer.clone())?;
        params.transformer = bytes_of(&store);
        LtxVae::new(&store.root(), vae.clone())?;
        params.vae = bytes_of(&store);
        let mut sizes = ltx_pipelines::ltx_i2v::component_sizes(&params);
        if let Some(ts) = text_file {
            // A TorchScript export is counted as its file.
            let bytes = std::fs::metadata(&ts)
                .map_err(|source| ModelError::Io { path: ts, source })?
                .len();
            sizes.text_encoder = bytes;
            sizes.text_remainder = bytes;
        }
        let upsampler = match (upsampler, model) {
            (Some(path), _) => Some(upsampler_config(path)?),
            (None, None) => Some(ltx_pipelines::demo::demo_upsampler_config()),
            (None, Some(_)) => None,
        };
        if let Some(cfg) = &upsampler {
            if cfg.in_channels != vae.latent_channels {
                return Err(ModelError::UnsupportedConfig(format!(
                    "the latent upsampler takes {} latent channels, the model's VAE makes {}",
                    cfg.in_channels, vae.latent_channels
                )));
            }
            LtxLatentUpsampler::new(&store.root(), cfg.clone())?;
            sizes.upsampler = bytes_of(&store)
                .iter()
                .map(|(_, t)| ltx_models::weights::tensor_bytes(t))
                .sum();
        }
        Ok(Self {
            transformer,
            vae,
            scheduler,
            sizes,
            upsampler,
            dtype,
            placement,
        })
    }

    pub fn multiples(&self) -> Multiples {
        Multiples {
            size: self.vae.spatial_ratio(),
            frames: self.vae.temporal_ratio(),
        }
    }
}

/// The upsampler's config as `open_upsampler` reads it (folder, repo with
/// `latent_upsampler/`, or a single file's metadata), without its weights.
fn upsampler_config(path: &Path) -> Result<LtxUpsamplerConfig, ModelError> {
    if !path.is_dir() {
        return LtxUpsamplerConfig::from_safetensors_metadata(path);
    }
    let dir = if path.join("latent_upsampler").is_dir() {
        path.join("latent_upsampler")
    } else {
        path.to_path_buf()
    };
    let cfg = dir.join("config.json");
    if cfg.is_file() {
        ltx_models::config::read_config(&cfg)
    } else {
        Ok(LtxUpsamplerConfig::default())
    }
}
