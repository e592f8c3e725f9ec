//! `unet/config.json` (`UNet2DConditionModel`) and the IdentityNet's `config.json`
//! (`ControlNetModel`) as serde mirrors with diffusers' defaults for missing keys (unknown keys
//! are ignored). `layout` resolves them into the per-block layout the networks are built from.
//!
//! diffusers' naming quirk is kept: when `num_attention_heads` is null, `attention_head_dim`
//! holds the number of heads per block (SDXL: `[5, 10, 20]`, i.e. 64-wide heads).

use serde::Deserialize;

use crate::{ModelError, Result};

/// A value for every block, or one list entry per block (`4` or `[5, 10, 20]`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PerBlock<T> {
    One(T),
    Each(Vec<T>),
}

impl<T: Clone + std::fmt::Debug> PerBlock<T> {
    pub fn resolve(&self, blocks: usize, what: &str) -> Result<Vec<T>> {
        match self {
            Self::One(v) => Ok(vec![v.clone(); blocks]),
            Self::Each(v) if v.len() == blocks => Ok(v.clone()),
            Self::Each(v) => Err(unsupported(format!(
                "{what} {v:?} has {} entries for {blocks} blocks",
                v.len()
            ))),
        }
    }
}

/// `transformer_layers_per_block`: one depth, one per block, or one per layer of each block.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum TransformerLayers {
    One(i64),
    PerBlock(Vec<i64>),
    PerLayer(Vec<Vec<i64>>),
}

pub(crate) fn unsupported(what: String) -> ModelError {
    ModelError::UnsupportedConfig(what)
}

/// diffusers' `UNet2DConditionModel` config. Defaults are diffusers' `__init__` defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct UNet2DConditionConfig {
    pub in_channels: i64,
    pub out_channels: i64,
    pub center_input_sample: bool,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub down_block_types: Vec<String>,
    pub mid_block_type: Option<String>,
    pub up_block_types: Vec<String>,
    pub only_cross_attention: PerBlock<bool>,
    pub block_out_channels: Vec<i64>,
    pub layers_per_block: PerBlock<i64>,
    pub downsample_padding: i64,
    pub mid_block_scale_factor: f64,
    pub act_fn: String,
    pub norm_num_groups: Option<i64>,
    pub norm_eps: f64,
    pub cross_attention_dim: PerBlock<i64>,
    pub transformer_layers_per_block: TransformerLayers,
    pub reverse_transformer_layers_per_block: Option<Vec<Vec<i64>>>,
    pub encoder_hid_dim: Option<i64>,
    pub encoder_hid_dim_type: Option<String>,
    pub attention_head_dim: PerBlock<i64>,
    pub num_attention_heads: Option<PerBlock<i64>>,
    pub dual_cross_attention: bool,
    pub use_linear_projection: bool,
    pub class_embed_type: Option<String>,
    pub addition_embed_type: Option<String>,
    pub addition_time_embed_dim: Option<i64>,
    pub num_class_embeds: Option<i64>,
    /// Accepted (SDXL's config has `null`) and, as in diffusers' default `AttnProcessor2_0`,
    /// without effect.
    pub upcast_attention: Option<bool>,
    pub resnet_time_scale_shift: String,
    pub resnet_skip_time_act: bool,
    pub resnet_out_scale_factor: f64,
    pub time_embedding_type: String,
    pub time_embedding_dim: Option<i64>,
    pub time_embedding_act_fn: Option<String>,
    pub timestep_post_act: Option<String>,
    pub time_cond_proj_dim: Option<i64>,
    pub conv_in_kernel: i64,
    pub conv_out_kernel: i64,
    pub projection_class_embeddings_input_dim: Option<i64>,
    pub attention_type: String,
    pub class_embeddings_concat: bool,
    pub cross_attention_norm: Option<String>,
}

impl Default for UNet2DConditionConfig {
    fn default() -> Self {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect();
        Self {
            in_channels: 4,
            out_channels: 4,
            center_input_sample: false,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            down_block_types: s(&[
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D",
            ]),
            mid_block_type: Some("UNetMidBlock2DCrossAttn".into()),
            up_block_types: s(&[
                "UpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
            ]),
            only_cross_attention: PerBlock::One(false),
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: PerBlock::One(2),
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            act_fn: "silu".into(),
            norm_num_groups: Some(32),
            norm_eps: 1e-5,
            cross_attention_dim: PerBlock::One(1280),
            transformer_layers_per_block: TransformerLayers::One(1),
            reverse_transformer_layers_per_block: None,
            encoder_hid_dim: None,
            encoder_hid_dim_type: None,
            attention_head_dim: PerBlock::One(8),
            num_attention_heads: None,
            dual_cross_attention: false,
            use_linear_projection: false,
            class_embed_type: None,
            addition_embed_type: None,
            addition_time_embed_dim: None,
            num_class_embeds: None,
            upcast_attention: None,
            resnet_time_scale_shift: "default".into(),
            resnet_skip_time_act: false,
            resnet_out_scale_factor: 1.0,
            time_embedding_type: "positional".into(),
            time_embedding_dim: None,
            time_embedding_act_fn: None,
            timestep_post_act: None,
            time_cond_proj_dim: None,
            conv_in_kernel: 3,
            conv_out_kernel: 3,
            projection_class_embeddings_input_dim: None,
            attention_type: "default".into(),
            class_embeddings_concat: false,
            cross_attention_norm: None,
        }
    }
}

/// diffusers' `ControlNetModel` config (the IdentityNet). Defaults are diffusers' defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ControlNetConfig {
    pub in_channels: i64,
    pub conditioning_channels: i64,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub down_block_types: Vec<String>,
    pub mid_block_type: Option<String>,
    pub only_cross_attention: PerBlock<bool>,
    pub block_out_channels: Vec<i64>,
    pub layers_per_block: PerBlock<i64>,
    pub downsample_padding: i64,
    pub mid_block_scale_factor: f64,
    pub act_fn: String,
    pub norm_num_groups: Option<i64>,
    pub norm_eps: f64,
    pub cross_attention_dim: PerBlock<i64>,
    pub transformer_layers_per_block: TransformerLayers,
    pub encoder_hid_dim: Option<i64>,
    pub encoder_hid_dim_type: Option<String>,
    pub attention_head_dim: PerBlock<i64>,
    pub num_attention_heads: Option<PerBlock<i64>>,
    pub use_linear_projection: bool,
    pub class_embed_type: Option<String>,
    pub addition_embed_type: Option<String>,
    pub addition_time_embed_dim: Option<i64>,
    pub num_class_embeds: Option<i64>,
    /// Accepted and without effect, as in diffusers' default attention processor.
    pub upcast_attention: Option<bool>,
    pub resnet_time_scale_shift: String,
    pub projection_class_embeddings_input_dim: Option<i64>,
    /// `rgb`, or `bgr` (the conditioning image's channels are flipped first).
    pub controlnet_conditioning_channel_order: String,
    pub conditioning_embedding_out_channels: Option<Vec<i64>>,
    /// Residuals averaged over the spatial axes (`[B, C, 1, 1]`), as diffusers does.
    pub global_pool_conditions: bool,
}

impl Default for ControlNetConfig {
    fn default() -> Self {
        let u = UNet2DConditionConfig::default();
        Self {
            in_channels: 4,
            conditioning_channels: 3,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            down_block_types: u.down_block_types,
            mid_block_type: u.mid_block_type,
            only_cross_attention: PerBlock::One(false),
            block_out_channels: u.block_out_channels,
            layers_per_block: PerBlock::One(2),
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            act_fn: "silu".into(),
            norm_num_groups: Some(32),
            norm_eps: 1e-5,
            cross_attention_dim: PerBlock::One(1280),
            transformer_layers_per_block: TransformerLayers::One(1),
            encoder_hid_dim: None,
            encoder_hid_dim_type: None,
            attention_head_dim: PerBlock::One(8),
            num_attention_heads: None,
            use_linear_projection: false,
            class_embed_type: None,
            addition_embed_type: None,
            addition_time_embed_dim: None,
            num_class_embeds: None,
            upcast_attention: None,
            resnet_time_scale_shift: "default".into(),
            projection_class_embeddings_input_dim: None,
            controlnet_conditioning_channel_order: "rgb".into(),
            conditioning_embedding_out_channels: Some(vec![16, 32, 96, 256]),
            global_pool_conditions: false,
        }
    }
}
