//! InstantID's face adapter as users have it: `ip-adapter.bin` (a `torch.save` zip of
//! `{"image_proj": {...}, "ip_adapter": {...}}`, read by libtorch's unpickler through the shim)
//! or its `.safetensors` conversion with `image_proj.` / `ip_adapter.` prefixes. `image_proj`
//! becomes the [`Resampler`]; `ip_adapter` holds `{n}.to_k_ip.weight` / `{n}.to_v_ip.weight`
//! for odd n = 1, 3, …: the n-th entry of the UNet's attention processors, whose even
//! entries (the `attn1` self-attentions) carry no weights (`../shared/specs/instantid.md`
//! §1.2). Binding them to the UNet's `attn2` layers in that order is the UNet's
//! `set_ip_adapter`.

use std::collections::BTreeMap;
use std::path::Path;

use tch::{Kind, Tensor};

use super::resampler::Resampler;
use crate::{ModelError, Result};

/// The key/value projections of the face tokens for one `attn2`, `[query_dim, cross_dim]`.
pub struct IpLayer {
    /// The processor index n of the file (1, 3, 5, …).
    pub index: usize,
    pub to_k_ip: Tensor,
    pub to_v_ip: Tensor,
}

/// The two parts of an IP-Adapter file.
pub struct IpAdapterFile {
    /// `image_proj`'s tensors, names without the prefix (for [`Resampler::from_named`]).
    pub image_proj: Vec<(String, Tensor)>,
    /// In processor order (n ascending).
    pub layers: Vec<IpLayer>,
}

fn bad(path: &Path, m: impl std::fmt::Display) -> ModelError {
    ModelError::UnsupportedConfig(format!("{}: {m}", path.display()))
}

/// Reads `path`: `.safetensors` by its prefixes, anything else as a `torch.save` file.
pub fn read_ip_adapter(path: &Path) -> Result<IpAdapterFile> {
    let is_safetensors = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    let named = if is_safetensors {
        Tensor::read_safetensors(path).map_err(|e| bad(path, e))?
    } else {
        ltx_gpu::torch_load::load_tensors(path)
            .map_err(|e| ModelError::UnsupportedConfig(e.to_string()))?
    };
    split(path, named)
}

fn split(path: &Path, named: Vec<(String, Tensor)>) -> Result<IpAdapterFile> {
    let mut image_proj = Vec::new();
    let mut pairs: BTreeMap<usize, (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
    let mut other = Vec::new();
    for (name, t) in named {
        if let Some(rest) = name.strip_prefix("image_proj.") {
            image_proj.push((rest.to_string(), t));
            continue;
        }
        let Some(rest) = name.strip_prefix("ip_adapter.") else {
            other.push(name);
            continue;
        };
        let parsed = rest.split_once('.').and_then(|(n, what)| {
            let n: usize = n.parse().ok()?;
            match what {
                "to_k_ip.weight" => Some((n, true)),
                "to_v_ip.weight" => Some((n, false)),
                _ => None,
            }
        });
        match parsed {
            Some((n, true)) => pairs.entry(n).or_default().0 = Some(t),
            Some((n, false)) => pairs.entry(n).or_default().1 = Some(t),
            None => other.push(name),
        }
    }
    if !other.is_empty() {
        other.sort();
        other.truncate(10);
        return Err(bad(
            path,
            format!("tensors that are neither image_proj.* nor ip_adapter.{{n}}.to_{{k,v}}_ip.weight: {}", other.join(", ")),
        ));
    }
    if image_proj.is_empty() || pairs.is_empty() {
        return Err(bad(
            path,
            "not an IP-Adapter file: it needs both image_proj and ip_adapter tensors",
        ));
    }
    let mut layers = Vec::with_capacity(pairs.len());
    for (i, (n, (k, v))) in pairs.into_iter().enumerate() {
        if n != 2 * i + 1 {
            return Err(bad(
                path,
                format!("ip_adapter entries must be n = 1, 3, 5, … without gaps; found {n} where {} belongs", 2 * i + 1),
            ));
        }
        let (Some(to_k_ip), Some(to_v_ip)) = (k, v) else {
            return Err(bad(
                path,
                format!("ip_adapter.{n} needs both to_k_ip.weight and to_v_ip.weight"),
            ));
        };
        if to_k_ip.dim() != 2 || to_k_ip.size() != to_v_ip.size() {
            return Err(bad(
                path,
                format!(
                    "ip_adapter.{n}: to_k_ip {:?} and to_v_ip {:?} must be equal [query_dim, cross_dim] matrices",
                    to_k_ip.size(),
                    to_v_ip.size()
                ),
            ));
        }
        layers.push(IpLayer {
            index: n,
            to_k_ip,
            to_v_ip,
        });
    }
    Ok(IpAdapterFile { image_proj, layers })
}

impl IpAdapterFile {
    /// The Resampler of `image_proj`, in `kind` on `device`.
    pub fn resampler(&self, kind: Kind, device: tch::Device) -> Result<Resampler> {
        let named = self
            .image_proj
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect();
        Resampler::from_named(named, kind, device)
    }
}
