//! The device memory an InstantID generation needs besides weights, from the model's configs
//! alone (the server plans a job before the model is loaded): see
//! [`ltx_offload::budget::SdxlShape`] for the formula.

use std::path::Path;

use ltx_models::config::read_config;
use ltx_models::sdxl::clip::ClipTextConfig;
use ltx_models::sdxl::folder::SdxlDtypes;
use ltx_models::sdxl::unet::UNet2DConditionConfig;
use ltx_models::sdxl::vae::AutoencoderKlConfig;
use ltx_models::{ModelError, Result};
use ltx_offload::budget::{SdxlShape, Workload};
use tch::Kind;

use super::{InstantIdModels, InstantIdParams};
use crate::sdxl_tiled_decode::SdxlTileConfig;

/// What the estimate needs from an SDXL model's configs and dtypes.
#[derive(Debug, Clone, PartialEq)]
pub struct InstantIdShapes {
    /// The UNet's `block_out_channels`, `layers_per_block` and attention heads per level (0 for
    /// a level without transformers); its latent channels.
    pub channels: Vec<i64>,
    pub layers_per_block: Vec<i64>,
    pub heads: Vec<i64>,
    pub latent_channels: i64,
    /// Prompt tokens (CLIP's 77) and the wider text encoder's hidden size.
    pub text_len: i64,
    pub text_hidden: i64,
    /// The VAE's spatial ratio (8) and its decoder's last two stages' channels, last first.
    pub vae_ratio: i64,
    pub decoder_channels: [i64; 2],
    /// The UNet's (and IdentityNet's) dtype, the text encoders', and the VAE's compute dtype
    /// (float32 for a float16 VAE with `force_upcast`).
    pub unet_kind: Kind,
    pub text_kind: Kind,
    pub vae_kind: Kind,
}

impl InstantIdShapes {
    /// From the components' configs, in the dtypes they load in.
    pub fn from_configs(
        unet: &UNet2DConditionConfig,
        vae: &AutoencoderKlConfig,
        text: [&ClipTextConfig; 2],
        dtypes: &SdxlDtypes,
    ) -> Result<Self> {
        let n = unet.block_out_channels.len();
        if n == 0 || unet.down_block_types.len() != n {
            return Err(ModelError::UnsupportedConfig(format!(
                "unet: {} down blocks for block_out_channels {:?}",
                unet.down_block_types.len(),
                unet.block_out_channels
            )));
        }
        let heads = unet
            .num_attention_heads
            .as_ref()
            .unwrap_or(&unet.attention_head_dim)
            .resolve(n, "unet num_attention_heads")?;
        let heads = heads
            .iter()
            .zip(&unet.down_block_types)
            .map(|(&h, t)| if t.contains("CrossAttn") { h } else { 0 })
            .collect();
        let vae_weights = dtypes.vae_kind(vae);
        let last = |i: usize| {
            let b = &vae.block_out_channels;
            b.get(i).or(b.first()).copied().unwrap_or(1)
        };
        Ok(Self {
            channels: unet.block_out_channels.clone(),
            layers_per_block: unet.layers_per_block.resolve(n, "unet layers_per_block")?,
            heads,
            latent_channels: unet.in_channels,
            text_len: text[0]
                .max_position_embeddings
                .max(text[1].max_position_embeddings),
            text_hidden: text[0].hidden_size.max(text[1].hidden_size),
            vae_ratio: vae.spatial_ratio(),
            decoder_channels: [last(0), last(1)],
            unet_kind: dtypes.unet,
            text_kind: dtypes.text_encoder_2,
            vae_kind: if vae_weights == Kind::Half && vae.force_upcast {
                Kind::Float
            } else {
                vae_weights
            },
        })
    }

    /// From an SDXL diffusers folder's `unet/`, `vae/`, `text_encoder/` and `text_encoder_2/`
    /// configs.
    pub fn read(sdxl: &Path, dtypes: &SdxlDtypes) -> Result<Self> {
        let unet: UNet2DConditionConfig = read_config(&sdxl.join("unet/config.json"))?;
        let vae: AutoencoderKlConfig = read_config(&sdxl.join("vae/config.json"))?;
        let t1: ClipTextConfig = read_config(&sdxl.join("text_encoder/config.json"))?;
        let t2: ClipTextConfig = read_config(&sdxl.join("text_encoder_2/config.json"))?;
        Self::from_configs(&unet, &vae, [&t1, &t2], dtypes)
    }

    /// Of loaded models.
    pub fn of_models(m: &InstantIdModels) -> Result<Self> {
        let dtypes = SdxlDtypes {
            text_encoder: m.text_kind,
            text_encoder_2: m.text_kind,
            unet: m.unet.kind(),
            vae: Some(m.vae.weight_kind()),
        };
        Self::from_configs(
            m.unet.config(),
            m.vae.config(),
            [m.text_encoder.config(), m.text_encoder_2.config()],
            &dtypes,
        )
    }
}

fn elem(k: Kind) -> u64 {
    k.elt_size_in_bytes() as u64
}

fn u(v: &[i64]) -> Vec<u64> {
    v.iter().map(|&x| x.max(0) as u64).collect()
}

/// The device bytes a generation with `p` needs besides weights, per stage
/// ([`ltx_offload::budget::estimate_peak`] adds the weights per mode): the output size is
/// `p`'s, or the keypoint image's `(height, width)` floored to the VAE's ratio; CFG doubles the
/// UNet's batch; `tiling` is the pipeline's VAE tiling.
pub fn instantid_workload(
    s: &InstantIdShapes,
    tiling: Option<&SdxlTileConfig>,
    p: &InstantIdParams,
    keypoint_size: (usize, usize),
) -> Result<Workload> {
    p.validate()?;
    let (h, w) = p.size(keypoint_size, s.vae_ratio)?;
    let r = s.vae_ratio.max(1);
    Ok(Workload::of_sdxl(&SdxlShape {
        batch: if p.cfg() { 2 } else { 1 },
        latent_height: (h / r) as u64,
        latent_width: (w / r) as u64,
        latent_channels: s.latent_channels as u64,
        channels: u(&s.channels),
        layers_per_block: u(&s.layers_per_block),
        heads: u(&s.heads),
        text_len: s.text_len as u64,
        text_hidden: s.text_hidden as u64,
        height: h as u64,
        width: w as u64,
        decoder_channels: s.decoder_channels[0] as u64,
        decoder_prev_channels: s.decoder_channels[1] as u64,
        decode_tile: tiling.map(|t| [t.tile_sample_size as u64; 2]),
        elem: elem(s.unet_kind),
        text_elem: elem(s.text_kind),
        vae_elem: elem(s.vae_kind),
    }))
}
