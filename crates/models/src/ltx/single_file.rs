//! The original Lightricks single-file checkpoints (`ltx-video-2b-v0.9.x.safetensors`): one
//! file holding the transformer (`model.diffusion_model.*`) and the VAE (`vae.*`) under the
//! original names. Names are mapped exactly as diffusers' `convert_ltx_transformer_checkpoint_
//! to_diffusers` / `convert_ltx_vae_checkpoint_to_diffusers` do (ordered substring
//! replacements), the VAE layout is detected the same way, and the configs are the released
//! ones for that layout unless the caller gives its own.

use std::collections::HashMap;
use std::path::Path;

use tch::{Device, Kind};

use super::{LtxTransformerConfig, LtxVaeConfig};
use crate::weights::{tensor_shapes, WeightStore};
use crate::{ModelError, Result};

const TRANSFORMER_RENAMES: &[(&str, &str)] = &[
    ("model.diffusion_model.", ""),
    ("patchify_proj", "proj_in"),
    ("adaln_single", "time_embed"),
    ("q_norm", "norm_q"),
    ("k_norm", "norm_k"),
];

/// The VAE layout of a single-file checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VaeLayout {
    V090,
    V091,
    /// 0.9.5, 0.9.7 and 0.9.8.
    V095,
}

/// diffusers' `VAE_KEYS_RENAME_DICT`, updated for 0.9.1/0.9.5 like `dict.update` does: an
/// updated key keeps its position, new keys go last. Order matters: replacements chain.
fn vae_renames(layout: VaeLayout) -> Vec<(&'static str, &'static str)> {
    let mut rules: Vec<(&str, &str)> = vec![
        ("vae.", ""),
        ("up_blocks.0", "mid_block"),
        ("up_blocks.1", "up_blocks.0"),
        ("up_blocks.2", "up_blocks.1.upsamplers.0"),
        ("up_blocks.3", "up_blocks.1"),
        ("up_blocks.4", "up_blocks.2.conv_in"),
        ("up_blocks.5", "up_blocks.2.upsamplers.0"),
        ("up_blocks.6", "up_blocks.2"),
        ("up_blocks.7", "up_blocks.3.conv_in"),
        ("up_blocks.8", "up_blocks.3.upsamplers.0"),
        ("up_blocks.9", "up_blocks.3"),
        ("down_blocks.0", "down_blocks.0"),
        ("down_blocks.1", "down_blocks.0.downsamplers.0"),
        ("down_blocks.2", "down_blocks.0.conv_out"),
        ("down_blocks.3", "down_blocks.1"),
        ("down_blocks.4", "down_blocks.1.downsamplers.0"),
        ("down_blocks.5", "down_blocks.1.conv_out"),
        ("down_blocks.6", "down_blocks.2"),
        ("down_blocks.7", "down_blocks.2.downsamplers.0"),
        ("down_blocks.8", "down_blocks.3"),
        ("down_blocks.9", "mid_block"),
        ("conv_shortcut", "conv_shortcut.conv"),
        ("res_blocks", "resnets"),
        ("norm3.norm", "norm3"),
        ("per_channel_statistics.mean-of-means", "latents_mean"),
        ("per_channel_statistics.std-of-means", "latents_std"),
    ];
    let decoder_091: &[(&str, &str)] = &[
        ("up_blocks.0", "mid_block"),
        ("up_blocks.1", "up_blocks.0.upsamplers.0"),
        ("up_blocks.2", "up_blocks.0"),
        ("up_blocks.3", "up_blocks.1.upsamplers.0"),
        ("up_blocks.4", "up_blocks.1"),
        ("up_blocks.5", "up_blocks.2.upsamplers.0"),
        ("up_blocks.6", "up_blocks.2"),
        ("up_blocks.7", "up_blocks.3.upsamplers.0"),
        ("up_blocks.8", "up_blocks.3"),
        ("last_time_embedder", "time_embedder"),
        ("last_scale_shift_table", "scale_shift_table"),
    ];
    let encoder_095: &[(&str, &str)] = &[
        ("down_blocks.0", "down_blocks.0"),
        ("down_blocks.1", "down_blocks.0.downsamplers.0"),
        ("down_blocks.2", "down_blocks.1"),
        ("down_blocks.3", "down_blocks.1.downsamplers.0"),
        ("down_blocks.4", "down_blocks.2"),
        ("down_blocks.5", "down_blocks.2.downsamplers.0"),
        ("down_blocks.6", "down_blocks.3"),
        ("down_blocks.7", "down_blocks.3.downsamplers.0"),
        ("down_blocks.8", "mid_block"),
    ];
    let mut update = |with: &[(&'static str, &'static str)]| {
        for &(k, v) in with {
            match rules.iter_mut().find(|(rk, _)| *rk == k) {
                Some(rule) => rule.1 = v,
                None => rules.push((k, v)),
            }
        }
    };
    match layout {
        VaeLayout::V090 => {}
        VaeLayout::V091 => update(decoder_091),
        // diffusers' 0.9.5 dict holds the 0.9.1 decoder entries and the 0.9.5 encoder ones.
        VaeLayout::V095 => {
            update(&decoder_091[..9]);
            update(encoder_095);
            update(&decoder_091[9..]);
        }
    }
    rules
}

fn apply(rules: &[(&str, &str)], name: &str) -> String {
    rules
        .iter()
        .fold(name.to_string(), |n, (from, to)| n.replace(from, to))
}

/// The transformer's parameter name for a checkpoint key, None for other components' keys.
pub fn transformer_name(key: &str) -> Option<String> {
    (!key.contains("vae")).then(|| apply(TRANSFORMER_RENAMES, key))
}

/// The VAE's parameter name for a checkpoint key, None for other components' keys and for the
/// statistics diffusers drops.
pub fn vae_name(layout: VaeLayout, key: &str) -> Option<String> {
    if !key.contains("vae.") {
        return None;
    }
    let name = apply(&vae_renames(layout), key);
    let dropped = [
        "per_channel_statistics.channel",
        "per_channel_statistics.mean-of-means",
        "per_channel_statistics.mean-of-stds",
    ];
    (!dropped.iter().any(|d| name.contains(d))).then_some(name)
}

/// diffusers' detection: a 2048-channel encoder output conv means 0.9.5+, a decoder
/// `last_time_embedder` means 0.9.1, anything else 0.9.0.
pub fn detect_vae_layout(shapes: &HashMap<String, Vec<i64>>) -> Result<VaeLayout> {
    let conv_out = shapes.get("vae.encoder.conv_out.conv.weight").ok_or_else(|| {
        ModelError::UnsupportedConfig("single-file checkpoint without vae.encoder.conv_out.conv.weight: not an LTX-Video checkpoint with a VAE".into())
    })?;
    Ok(if conv_out.get(1) == Some(&2048) {
        VaeLayout::V095
    } else if shapes
        .contains_key("vae.decoder.last_time_embedder.timestep_embedder.linear_1.weight")
    {
        VaeLayout::V091
    } else {
        VaeLayout::V090
    })
}

/// The released VAE config of a layout.
pub fn released_vae_config(layout: VaeLayout) -> LtxVaeConfig {
    let base = LtxVaeConfig::default();
    let v091 = LtxVaeConfig {
        decoder_block_out_channels: vec![256, 512, 1024],
        decoder_layers_per_block: vec![5, 6, 7, 8],
        decoder_spatio_temporal_scaling: vec![true, true, true],
        decoder_inject_noise: vec![true, true, true, false],
        upsample_residual: vec![true, true, true],
        upsample_factor: vec![2, 2, 2],
        timestep_conditioning: true,
        ..base.clone()
    };
    match layout {
        VaeLayout::V090 => base,
        VaeLayout::V091 => v091,
        VaeLayout::V095 => LtxVaeConfig {
            block_out_channels: vec![128, 256, 512, 1024, 2048],
            down_block_types: vec!["LTXVideo095DownBlock3D".into(); 4],
            layers_per_block: vec![4, 6, 6, 2, 2],
            downsample_type: ["spatial", "temporal", "spatiotemporal", "spatiotemporal"]
                .map(String::from)
                .to_vec(),
            spatio_temporal_scaling: vec![true; 4],
            decoder_layers_per_block: vec![5, 5, 5, 5],
            decoder_inject_noise: vec![false; 4],
            spatial_compression_ratio: Some(32),
            temporal_compression_ratio: Some(8),
            ..v091
        },
    }
}

/// The transformer config read off the weights: width from `patchify_proj`, depth from the
/// block count, head size 64 (2B) or 128 (13B, width 4096).
pub fn transformer_config(shapes: &HashMap<String, Vec<i64>>) -> Result<LtxTransformerConfig> {
    let missing = |k: &str| {
        ModelError::UnsupportedConfig(format!(
            "single-file checkpoint without {k}: not an LTX-Video transformer"
        ))
    };
    let proj = shapes
        .get("model.diffusion_model.patchify_proj.weight")
        .ok_or_else(|| missing("model.diffusion_model.patchify_proj.weight"))?;
    let caption = shapes
        .get("model.diffusion_model.caption_projection.linear_1.weight")
        .ok_or_else(|| missing("model.diffusion_model.caption_projection.linear_1.weight"))?;
    let layers = shapes
        .keys()
        .filter_map(|k| {
            k.strip_prefix("model.diffusion_model.transformer_blocks.")?
                .split('.')
                .next()?
                .parse::<i64>()
                .ok()
        })
        .max()
        .map_or(0, |m| m + 1);
    let (d, channels) = (proj[0], proj[1]);
    let head_dim = if d == 4096 { 128 } else { 64 };
    Ok(LtxTransformerConfig {
        in_channels: channels,
        out_channels: channels,
        num_attention_heads: d / head_dim,
        attention_head_dim: head_dim,
        cross_attention_dim: d,
        num_layers: layers,
        caption_channels: caption[1],
        ..LtxTransformerConfig::default()
    })
}

/// The transformer weights of a single-file checkpoint and their config (`config` overrides
/// the one read off the weights).
pub fn open_transformer(
    path: &Path,
    kind: Kind,
    device: Device,
    config: Option<LtxTransformerConfig>,
) -> Result<(WeightStore, LtxTransformerConfig)> {
    let config = match config {
        Some(c) => c,
        None => transformer_config(&tensor_shapes(path)?)?,
    };
    let store =
        WeightStore::from_files_renamed(&[path.to_path_buf()], kind, device, &transformer_name)?;
    Ok((store, config))
}

/// The VAE weights of a single-file checkpoint, its detected layout and config (`config`
/// overrides the released one for that layout).
pub fn open_vae(
    path: &Path,
    kind: Kind,
    device: Device,
    config: Option<LtxVaeConfig>,
) -> Result<(WeightStore, LtxVaeConfig, VaeLayout)> {
    let layout = detect_vae_layout(&tensor_shapes(path)?)?;
    let store = WeightStore::from_files_renamed(&[path.to_path_buf()], kind, device, &|k| {
        vae_name(layout, k)
    })?;
    Ok((
        store,
        config.unwrap_or_else(|| released_vae_config(layout)),
        layout,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vae_names_follow_diffusers_for_each_layout() {
        let cases = [
            (
                VaeLayout::V090,
                "vae.decoder.up_blocks.4.res_blocks.0.conv1.conv.weight",
                "decoder.up_blocks.2.conv_in.resnets.0.conv1.conv.weight",
            ),
            (
                VaeLayout::V090,
                "vae.encoder.down_blocks.2.norm3.norm.weight",
                "encoder.down_blocks.0.conv_out.norm3.weight",
            ),
            (
                VaeLayout::V090,
                "vae.encoder.down_blocks.9.res_blocks.1.conv_shortcut.weight",
                "encoder.mid_block.resnets.1.conv_shortcut.conv.weight",
            ),
            (
                VaeLayout::V091,
                "vae.decoder.up_blocks.1.conv.conv.weight",
                "decoder.up_blocks.0.upsamplers.0.conv.conv.weight",
            ),
            (
                VaeLayout::V091,
                "vae.decoder.last_time_embedder.timestep_embedder.linear_1.weight",
                "decoder.time_embedder.timestep_embedder.linear_1.weight",
            ),
            (
                VaeLayout::V091,
                "vae.decoder.last_scale_shift_table",
                "decoder.scale_shift_table",
            ),
            (
                VaeLayout::V095,
                "vae.encoder.down_blocks.3.conv.conv.weight",
                "encoder.down_blocks.1.downsamplers.0.conv.conv.weight",
            ),
            (
                VaeLayout::V095,
                "vae.encoder.down_blocks.8.res_blocks.0.conv1.conv.weight",
                "encoder.mid_block.resnets.0.conv1.conv.weight",
            ),
            (
                VaeLayout::V095,
                "vae.per_channel_statistics.std-of-means",
                "latents_std",
            ),
        ];
        for (layout, key, want) in cases {
            assert_eq!(
                vae_name(layout, key).as_deref(),
                Some(want),
                "{layout:?} {key}"
            );
        }
        assert_eq!(
            vae_name(VaeLayout::V095, "vae.per_channel_statistics.mean-of-stds"),
            None
        );
        assert_eq!(
            vae_name(VaeLayout::V095, "model.diffusion_model.proj_out.weight"),
            None
        );
    }

    #[test]
    fn transformer_names_follow_diffusers() {
        assert_eq!(
            transformer_name("model.diffusion_model.transformer_blocks.3.attn1.q_norm.weight")
                .as_deref(),
            Some("transformer_blocks.3.attn1.norm_q.weight")
        );
        assert_eq!(
            transformer_name("model.diffusion_model.adaln_single.linear.weight").as_deref(),
            Some("time_embed.linear.weight")
        );
        assert_eq!(transformer_name("vae.decoder.conv_in.conv.weight"), None);
    }
}
