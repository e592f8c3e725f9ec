//! diffusers' `Transformer2DModel` over continuous inputs (`models/transformers/
//! transformer_2d.py`) with `BasicTransformerBlock`s (`models/attention.py`, layer norms,
//! GEGLU feed-forward) and `Attention` (`to_q/to_k/to_v` without bias, `to_out.0` with).

use tch::Tensor;

use super::ip_attention::{IpInput, IpWeights};
use super::layers::{Conv2d, GroupNorm, LayerNorm};
use super::layout::Norms;
use crate::attention::attention;
use crate::nn::Linear;
use crate::weights::Vb;
use crate::Result;

/// `Attention` with diffusers' `AttnProcessor2_0`; an `attn2` may carry IP-Adapter weights.
pub(crate) struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: i64,
    pub query_dim: i64,
    pub cross_dim: i64,
    pub ip: Option<IpWeights>,
}

impl Attention {
    fn new(vb: &Vb<'_>, dim: i64, cross_dim: i64, heads: i64) -> Result<Self> {
        Ok(Self {
            to_q: Linear::new(&vb.pp("to_q"), dim, dim, false)?,
            to_k: Linear::new(&vb.pp("to_k"), cross_dim, dim, false)?,
            to_v: Linear::new(&vb.pp("to_v"), cross_dim, dim, false)?,
            to_out: Linear::new(&vb.pp("to_out").pp(0), dim, dim, true)?,
            heads,
            query_dim: dim,
            cross_dim,
            ip: None,
        })
    }

    /// `[B, S, H·D]` → `[B, H, S, D]`.
    pub fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_unflatten(2, [self.heads, -1])?.f_transpose(1, 2)?)
    }

    /// `[B, H, S, D]` → `[B, S, H·D]` in `kind`.
    pub fn merge_heads(x: &Tensor, kind: tch::Kind) -> Result<Tensor> {
        Ok(x.f_transpose(1, 2)?.f_flatten(2, 3)?.f_to_kind(kind)?)
    }

    /// Attention of `x` over `context` (`x` itself for attn1); with IP weights and `ip` image
    /// tokens, InstantX's decoupled cross-attention (see [`super::ip_attention`]).
    fn forward(&self, x: &Tensor, context: &Tensor, ip: Option<&IpInput<'_>>) -> Result<Tensor> {
        let q = self.split_heads(&self.to_q.forward(x)?)?;
        let k = self.split_heads(&self.to_k.forward(context)?)?;
        let v = self.split_heads(&self.to_v.forward(context)?)?;
        let mut out = Self::merge_heads(&attention(&q, &k, &v, None, None)?, q.kind())?;
        if let (Some(w), Some(ip)) = (&self.ip, ip) {
            out = out.f_add(&(w.forward(self, &q, ip.tokens)? * ip.scale))?;
        }
        self.to_out.forward(&out)
    }
}

/// `FeedForward(dim, activation_fn="geglu")`: `net.0.proj` (dim → 8·dim), value·GELU(gate),
/// `net.2` (4·dim → dim).
struct FeedForward {
    proj: Linear,
    out: Linear,
}

impl FeedForward {
    fn new(vb: &Vb<'_>, dim: i64) -> Result<Self> {
        let inner = 4 * dim;
        Ok(Self {
            proj: Linear::new(&vb.pp("net.0.proj"), dim, 2 * inner, true)?,
            out: Linear::new(&vb.pp("net.2"), inner, dim, true)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.proj.forward(x)?.f_chunk(2, -1)?;
        self.out.forward(&(&h[0] * h[1].f_gelu("none")?))
    }
}

pub(crate) struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    pub attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
}

impl BasicTransformerBlock {
    fn new(vb: &Vb<'_>, dim: i64, cross_dim: i64, heads: i64) -> Result<Self> {
        Ok(Self {
            norm1: LayerNorm::new(&vb.pp("norm1"), dim, 1e-5)?,
            attn1: Attention::new(&vb.pp("attn1"), dim, dim, heads)?,
            norm2: LayerNorm::new(&vb.pp("norm2"), dim, 1e-5)?,
            attn2: Attention::new(&vb.pp("attn2"), dim, cross_dim, heads)?,
            norm3: LayerNorm::new(&vb.pp("norm3"), dim, 1e-5)?,
            ff: FeedForward::new(&vb.pp("ff"), dim)?,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor, ip: Option<&IpInput<'_>>) -> Result<Tensor> {
        let n = self.norm1.forward(x)?;
        let x = self.attn1.forward(&n, &n, None)? + x;
        let n = self.norm2.forward(&x)?;
        let x = self.attn2.forward(&n, context, ip)? + x;
        Ok(self.ff.forward(&self.norm3.forward(&x)?)? + x)
    }
}

enum Projection {
    Linear(Linear),
    Conv(Conv2d),
}

/// `Transformer2DModel`: `norm` (GroupNorm, eps 1e-6) → `proj_in` → blocks → `proj_out` →
/// + input; the projections are Linear layers with `use_linear_projection`, else 1×1 convs.
pub(crate) struct Transformer2D {
    norm: GroupNorm,
    proj_in: Projection,
    pub transformer_blocks: Vec<BasicTransformerBlock>,
    proj_out: Projection,
}

impl Transformer2D {
    pub fn new(
        vb: &Vb<'_>,
        channels: i64,
        heads: i64,
        depth: i64,
        cross_dim: i64,
        norms: &Norms,
    ) -> Result<Self> {
        // heads · (channels / heads): equal to `channels` (config validation checks it).
        let proj = |name: &str, cin: i64, cout: i64| -> Result<Projection> {
            Ok(if norms.linear_projection {
                Projection::Linear(Linear::new(&vb.pp(name), cin, cout, true)?)
            } else {
                Projection::Conv(Conv2d::same(&vb.pp(name), cin, cout, 1)?)
            })
        };
        Ok(Self {
            norm: GroupNorm::new(&vb.pp("norm"), norms.groups, channels, 1e-6)?,
            proj_in: proj("proj_in", channels, channels)?,
            transformer_blocks: (0..depth)
                .map(|k| {
                    BasicTransformerBlock::new(
                        &vb.pp("transformer_blocks").pp(k),
                        channels,
                        cross_dim,
                        heads,
                    )
                })
                .collect::<Result<_>>()?,
            proj_out: proj("proj_out", channels, channels)?,
        })
    }

    pub fn forward(
        &self,
        x: &Tensor,
        context: &Tensor,
        ip: Option<&IpInput<'_>>,
    ) -> Result<Tensor> {
        let s = x.size();
        let (b, c, h, w) = (s[0], s[1], s[2], s[3]);
        let n = self.norm.forward(x)?;
        let tokens = |t: &Tensor| -> Result<Tensor> {
            Ok(t.f_permute([0, 2, 3, 1])?.f_reshape([b, h * w, -1])?)
        };
        let mut t = match &self.proj_in {
            Projection::Linear(l) => l.forward(&tokens(&n)?)?,
            Projection::Conv(cv) => tokens(&cv.forward(&n)?)?,
        };
        for block in &self.transformer_blocks {
            t = block.forward(&t, context, ip)?;
        }
        let image = |t: &Tensor| -> Result<Tensor> {
            Ok(t.f_reshape([b, h, w, c])?
                .f_permute([0, 3, 1, 2])?
                .f_contiguous()?)
        };
        let out = match &self.proj_out {
            Projection::Linear(l) => image(&l.forward(&t)?)?,
            Projection::Conv(cv) => cv.forward(&image(&t)?)?,
        };
        Ok(out + x)
    }

    /// Every `attn2` of this model, in block order.
    pub fn attn2(&self) -> impl Iterator<Item = &Attention> {
        self.transformer_blocks.iter().map(|b| &b.attn2)
    }

    pub fn attn2_mut(&mut self) -> impl Iterator<Item = &mut Attention> {
        self.transformer_blocks.iter_mut().map(|b| &mut b.attn2)
    }
}
