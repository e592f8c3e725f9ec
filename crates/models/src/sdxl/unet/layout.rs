//! The two configs resolved, validated, into what the networks are built from: per-block
//! channels, heads, layers and transformer depths, as diffusers' constructors compute them
//! (`UNet2DConditionModel.__init__`, `ControlNetModel.__init__`, `get_down_block`, …).

use super::config::{
    unsupported, ControlNetConfig, PerBlock, TransformerLayers, UNet2DConditionConfig,
};
use crate::Result;

/// How every ResnetBlock2D and Transformer2DModel of a network is normalised.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Norms {
    pub groups: i64,
    pub eps: f64,
    pub output_scale: f64,
    pub skip_time_act: bool,
    pub temb_dim: i64,
    pub linear_projection: bool,
}

/// One down or up block, its channels resolved.
#[derive(Debug, Clone)]
pub(crate) struct BlockSpec {
    pub cross_attention: bool,
    pub in_channels: i64,
    pub out_channels: i64,
    /// Up blocks: the channels coming from the block below.
    pub prev_output_channels: i64,
    pub layers: usize,
    /// Transformer depth of each layer (cross-attention blocks).
    pub depths: Vec<i64>,
    pub heads: i64,
    pub cross_dim: i64,
    /// A downsampler (down blocks) or an upsampler (up blocks) at the end.
    pub resample: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct MidSpec {
    pub channels: i64,
    /// 0 for ControlNet's `UNetMidBlock2D` (one resnet, no attention).
    pub layers: usize,
    pub depths: Vec<i64>,
    pub heads: i64,
    pub cross_dim: i64,
    pub output_scale: f64,
}

/// What the UNet and the ControlNet share: input convolution, time and text-time embeddings,
/// down blocks and mid block.
#[derive(Debug, Clone)]
pub(crate) struct EncoderSpec {
    pub in_channels: i64,
    pub conv_in_kernel: i64,
    pub time_input_dim: i64,
    pub time_embed_dim: i64,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub add_time_dim: i64,
    pub add_input_dim: i64,
    pub cross_dim: i64,
    pub downsample_padding: i64,
    pub norms: Norms,
    pub down: Vec<BlockSpec>,
    pub mid: Option<MidSpec>,
}

impl EncoderSpec {
    /// Channels of each skip tensor in order (conv_in, then each block's outputs).
    pub fn skip_channels(&self) -> Vec<i64> {
        let mut out = vec![self.down.first().map_or(0, |b| b.in_channels)];
        for b in &self.down {
            out.extend(std::iter::repeat_n(b.out_channels, b.layers));
            if b.resample {
                out.push(b.out_channels);
            }
        }
        out
    }
}

/// Fields the two configs share, borrowed for the common checks and resolution.
struct Common<'a> {
    what: &'static str,
    in_channels: i64,
    flip_sin_to_cos: bool,
    freq_shift: f64,
    down_block_types: &'a [String],
    mid_block_type: Option<&'a str>,
    only_cross_attention: &'a PerBlock<bool>,
    block_out_channels: &'a [i64],
    layers_per_block: &'a PerBlock<i64>,
    downsample_padding: i64,
    mid_block_scale_factor: f64,
    act_fn: &'a str,
    norm_num_groups: Option<i64>,
    norm_eps: f64,
    cross_attention_dim: &'a PerBlock<i64>,
    transformer_layers_per_block: &'a TransformerLayers,
    attention_head_dim: &'a PerBlock<i64>,
    num_attention_heads: Option<&'a PerBlock<i64>>,
    use_linear_projection: bool,
    addition_embed_type: Option<&'a str>,
    addition_time_embed_dim: Option<i64>,
    projection_class_embeddings_input_dim: Option<i64>,
    resnet_time_scale_shift: &'a str,
    unsupported_set: Vec<(&'static str, bool)>,
}

/// Per-block transformer depths (each a per-layer list) of the down blocks.
fn depths_per_block(t: &TransformerLayers, layers: &[usize]) -> Result<Vec<Vec<i64>>> {
    let n = layers.len();
    let per_block: Vec<Vec<i64>> = match t {
        TransformerLayers::One(d) => layers.iter().map(|&l| vec![*d; l]).collect(),
        TransformerLayers::PerBlock(v) => PerBlock::Each(v.clone())
            .resolve(n, "transformer_layers_per_block")?
            .iter()
            .zip(layers)
            .map(|(&d, &l)| vec![d; l])
            .collect(),
        TransformerLayers::PerLayer(v) => {
            PerBlock::Each(v.clone()).resolve(n, "transformer_layers_per_block")?
        }
    };
    for (i, (d, &l)) in per_block.iter().zip(layers).enumerate() {
        if d.len() < l {
            return Err(unsupported(format!(
                "transformer_layers_per_block of block {i} is {d:?} for {l} layers"
            )));
        }
    }
    Ok(per_block)
}

/// The mid block's depth: diffusers passes it `transformer_layers_per_block[-1]` (its first
/// entry if that is a per-layer list).
fn last_depth(t: &TransformerLayers) -> i64 {
    match t {
        TransformerLayers::One(d) => *d,
        TransformerLayers::PerBlock(v) => v.last().copied().unwrap_or(1),
        TransformerLayers::PerLayer(v) => v.last().and_then(|l| l.first()).copied().unwrap_or(1),
    }
}

impl Common<'_> {
    fn resolve(
        &self,
        time_embed_dim: i64,
        resnet_out_scale: f64,
        skip_time_act: bool,
    ) -> Result<EncoderSpec> {
        let w = self.what;
        let bad = |m: String| Err(unsupported(format!("{w}: {m}")));
        for (field, set) in &self.unsupported_set {
            if *set {
                return bad(format!("{field} is set; SDXL's networks do not use it"));
            }
        }
        if !matches!(self.act_fn, "silu" | "swish") {
            return bad(format!("act_fn {:?} (only silu)", self.act_fn));
        }
        if self.resnet_time_scale_shift != "default" {
            return bad(format!(
                "resnet_time_scale_shift {:?}",
                self.resnet_time_scale_shift
            ));
        }
        if self.addition_embed_type != Some("text_time") {
            return bad(format!(
                "addition_embed_type {:?} (SDXL's is \"text_time\")",
                self.addition_embed_type
            ));
        }
        let (Some(add_time_dim), Some(add_input_dim)) = (
            self.addition_time_embed_dim,
            self.projection_class_embeddings_input_dim,
        ) else {
            return bad(
                "text_time needs addition_time_embed_dim and projection_class_embeddings_input_dim"
                    .into(),
            );
        };
        let Some(groups) = self.norm_num_groups else {
            return bad("norm_num_groups null".into());
        };
        let n = self.down_block_types.len();
        if n == 0 || self.block_out_channels.len() != n {
            return bad(format!(
                "{} block_out_channels for {n} down blocks",
                self.block_out_channels.len()
            ));
        }
        if self
            .only_cross_attention
            .resolve(n, "only_cross_attention")?
            .iter()
            .any(|&b| b)
        {
            return bad("only_cross_attention".into());
        }
        let heads = self
            .num_attention_heads
            .unwrap_or(self.attention_head_dim)
            .resolve(n, "attention heads (attention_head_dim)")?;
        let cross = self.cross_attention_dim.resolve(n, "cross_attention_dim")?;
        if cross.iter().any(|&c| c != cross[0]) {
            return bad(format!(
                "cross_attention_dim {cross:?} differs between blocks"
            ));
        }
        let layers: Vec<usize> = self
            .layers_per_block
            .resolve(n, "layers_per_block")?
            .iter()
            .map(|&l| l.max(0) as usize)
            .collect();
        let depths = depths_per_block(self.transformer_layers_per_block, &layers)?;
        let mut down = Vec::with_capacity(n);
        let mut prev = self.block_out_channels[0];
        for (i, ty) in self.down_block_types.iter().enumerate() {
            let cross_attention = match ty.as_str() {
                "CrossAttnDownBlock2D" => true,
                "DownBlock2D" => false,
                other => return bad(format!("down block type {other:?}")),
            };
            let out = self.block_out_channels[i];
            down.push(BlockSpec {
                cross_attention,
                in_channels: prev,
                out_channels: out,
                prev_output_channels: prev,
                layers: layers[i],
                depths: depths[i][..layers[i]].to_vec(),
                heads: heads[i],
                cross_dim: cross[i],
                resample: i + 1 < n,
            });
            prev = out;
        }
        let mid = match self.mid_block_type {
            Some("UNetMidBlock2DCrossAttn") => Some(MidSpec {
                channels: prev,
                layers: 1,
                depths: vec![last_depth(self.transformer_layers_per_block)],
                heads: heads[n - 1],
                cross_dim: cross[n - 1],
                output_scale: self.mid_block_scale_factor,
            }),
            Some("UNetMidBlock2D") if w == "ControlNetModel" => Some(MidSpec {
                channels: prev,
                layers: 0,
                depths: vec![],
                heads: heads[n - 1],
                cross_dim: cross[n - 1],
                output_scale: self.mid_block_scale_factor,
            }),
            None if w == "UNet2DConditionModel" => None,
            other => return bad(format!("mid_block_type {other:?}")),
        };
        let spec = EncoderSpec {
            in_channels: self.in_channels,
            conv_in_kernel: 3,
            time_input_dim: self.block_out_channels[0],
            time_embed_dim,
            flip_sin_to_cos: self.flip_sin_to_cos,
            freq_shift: self.freq_shift,
            add_time_dim,
            add_input_dim,
            cross_dim: cross[0],
            downsample_padding: self.downsample_padding,
            norms: Norms {
                groups,
                eps: self.norm_eps,
                output_scale: resnet_out_scale,
                skip_time_act,
                temb_dim: time_embed_dim,
                linear_projection: self.use_linear_projection,
            },
            down,
            mid,
        };
        check_heads(w, &spec.down, spec.mid.as_ref())?;
        Ok(spec)
    }
}

/// Every attention width must split evenly into its heads (diffusers' reshapes need it).
fn check_heads(what: &str, blocks: &[BlockSpec], mid: Option<&MidSpec>) -> Result<()> {
    let mids = mid.filter(|m| m.layers > 0).map(|m| (m.channels, m.heads));
    let all = blocks
        .iter()
        .filter(|b| b.cross_attention)
        .map(|b| (b.out_channels, b.heads))
        .chain(mids);
    for (channels, heads) in all {
        if heads <= 0 || channels % heads != 0 {
            return Err(unsupported(format!(
                "{what}: {channels} channels do not split into {heads} attention heads"
            )));
        }
    }
    Ok(())
}

impl UNet2DConditionConfig {
    fn common(&self) -> Common<'_> {
        Common {
            what: "UNet2DConditionModel",
            in_channels: self.in_channels,
            flip_sin_to_cos: self.flip_sin_to_cos,
            freq_shift: self.freq_shift,
            down_block_types: &self.down_block_types,
            mid_block_type: self.mid_block_type.as_deref(),
            only_cross_attention: &self.only_cross_attention,
            block_out_channels: &self.block_out_channels,
            layers_per_block: &self.layers_per_block,
            downsample_padding: self.downsample_padding,
            mid_block_scale_factor: self.mid_block_scale_factor,
            act_fn: &self.act_fn,
            norm_num_groups: self.norm_num_groups,
            norm_eps: self.norm_eps,
            cross_attention_dim: &self.cross_attention_dim,
            transformer_layers_per_block: &self.transformer_layers_per_block,
            attention_head_dim: &self.attention_head_dim,
            num_attention_heads: self.num_attention_heads.as_ref(),
            use_linear_projection: self.use_linear_projection,
            addition_embed_type: self.addition_embed_type.as_deref(),
            addition_time_embed_dim: self.addition_time_embed_dim,
            projection_class_embeddings_input_dim: self.projection_class_embeddings_input_dim,
            resnet_time_scale_shift: &self.resnet_time_scale_shift,
            unsupported_set: vec![
                ("encoder_hid_dim", self.encoder_hid_dim.is_some()),
                ("encoder_hid_dim_type", self.encoder_hid_dim_type.is_some()),
                ("class_embed_type", self.class_embed_type.is_some()),
                ("num_class_embeds", self.num_class_embeds.is_some()),
                ("dual_cross_attention", self.dual_cross_attention),
                (
                    "time_embedding_act_fn",
                    self.time_embedding_act_fn.is_some(),
                ),
                ("timestep_post_act", self.timestep_post_act.is_some()),
                ("time_cond_proj_dim", self.time_cond_proj_dim.is_some()),
                ("class_embeddings_concat", self.class_embeddings_concat),
                ("cross_attention_norm", self.cross_attention_norm.is_some()),
                (
                    "attention_type other than default",
                    self.attention_type != "default",
                ),
                (
                    "time_embedding_type other than positional",
                    self.time_embedding_type != "positional",
                ),
            ],
        }
    }

    /// The encoder half and the up blocks, validated.
    pub(crate) fn resolve(&self) -> Result<(EncoderSpec, Vec<BlockSpec>)> {
        let time_embed_dim = self
            .time_embedding_dim
            .unwrap_or(self.block_out_channels.first().copied().unwrap_or(0) * 4);
        let mut enc = self.common().resolve(
            time_embed_dim,
            self.resnet_out_scale_factor,
            self.resnet_skip_time_act,
        )?;
        enc.conv_in_kernel = self.conv_in_kernel;
        let bad = |m: String| Err(unsupported(format!("UNet2DConditionModel: {m}")));
        let n = enc.down.len();
        if self.up_block_types.len() != n {
            return bad(format!(
                "{} up blocks for {n} down blocks",
                self.up_block_types.len()
            ));
        }
        if self.conv_in_kernel % 2 == 0 || self.conv_out_kernel % 2 == 0 {
            return bad("even conv_in_kernel / conv_out_kernel".into());
        }
        let rev = |v: Vec<i64>| v.into_iter().rev().collect::<Vec<_>>();
        let out_ch = rev(self.block_out_channels.clone());
        let heads = rev(enc.down.iter().map(|b| b.heads).collect());
        let layers = rev(enc.down.iter().map(|b| b.layers as i64).collect());
        let up_depths: Vec<Vec<i64>> = match &self.reverse_transformer_layers_per_block {
            Some(r) => PerBlock::Each(r.clone()).resolve(n, "reverse_transformer_layers_per_block")?,
            None => match &self.transformer_layers_per_block {
                TransformerLayers::PerLayer(_) => {
                    return bad("per-layer transformer_layers_per_block needs reverse_transformer_layers_per_block".into())
                }
                t => {
                    // diffusers reverses the per-block depths; each repeats over its up layers.
                    let up_layers: Vec<usize> = enc.down.iter().map(|b| b.layers + 1).collect();
                    let mut d = depths_per_block(t, &up_layers)?;
                    d.reverse();
                    d
                }
            },
        };
        let mut up = Vec::with_capacity(n);
        let mut prev = out_ch[0];
        for (i, ty) in self.up_block_types.iter().enumerate() {
            let cross_attention = match ty.as_str() {
                "CrossAttnUpBlock2D" => true,
                "UpBlock2D" => false,
                other => return bad(format!("up block type {other:?}")),
            };
            let l = layers[i] as usize + 1;
            if cross_attention && up_depths[i].len() < l {
                return bad(format!(
                    "up block {i}: transformer depths {:?} for {l} layers",
                    up_depths[i]
                ));
            }
            up.push(BlockSpec {
                cross_attention,
                in_channels: out_ch[(i + 1).min(n - 1)],
                out_channels: out_ch[i],
                prev_output_channels: prev,
                layers: l,
                depths: up_depths[i].iter().copied().take(l).collect(),
                heads: heads[i],
                cross_dim: enc.cross_dim,
                resample: i + 1 < n,
            });
            prev = out_ch[i];
        }
        check_heads("UNet2DConditionModel", &up, None)?;
        let skips = enc.skip_channels().len();
        let taken: usize = up.iter().map(|b| b.layers).sum();
        if skips != taken {
            return bad(format!(
                "the down path leaves {skips} skip tensors, the up blocks take {taken}"
            ));
        }
        Ok((enc, up))
    }
}

impl ControlNetConfig {
    pub(crate) fn resolve(&self) -> Result<EncoderSpec> {
        let time_embed_dim = self.block_out_channels.first().copied().unwrap_or(0) * 4;
        Common {
            what: "ControlNetModel",
            in_channels: self.in_channels,
            flip_sin_to_cos: self.flip_sin_to_cos,
            freq_shift: self.freq_shift,
            down_block_types: &self.down_block_types,
            mid_block_type: self.mid_block_type.as_deref(),
            only_cross_attention: &self.only_cross_attention,
            block_out_channels: &self.block_out_channels,
            layers_per_block: &self.layers_per_block,
            downsample_padding: self.downsample_padding,
            mid_block_scale_factor: self.mid_block_scale_factor,
            act_fn: &self.act_fn,
            norm_num_groups: self.norm_num_groups,
            norm_eps: self.norm_eps,
            cross_attention_dim: &self.cross_attention_dim,
            transformer_layers_per_block: &self.transformer_layers_per_block,
            attention_head_dim: &self.attention_head_dim,
            num_attention_heads: self.num_attention_heads.as_ref(),
            use_linear_projection: self.use_linear_projection,
            addition_embed_type: self.addition_embed_type.as_deref(),
            addition_time_embed_dim: self.addition_time_embed_dim,
            projection_class_embeddings_input_dim: self.projection_class_embeddings_input_dim,
            resnet_time_scale_shift: &self.resnet_time_scale_shift,
            unsupported_set: vec![
                ("encoder_hid_dim", self.encoder_hid_dim.is_some()),
                ("encoder_hid_dim_type", self.encoder_hid_dim_type.is_some()),
                ("class_embed_type", self.class_embed_type.is_some()),
                ("num_class_embeds", self.num_class_embeds.is_some()),
            ],
        }
        .resolve(time_embed_dim, 1.0, false)
    }
}
