//! SDXL as users download it: a diffusers folder (`model_index.json`, `text_encoder/`,
//! `text_encoder_2/`, `tokenizer/`, `tokenizer_2/`, `unet/`, `vae/`, `scheduler/`; SDXL base
//! 1.0, RealVisXL, YamerMIX and other fine-tunes share this layout), optionally with diffusers'
//! variant files (`*.fp16.safetensors`, as those repos ship them next to the full-precision
//! ones), and InstantX's IdentityNet folder (`ControlNetModel/`). Each component loads strictly
//! (a missing, unexpected or wrongly shaped tensor is an error naming it) in its own dtype; the
//! sizes the components must share (text widths → cross-attention width, pooled width and time
//! ids → the added embedding) are checked once, at load, instead of failing mid-generation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tch::{Device, Kind, Tensor};

use super::clip::{ClipTextConfig, ClipTextModel, ClipTextModelWithProjection};
use super::clip_tokenizer::ClipTokenizer;
use super::schedulers::{parse_python_json, SdxlScheduler};
use super::unet::{
    ControlNetConfig, ControlNetModel, PerBlock, UNet2DConditionConfig, UNet2DConditionModel,
};
use super::vae::{AutoencoderKl, AutoencoderKlConfig};
use crate::config::read_config;
use crate::weights::{Vb, WeightStore};
use crate::{ModelError, Result};

/// `_class_name`s of `model_index.json` whose folders hold SDXL's components.
/// (Inpainting folders are not: their UNet takes 9 input channels.)
pub const SDXL_PIPELINE_CLASSES: [&str; 4] = [
    "StableDiffusionXLPipeline",
    "StableDiffusionXLImg2ImgPipeline",
    "StableDiffusionXLControlNetPipeline",
    "StableDiffusionXLInstantIDPipeline",
];

/// The components an SDXL folder must have, with the classes `model_index.json` may name.
const COMPONENTS: [(&str, &str); 7] = [
    ("tokenizer", "CLIPTokenizer"),
    ("tokenizer_2", "CLIPTokenizer"),
    ("text_encoder", "CLIPTextModel"),
    ("text_encoder_2", "CLIPTextModelWithProjection"),
    ("unet", "UNet2DConditionModel"),
    ("vae", "AutoencoderKL"),
    ("scheduler", ""),
];

fn unsupported(m: String) -> ModelError {
    ModelError::UnsupportedConfig(m)
}

/// What `model_index.json` says.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelIndex {
    pub class_name: String,
    /// diffusers' `force_zeros_for_empty_prompt` (true unless the file says otherwise): without
    /// a negative prompt the CFG negative embeddings are zeros rather than those of `""`.
    pub force_zeros_for_empty_prompt: bool,
    /// Component name → `[library, class]` (None where the file has `[null, null]`).
    pub components: BTreeMap<String, Option<(String, String)>>,
}

impl ModelIndex {
    /// Reads `dir/model_index.json` and checks that it describes an SDXL pipeline whose
    /// components are the ones this crate runs.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("model_index.json");
        let value: Value = read_config(&path)?;
        let class_name = value
            .get("_class_name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if !SDXL_PIPELINE_CLASSES.contains(&class_name.as_str()) {
            return Err(unsupported(format!(
                "{}: _class_name {class_name:?} is not an SDXL pipeline (accepted: {})",
                path.display(),
                SDXL_PIPELINE_CLASSES.join(", ")
            )));
        }
        let mut components = BTreeMap::new();
        if let Some(map) = value.as_object() {
            for (name, v) in map.iter().filter(|(k, _)| !k.starts_with('_')) {
                if let Some([lib, cls]) = v.as_array().map(Vec::as_slice) {
                    let entry = lib.as_str().zip(cls.as_str());
                    components.insert(
                        name.clone(),
                        entry.map(|(l, c)| (l.to_string(), c.to_string())),
                    );
                }
            }
        }
        let force_zeros_for_empty_prompt = value
            .get("force_zeros_for_empty_prompt")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let index = Self {
            class_name,
            force_zeros_for_empty_prompt,
            components,
        };
        for (name, class) in COMPONENTS {
            match index.components.get(name) {
                Some(Some((_, c))) if class.is_empty() || c == class => {}
                Some(Some((_, c))) => {
                    return Err(unsupported(format!(
                        "{}: component {name} is a {c}, SDXL's is a {class}",
                        path.display()
                    )))
                }
                Some(None) => {
                    return Err(unsupported(format!(
                        "{}: component {name} is null; SDXL needs it (a refiner-only folder has no \
                         text_encoder or tokenizer)",
                        path.display()
                    )))
                }
                None => {
                    return Err(unsupported(format!(
                        "{}: component {name} is not listed",
                        path.display()
                    )))
                }
            }
        }
        Ok(index)
    }
}

/// The dtype each component's weights load in. `vae` None: the UNet's dtype, except float32
/// when that is float16 and the VAE's config sets `force_upcast` (SDXL's VAE overflows in
/// float16; diffusers then decodes in float32 from the float16 weights, which is what loading
/// the float16 variant in float32 gives).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SdxlDtypes {
    pub text_encoder: Kind,
    pub text_encoder_2: Kind,
    pub unet: Kind,
    pub vae: Option<Kind>,
}

impl SdxlDtypes {
    /// `kind` for every component, the VAE as its `force_upcast` says.
    pub fn uniform(kind: Kind) -> Self {
        Self {
            text_encoder: kind,
            text_encoder_2: kind,
            unet: kind,
            vae: None,
        }
    }

    /// The VAE's dtype for a config.
    pub fn vae_kind(&self, cfg: &AutoencoderKlConfig) -> Kind {
        self.vae
            .unwrap_or(if self.unet == Kind::Half && cfg.force_upcast {
                Kind::Float
            } else {
                self.unet
            })
    }
}

/// Where and how an SDXL folder loads.
#[derive(Debug, Clone, PartialEq)]
pub struct SdxlLoadOptions {
    pub device: Device,
    pub dtypes: SdxlDtypes,
    /// diffusers' `variant` (`"fp16"`): that variant's files where a component has them, its
    /// plain files otherwise.
    pub variant: Option<String>,
}

impl SdxlLoadOptions {
    pub fn new(device: Device, kind: Kind) -> Self {
        Self {
            device,
            dtypes: SdxlDtypes::uniform(kind),
            variant: None,
        }
    }
}

/// A component built from its folder, with what the memory system needs later.
pub struct Loaded<T> {
    pub model: T,
    /// Bytes of the weights it holds.
    pub bytes: u64,
    /// Its parameter handles by name (sharing the module's tensors).
    pub params: Vec<(String, Tensor)>,
}

/// Builds one component from `dir` (`config.json` + its weights, `variant` preferred).
pub fn load_component<C, T>(
    dir: &Path,
    variant: Option<&str>,
    kind: Kind,
    device: Device,
    build: impl FnOnce(&Vb<'_>, C) -> Result<T>,
) -> Result<Loaded<T>>
where
    C: serde::de::DeserializeOwned,
{
    let cfg: C = read_config(&dir.join("config.json"))?;
    let store = WeightStore::from_component_dir_variant(dir, variant, kind, device)?;
    let model = tch::no_grad(|| build(&store.root(), cfg))?;
    store.finish()?;
    Ok(Loaded {
        model,
        bytes: store.loaded_bytes(),
        params: store.take_params(),
    })
}

/// The parameter handles of each component.
#[derive(Default)]
pub struct SdxlParams {
    pub text_encoder: Vec<(String, Tensor)>,
    pub text_encoder_2: Vec<(String, Tensor)>,
    pub unet: Vec<(String, Tensor)>,
    pub vae: Vec<(String, Tensor)>,
}

/// The loaded components of an SDXL folder.
pub struct SdxlFolder {
    pub root: PathBuf,
    pub index: ModelIndex,
    pub tokenizer: ClipTokenizer,
    pub tokenizer_2: ClipTokenizer,
    pub text_encoder: ClipTextModel,
    pub text_encoder_2: ClipTextModelWithProjection,
    pub unet: UNet2DConditionModel,
    pub vae: AutoencoderKl,
    /// `scheduler/scheduler_config.json` (checked: [`SdxlScheduler::from_json`] accepts it).
    pub scheduler_config: Value,
    /// Bytes of all weights loaded.
    pub weight_bytes: u64,
    pub params: SdxlParams,
}

/// Fails unless `root/name` is a folder.
fn component_dir(root: &Path, name: &str) -> Result<()> {
    let dir = root.join(name);
    if dir.is_dir() {
        return Ok(());
    }
    Err(ModelError::Io {
        path: dir,
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("the SDXL folder has no {name}/ component folder"),
        ),
    })
}

/// Reads and checks `scheduler/scheduler_config.json`.
pub fn read_scheduler_config(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let value = parse_python_json(&text).map_err(|source| ModelError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    SdxlScheduler::from_json(&value)
        .map_err(|e| unsupported(format!("{}: {e}", path.display())))?;
    Ok(value)
}

impl SdxlFolder {
    /// Loads every component of the SDXL folder `root` and checks that their sizes fit.
    pub fn load(root: &Path, opts: &SdxlLoadOptions) -> Result<Self> {
        let index = ModelIndex::read(root)?;
        for (name, _) in COMPONENTS {
            component_dir(root, name)?;
        }
        let dir = |name: &str| root.join(name);
        let variant = opts.variant.as_deref();
        let (dev, kinds) = (opts.device, opts.dtypes);
        let scheduler_config =
            read_scheduler_config(&dir("scheduler").join("scheduler_config.json"))?;
        let te1 = load_component(
            &dir("text_encoder"),
            variant,
            kinds.text_encoder,
            dev,
            ClipTextModel::new,
        )?;
        let te2 = load_component(
            &dir("text_encoder_2"),
            variant,
            kinds.text_encoder_2,
            dev,
            ClipTextModelWithProjection::new,
        )?;
        let unet = load_component(
            &dir("unet"),
            variant,
            kinds.unet,
            dev,
            UNet2DConditionModel::new,
        )?;
        let vae_cfg: AutoencoderKlConfig = read_config(&dir("vae").join("config.json"))?;
        let vae_kind = kinds.vae_kind(&vae_cfg);
        let vae = load_component(&dir("vae"), variant, vae_kind, dev, AutoencoderKl::new)?;
        let folder = Self {
            root: root.to_path_buf(),
            index,
            tokenizer: ClipTokenizer::from_dir(&dir("tokenizer"))?,
            tokenizer_2: ClipTokenizer::from_dir(&dir("tokenizer_2"))?,
            weight_bytes: te1.bytes + te2.bytes + unet.bytes + vae.bytes,
            text_encoder: te1.model,
            text_encoder_2: te2.model,
            unet: unet.model,
            vae: vae.model,
            scheduler_config,
            params: SdxlParams {
                text_encoder: te1.params,
                text_encoder_2: te2.params,
                unet: unet.params,
                vae: vae.params,
            },
        };
        folder.check_sizes()?;
        Ok(folder)
    }

    /// The sizes the components share, as diffusers' SDXL pipelines use them: the two
    /// encoders' hidden widths side by side are the UNet's cross-attention width; encoder 2's
    /// projection plus 6 time ids × `addition_time_embed_dim` is the added embedding's input.
    pub fn check_sizes(&self) -> Result<()> {
        let (c1, c2) = (self.text_encoder.config(), self.text_encoder_2.config());
        check_text_fits_unet(c1, c2, self.unet.config(), &self.root)?;
        let (l1, l2) = (self.tokenizer.max_length(), self.tokenizer_2.max_length());
        for (name, len, cfg) in [("", l1, c1), ("_2", l2, c2)] {
            if len as i64 > cfg.max_position_embeddings {
                return Err(unsupported(format!(
                    "{}: tokenizer{name} pads to {len} tokens, text_encoder{name} has {} positions",
                    self.root.display(),
                    cfg.max_position_embeddings
                )));
            }
        }
        if l1 != l2 {
            return Err(unsupported(format!(
                "{}: tokenizer pads to {l1} tokens, tokenizer_2 to {l2}; the embeddings are \
                 concatenated token by token",
                self.root.display()
            )));
        }
        let latent = self.vae.config().latent_channels;
        let unet = self.unet.config();
        if latent != unet.in_channels || latent != unet.out_channels {
            return Err(unsupported(format!(
                "{}: the VAE has {latent} latent channels, the UNet takes {} and gives {}",
                self.root.display(),
                unet.in_channels,
                unet.out_channels
            )));
        }
        Ok(())
    }
}

/// The cross-attention width(s) of a config.
fn cross_dims(p: &PerBlock<i64>) -> Vec<i64> {
    match p {
        PerBlock::One(v) => vec![*v],
        PerBlock::Each(v) => v.clone(),
    }
}

/// The added (`text_time`) embedding's sizes: (time id width, input width).
fn text_time(
    addition_embed_type: &Option<String>,
    time_dim: Option<i64>,
    input: Option<i64>,
    what: &str,
) -> Result<(i64, i64)> {
    match (addition_embed_type.as_deref(), time_dim, input) {
        (Some("text_time"), Some(t), Some(i)) => Ok((t, i)),
        _ => Err(unsupported(format!(
            "{what}: SDXL needs addition_embed_type \"text_time\" with addition_time_embed_dim and \
             projection_class_embeddings_input_dim, found {addition_embed_type:?}, {time_dim:?}, \
             {input:?}"
        ))),
    }
}

fn check_text_fits_unet(
    c1: &ClipTextConfig,
    c2: &ClipTextConfig,
    unet: &UNet2DConditionConfig,
    root: &Path,
) -> Result<()> {
    let text = c1.hidden_size + c2.hidden_size;
    let cross = cross_dims(&unet.cross_attention_dim);
    if cross.iter().any(|&c| c != text) {
        return Err(unsupported(format!(
            "{}: text_encoder ({}) + text_encoder_2 ({}) hidden sizes give {text}-wide prompt \
             embeddings, the UNet's cross_attention_dim is {cross:?}",
            root.display(),
            c1.hidden_size,
            c2.hidden_size
        )));
    }
    let (t, input) = text_time(
        &unet.addition_embed_type,
        unet.addition_time_embed_dim,
        unet.projection_class_embeddings_input_dim,
        "unet/config.json",
    )?;
    if c2.projection_dim + 6 * t != input {
        return Err(unsupported(format!(
            "{}: text_encoder_2's projection_dim {} + 6 × addition_time_embed_dim {t} = {}, the \
             UNet's projection_class_embeddings_input_dim is {input}",
            root.display(),
            c2.projection_dim,
            c2.projection_dim + 6 * t
        )));
    }
    Ok(())
}

/// Loads InstantX's IdentityNet folder (`ControlNetModel/`: `config.json` and
/// `diffusion_pytorch_model.safetensors`, or a variant) in `kind` on `device`.
pub fn load_controlnet(
    dir: &Path,
    variant: Option<&str>,
    kind: Kind,
    device: Device,
) -> Result<Loaded<ControlNetModel>> {
    if !dir.is_dir() {
        return Err(ModelError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no ControlNet folder here (InstantID's is checkpoints/ControlNetModel)",
            ),
        });
    }
    load_component(dir, variant, kind, device, |vb, c| {
        ControlNetModel::new(vb, c)
    })
}

/// Checks that an IdentityNet fits a UNet the way InstantID runs them: the same latent
/// channels, skip tensors and added embedding, and a context of `context_dim`-wide tokens
/// (InstantID's: the face tokens, not the text).
pub fn check_controlnet_fits(
    controlnet: &ControlNetModel,
    unet: &UNet2DConditionModel,
    context_dim: i64,
) -> Result<()> {
    let (c, u): (&ControlNetConfig, &UNet2DConditionConfig) = (controlnet.config(), unet.config());
    let bad = |m: String| {
        Err(unsupported(format!(
            "the ControlNet does not fit the UNet: {m}"
        )))
    };
    if c.in_channels != u.in_channels {
        return bad(format!(
            "in_channels {} vs the UNet's {}",
            c.in_channels, u.in_channels
        ));
    }
    if c.block_out_channels != u.block_out_channels || c.down_block_types != u.down_block_types {
        return bad(format!(
            "its down blocks {:?} {:?} differ from the UNet's {:?} {:?}, so its residuals do not \
             match the skip tensors",
            c.down_block_types, c.block_out_channels, u.down_block_types, u.block_out_channels
        ));
    }
    let cn_tt = text_time(
        &c.addition_embed_type,
        c.addition_time_embed_dim,
        c.projection_class_embeddings_input_dim,
        "ControlNetModel/config.json",
    )?;
    let unet_tt = text_time(
        &u.addition_embed_type,
        u.addition_time_embed_dim,
        u.projection_class_embeddings_input_dim,
        "unet/config.json",
    )?;
    if cn_tt != unet_tt {
        return bad(format!(
            "(addition_time_embed_dim, projection_class_embeddings_input_dim) {cn_tt:?} vs the \
             UNet's {unet_tt:?}"
        ));
    }
    let cross = cross_dims(&c.cross_attention_dim);
    if cross.iter().any(|&d| d != context_dim) {
        return bad(format!(
            "its cross_attention_dim {cross:?} must be the face tokens' width {context_dim}"
        ));
    }
    Ok(())
}
