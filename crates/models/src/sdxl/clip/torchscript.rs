//! A CLIP text encoder a user exported to TorchScript (`text_encoder*/model.pt`), run through
//! `tch::CModule`: `forward(input_ids)` must return `(hidden_states[-2], last_hidden_state,
//! pooled)`, `pooled` being `pooler_output` or, for `text_encoder_2`, `text_embeds` (what
//! `tools/sdxl-fixtures/make_clip.py --torchscript` traces).

use std::path::{Path, PathBuf};

use tch::{CModule, Device, IValue, Kind, Tensor};

use super::ClipTextOutput;
use crate::{ModelError, Result};

pub struct ClipTorchScript {
    module: CModule,
    path: PathBuf,
}

impl ClipTorchScript {
    /// Loads `path` on `device`. Its floating-point parameters must already be `kind`: a traced
    /// module keeps the dtype it was traced in (transformers' attention casts to a constant
    /// dtype in the trace), and libtorch's module `to(dtype)` would also convert integer
    /// buffers such as CLIP's `position_ids`; so a mismatch is refused, not converted.
    pub fn load(path: &Path, device: Device, kind: Kind) -> Result<Self> {
        let bad = |e: String| {
            ModelError::UnsupportedConfig(format!(
                "{}: not a usable TorchScript module: {e}",
                path.display()
            ))
        };
        let mut module = CModule::load_on_device(path, device).map_err(|e| bad(e.to_string()))?;
        module.set_eval();
        let params = module.named_parameters()?;
        if let Some((name, p)) = params
            .iter()
            .find(|(_, p)| p.is_floating_point() && p.kind() != kind)
        {
            return Err(bad(format!(
                "parameter {name} is {:?} and {kind:?} was asked for; a traced module runs in \
                 the dtype it was traced in, so export it in {kind:?}",
                p.kind()
            )));
        }
        Ok(Self {
            module,
            path: path.to_path_buf(),
        })
    }

    /// Bytes of the module's parameters.
    pub fn parameter_bytes(&self) -> Result<u64> {
        Ok(self
            .module
            .named_parameters()?
            .iter()
            .map(|(_, t)| crate::weights::tensor_bytes(t))
            .sum())
    }

    /// The module's outputs for `input_ids` `[B, L]` (int64).
    pub fn forward(&self, input_ids: &Tensor) -> Result<ClipTextOutput> {
        let out = self
            .module
            .forward_is(&[IValue::Tensor(input_ids.shallow_clone())])?;
        let tensors: Option<Vec<Tensor>> = match out {
            IValue::Tuple(v) | IValue::GenericList(v) => v
                .into_iter()
                .map(|i| match i {
                    IValue::Tensor(t) => Some(t),
                    _ => None,
                })
                .collect(),
            _ => None,
        };
        match tensors.as_deref() {
            Some([pen, last, pooled]) => Ok(ClipTextOutput {
                penultimate_hidden_state: pen.shallow_clone(),
                last_hidden_state: last.shallow_clone(),
                pooled: pooled.shallow_clone(),
            }),
            _ => Err(ModelError::UnsupportedConfig(format!(
                "{}: forward(input_ids) must return a tuple (hidden_states[-2], \
                 last_hidden_state, pooled) of three tensors",
                self.path.display()
            ))),
        }
    }
}
