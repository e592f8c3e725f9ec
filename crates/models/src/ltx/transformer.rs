//! `LTXVideoTransformer3DModel` (diffusers `models/transformers/transformer_ltx.py`): a DiT
//! over latent voxels with 3D RoPE, per-token AdaLN timestep modulation and masked
//! cross-attention to the T5 text embedding.

use serde::Deserialize;
use tch::{Kind, Tensor};

use crate::attention::attention;
use crate::nn::{gelu_tanh, rms_norm, timestep_embedding, Linear, RmsNorm};
use crate::weights::Vb;
use crate::{ModelError, Result};

/// `transformer/config.json`. Defaults are the 2B model's.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct LtxTransformerConfig {
    pub in_channels: i64,
    pub out_channels: i64,
    pub patch_size: i64,
    pub patch_size_t: i64,
    pub num_attention_heads: i64,
    pub attention_head_dim: i64,
    pub cross_attention_dim: i64,
    pub num_layers: i64,
    pub activation_fn: String,
    pub qk_norm: String,
    pub norm_elementwise_affine: bool,
    pub norm_eps: f64,
    pub caption_channels: i64,
    pub attention_bias: bool,
    pub attention_out_bias: bool,
}

impl Default for LtxTransformerConfig {
    fn default() -> Self {
        Self {
            in_channels: 128,
            out_channels: 128,
            patch_size: 1,
            patch_size_t: 1,
            num_attention_heads: 32,
            attention_head_dim: 64,
            cross_attention_dim: 2048,
            num_layers: 28,
            activation_fn: "gelu-approximate".into(),
            qk_norm: "rms_norm_across_heads".into(),
            norm_elementwise_affine: false,
            norm_eps: 1e-6,
            caption_channels: 4096,
            attention_bias: true,
            attention_out_bias: true,
        }
    }
}

impl LtxTransformerConfig {
    /// The 13B model (0.9.7/0.9.8): head_dim 128, 48 layers.
    pub fn ltx_13b() -> Self {
        Self {
            attention_head_dim: 128,
            cross_attention_dim: 4096,
            num_layers: 48,
            ..Self::default()
        }
    }

    pub fn inner_dim(&self) -> i64 {
        self.num_attention_heads * self.attention_head_dim
    }

    fn validate(&self) -> Result<()> {
        let bad = |what: String| {
            Err(ModelError::UnsupportedConfig(format!(
                "LTX transformer: {what}"
            )))
        };
        if self.patch_size != 1 || self.patch_size_t != 1 {
            return bad(format!(
                "patch_size {} / patch_size_t {} (every released LTX-Video uses 1 and 1)",
                self.patch_size, self.patch_size_t
            ));
        }
        if self.activation_fn != "gelu-approximate" {
            return bad(format!("activation_fn {:?}", self.activation_fn));
        }
        if self.qk_norm != "rms_norm_across_heads" {
            return bad(format!("qk_norm {:?}", self.qk_norm));
        }
        if self.norm_elementwise_affine {
            return bad("norm_elementwise_affine = true".into());
        }
        if self.cross_attention_dim != self.inner_dim() {
            return bad(format!(
                "cross_attention_dim {} differs from heads·head_dim {}",
                self.cross_attention_dim,
                self.inner_dim()
            ));
        }
        Ok(())
    }
}

/// `LTXAttention`: q/k/v projections, RMSNorm over all heads, RoPE (self-attention only).
struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    norm_q: RmsNorm,
    norm_k: RmsNorm,
    heads: i64,
}

impl Attention {
    fn new(vb: &Vb<'_>, cfg: &LtxTransformerConfig, kv_dim: i64) -> Result<Self> {
        let d = cfg.inner_dim();
        Ok(Self {
            to_q: Linear::new(&vb.pp("to_q"), d, d, cfg.attention_bias)?,
            to_k: Linear::new(&vb.pp("to_k"), kv_dim, d, cfg.attention_bias)?,
            to_v: Linear::new(&vb.pp("to_v"), kv_dim, d, cfg.attention_bias)?,
            to_out: Linear::new(&vb.pp("to_out").pp(0), d, d, cfg.attention_out_bias)?,
            norm_q: RmsNorm::new(&vb.pp("norm_q"), d, 1e-5)?,
            norm_k: RmsNorm::new(&vb.pp("norm_k"), d, 1e-5)?,
            heads: cfg.num_attention_heads,
        })
    }

    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_unflatten(2, [self.heads, -1])?.f_transpose(1, 2)?)
    }

    fn forward(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        mask: Option<&Tensor>,
        rope: Option<&Rope>,
    ) -> Result<Tensor> {
        let ctx = context.unwrap_or(x);
        let mut q = self.norm_q.forward(&self.to_q.forward(x)?)?;
        let mut k = self.norm_k.forward(&self.to_k.forward(ctx)?)?;
        let v = self.to_v.forward(ctx)?;
        if let Some(r) = rope {
            q = r.apply(&q)?;
            k = r.apply(&k)?;
        }
        let (q, k, v) = (
            self.split_heads(&q)?,
            self.split_heads(&k)?,
            self.split_heads(&v)?,
        );
        let out = attention(&q, &k, &v, mask, None)?
            .f_transpose(1, 2)?
            .f_flatten(2, 3)?
            .f_to_kind(q.kind())?;
        self.to_out.forward(&out)
    }
}

/// Rotary position embedding of the latent grid (`LTXVideoRotaryPosEmbed`), as cos/sin
/// `[B, S, D]` in float32.
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    /// `grid` is `[B, S, 3]` (frame, row, column coordinates already scaled); `dim` is D.
    fn from_grid(grid: &Tensor, dim: i64) -> Result<Self> {
        let n = dim / 6;
        let steps = Tensor::f_linspace(0.0, 1.0, n, (Kind::Float, grid.device()))?;
        // (·π)/2 in this order, as diffusers computes it, so float32 rounding matches.
        let freqs = (Tensor::f_pow_scalar(10000.0, &steps)? * std::f64::consts::PI) / 2.0;
        // [B,S,3,1] * [n] -> [B,S,3,n] -> [B,S,n,3] -> [B,S,3n]: index 3k + axis.
        let angles = (freqs * (grid.f_unsqueeze(-1)? * 2.0 - 1.0))
            .f_transpose(-1, -2)?
            .f_flatten(2, 3)?;
        let mut cos = angles.f_cos()?.f_repeat_interleave_self_int(2, -1, None)?;
        let mut sin = angles.f_sin()?.f_repeat_interleave_self_int(2, -1, None)?;
        let pad = dim % 6;
        if pad != 0 {
            let ones = cos.f_narrow(-1, 0, pad)?.f_ones_like()?;
            let zeros = sin.f_narrow(-1, 0, pad)?.f_zeros_like()?;
            cos = Tensor::f_cat(&[ones, cos], -1)?;
            sin = Tensor::f_cat(&[zeros, sin], -1)?;
        }
        Ok(Self { cos, sin })
    }

    /// From explicit coordinates `[B, 3, S]`: `(t/20, y/2048, x/2048)` per token, as diffusers.
    pub fn for_coords(coords: &Tensor, dim: i64) -> Result<Self> {
        let c = coords.f_to_kind(Kind::Float)?;
        let axes: Vec<Tensor> = [20.0, 2048.0, 2048.0]
            .iter()
            .enumerate()
            .map(|(i, base)| Ok(c.f_select(1, i as i64)? / *base))
            .collect::<Result<_>>()?;
        Self::from_grid(&Tensor::f_stack(&axes, -1)?, dim)
    }

    /// The grid of an `f × h × w` latent video with `rope_interpolation_scale` `(s_t, s_h, s_w)`.
    pub fn for_latents(
        batch: i64,
        frames: i64,
        height: i64,
        width: i64,
        scale: [f64; 3],
        dim: i64,
        device: tch::Device,
    ) -> Result<Self> {
        let opts = (Kind::Float, device);
        let axes = [
            Tensor::f_arange(frames, opts)?,
            Tensor::f_arange(height, opts)?,
            Tensor::f_arange(width, opts)?,
        ];
        let mesh = Tensor::f_meshgrid_indexing(&axes, "ij")?;
        let bases = [20.0, 2048.0, 2048.0];
        let scaled: Vec<Tensor> = mesh
            .iter()
            .zip(scale.iter().zip(bases))
            .map(|(g, (s, base))| (g * *s) / base)
            .collect();
        let grid = Tensor::f_stack(&scaled, -1)?
            .f_reshape([1, frames * height * width, 3])?
            .f_expand([batch, -1, -1], false)?;
        Self::from_grid(&grid, dim)
    }

    /// `out[2i] = x[2i]·cos − x[2i+1]·sin`, `out[2i+1] = x[2i+1]·cos + x[2i]·sin`, in float32.
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let pairs = x.f_unflatten(2, [-1, 2])?;
        let re = pairs.f_select(-1, 0)?;
        let im = pairs.f_select(-1, 1)?;
        let rotated = Tensor::f_stack(&[im.f_neg()?, re], -1)?.f_flatten(2, 3)?;
        let out =
            x.f_to_kind(Kind::Float)? * &self.cos + rotated.f_to_kind(Kind::Float)? * &self.sin;
        Ok(out.f_to_kind(x.kind())?)
    }
}

struct Block {
    scale_shift_table: Tensor,
    attn1: Attention,
    attn2: Attention,
    ff_in: Linear,
    ff_out: Linear,
    eps: f64,
}

impl Block {
    fn new(vb: &Vb<'_>, cfg: &LtxTransformerConfig) -> Result<Self> {
        let d = cfg.inner_dim();
        Ok(Self {
            scale_shift_table: vb.get("scale_shift_table", &[6, d])?,
            attn1: Attention::new(&vb.pp("attn1"), cfg, d)?,
            attn2: Attention::new(&vb.pp("attn2"), cfg, cfg.cross_attention_dim)?,
            ff_in: Linear::new(&vb.pp("ff.net.0.proj"), d, 4 * d, true)?,
            ff_out: Linear::new(&vb.pp("ff.net.2"), 4 * d, d, true)?,
            eps: cfg.norm_eps,
        })
    }

    /// `temb` is `[B, T, 6D]` with T = 1 or S.
    fn forward(
        &self,
        x: &Tensor,
        text: &Tensor,
        temb: &Tensor,
        rope: &Rope,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, t) = (temb.size()[0], temb.size()[1]);
        let ada = self.scale_shift_table.f_unsqueeze(0)?.f_unsqueeze(0)?
            + temb.f_reshape([b, t, 6, -1])?;
        let m = ada.f_unbind(2)?;
        let (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp) =
            (&m[0], &m[1], &m[2], &m[3], &m[4], &m[5]);
        let n = rms_norm(x, self.eps)? * (scale_msa + 1.0) + shift_msa;
        let x = x + self.attn1.forward(&n, None, None, Some(rope))? * gate_msa;
        let x = &x + self.attn2.forward(&x, Some(text), mask, None)?;
        let n = rms_norm(&x, self.eps)? * (scale_mlp + 1.0) + shift_mlp;
        let ff = self.ff_out.forward(&gelu_tanh(&self.ff_in.forward(&n)?)?)?;
        Ok(x + ff * gate_mlp)
    }
}

/// The inputs of one transformer call.
pub struct TransformerInput<'a> {
    /// Packed latents `[B, S, in_channels]`, token order (frame, row, column).
    pub hidden_states: &'a Tensor,
    /// Text embedding `[B, L, caption_channels]`.
    pub encoder_hidden_states: &'a Tensor,
    /// `[B]` (one t per sample) or `[B, S]` (per token), on the 0–1000 scale.
    pub timestep: &'a Tensor,
    /// `[B, L]`, 1 for real tokens, 0 for padding.
    pub encoder_attention_mask: Option<&'a Tensor>,
    pub num_frames: i64,
    pub height: i64,
    pub width: i64,
    /// `(s_t, s_h, s_w)`; the I2V pipeline passes `(8/frame_rate, 32, 32)`.
    pub rope_interpolation_scale: [f64; 3],
    /// Explicit RoPE coordinates `[B, 3, S]` (time in seconds, rows and columns in pixels), as
    /// `LTXConditionPipeline` passes them; when given, the grid and the interpolation scale
    /// are not used and the tokens need not form a `num_frames × height × width` grid.
    pub video_coords: Option<&'a Tensor>,
}

pub struct LtxTransformer {
    cfg: LtxTransformerConfig,
    proj_in: Linear,
    time_linear_1: Linear,
    time_linear_2: Linear,
    time_linear: Linear,
    caption_1: Linear,
    caption_2: Linear,
    blocks: Vec<Block>,
    scale_shift_table: Tensor,
    proj_out: Linear,
    hooks: Option<std::sync::Arc<dyn crate::hooks::BlockHooks>>,
}

impl LtxTransformer {
    /// Calls `hooks` around each of `transformer_blocks.{i}` (layer streaming).
    pub fn set_block_hooks(&mut self, hooks: Option<std::sync::Arc<dyn crate::hooks::BlockHooks>>) {
        self.hooks = hooks;
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    pub fn new(vb: &Vb<'_>, cfg: LtxTransformerConfig) -> Result<Self> {
        cfg.validate()?;
        let d = cfg.inner_dim();
        let te = vb.pp("time_embed");
        let blocks = (0..cfg.num_layers)
            .map(|i| Block::new(&vb.pp("transformer_blocks").pp(i), &cfg))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            proj_in: Linear::new(&vb.pp("proj_in"), cfg.in_channels, d, true)?,
            time_linear_1: Linear::new(&te.pp("emb.timestep_embedder.linear_1"), 256, d, true)?,
            time_linear_2: Linear::new(&te.pp("emb.timestep_embedder.linear_2"), d, d, true)?,
            time_linear: Linear::new(&te.pp("linear"), d, 6 * d, true)?,
            caption_1: Linear::new(
                &vb.pp("caption_projection.linear_1"),
                cfg.caption_channels,
                d,
                true,
            )?,
            caption_2: Linear::new(&vb.pp("caption_projection.linear_2"), d, d, true)?,
            blocks,
            scale_shift_table: vb.get("scale_shift_table", &[2, d])?,
            proj_out: Linear::new(&vb.pp("proj_out"), d, cfg.out_channels, true)?,
            cfg,
            hooks: None,
        })
    }

    pub fn config(&self) -> &LtxTransformerConfig {
        &self.cfg
    }

    /// The flow-matching velocity `[B, S, out_channels]`.
    pub fn forward(&self, input: &TransformerInput<'_>) -> Result<Tensor> {
        let x = input.hidden_states;
        let (b, s) = (x.size()[0], x.size()[1]);
        if let Some(vc) = input.video_coords {
            if vc.size() != [b, 3, s] {
                return Err(ModelError::InvalidInput(format!(
                    "video_coords {:?} must be [{b}, 3, {s}]",
                    vc.size()
                )));
            }
        } else if s != input.num_frames * input.height * input.width {
            return Err(ModelError::InvalidInput(format!(
                "{s} latent tokens, but the grid {}×{}×{} has {}",
                input.num_frames,
                input.height,
                input.width,
                input.num_frames * input.height * input.width
            )));
        }
        let d = self.cfg.inner_dim();
        let dtype = x.kind();
        let rope = match input.video_coords {
            Some(vc) => Rope::for_coords(vc, d)?,
            None => Rope::for_latents(
                b,
                input.num_frames,
                input.height,
                input.width,
                input.rope_interpolation_scale,
                d,
                x.device(),
            )?,
        };
        let mask = match input.encoder_attention_mask {
            Some(m) => Some(
                ((m.f_to_kind(dtype)? * -1.0 + 1.0) * -10000.0)
                    .f_unsqueeze(1)?
                    .f_unsqueeze(1)?,
            ),
            None => None,
        };
        let x = self.proj_in.forward(x)?;

        // AdaLayerNormSingle on the flattened timesteps: [B·T, 256] sinusoid -> [B, T, ·].
        let t = input.timestep.f_flatten(0, -1)?;
        let proj = timestep_embedding(&t, 256)?.f_to_kind(dtype)?;
        let embedded = self
            .time_linear_2
            .forward(&self.time_linear_1.forward(&proj)?.f_silu()?)?;
        let temb = self
            .time_linear
            .forward(&embedded.f_silu()?)?
            .f_reshape([b, -1, 6 * d])?;
        let embedded = embedded.f_reshape([b, -1, d])?;

        let text = self.caption_2.forward(&gelu_tanh(
            &self.caption_1.forward(input.encoder_hidden_states)?,
        )?)?;
        let x = crate::hooks::run_blocks(&self.blocks, self.hooks.as_deref(), x, |block, x| {
            block.forward(&x, &text, &temb, &rope, mask.as_ref())
        })?;
        let ss =
            self.scale_shift_table.f_unsqueeze(0)?.f_unsqueeze(0)? + embedded.f_unsqueeze(2)?;
        let (shift, scale) = (ss.f_select(2, 0)?, ss.f_select(2, 1)?);
        let x = x.f_layer_norm([d], None::<&Tensor>, None::<&Tensor>, 1e-6, true)? * (scale + 1.0)
            + shift;
        self.proj_out.forward(&x)
    }
}
