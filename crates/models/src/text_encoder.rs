//! The pipeline's text encoder: our T5 (from safetensors) or a TorchScript module a user
//! exported (`text_encoder/text_encoder.pt` or `text_encoder/model.pt`) run through
//! `tch::CModule`. A TorchScript encoder takes `input_ids` `[B, L]` and returns the last hidden
//! state `[B, L, D]` (or a tuple/list whose first element it is).

use std::path::{Path, PathBuf};

use tch::{CModule, Device, IValue, Kind, Tensor};

use crate::t5::T5Encoder;
use crate::{ModelError, Result};

pub enum TextEncoder {
    T5(T5Encoder),
    TorchScript { module: CModule, path: PathBuf },
}

/// The file names under which a TorchScript text encoder is looked for, in order.
pub const TORCHSCRIPT_NAMES: [&str; 2] = ["text_encoder.pt", "model.pt"];

impl TextEncoder {
    /// The TorchScript module in `dir`, if the folder has one.
    pub fn torchscript_in(dir: &Path) -> Option<PathBuf> {
        TORCHSCRIPT_NAMES
            .iter()
            .map(|n| dir.join(n))
            .find(|p| p.is_file())
    }

    pub fn load_torchscript(path: &Path, device: Device, kind: Kind) -> Result<Self> {
        let bad = |e: String| {
            ModelError::UnsupportedConfig(format!(
                "{}: not a usable TorchScript module: {e}",
                path.display()
            ))
        };
        let mut module = CModule::load_on_device(path, device).map_err(|e| bad(e.to_string()))?;
        module.set_eval();
        // tch's CModule::to panics on a libtorch error instead of returning it.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            module.to(device, kind, false)
        }))
        .map_err(|_| bad(format!("cannot convert it to {kind:?} on {device:?}")))?;
        Ok(Self::TorchScript {
            module,
            path: path.to_path_buf(),
        })
    }

    /// Bytes of a TorchScript module's parameters (`None` for the native T5,
    /// whose weights its [`crate::weights::WeightStore`] counted).
    pub fn torchscript_bytes(&self) -> Option<u64> {
        match self {
            Self::T5(_) => None,
            Self::TorchScript { module, .. } => {
                let params = module.named_parameters().ok()?;
                Some(
                    params
                        .iter()
                        .map(|(_, t)| crate::weights::tensor_bytes(t))
                        .sum(),
                )
            }
        }
    }

    /// A TorchScript module's parameters as handles sharing its tensors (empty for T5, whose
    /// parameters come from its weight store).
    pub fn torchscript_params(&self) -> Result<Vec<(String, Tensor)>> {
        match self {
            Self::T5(_) => Ok(Vec::new()),
            Self::TorchScript { module, .. } => Ok(module.named_parameters()?),
        }
    }

    /// With the padding mask, as `LTXConditionPipeline` encodes prompts. A TorchScript export
    /// takes `forward(input_ids)` only, so it is refused here rather than run without the
    /// mask (which gives other embeddings).
    pub fn forward_masked(&self, input_ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        match self {
            Self::T5(m) => m.forward_masked(input_ids, Some(mask)),
            Self::TorchScript { path, .. } => Err(ModelError::UnsupportedConfig(format!(
                "{}: the condition pipeline passes T5 an attention mask, and a TorchScript text \
                 encoder takes input_ids only; use the safetensors text_encoder",
                path.display()
            ))),
        }
    }

    pub fn forward(&self, input_ids: &Tensor) -> Result<Tensor> {
        match self {
            Self::T5(m) => m.forward(input_ids),
            Self::TorchScript { module, path } => {
                let out = module.forward_is(&[IValue::Tensor(input_ids.shallow_clone())])?;
                let first = match out {
                    IValue::Tensor(t) => Some(t),
                    IValue::Tuple(v) | IValue::GenericList(v) => {
                        v.into_iter().next().and_then(|i| match i {
                            IValue::Tensor(t) => Some(t),
                            _ => None,
                        })
                    }
                    _ => None,
                };
                first.ok_or_else(|| {
                    ModelError::UnsupportedConfig(format!(
                        "{}: forward(input_ids) must return the last hidden state (a tensor, or a tuple starting with it)",
                        path.display()
                    ))
                })
            }
        }
    }
}
