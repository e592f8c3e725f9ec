//! T5 v1.1 encoder (transformers `T5EncoderModel`), as LTX-Video uses it: token embedding,
//! pre-norm blocks of relative-position self-attention and a gated-GELU feed-forward, final
//! RMS norm. T5 attention has no 1/√d scaling; the position bias comes from block 0 and is
//! shared by every block.

use serde::Deserialize;
use tch::{Kind, Tensor};

use crate::nn::{gelu_tanh, Linear};
use crate::weights::Vb;
use crate::{ModelError, Result};

/// `text_encoder/config.json`. Defaults are google/t5-v1_1-xxl's.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct T5Config {
    pub vocab_size: i64,
    pub d_model: i64,
    pub d_kv: i64,
    pub d_ff: i64,
    pub num_layers: i64,
    pub num_heads: i64,
    pub relative_attention_num_buckets: i64,
    pub relative_attention_max_distance: i64,
    pub layer_norm_epsilon: f64,
    pub feed_forward_proj: String,
}

impl Default for T5Config {
    fn default() -> Self {
        Self {
            vocab_size: 32128,
            d_model: 4096,
            d_kv: 64,
            d_ff: 10240,
            num_layers: 24,
            num_heads: 64,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "gated-gelu".into(),
        }
    }
}

/// `T5LayerNorm`: RMS norm with weight, variance in float32, no mean subtraction.
struct T5LayerNorm {
    weight: Tensor,
    eps: f64,
}

impl T5LayerNorm {
    fn new(vb: &Vb<'_>, dim: i64, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get("weight", &[dim])?,
            eps,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let var = x
            .f_to_kind(Kind::Float)?
            .f_pow_tensor_scalar(2)?
            .f_mean_dim(-1, true, None::<Kind>)?;
        let mut h = x * var.f_add_scalar(self.eps)?.f_rsqrt()?;
        if matches!(self.weight.kind(), Kind::Half | Kind::BFloat16) {
            h = h.f_to_kind(self.weight.kind())?;
        }
        Ok(&self.weight * h)
    }
}

struct Block {
    attn_norm: T5LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ff_norm: T5LayerNorm,
    wi_0: Linear,
    wi_1: Linear,
    wo: Linear,
}

impl Block {
    fn new(vb: &Vb<'_>, c: &T5Config) -> Result<Self> {
        let inner = c.num_heads * c.d_kv;
        let sa = vb.pp("layer.0.SelfAttention");
        let ff = vb.pp("layer.1.DenseReluDense");
        Ok(Self {
            attn_norm: T5LayerNorm::new(
                &vb.pp("layer.0.layer_norm"),
                c.d_model,
                c.layer_norm_epsilon,
            )?,
            q: Linear::new(&sa.pp("q"), c.d_model, inner, false)?,
            k: Linear::new(&sa.pp("k"), c.d_model, inner, false)?,
            v: Linear::new(&sa.pp("v"), c.d_model, inner, false)?,
            o: Linear::new(&sa.pp("o"), inner, c.d_model, false)?,
            ff_norm: T5LayerNorm::new(
                &vb.pp("layer.1.layer_norm"),
                c.d_model,
                c.layer_norm_epsilon,
            )?,
            wi_0: Linear::new(&ff.pp("wi_0"), c.d_model, c.d_ff, false)?,
            wi_1: Linear::new(&ff.pp("wi_1"), c.d_model, c.d_ff, false)?,
            wo: Linear::new(&ff.pp("wo"), c.d_ff, c.d_model, false)?,
        })
    }

    fn forward(&self, x: &Tensor, bias: &Tensor, heads: i64) -> Result<Tensor> {
        let n = self.attn_norm.forward(x)?;
        let split =
            |t: Tensor| -> Result<Tensor> { Ok(t.f_unflatten(2, [heads, -1])?.f_transpose(1, 2)?) };
        let q = split(self.q.forward(&n)?)?;
        let k = split(self.k.forward(&n)?)?;
        let v = split(self.v.forward(&n)?)?;
        let scores = q.f_matmul(&k.f_transpose(-1, -2)?)? + bias;
        let weights = scores
            .f_softmax(-1, Kind::Float)?
            .f_to_kind(scores.kind())?;
        let attn = weights.f_matmul(&v)?.f_transpose(1, 2)?.f_flatten(2, 3)?;
        let x = x + self.o.forward(&attn)?;
        let n = self.ff_norm.forward(&x)?;
        let h = gelu_tanh(&self.wi_0.forward(&n)?)? * self.wi_1.forward(&n)?;
        Ok(&x + self.wo.forward(&h)?)
    }
}

pub struct T5Encoder {
    cfg: T5Config,
    embed: Tensor,
    relative_attention_bias: Tensor,
    blocks: Vec<Block>,
    final_norm: T5LayerNorm,
    hooks: Option<std::sync::Arc<dyn crate::hooks::BlockHooks>>,
}

impl T5Encoder {
    pub fn new(vb: &Vb<'_>, cfg: T5Config) -> Result<Self> {
        if cfg.feed_forward_proj != "gated-gelu" {
            return Err(ModelError::UnsupportedConfig(format!(
                "T5 feed_forward_proj {:?} (LTX-Video uses T5 v1.1, gated-gelu)",
                cfg.feed_forward_proj
            )));
        }
        let shape = [cfg.vocab_size, cfg.d_model];
        // The input embedding is saved as `shared.weight`, `encoder.embed_tokens.weight`, or
        // both (tied); either name serves.
        let embed = match (
            vb.contains("shared.weight"),
            vb.contains("encoder.embed_tokens.weight"),
        ) {
            (true, true) => {
                // Checked for shape and marked used; it is the same (tied) tensor as `shared`.
                let _tied = vb.get("encoder.embed_tokens.weight", &shape)?;
                vb.get("shared.weight", &shape)?
            }
            (false, true) => vb.get("encoder.embed_tokens.weight", &shape)?,
            _ => vb.get("shared.weight", &shape)?,
        };
        let enc = vb.pp("encoder");
        let relative_attention_bias = enc
            .pp("block.0.layer.0.SelfAttention.relative_attention_bias")
            .get(
                "weight",
                &[cfg.relative_attention_num_buckets, cfg.num_heads],
            )?;
        let blocks = (0..cfg.num_layers)
            .map(|i| Block::new(&enc.pp("block").pp(i), &cfg))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            final_norm: T5LayerNorm::new(
                &enc.pp("final_layer_norm"),
                cfg.d_model,
                cfg.layer_norm_epsilon,
            )?,
            embed,
            relative_attention_bias,
            blocks,
            cfg,
            hooks: None,
        })
    }

    /// Calls `hooks` around each of `encoder.block.{i}` (layer streaming).
    pub fn set_block_hooks(&mut self, hooks: Option<std::sync::Arc<dyn crate::hooks::BlockHooks>>) {
        self.hooks = hooks;
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    pub fn config(&self) -> &T5Config {
        &self.cfg
    }

    /// transformers' `_relative_position_bucket` (bidirectional).
    fn buckets(&self, len: i64, device: tch::Device) -> Result<Tensor> {
        let nb = self.cfg.relative_attention_num_buckets / 2;
        let max_exact = nb / 2;
        let pos = Tensor::f_arange(len, (Kind::Int64, device))?;
        // memory position − context position: [q, k]
        let rel = pos.f_unsqueeze(0)? - pos.f_unsqueeze(1)?;
        let base = rel.f_gt(0)?.f_to_kind(Kind::Int64)? * nb;
        let rel = rel.f_abs()?;
        let is_small = rel.f_lt(max_exact)?;
        let large = ((rel.f_to_kind(Kind::Float)? / max_exact as f64).f_log()?
            / (self.cfg.relative_attention_max_distance as f64 / max_exact as f64).ln()
            * (nb - max_exact) as f64)
            .f_to_kind(Kind::Int64)?
            + max_exact;
        let large = large.f_clamp_max(nb - 1)?;
        Ok(base + rel.f_where_self(&is_small, &large)?)
    }

    /// `last_hidden_state` `[B, L, d_model]` for token ids `[B, L]`. Like the LTX I2V pipeline,
    /// no attention mask: padding tokens take part in self-attention.
    pub fn forward(&self, input_ids: &Tensor) -> Result<Tensor> {
        self.forward_masked(input_ids, None)
    }

    /// Like [`T5Encoder::forward`] with an attention mask `[B, L]` (1 real, 0 padding), as
    /// `LTXConditionPipeline` passes it: padding keys get the dtype's lowest value added to
    /// their scores, as transformers' bidirectional mask does.
    pub fn forward_masked(&self, input_ids: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let len = input_ids.size()[1];
        let x = Tensor::f_embedding(&self.embed, input_ids, -1, false, false)?;
        let bias = self
            .relative_attention_bias
            .f_index_select(0, &self.buckets(len, x.device())?.f_flatten(0, -1)?)?
            .f_reshape([len, len, -1])?
            .f_permute([2, 0, 1])?
            .f_unsqueeze(0)?;
        // A new tensor, not `+=`: the [1, H, L, L] bias grows to [B, H, L, L].
        let bias = match mask {
            None => bias,
            Some(m) => {
                if m.size() != input_ids.size() {
                    return Err(ModelError::InvalidInput(format!(
                        "T5 attention mask {:?} must match the ids {:?}",
                        m.size(),
                        input_ids.size()
                    )));
                }
                let lowest = match bias.kind() {
                    Kind::Half => -65504.0,
                    Kind::BFloat16 => -3.3895313892515355e38,
                    Kind::Double => f64::MIN,
                    _ => f32::MIN as f64,
                };
                let drop = (m.f_to_kind(bias.kind())? * -1.0 + 1.0) * lowest;
                bias + drop.f_unsqueeze(1)?.f_unsqueeze(1)?
            }
        };
        let x = crate::hooks::run_blocks(&self.blocks, self.hooks.as_deref(), x, |block, x| {
            block.forward(&x, &bias, self.cfg.num_heads)
        })?;
        self.final_norm.forward(&x)
    }
}
