//! Original (Stability `sgm`) tensor names → diffusers / transformers names, exactly as
//! diffusers 0.42.1's converters in `loaders/single_file_utils.py` produce them:
//! `convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint` (+ `conv_attn_to_linear`),
//! `convert_ldm_clip_checkpoint` and `convert_open_clip_checkpoint`. Each function takes a key
//! with its component prefix removed and returns `None` where diffusers' converter drops it.

/// The UNet's prefix (`LDM_UNET_KEY`).
pub const UNET_PREFIX: &str = "model.diffusion_model.";
/// The VAE's prefixes (`LDM_VAE_KEYS`); diffusers uses the last one any key starts with.
pub const VAE_PREFIXES: [&str; 2] = ["first_stage_model.", "vae."];
/// CLIP ViT-L (`text_encoder/`), stored in transformers' layout.
pub const CLIP_L_PREFIX: &str = "conditioner.embedders.0.transformer.";
/// OpenCLIP ViT-bigG (`text_encoder_2/`), stored in OpenCLIP's layout.
pub const OPEN_CLIP_PREFIX: &str = "conditioner.embedders.1.model.";

/// The LDM DDPM schedule buffers (`register_schedule`) some original files carry.
const SCHEDULE_BUFFERS: [&str; 12] = [
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
];

/// Entries of original SDXL files that hold no weight of the four components, which diffusers'
/// converters leave behind: the EMA copy (`model_ema.*`, flattened names; diffusers loads the
/// non-EMA weights unless `extract_ema`), the `sgm` denoiser's `denoiser.sigmas`, OpenCLIP's
/// contrastive `logit_scale`, and the LDM schedule buffers.
pub fn is_non_weight(key: &str) -> bool {
    key.starts_with("model_ema.")
        || key == "denoiser.sigmas"
        || key == "conditioner.embedders.1.model.logit_scale"
        || SCHEDULE_BUFFERS.contains(&key)
}

fn chain(name: &str, rules: &[(&str, &str)]) -> String {
    rules
        .iter()
        .fold(name.to_string(), |n, (from, to)| n.replace(from, to))
}

/// `update_unet_resnet_ldm_to_diffusers`'s renames.
const UNET_RESNET: [(&str, &str); 6] = [
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("emb_layers.1", "time_emb_proj"),
    ("skip_connection", "conv_shortcut"),
];

/// `DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"]` and, for `addition_embed_type: "text_time"`,
/// `["addition_embed_type"]`, as (LDM, diffusers) stems.
const UNET_LAYERS: [(&str, &str); 5] = [
    ("time_embed.0", "time_embedding.linear_1"),
    ("time_embed.2", "time_embedding.linear_2"),
    ("input_blocks.0.0", "conv_in"),
    ("out.0", "conv_norm_out"),
    ("out.2", "conv_out"),
];
const UNET_TEXT_TIME: [(&str, &str); 2] = [
    ("label_emb.0.0", "add_embedding.linear_1"),
    ("label_emb.0.2", "add_embedding.linear_2"),
];

/// `(block index, part index, rest)` of `input_blocks.3.0.op.weight`.
fn block_parts<'a>(key: &'a str, block: &str) -> Option<(i64, i64, &'a str)> {
    let rest = key.strip_prefix(block)?.strip_prefix('.')?;
    let (i, rest) = rest.split_once('.')?;
    let (j, rest) = rest.split_once('.')?;
    Some((i.parse().ok()?, j.parse().ok()?, rest))
}

fn weight_or_bias(rest: &str) -> bool {
    rest == "weight" || rest == "bias"
}

/// The UNet's diffusers name for `key` (without `model.diffusion_model.`), for the folder
/// config's `layers_per_block` (an integer in `convert_ldm_unet_checkpoint`) and whether its
/// `addition_embed_type` is `text_time` (SDXL's).
pub fn unet_name(key: &str, layers_per_block: i64, text_time: bool) -> Option<String> {
    let layers = UNET_LAYERS
        .iter()
        .chain(UNET_TEXT_TIME.iter().filter(|_| text_time));
    for (ldm, diffusers) in layers {
        if let Some(leaf) = key.strip_prefix(ldm).and_then(|r| r.strip_prefix('.')) {
            return weight_or_bias(leaf).then(|| format!("{diffusers}.{leaf}"));
        }
    }
    let per = layers_per_block + 1;
    if let Some((i, j, rest)) = block_parts(key, "input_blocks") {
        if i < 1 {
            return None;
        }
        let (b, l) = ((i - 1) / per, (i - 1) % per);
        // diffusers takes `…{i}.0.op*` out of the resnet keys and maps only `op.weight/bias`.
        return match j {
            0 if rest.starts_with("op") => rest
                .strip_prefix("op.")
                .filter(|leaf| weight_or_bias(leaf))
                .map(|leaf| format!("down_blocks.{b}.downsamplers.0.conv.{leaf}")),
            0 => Some(format!(
                "down_blocks.{b}.resnets.{l}.{}",
                chain(rest, &UNET_RESNET)
            )),
            1 => Some(format!("down_blocks.{b}.attentions.{l}.{rest}")),
            _ => None,
        };
    }
    if let Some(rest) = key.strip_prefix("middle_block.") {
        let (k, rest) = rest.split_once('.')?;
        let k: i64 = k.parse().ok()?;
        let at = (k - 1).max(0);
        return Some(if k % 2 == 0 {
            format!("mid_block.resnets.{at}.{}", chain(rest, &UNET_RESNET))
        } else {
            format!("mid_block.attentions.{at}.{rest}")
        });
    }
    if let Some((i, j, rest)) = block_parts(key, "output_blocks") {
        let (b, l) = (i / per, i % per);
        let upsampler = rest
            .strip_prefix("conv.")
            .filter(|leaf| weight_or_bias(leaf))
            .map(|leaf| format!("up_blocks.{b}.upsamplers.0.conv.{leaf}"));
        return match j {
            0 if rest.starts_with("op") => None,
            0 => Some(format!(
                "up_blocks.{b}.resnets.{l}.{}",
                chain(rest, &UNET_RESNET)
            )),
            1 if rest.starts_with("conv") => upsampler,
            1 => Some(format!("up_blocks.{b}.attentions.{l}.{rest}")),
            2 => upsampler,
            _ => None,
        };
    }
    None
}

/// `DIFFUSERS_TO_LDM_MAPPING["vae"]` as (LDM, diffusers).
const VAE_LAYERS: [(&str, &str); 8] = [
    ("encoder.conv_in", "encoder.conv_in"),
    ("encoder.conv_out", "encoder.conv_out"),
    ("encoder.norm_out", "encoder.conv_norm_out"),
    ("decoder.conv_in", "decoder.conv_in"),
    ("decoder.conv_out", "decoder.conv_out"),
    ("decoder.norm_out", "decoder.conv_norm_out"),
    ("quant_conv", "quant_conv"),
    ("post_quant_conv", "post_quant_conv"),
];

/// `update_vae_attentions_ldm_to_diffusers`'s renames, applied in this order.
const VAE_ATTENTION: [(&str, &str); 10] = [
    ("norm.weight", "group_norm.weight"),
    ("norm.bias", "group_norm.bias"),
    ("q.weight", "to_q.weight"),
    ("q.bias", "to_q.bias"),
    ("k.weight", "to_k.weight"),
    ("k.bias", "to_k.bias"),
    ("v.weight", "to_v.weight"),
    ("v.bias", "to_v.bias"),
    ("proj_out.weight", "to_out.0.weight"),
    ("proj_out.bias", "to_out.0.bias"),
];

/// A VAE tensor's diffusers name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaeName {
    pub name: String,
    /// A mid-block attention tensor: diffusers drops trailing 1×1 dimensions
    /// (`[:, :, 0]` / `[:, :, 0, 0]`) of 3-D and 4-D ones.
    pub squeeze: bool,
}

/// The VAE's diffusers name for `key` (without its prefix), for `down_blocks` encoder and
/// `up_blocks` decoder blocks (the lengths of the folder config's block type lists).
pub fn vae_name(key: &str, down_blocks: i64, up_blocks: i64) -> Option<VaeName> {
    let plain = |name: String| {
        Some(VaeName {
            name,
            squeeze: false,
        })
    };
    for (ldm, diffusers) in VAE_LAYERS {
        if let Some(leaf) = key.strip_prefix(ldm).and_then(|r| r.strip_prefix('.')) {
            return if weight_or_bias(leaf) {
                plain(format!("{diffusers}.{leaf}"))
            } else {
                None
            };
        }
    }
    let resnet = |rest: &str| rest.replace("nin_shortcut", "conv_shortcut");
    if let Some((i, what, rest)) = block_parts_named(key, "encoder.down") {
        if i >= down_blocks {
            return None;
        }
        return match what {
            Part::Block(j) => plain(format!(
                "encoder.down_blocks.{i}.resnets.{j}.{}",
                resnet(rest)
            )),
            Part::Sample if rest.strip_prefix("conv.").is_some_and(weight_or_bias) => {
                plain(format!("encoder.down_blocks.{i}.downsamplers.0.{rest}"))
            }
            Part::Sample => None,
        };
    }
    if let Some((b, what, rest)) = block_parts_named(key, "decoder.up") {
        if b >= up_blocks {
            return None;
        }
        let i = up_blocks - 1 - b;
        return match what {
            Part::Block(j) => plain(format!(
                "decoder.up_blocks.{i}.resnets.{j}.{}",
                resnet(rest)
            )),
            Part::Sample if rest.strip_prefix("conv.").is_some_and(weight_or_bias) => {
                plain(format!("decoder.up_blocks.{i}.upsamplers.0.{rest}"))
            }
            Part::Sample => None,
        };
    }
    for side in ["encoder", "decoder"] {
        let Some(rest) = key.strip_prefix(side).and_then(|r| r.strip_prefix(".mid.")) else {
            continue;
        };
        for n in 1..=2 {
            if let Some(rest) = rest.strip_prefix(&format!("block_{n}.")) {
                return plain(format!(
                    "{side}.mid_block.resnets.{}.{}",
                    n - 1,
                    resnet(rest)
                ));
            }
        }
        let rest = rest.strip_prefix("attn_1.")?;
        return Some(VaeName {
            name: chain(
                &format!("{side}.mid_block.attentions.0.{rest}"),
                &VAE_ATTENTION,
            ),
            squeeze: true,
        });
    }
    None
}

enum Part {
    Block(i64),
    /// `downsample` / `upsample`
    Sample,
}

/// `encoder.down.{i}.block.{j}.rest` / `encoder.down.{i}.downsample.rest` (and `decoder.up…`).
fn block_parts_named<'a>(key: &'a str, stem: &str) -> Option<(i64, Part, &'a str)> {
    let rest = key.strip_prefix(stem)?.strip_prefix('.')?;
    let (i, rest) = rest.split_once('.')?;
    let i: i64 = i.parse().ok()?;
    if let Some(rest) = rest.strip_prefix("block.") {
        let (j, rest) = rest.split_once('.')?;
        return Some((i, Part::Block(j.parse().ok()?), rest));
    }
    let sample = if stem.ends_with("down") {
        "downsample."
    } else {
        "upsample."
    };
    Some((i, Part::Sample, rest.strip_prefix(sample)?))
}

/// CLIP-L's transformers name: `convert_ldm_clip_checkpoint` only removes the prefix.
pub fn clip_l_name(key: &str) -> String {
    key.to_string()
}

/// An OpenCLIP tensor's transformers name(s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenClipName {
    Plain(String),
    /// `text_projection` (`[width, projection]`, used as `x @ P`) → `text_projection.weight`
    /// (`.T`).
    Transposed(String),
    /// `attn.in_proj_weight` / `_bias`: rows `[0, d)`, `[d, 2d)`, `[2d, …)` are q, k, v, with
    /// `d` the first dimension of `text_projection` (the width).
    Fused([String; 3]),
}

/// `DIFFUSERS_TO_LDM_MAPPING["openclip"]["layers"]` as (OpenCLIP, transformers).
const OPEN_CLIP_LAYERS: [(&str, &str); 5] = [
    (
        "positional_embedding",
        "text_model.embeddings.position_embedding.weight",
    ),
    (
        "token_embedding.weight",
        "text_model.embeddings.token_embedding.weight",
    ),
    ("ln_final.weight", "text_model.final_layer_norm.weight"),
    ("ln_final.bias", "text_model.final_layer_norm.bias"),
    ("text_projection", "text_projection.weight"),
];

/// `DIFFUSERS_TO_LDM_MAPPING["openclip"]["transformer"]` as (OpenCLIP, transformers), applied
/// in this order to keys under `transformer.`.
const OPEN_CLIP_TRANSFORMER: [(&str, &str); 9] = [
    ("resblocks.", "text_model.encoder.layers."),
    ("ln_1", "layer_norm1"),
    ("ln_2", "layer_norm2"),
    (".c_fc.", ".fc1."),
    (".c_proj.", ".fc2."),
    (".attn", ".self_attn"),
    ("ln_final.", "transformer.text_model.final_layer_norm."),
    (
        "token_embedding.weight",
        "transformer.text_model.embeddings.token_embedding.weight",
    ),
    (
        "positional_embedding",
        "transformer.text_model.embeddings.position_embedding.weight",
    ),
];

/// OpenCLIP bigG's transformers name(s) for `key` (without `conditioner.embedders.1.model.`).
pub fn open_clip_name(key: &str) -> Option<OpenClipName> {
    if let Some((_, to)) = OPEN_CLIP_LAYERS.iter().find(|(from, _)| *from == key) {
        return Some(if key == "text_projection" {
            OpenClipName::Transposed(to.to_string())
        } else {
            OpenClipName::Plain(to.to_string())
        });
    }
    let rest = key.strip_prefix("transformer.")?;
    let name = OPEN_CLIP_TRANSFORMER
        .iter()
        .fold(rest.to_string(), |n, (from, to)| {
            n.replace(from, to)
                .replace(".in_proj_weight", "")
                .replace(".in_proj_bias", "")
        });
    let fused = |leaf: &str| {
        Some(OpenClipName::Fused(
            ["q", "k", "v"].map(|p| format!("{name}.{p}_proj.{leaf}")),
        ))
    };
    if key.ends_with(".in_proj_weight") {
        fused("weight")
    } else if key.ends_with(".in_proj_bias") {
        fused("bias")
    } else {
        Some(OpenClipName::Plain(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unet_names_follow_diffusers_for_the_sdxl_layout() {
        let cases = [
            ("time_embed.2.bias", "time_embedding.linear_2.bias"),
            ("input_blocks.0.0.weight", "conv_in.weight"),
            ("label_emb.0.0.weight", "add_embedding.linear_1.weight"),
            (
                "input_blocks.2.0.in_layers.2.weight",
                "down_blocks.0.resnets.1.conv1.weight",
            ),
            (
                "input_blocks.3.0.op.bias",
                "down_blocks.0.downsamplers.0.conv.bias",
            ),
            (
                "input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight",
                "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k.weight",
            ),
            (
                "input_blocks.7.0.skip_connection.weight",
                "down_blocks.2.resnets.0.conv_shortcut.weight",
            ),
            (
                "middle_block.1.proj_in.weight",
                "mid_block.attentions.0.proj_in.weight",
            ),
            (
                "middle_block.2.emb_layers.1.bias",
                "mid_block.resnets.1.time_emb_proj.bias",
            ),
            (
                "output_blocks.2.2.conv.weight",
                "up_blocks.0.upsamplers.0.conv.weight",
            ),
            (
                "output_blocks.5.1.norm.bias",
                "up_blocks.1.attentions.2.norm.bias",
            ),
            (
                "output_blocks.8.0.out_layers.3.weight",
                "up_blocks.2.resnets.2.conv2.weight",
            ),
            ("out.0.weight", "conv_norm_out.weight"),
        ];
        for (key, want) in cases {
            assert_eq!(unet_name(key, 2, true).as_deref(), Some(want), "{key}");
        }
        // SD 1.x's up block 0 has no attention: its upsampler is part 1.
        assert_eq!(
            unet_name("output_blocks.2.1.conv.bias", 2, true).as_deref(),
            Some("up_blocks.0.upsamplers.0.conv.bias")
        );
        assert_eq!(unet_name("label_emb.0.0.weight", 2, false), None);
        assert_eq!(unet_name("input_blocks.3.0.op.extra", 2, true), None);
        assert_eq!(unet_name("input_blocks.0.1.weight", 2, true), None);
        assert_eq!(unet_name("time_embed.1.weight", 2, true), None);
    }

    #[test]
    fn vae_names_follow_diffusers() {
        let plain = |k: &str| vae_name(k, 4, 4).filter(|v| !v.squeeze).map(|v| v.name);
        assert_eq!(
            plain("decoder.up.0.block.0.nin_shortcut.weight").as_deref(),
            Some("decoder.up_blocks.3.resnets.0.conv_shortcut.weight")
        );
        assert_eq!(
            plain("decoder.up.3.upsample.conv.bias").as_deref(),
            Some("decoder.up_blocks.0.upsamplers.0.conv.bias")
        );
        assert_eq!(
            plain("encoder.down.2.downsample.conv.weight").as_deref(),
            Some("encoder.down_blocks.2.downsamplers.0.conv.weight")
        );
        assert_eq!(
            plain("encoder.mid.block_2.norm1.weight").as_deref(),
            Some("encoder.mid_block.resnets.1.norm1.weight")
        );
        assert_eq!(
            plain("decoder.norm_out.bias").as_deref(),
            Some("decoder.conv_norm_out.bias")
        );
        let attn = vae_name("encoder.mid.attn_1.proj_out.weight", 4, 4).unwrap();
        assert_eq!(attn.name, "encoder.mid_block.attentions.0.to_out.0.weight");
        assert!(attn.squeeze);
        let norm = vae_name("decoder.mid.attn_1.norm.bias", 4, 4).unwrap();
        assert_eq!(norm.name, "decoder.mid_block.attentions.0.group_norm.bias");
        assert_eq!(vae_name("decoder.up.4.block.0.conv1.weight", 4, 4), None);
        assert_eq!(vae_name("encoder.mid.block_3.conv1.weight", 4, 4), None);
        assert_eq!(vae_name("encoder.down.0.attn.0.q.weight", 4, 4), None);
    }

    #[test]
    fn open_clip_names_follow_diffusers() {
        let plain = |n: &str| Some(OpenClipName::Plain(n.to_string()));
        assert_eq!(
            open_clip_name("transformer.resblocks.0.mlp.c_proj.weight"),
            plain("text_model.encoder.layers.0.mlp.fc2.weight")
        );
        assert_eq!(
            open_clip_name("transformer.resblocks.31.ln_2.bias"),
            plain("text_model.encoder.layers.31.layer_norm2.bias")
        );
        assert_eq!(
            open_clip_name("transformer.resblocks.3.attn.out_proj.bias"),
            plain("text_model.encoder.layers.3.self_attn.out_proj.bias")
        );
        assert_eq!(
            open_clip_name("positional_embedding"),
            plain("text_model.embeddings.position_embedding.weight")
        );
        assert_eq!(
            open_clip_name("text_projection"),
            Some(OpenClipName::Transposed("text_projection.weight".into()))
        );
        let Some(OpenClipName::Fused(qkv)) =
            open_clip_name("transformer.resblocks.9.attn.in_proj_bias")
        else {
            panic!("in_proj_bias is fused");
        };
        assert_eq!(
            qkv,
            ["q", "k", "v"].map(|p| format!("text_model.encoder.layers.9.self_attn.{p}_proj.bias"))
        );
        assert_eq!(open_clip_name("logit_scale"), None);
        assert!(is_non_weight("conditioner.embedders.1.model.logit_scale"));
        assert!(is_non_weight("model_ema.num_updates") && is_non_weight("denoiser.sigmas"));
        assert!(!is_non_weight("model.diffusion_model.out.2.weight"));
    }
}
