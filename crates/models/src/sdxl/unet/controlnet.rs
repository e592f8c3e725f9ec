//! diffusers' `ControlNetModel` (`models/controlnets/controlnet.py`), InstantID's IdentityNet:
//! the UNet's encoder half (same names and code, see [`super::encoder`]) plus
//! `controlnet_cond_embedding` on the conditioning image, and 1×1 convolutions
//! (`controlnet_down_blocks.*`, `controlnet_mid_block`) on every skip tensor and on the mid
//! block's output, scaled by `conditioning_scale`. Its cross-attention context is whatever
//! the caller passes (InstantID: the 16 face tokens, not the text).

use std::path::Path;
use std::sync::Arc;

use tch::{Device, Kind, Tensor};

use super::blocks::Cond;
use super::config::ControlNetConfig;
use super::encoder::Encoder;
use super::layers::{Conv2d, Stream};
use crate::config::read_config;
use crate::hooks::BlockHooks;
use crate::weights::{Vb, WeightStore};
use crate::{ModelError, Result};

/// `ControlNetConditioningEmbedding`: `conv_in`, then pairs of 3×3 convolutions (the second
/// of each with stride 2), SiLU after each, and `conv_out` to the UNet's first width.
struct ConditioningEmbedding {
    conv_in: Conv2d,
    blocks: Vec<Conv2d>,
    conv_out: Conv2d,
}

impl ConditioningEmbedding {
    fn new(vb: &Vb<'_>, cin: i64, channels: &[i64], cout: i64) -> Result<Self> {
        let Some(&first) = channels.first() else {
            return Err(ModelError::UnsupportedConfig(
                "ControlNetModel: conditioning_embedding_out_channels is empty".into(),
            ));
        };
        let mut blocks = Vec::new();
        for (i, w) in channels.windows(2).enumerate() {
            let b = vb.pp("blocks");
            blocks.push(Conv2d::new(&b.pp(2 * i), w[0], w[0], 3, 1, 1)?);
            blocks.push(Conv2d::new(&b.pp(2 * i + 1), w[0], w[1], 3, 2, 1)?);
        }
        Ok(Self {
            conv_in: Conv2d::same(&vb.pp("conv_in"), cin, first, 3)?,
            blocks,
            conv_out: Conv2d::same(&vb.pp("conv_out"), channels[channels.len() - 1], cout, 3)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = self.conv_in.forward(x)?.f_silu()?;
        for b in &self.blocks {
            x = b.forward(&x)?.f_silu()?;
        }
        self.conv_out.forward(&x)
    }
}

/// The inputs of one ControlNet call.
pub struct ControlNetInput<'a> {
    pub sample: &'a Tensor,
    pub timestep: &'a Tensor,
    /// The ControlNet's own context `[B, L, cross_attention_dim]` (InstantID: face tokens).
    pub encoder_hidden_states: &'a Tensor,
    pub text_embeds: &'a Tensor,
    pub time_ids: &'a Tensor,
    /// The conditioning image `[B, conditioning_channels, 8h, 8w]`, values in [0, 1].
    pub controlnet_cond: &'a Tensor,
    pub conditioning_scale: f64,
    /// diffusers' guess mode: residual i scaled by `logspace(−1, 0, n+1)[i]·scale`.
    pub guess_mode: bool,
}

/// What the UNet adds: one residual per skip tensor, and the mid-block residual.
pub struct ControlNetOutput {
    pub down_block_res_samples: Vec<Tensor>,
    pub mid_block_res_sample: Tensor,
}

pub struct ControlNetModel {
    cfg: ControlNetConfig,
    encoder: Encoder,
    controlnet_cond_embedding: ConditioningEmbedding,
    controlnet_down_blocks: Vec<Conv2d>,
    controlnet_mid_block: Conv2d,
    hooks: Option<Arc<dyn BlockHooks>>,
}

impl ControlNetModel {
    pub fn new(vb: &Vb<'_>, cfg: ControlNetConfig) -> Result<Self> {
        let spec = cfg.resolve()?;
        match cfg.controlnet_conditioning_channel_order.as_str() {
            "rgb" | "bgr" => {}
            other => {
                return Err(ModelError::UnsupportedConfig(format!(
                    "ControlNetModel: controlnet_conditioning_channel_order {other:?}"
                )))
            }
        }
        let channels = cfg
            .conditioning_embedding_out_channels
            .clone()
            .unwrap_or_else(|| vec![16, 32, 96, 256]);
        let controlnet_down_blocks = spec
            .skip_channels()
            .iter()
            .enumerate()
            .map(|(i, &c)| Conv2d::same(&vb.pp("controlnet_down_blocks").pp(i), c, c, 1))
            .collect::<Result<_>>()?;
        let mid = spec
            .mid
            .as_ref()
            .map_or(spec.time_input_dim, |m| m.channels);
        Ok(Self {
            controlnet_cond_embedding: ConditioningEmbedding::new(
                &vb.pp("controlnet_cond_embedding"),
                cfg.conditioning_channels,
                &channels,
                spec.time_input_dim,
            )?,
            controlnet_down_blocks,
            controlnet_mid_block: Conv2d::same(&vb.pp("controlnet_mid_block"), mid, mid, 1)?,
            encoder: Encoder::new(vb, spec)?,
            hooks: None,
            cfg,
        })
    }

    /// Loads `dir/config.json` and the folder's safetensors strictly (see
    /// [`super::UNet2DConditionModel::from_dir`]).
    pub fn from_dir(dir: &Path, kind: Kind, device: Device) -> Result<Self> {
        let cfg: ControlNetConfig = read_config(&dir.join("config.json"))?;
        let store = WeightStore::from_component_dir(dir, kind, device)?;
        let model = tch::no_grad(|| Self::new(&store.root(), cfg))?;
        store.finish()?;
        Ok(model)
    }

    pub fn config(&self) -> &ControlNetConfig {
        &self.cfg
    }

    /// Calls `hooks` around each streaming unit ([`Self::block_names`]), in that order.
    pub fn set_block_hooks(&mut self, hooks: Option<Arc<dyn BlockHooks>>) {
        self.hooks = hooks;
    }

    pub fn num_blocks(&self) -> usize {
        self.block_names().len()
    }

    /// The streaming units (down blocks, then mid block), as in the UNet.
    pub fn block_names(&self) -> Vec<String> {
        self.encoder.units()
    }

    pub fn forward(&self, input: &ControlNetInput<'_>) -> Result<ControlNetOutput> {
        let enc = &self.encoder;
        let x = enc.sample(input.sample)?;
        let batch = x.size()[0];
        let cs = input.controlnet_cond.size();
        if cs.len() != 4 || cs[0] != batch || cs[1] != self.cfg.conditioning_channels {
            return Err(ModelError::InvalidInput(format!(
                "controlnet_cond has shape {cs:?}, expected [{batch}, {}, height, width]",
                self.cfg.conditioning_channels
            )));
        }
        let mut image = input
            .controlnet_cond
            .f_to_device(enc.device())?
            .f_to_kind(enc.kind)?;
        if self.cfg.controlnet_conditioning_channel_order == "bgr" {
            image = image.f_flip([1])?;
        }
        let temb = enc.embed(batch, input.timestep, input.text_embeds, input.time_ids)?;
        let context = enc.context(input.encoder_hidden_states, batch)?;
        let stream = Stream::new(self.hooks.as_deref());
        let cond = Cond {
            temb: &temb,
            context: &context,
            ip: None,
            stream: &stream,
        };

        let x = enc.conv_in(&x)?;
        let hint = self.controlnet_cond_embedding.forward(&image)?;
        if hint.size() != x.size() {
            return Err(ModelError::InvalidInput(format!(
                "controlnet_cond {cs:?} embeds to {:?}, but the latents give {:?} (the image \
                 must be 8× the latents' size)",
                hint.size(),
                x.size()
            )));
        }
        let (x, skips) = enc.down(x + hint, &cond)?;
        let x = enc.mid(x, &cond)?;

        let n = skips.len();
        // Guess mode: logspace(−1, 0, n+1)·scale as a float32 tensor, as diffusers.
        let guess = if input.guess_mode && !self.cfg.global_pool_conditions {
            Some(
                Tensor::f_logspace(-1.0, 0.0, n as i64 + 1, 10.0, (Kind::Float, enc.device()))?
                    * input.conditioning_scale,
            )
        } else {
            None
        };
        let finish = |t: Tensor, i: usize| -> Result<Tensor> {
            let t = match &guess {
                Some(g) => t * g.f_get(i as i64)?,
                None => t * input.conditioning_scale,
            };
            Ok(if self.cfg.global_pool_conditions {
                t.f_mean_dim(&[2i64, 3][..], true, None::<Kind>)?
            } else {
                t
            })
        };
        let mut down = Vec::with_capacity(n);
        for (i, (s, conv)) in skips.iter().zip(&self.controlnet_down_blocks).enumerate() {
            down.push(finish(conv.forward(s)?, i)?);
        }
        let mid = finish(self.controlnet_mid_block.forward(&x)?, n)?;
        Ok(ControlNetOutput {
            down_block_res_samples: down,
            mid_block_res_sample: mid,
        })
    }
}
