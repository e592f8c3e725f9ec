//! The half the UNet and the ControlNet share, with the same parameter names: `conv_in`,
//! `time_embedding`, `add_embedding` (SDXL's text_time conditioning), `down_blocks.*` and
//! `mid_block`.

use tch::{Device, Kind, Tensor};

use super::blocks::{Cond, DownBlock, MidBlock};
use super::layers::{sinusoid, Conv2d, TimestepEmbedding};
use super::layout::EncoderSpec;
use super::resnet::TimeInput;
use crate::weights::Vb;
use crate::{ModelError, Result};

pub(crate) struct Encoder {
    pub spec: EncoderSpec,
    conv_in: Conv2d,
    time_embedding: TimestepEmbedding,
    add_embedding: TimestepEmbedding,
    pub down_blocks: Vec<DownBlock>,
    pub mid_block: Option<MidBlock>,
    pub kind: Kind,
}

fn invalid(what: String) -> ModelError {
    ModelError::InvalidInput(what)
}

impl Encoder {
    pub fn new(vb: &Vb<'_>, spec: EncoderSpec) -> Result<Self> {
        let first = spec.time_input_dim;
        let down_blocks = spec
            .down
            .iter()
            .enumerate()
            .map(|(i, b)| {
                DownBlock::new(
                    &vb.pp("down_blocks").pp(i),
                    b,
                    &spec.norms,
                    spec.downsample_padding,
                )
            })
            .collect::<Result<_>>()?;
        let mid_block = match &spec.mid {
            Some(m) => Some(MidBlock::new(&vb.pp("mid_block"), m, &spec.norms)?),
            None => None,
        };
        Ok(Self {
            conv_in: Conv2d::same(
                &vb.pp("conv_in"),
                spec.in_channels,
                first,
                spec.conv_in_kernel,
            )?,
            time_embedding: TimestepEmbedding::new(
                &vb.pp("time_embedding"),
                first,
                spec.time_embed_dim,
            )?,
            add_embedding: TimestepEmbedding::new(
                &vb.pp("add_embedding"),
                spec.add_input_dim,
                spec.time_embed_dim,
            )?,
            down_blocks,
            mid_block,
            kind: vb.kind(),
            spec,
        })
    }

    /// Where the weights are now (a memory system may have moved them since loading).
    pub fn device(&self) -> Device {
        self.conv_in.device()
    }

    /// `sample` `[B, in_channels, h, w]` on the model's device, in its dtype.
    pub fn sample(&self, sample: &Tensor) -> Result<Tensor> {
        let s = sample.size();
        if s.len() != 4 || s[1] != self.spec.in_channels {
            return Err(invalid(format!(
                "sample has shape {s:?}, expected [batch, {}, height, width]",
                self.spec.in_channels
            )));
        }
        Ok(sample.f_to_device(self.device())?.f_to_kind(self.kind)?)
    }

    pub fn conv_in(&self, x: &Tensor) -> Result<Tensor> {
        self.conv_in.forward(x)
    }

    /// Checks a cross-attention context `[B, L, cross_attention_dim]`, moves and casts it.
    pub fn context(&self, context: &Tensor, batch: i64) -> Result<Tensor> {
        let s = context.size();
        if s.len() != 3 || s[0] != batch || s[2] != self.spec.cross_dim || s[1] == 0 {
            return Err(invalid(format!(
                "encoder_hidden_states has shape {s:?}, expected [{batch}, tokens, {}]",
                self.spec.cross_dim
            )));
        }
        Ok(context.f_to_device(self.device())?.f_to_kind(self.kind)?)
    }

    /// The time embedding plus SDXL's text_time embedding of `text_embeds` `[B, pooled]` and
    /// `time_ids` `[B, n]` (`n·addition_time_embed_dim + pooled` =
    /// `projection_class_embeddings_input_dim`); `timestep` is a scalar, `[1]` or `[B]`.
    pub fn embed(
        &self,
        batch: i64,
        timestep: &Tensor,
        text_embeds: &Tensor,
        time_ids: &Tensor,
    ) -> Result<TimeInput> {
        let ts = timestep.size();
        let t = match ts.as_slice() {
            [] | [1] => timestep.f_reshape([1])?.f_expand([batch], false)?,
            [b] if *b == batch => timestep.shallow_clone(),
            _ => {
                return Err(invalid(format!(
                    "timestep has shape {ts:?}; expected a scalar, [1] or [{batch}]"
                )))
            }
        };
        let spec = &self.spec;
        let t = t.f_to_device(self.device())?;
        let t_emb = sinusoid(
            &t,
            spec.time_input_dim,
            spec.flip_sin_to_cos,
            spec.freq_shift,
        )?;
        let emb = self.time_embedding.forward(&t_emb.f_to_kind(self.kind)?)?;

        let (te, ti) = (text_embeds.size(), time_ids.size());
        let fits = te.len() == 2
            && ti.len() == 2
            && te[0] == batch
            && ti[0] == batch
            && te[1] + ti[1] * spec.add_time_dim == spec.add_input_dim;
        if !fits {
            return Err(invalid(format!(
                "text_embeds {te:?} and time_ids {ti:?}: expected [{batch}, pooled] and \
                 [{batch}, n] with pooled + n·{} = {}",
                spec.add_time_dim, spec.add_input_dim
            )));
        }
        let ids = time_ids.f_to_device(self.device())?.f_flatten(0, -1)?;
        let time_embeds = sinusoid(
            &ids,
            spec.add_time_dim,
            spec.flip_sin_to_cos,
            spec.freq_shift,
        )?
        .f_reshape([batch, -1])?;
        let text_embeds = text_embeds
            .f_to_device(self.device())?
            .f_to_kind(Kind::Float)?;
        let add = Tensor::f_cat(&[text_embeds, time_embeds], -1)?;
        let aug = self.add_embedding.forward(&add.f_to_kind(self.kind)?)?;
        let emb = emb + aug;
        Ok(TimeInput {
            act: emb.f_silu()?,
            emb,
        })
    }

    /// The down blocks: their output and every skip tensor (`x` itself first).
    pub fn down(&self, x: Tensor, cond: &Cond<'_>) -> Result<(Tensor, Vec<Tensor>)> {
        let mut skips = vec![x.shallow_clone()];
        let mut x = x;
        for block in &self.down_blocks {
            let (out, res) = block.forward(&x, cond)?;
            skips.extend(res);
            x = out;
        }
        Ok((x, skips))
    }

    pub fn mid(&self, x: Tensor, cond: &Cond<'_>) -> Result<Tensor> {
        match &self.mid_block {
            Some(m) => m.forward(&x, cond),
            None => Ok(x),
        }
    }

    /// Streaming units of the down blocks and the mid block, in call order.
    pub fn units(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .down_blocks
            .iter()
            .enumerate()
            .flat_map(|(i, b)| b.units(&format!("down_blocks.{i}")))
            .collect();
        if let Some(m) = &self.mid_block {
            out.extend(m.units("mid_block"));
        }
        out
    }
}
