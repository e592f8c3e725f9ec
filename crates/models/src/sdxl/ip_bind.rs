//! Binding InstantID's face adapter (`ip-adapter.bin`) to a UNet: the file's `ip_adapter` pairs
//! go to the UNet's attn2 layers in `attn_processors` order, exactly as InstantX's
//! `set_ip_adapter` loads them into `nn.ModuleList(unet.attn_processors.values())` — which
//! refuses a file with another number of entries or other shapes, so this does too, naming
//! the layer, before anything changes. The number of image tokens is the Resampler's query
//! count (InstantID: 16), and the Resampler's output must be as wide as the UNet's context.

use std::path::Path;

use tch::{Device, Kind};

use super::ip_adapter::{read_ip_adapter, IpAdapterFile};
use super::resampler::Resampler;
use super::unet::UNet2DConditionModel;
use crate::{ModelError, Result};

fn refuse(source: &str, m: String) -> ModelError {
    ModelError::UnsupportedConfig(format!("{source}: {m}"))
}

/// Checks `file` against `unet` (count, the `n` of every pair, shapes) and `resampler` against
/// the UNet's cross-attention width; then installs the pairs with `num_tokens` = the
/// Resampler's query count. `source` names the file in errors. On error the UNet is unchanged.
pub fn bind_ip_adapter(
    unet: &mut UNet2DConditionModel,
    file: &IpAdapterFile,
    resampler: &Resampler,
    source: &str,
) -> Result<()> {
    let slots = unet.ip_attention_layers();
    let shape = resampler.shape();
    if let Some(s) = slots.iter().find(|s| s.cross_dim != shape.output_dim) {
        return Err(refuse(
            source,
            format!(
                "the Resampler makes {}-wide face tokens, but the UNet's {} attends to {}-wide \
                 tokens",
                shape.output_dim, s.name, s.cross_dim
            ),
        ));
    }
    if file.layers.len() != slots.len() {
        let which = match (slots.get(file.layers.len()), file.layers.get(slots.len())) {
            (Some(s), _) => format!(
                "the first UNet layer without weights is {} (n = {})",
                s.name, s.n
            ),
            (None, Some(l)) => format!("entry n = {} has no attn2 layer in the UNet", l.index),
            (None, None) => String::new(),
        };
        return Err(refuse(
            source,
            format!(
                "{} ip_adapter weight pairs for the UNet's {} attn2 layers ({} attention \
                 processors); {which}",
                file.layers.len(),
                slots.len(),
                2 * slots.len()
            ),
        ));
    }
    for (slot, layer) in slots.iter().zip(&file.layers) {
        if layer.index != slot.n {
            return Err(refuse(
                source,
                format!(
                    "ip_adapter entry n = {} is where the UNet's {} (n = {}) belongs",
                    layer.index, slot.name, slot.n
                ),
            ));
        }
        let want = [slot.query_dim, slot.cross_dim];
        for (t, which) in [(&layer.to_k_ip, "to_k_ip"), (&layer.to_v_ip, "to_v_ip")] {
            if t.size() != want {
                return Err(ModelError::ShapeMismatch {
                    name: format!(
                        "ip_adapter.{}.{which}.weight (for {})",
                        layer.index, slot.name
                    ),
                    found: t.size(),
                    expected: want.to_vec(),
                    source_desc: source.to_string(),
                });
            }
        }
    }
    let pairs = file
        .layers
        .iter()
        .map(|l| (l.to_k_ip.shallow_clone(), l.to_v_ip.shallow_clone()))
        .collect();
    unet.set_ip_adapter(pairs, shape.queries)
}

/// Reads `ip-adapter.bin` (or its `.safetensors` conversion), builds its Resampler in `kind`
/// on `device` and binds its IP weights to `unet` (converted to the UNet's dtype and device).
/// Returns the Resampler and the bytes of the weights kept (Resampler + IP layers).
pub fn load_face_adapter(
    path: &Path,
    unet: &mut UNet2DConditionModel,
    kind: Kind,
    device: Device,
) -> Result<(Resampler, u64)> {
    let file = read_ip_adapter(path)?;
    let resampler = file.resampler(kind, device)?;
    bind_ip_adapter(unet, &file, &resampler, &path.display().to_string())?;
    let bytes = |named: &[(String, tch::Tensor)]| -> u64 {
        named
            .iter()
            .map(|(_, t)| crate::weights::tensor_bytes(t))
            .sum()
    };
    let resampler_bytes: u64 = file
        .image_proj
        .iter()
        .map(|(_, t)| (t.numel() * kind.elt_size_in_bytes()) as u64)
        .sum();
    Ok((resampler, resampler_bytes + bytes(&unet.ip_params())))
}
