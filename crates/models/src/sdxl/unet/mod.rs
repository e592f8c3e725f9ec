//! SDXL's `UNet2DConditionModel`, the IdentityNet (`ControlNetModel`) and InstantID's
//! decoupled IP-Adapter cross-attention, equal to diffusers 0.42.1 (and InstantX's
//! `IPAttnProcessor2_0`), with PyTorch parameter names so `unet/` and `ControlNetModel/`
//! folders load as they are. Shapes come from `config.json` only.
//!
//! - [`config`] — serde mirrors of the two configs; `layout` — their per-block resolution;
//! - `encoder` — `conv_in`, time / text_time embeddings, down blocks, mid block (shared);
//! - `blocks`, `resnet`, `transformer`, `layers` — diffusers' building blocks;
//! - `ip_attention` — the IP-Adapter layers, their order and the decoupled attention;
//! - `controlnet` — [`ControlNetModel`].
//!
//! **Streaming units** (for [`crate::hooks::BlockHooks`]): every `ResnetBlock2D`
//! (`…resnets.j`), `Transformer2DModel` (`…attentions.j`), `downsamplers.0` and `upsamplers.0`,
//! in call order ([`UNet2DConditionModel::block_names`]); SDXL's UNet has 32, the largest
//! being a 10-block `Transformer2DModel` at 1280 channels (≈ 350 M parameters). `conv_in`,
//! the embeddings and the output layers are small and stay resident.

mod blocks;
pub mod config;
mod controlnet;
mod encoder;
mod ip_attention;
mod layers;
mod layout;
mod resnet;
mod transformer;

use std::path::Path;
use std::sync::Arc;

use tch::{Device, Kind, Tensor};

use crate::config::read_config;
use crate::hooks::BlockHooks;
use crate::weights::{Vb, WeightStore};
use crate::{ModelError, Result};
use blocks::{Cond, UpBlock};
use encoder::Encoder;
use ip_attention::IpInput;
use layers::{Conv2d, GroupNorm, Stream};

pub use config::{ControlNetConfig, PerBlock, TransformerLayers, UNet2DConditionConfig};
pub use controlnet::{ControlNetInput, ControlNetModel, ControlNetOutput};
pub use ip_attention::{IpSlot, DEFAULT_IP_SCALE};

/// The inputs of one UNet call.
pub struct UNetInput<'a> {
    /// Latents `[B, in_channels, h, w]` (cast to the model's dtype).
    pub sample: &'a Tensor,
    /// A scalar, `[1]` or `[B]`, on the 0–1000 scale.
    pub timestep: &'a Tensor,
    /// `[B, L, cross_attention_dim]`; with IP weights set, the last `num_tokens` are the
    /// image tokens (InstantID: 77 text tokens, then 16 face tokens).
    pub encoder_hidden_states: &'a Tensor,
    /// Pooled text embedding `[B, pooled]`.
    pub text_embeds: &'a Tensor,
    /// `[B, 6]`: original size, crop top-left, target size.
    pub time_ids: &'a Tensor,
    /// ControlNet residuals, one per skip tensor (9 for SDXL), each added to its skip.
    pub down_block_additional_residuals: Option<&'a [Tensor]>,
    /// ControlNet's mid-block residual, added to the mid block's output.
    pub mid_block_additional_residual: Option<&'a Tensor>,
}

pub struct UNet2DConditionModel {
    cfg: UNet2DConditionConfig,
    pub(crate) encoder: Encoder,
    pub(crate) up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    pub(crate) kind: Kind,
    pub(crate) device: Device,
    pub(crate) ip_scale: f64,
    pub(crate) ip_tokens: Option<i64>,
    hooks: Option<Arc<dyn BlockHooks>>,
}

/// `a + r` for a residual `r` shaped like `a` or `[B, C, 1, 1]` (global-pooled ControlNets).
pub(crate) fn add_residual(a: &Tensor, r: &Tensor, what: &str) -> Result<Tensor> {
    let (sa, sr) = (a.size(), r.size());
    let fits = sr.len() == 4 && sr[..2] == sa[..2] && (sr[2..] == sa[2..] || sr[2..] == [1, 1]);
    if !fits {
        return Err(ModelError::InvalidInput(format!(
            "{what} has shape {sr:?}, the UNet's tensor there is {sa:?}"
        )));
    }
    Ok(a + r.f_to_device(a.device())?.f_to_kind(a.kind())?)
}

impl UNet2DConditionModel {
    pub fn new(vb: &Vb<'_>, cfg: UNet2DConditionConfig) -> Result<Self> {
        let (spec, up) = cfg.resolve()?;
        let norms = spec.norms;
        let first = spec.time_input_dim;
        let up_blocks = up
            .iter()
            .enumerate()
            .map(|(i, b)| UpBlock::new(&vb.pp("up_blocks").pp(i), b, &norms))
            .collect::<Result<_>>()?;
        Ok(Self {
            encoder: Encoder::new(vb, spec)?,
            up_blocks,
            conv_norm_out: GroupNorm::new(&vb.pp("conv_norm_out"), norms.groups, first, norms.eps)?,
            conv_out: Conv2d::same(
                &vb.pp("conv_out"),
                first,
                cfg.out_channels,
                cfg.conv_out_kernel,
            )?,
            kind: vb.kind(),
            device: vb.device(),
            ip_scale: DEFAULT_IP_SCALE,
            ip_tokens: None,
            hooks: None,
            cfg,
        })
    }

    /// Loads `dir/config.json` and the folder's safetensors (strict: a missing, unexpected or
    /// wrongly shaped tensor is an error naming it), converted to `kind` on `device`. For
    /// the parameter handles an offloader needs, build with [`Self::new`] from a
    /// [`WeightStore`] and take them from the store.
    pub fn from_dir(dir: &Path, kind: Kind, device: Device) -> Result<Self> {
        let cfg: UNet2DConditionConfig = read_config(&dir.join("config.json"))?;
        let store = WeightStore::from_component_dir(dir, kind, device)?;
        let model = tch::no_grad(|| Self::new(&store.root(), cfg))?;
        store.finish()?;
        Ok(model)
    }

    pub fn config(&self) -> &UNet2DConditionConfig {
        &self.cfg
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// How many down residuals a ControlNet must give (the skip tensors; 9 for SDXL).
    pub fn num_down_residuals(&self) -> usize {
        self.encoder.spec.skip_channels().len()
    }

    /// Calls `hooks` around each streaming unit ([`Self::block_names`]), in that order.
    pub fn set_block_hooks(&mut self, hooks: Option<Arc<dyn BlockHooks>>) {
        self.hooks = hooks;
    }

    pub fn num_blocks(&self) -> usize {
        self.block_names().len()
    }

    /// The streaming units' parameter prefixes, in call order: down blocks, mid block, up
    /// blocks (each resnet, transformer and resampler).
    pub fn block_names(&self) -> Vec<String> {
        let mut out = self.encoder.units();
        for (i, b) in self.up_blocks.iter().enumerate() {
            out.extend(b.units(&format!("up_blocks.{i}")));
        }
        out
    }

    /// The noise prediction `[B, out_channels, h, w]` in the model's dtype.
    pub fn forward(&self, input: &UNetInput<'_>) -> Result<Tensor> {
        let enc = &self.encoder;
        let mut x = enc.sample(input.sample)?;
        let batch = x.size()[0];
        if self.cfg.center_input_sample {
            x = x * 2.0 - 1.0;
        }
        let temb = enc.embed(batch, input.timestep, input.text_embeds, input.time_ids)?;
        let context = enc.context(input.encoder_hidden_states, batch)?;
        let (context, image_tokens) = match self.ip_tokens {
            Some(n) => {
                let len = context.size()[1];
                if len <= n {
                    return Err(ModelError::InvalidInput(format!(
                        "encoder_hidden_states has {len} tokens; with IP-Adapter weights the \
                         last {n} are image tokens, so at least one text token must precede them"
                    )));
                }
                (
                    context.f_narrow(1, 0, len - n)?,
                    Some(context.f_narrow(1, len - n, n)?),
                )
            }
            None => (context, None),
        };
        let stream = Stream::new(self.hooks.as_deref());
        let cond = Cond {
            temb: &temb,
            context: &context,
            ip: image_tokens.as_ref().map(|tokens| IpInput {
                tokens,
                scale: self.ip_scale,
            }),
            stream: &stream,
        };

        let x = enc.conv_in(&x)?;
        let (x, mut skips) = enc.down(x, &cond)?;
        let mid_residual =
            match (
                input.down_block_additional_residuals,
                input.mid_block_additional_residual,
            ) {
                (Some(down), Some(mid)) => {
                    if down.len() != skips.len() {
                        return Err(ModelError::InvalidInput(format!(
                            "{} down-block residuals; this UNet has {} skip tensors",
                            down.len(),
                            skips.len()
                        )));
                    }
                    for (i, (s, r)) in skips.iter_mut().zip(down).enumerate() {
                        *s = add_residual(s, r, &format!("down-block residual {i}"))?;
                    }
                    Some(mid)
                }
                (None, None) => None,
                _ => return Err(ModelError::InvalidInput(
                    "ControlNet residuals need both the down-block list and the mid-block tensor"
                        .into(),
                )),
            };
        let mut x = enc.mid(x, &cond)?;
        if let Some(m) = mid_residual {
            x = add_residual(&x, m, "mid-block residual")?;
        }
        for block in &self.up_blocks {
            let Some(at) = skips.len().checked_sub(block.num_skips()) else {
                return Err(ModelError::UnsupportedConfig(
                    "the up blocks take more skip tensors than the down blocks leave".into(),
                ));
            };
            let mine = skips.split_off(at);
            let size = skips.last().map(|s| {
                let z = s.size();
                [z[2], z[3]]
            });
            x = block.forward(&x, &mine, size, &cond)?;
        }
        let x = self.conv_norm_out.forward(&x)?.f_silu()?;
        self.conv_out.forward(&x)
    }
}
