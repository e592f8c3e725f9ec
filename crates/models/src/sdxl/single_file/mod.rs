//! SDXL single-file checkpoints (`sd_xl_base_1.0.safetensors` and the fine-tunes published the
//! same way): one safetensors file holding the UNet (`model.diffusion_model.*`, LDM names), the
//! VAE (`first_stage_model.*`), CLIP ViT-L (`conditioner.embedders.0.transformer.*`, in
//! transformers' layout) and OpenCLIP ViT-bigG (`conditioner.embedders.1.model.*`, with fused
//! `attn.in_proj_*`). [`SdxlSingleFile`] mirrors diffusers 0.42.1's
//! `StableDiffusionXLPipeline.from_single_file(file, config=folder)`: the diffusers folder
//! supplies the component configs (and, to the pipeline, tokenizers and scheduler), the file the
//! weights, every name mapped exactly as diffusers' converters map it ([`names`]).
//!
//! **Strict.** [`SdxlSingleFile::open`] refuses files diffusers would not call `xl_base`
//! ([`detect`]) and files with a tensor that maps to no parameter and is not a known non-weight
//! entry ([`names::is_non_weight`]); building a component fails on a missing, misshapen or
//! unused tensor, naming it.
//!
//! **Memory.** The UNet and CLIP-L are memory-mapped stores renaming on the fly
//! ([`WeightStore::from_files_renamed`]); the VAE (whose attention weights are 1×1 convolutions
//! to flatten) and OpenCLIP (q/k/v rows cut out of `in_proj`, `text_projection` transposed) are
//! stores of views into a private read-only mapping of the file (libtorch's `from_file`), cut
//! without copying. Either way each tensor is copied once, into the module, in the requested
//! dtype, so loading needs the built component's memory plus the file pages the OS caches
//! (reclaimable); no second copy of a component is ever held. Measured on a 200 MB OpenCLIP
//! (float32, width 640, 10 layers): anonymous memory +193 MB (the module), peak resident
//! +390 MB while the mapped pages are resident, back to the module once the store is dropped.

pub mod detect;
pub mod names;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use tch::{Device, Kind, Tensor};

use super::clip::{ClipTextConfig, ClipTextModel, ClipTextModelWithProjection};
use super::unet::{PerBlock, UNet2DConditionConfig, UNet2DConditionModel};
use super::vae::{AutoencoderKl, AutoencoderKlConfig};
use crate::config::read_config;
use crate::weights::WeightStore;
use crate::{ModelError, Result};
use names::{OpenClipName, CLIP_L_PREFIX, OPEN_CLIP_PREFIX, UNET_PREFIX, VAE_PREFIXES};

struct Entry {
    kind: Kind,
    shape: Vec<i64>,
    /// Byte range in the file.
    start: usize,
    end: usize,
}

/// An SDXL base single-file checkpoint with the configs of a diffusers SDXL folder.
pub struct SdxlSingleFile {
    path: PathBuf,
    entries: HashMap<String, Entry>,
    vae_prefix: &'static str,
    layers_per_block: i64,
    unet: UNet2DConditionConfig,
    vae: AutoencoderKlConfig,
    text_encoder: ClipTextConfig,
    text_encoder_2: ClipTextConfig,
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

fn read_header(path: &Path) -> Result<HashMap<String, Entry>> {
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    // SAFETY: read-only map of a file of which only the header is read here.
    let map = unsafe { Mmap::map(&file) }.map_err(io)?;
    let (header, meta) = SafeTensors::read_metadata(&map).map_err(|e| ModelError::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let base = 8 + header;
    meta.tensors()
        .into_iter()
        .map(|(name, info)| {
            let kind = kind_of(info.dtype).ok_or_else(|| ModelError::UnsupportedDtype {
                path: path.to_path_buf(),
                name: name.clone(),
                dtype: format!("{:?}", info.dtype),
            })?;
            let entry = Entry {
                kind,
                shape: info.shape.iter().map(|&d| d as i64).collect(),
                start: base + info.data_offsets.0,
                end: base + info.data_offsets.1,
            };
            Ok((name, entry))
        })
        .collect()
}

/// Up to ten names, then a count.
fn list(mut names: Vec<String>) -> String {
    names.sort();
    let more = names.len().saturating_sub(10);
    let mut s = names.into_iter().take(10).collect::<Vec<_>>().join(", ");
    if more > 0 {
        s.push_str(&format!(" and {more} more"));
    }
    s
}

impl SdxlSingleFile {
    /// Opens `file` (reading its header only) with the configs of the diffusers SDXL folder
    /// `folder` (`unet/`, `vae/`, `text_encoder/`, `text_encoder_2/` `config.json`), as
    /// `StableDiffusionXLPipeline.from_single_file(file, config=folder)` does. Fails unless
    /// diffusers' `infer_diffusers_model_type` would say `xl_base` (naming what it finds
    /// instead: SD 1.x, the SDXL refiner, SD3, …) and unless every tensor maps to a parameter
    /// of one of the four components or is a known non-weight entry (naming the others).
    pub fn open(file: &Path, folder: &Path) -> Result<Self> {
        let entries = read_header(file)?;
        let shapes: HashMap<String, Vec<i64>> = entries
            .iter()
            .map(|(k, e)| (k.clone(), e.shape.clone()))
            .collect();
        if detect::infer_model_type(&shapes) != "xl_base" {
            return Err(ModelError::UnsupportedConfig(format!(
                "{}: not an SDXL base single-file checkpoint (diffusers' detection needs {}); it finds {}",
                file.display(),
                detect::XL_BASE_KEY,
                detect::describe(&shapes)
            )));
        }
        let unet: UNet2DConditionConfig = read_config(&folder.join("unet/config.json"))?;
        let layers_per_block = match unet.layers_per_block {
            PerBlock::One(n) => n,
            PerBlock::Each(ref v) => {
                return Err(ModelError::UnsupportedConfig(format!(
                    "{}: layers_per_block {v:?}: diffusers' convert_ldm_unet_checkpoint numbers the LDM blocks with one integer",
                    folder.join("unet/config.json").display()
                )))
            }
        };
        let vae_prefix = VAE_PREFIXES
            .iter()
            .rev()
            .find(|p| entries.keys().any(|k| k.starts_with(*p)))
            .copied()
            .unwrap_or(VAE_PREFIXES[0]);
        let this = Self {
            path: file.to_path_buf(),
            entries,
            vae_prefix,
            layers_per_block,
            unet,
            vae: read_config(&folder.join("vae/config.json"))?,
            text_encoder: read_config(&folder.join("text_encoder/config.json"))?,
            text_encoder_2: read_config(&folder.join("text_encoder_2/config.json"))?,
        };
        let unmapped: Vec<String> = this
            .entries
            .iter()
            .filter(|(k, _)| !this.is_mapped(k))
            .map(|(k, e)| format!("{k} {:?}", e.shape))
            .collect();
        if !unmapped.is_empty() {
            return Err(ModelError::UnexpectedTensors {
                names: list(unmapped),
                source_desc: format!(
                    "{} (no UNet, VAE or text-encoder parameter in diffusers' SDXL conversion, nor a known non-weight entry)",
                    this.path.display()
                ),
            });
        }
        Ok(this)
    }

    fn is_mapped(&self, key: &str) -> bool {
        let text_time = self.text_time();
        if names::is_non_weight(key) {
            true
        } else if let Some(rest) = key.strip_prefix(UNET_PREFIX) {
            names::unet_name(rest, self.layers_per_block, text_time).is_some()
        } else if let Some(rest) = key.strip_prefix(self.vae_prefix) {
            self.vae_name(rest).is_some()
        } else if key.starts_with(CLIP_L_PREFIX) {
            true
        } else if let Some(rest) = key.strip_prefix(OPEN_CLIP_PREFIX) {
            names::open_clip_name(rest).is_some()
        } else {
            false
        }
    }

    fn text_time(&self) -> bool {
        self.unet.addition_embed_type.as_deref() == Some("text_time")
    }

    fn vae_name(&self, rest: &str) -> Option<names::VaeName> {
        let (down, up) = (
            self.vae.down_block_types.len() as i64,
            self.vae.up_block_types.len() as i64,
        );
        names::vae_name(rest, down, up)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn unet_config(&self) -> &UNet2DConditionConfig {
        &self.unet
    }

    pub fn vae_config(&self) -> &AutoencoderKlConfig {
        &self.vae
    }

    pub fn text_encoder_config(&self) -> &ClipTextConfig {
        &self.text_encoder
    }

    pub fn text_encoder_2_config(&self) -> &ClipTextConfig {
        &self.text_encoder_2
    }

    /// The UNet's weights under diffusers' names (memory-mapped), for
    /// [`UNet2DConditionModel::new`] and [`WeightStore::take_params`].
    pub fn unet_weights(&self, kind: Kind, device: Device) -> Result<WeightStore> {
        let (lpb, text_time) = (self.layers_per_block, self.text_time());
        WeightStore::from_files_renamed(std::slice::from_ref(&self.path), kind, device, &|k| {
            names::unet_name(k.strip_prefix(UNET_PREFIX)?, lpb, text_time)
        })
    }

    /// CLIP-L's weights under transformers' names (`text_model.*`, memory-mapped).
    pub fn text_encoder_weights(&self, kind: Kind, device: Device) -> Result<WeightStore> {
        WeightStore::from_files_renamed(std::slice::from_ref(&self.path), kind, device, &|k| {
            k.strip_prefix(CLIP_L_PREFIX).map(names::clip_l_name)
        })
    }

    /// The VAE's weights under diffusers' names, the mid-block attention's 1×1 convolutions
    /// flattened to linear weights (views of the file).
    pub fn vae_weights(&self, kind: Kind, device: Device) -> Result<WeightStore> {
        let bytes = self.file_bytes()?;
        let mut named = Vec::new();
        for (key, entry) in &self.entries {
            let Some(rest) = key.strip_prefix(self.vae_prefix) else {
                continue;
            };
            let Some(to) = self.vae_name(rest) else {
                continue;
            };
            let t = view(&bytes, entry)?;
            let t = match (to.squeeze, t.dim()) {
                (true, 4) => t.f_select(2, 0)?.f_select(2, 0)?,
                (true, 3) => t.f_select(2, 0)?,
                _ => t,
            };
            named.push((to.name, t));
        }
        let desc = format!("{} (VAE, {}*)", self.path.display(), self.vae_prefix);
        WeightStore::from_tensors(named, &desc, kind, device)
    }

    /// OpenCLIP bigG's weights under transformers' names (`CLIPTextModelWithProjection`):
    /// `in_proj` split into q/k/v at the width (`text_projection`'s first dimension, else the
    /// config's `hidden_size`, as diffusers), `text_projection` transposed (views of the file).
    pub fn text_encoder_2_weights(&self, kind: Kind, device: Device) -> Result<WeightStore> {
        let width = self
            .entries
            .get(&format!("{OPEN_CLIP_PREFIX}text_projection"))
            .and_then(|e| e.shape.first().copied())
            .unwrap_or(self.text_encoder_2.hidden_size);
        let bytes = self.file_bytes()?;
        let mut named = Vec::new();
        for (key, entry) in &self.entries {
            let Some(name) = key
                .strip_prefix(OPEN_CLIP_PREFIX)
                .and_then(names::open_clip_name)
            else {
                continue;
            };
            let t = view(&bytes, entry)?;
            match name {
                OpenClipName::Plain(n) => named.push((n, t)),
                OpenClipName::Transposed(n) => {
                    let dims: Vec<i64> = (0..t.dim() as i64).rev().collect();
                    named.push((n, t.f_permute(&dims)?));
                }
                OpenClipName::Fused([q, k, v]) => {
                    let rows = entry.shape.first().copied().unwrap_or(0);
                    if rows < 2 * width {
                        return Err(ModelError::UnsupportedConfig(format!(
                            "{}: {key} has {rows} rows, too few for q, k and v of width {width}",
                            self.path.display()
                        )));
                    }
                    named.push((q, t.f_narrow(0, 0, width)?));
                    named.push((k, t.f_narrow(0, width, width)?));
                    named.push((v, t.f_narrow(0, 2 * width, rows - 2 * width)?));
                }
            }
        }
        let desc = format!(
            "{} (text encoder 2, {OPEN_CLIP_PREFIX}*)",
            self.path.display()
        );
        WeightStore::from_tensors(named, &desc, kind, device)
    }

    /// The whole file as bytes: a private mapping, pages read when a tensor is copied out.
    fn file_bytes(&self) -> Result<Tensor> {
        let io = |source| ModelError::Io {
            path: self.path.clone(),
            source,
        };
        let len = std::fs::metadata(&self.path).map_err(io)?.len();
        let path = self.path.to_str().ok_or_else(|| {
            ModelError::UnsupportedConfig(format!(
                "{}: libtorch maps files by UTF-8 path only",
                self.path.display()
            ))
        })?;
        Ok(Tensor::f_from_file(
            path,
            false,
            len as i64,
            (Kind::Uint8, Device::Cpu),
        )?)
    }

    /// The UNet, built from the file (strict).
    pub fn unet(&self, kind: Kind, device: Device) -> Result<UNet2DConditionModel> {
        let store = self.unet_weights(kind, device)?;
        let model = tch::no_grad(|| UNet2DConditionModel::new(&store.root(), self.unet.clone()))?;
        store.finish()?;
        Ok(model)
    }

    /// The VAE, built from the file (strict) with its weights in `kind` (a float dtype).
    pub fn vae(&self, kind: Kind, device: Device) -> Result<AutoencoderKl> {
        if !matches!(
            kind,
            Kind::Float | Kind::Half | Kind::BFloat16 | Kind::Double
        ) {
            return Err(ModelError::InvalidInput(format!(
                "AutoencoderKL: cannot hold weights in {kind:?}"
            )));
        }
        let store = self.vae_weights(kind, device)?;
        let model = tch::no_grad(|| AutoencoderKl::new(&store.root(), self.vae.clone()))?;
        store.finish()?;
        Ok(model)
    }

    /// `text_encoder/` (CLIP-L), built from the file (strict).
    pub fn text_encoder(&self, kind: Kind, device: Device) -> Result<ClipTextModel> {
        let store = self.text_encoder_weights(kind, device)?;
        let model = tch::no_grad(|| ClipTextModel::new(&store.root(), self.text_encoder.clone()))?;
        store.finish()?;
        Ok(model)
    }

    /// `text_encoder_2/` (OpenCLIP bigG with its projection), built from the file (strict).
    pub fn text_encoder_2(
        &self,
        kind: Kind,
        device: Device,
    ) -> Result<ClipTextModelWithProjection> {
        let store = self.text_encoder_2_weights(kind, device)?;
        let model = tch::no_grad(|| {
            ClipTextModelWithProjection::new(&store.root(), self.text_encoder_2.clone())
        })?;
        store.finish()?;
        Ok(model)
    }
}

/// A zero-copy view of `entry` in the file's bytes, or a copy where the data is not aligned to
/// its element size (safetensors writers pad the header, but not all do).
fn view(bytes: &Tensor, entry: &Entry) -> Result<Tensor> {
    let raw = bytes.f_narrow(0, entry.start as i64, (entry.end - entry.start) as i64)?;
    let aligned = entry.start.is_multiple_of(entry.kind.elt_size_in_bytes());
    let raw = if aligned { raw } else { raw.f_detach_copy()? };
    Ok(raw
        .f_view_dtype(entry.kind)?
        .f_view(entry.shape.as_slice())?)
}
