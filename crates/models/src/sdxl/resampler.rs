//! The face Resampler of InstantID's `ip-adapter.bin` (`image_proj`): a perceiver that turns
//! face embeddings `[B, N, embedding]` into `queries` tokens of the UNet's cross-attention
//! width (`../shared/specs/instantid.md` §1.2). Nothing is hard-coded: width, heads (query
//! rows ÷ 64, as diffusers' converter reads them), depth, query count, feed-forward width and
//! the embedding and output sizes all come from the tensors' shapes.

use tch::{Kind, Tensor};

use crate::weights::{Vb, WeightStore};
use crate::{ModelError, Result};

/// Head width of the Resampler's attention (InstantX's `dim_head`).
pub const DIM_HEAD: i64 = 64;

/// What the tensors say about the Resampler's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResamplerShape {
    pub dim: i64,
    pub heads: i64,
    pub depth: usize,
    pub queries: i64,
    pub embedding_dim: i64,
    pub output_dim: i64,
    pub ff_dim: i64,
}

impl ResamplerShape {
    /// Reads the shape from `image_proj`'s names and shapes (without the `image_proj.` prefix).
    pub fn infer(named: &[(String, Tensor)]) -> Result<Self> {
        let shape = |n: &str| -> Result<Vec<i64>> {
            named
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, t)| t.size())
                .ok_or_else(|| {
                    ModelError::UnsupportedConfig(format!(
                        "image_proj has no {n}: not an IP-Adapter Resampler"
                    ))
                })
        };
        let two = |n: &str| -> Result<(i64, i64)> {
            match shape(n)?.as_slice() {
                &[a, b] => Ok((a, b)),
                other => Err(ModelError::UnsupportedConfig(format!(
                    "image_proj {n} is {other:?}, expected a matrix"
                ))),
            }
        };
        let (queries, dim) = match shape("latents")?.as_slice() {
            &[1, q, d] => (q, d),
            other => {
                return Err(ModelError::UnsupportedConfig(format!(
                    "image_proj latents is {other:?}, expected [1, queries, dim]"
                )))
            }
        };
        let (_, embedding_dim) = two("proj_in.weight")?;
        let (output_dim, _) = two("proj_out.weight")?;
        let depth = (0..)
            .take_while(|i| {
                named
                    .iter()
                    .any(|(k, _)| k == &format!("layers.{i}.0.to_q.weight"))
            })
            .count();
        if depth == 0 {
            return Err(ModelError::UnsupportedConfig(
                "image_proj has no layers.0.0.to_q.weight: not an IP-Adapter Resampler".into(),
            ));
        }
        let (inner, _) = two("layers.0.0.to_q.weight")?;
        if inner % DIM_HEAD != 0 {
            return Err(ModelError::UnsupportedConfig(format!(
                "image_proj layers.0.0.to_q.weight has {inner} rows, not a multiple of the head width {DIM_HEAD}"
            )));
        }
        let (ff_dim, _) = two("layers.0.1.1.weight")?;
        Ok(Self {
            dim,
            heads: inner / DIM_HEAD,
            depth,
            queries,
            embedding_dim,
            output_dim,
            ff_dim,
        })
    }
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
}

impl LayerNorm {
    fn new(vb: &Vb<'_>, dim: i64) -> Result<Self> {
        Ok(Self {
            weight: vb.get("weight", &[dim])?,
            bias: vb.get("bias", &[dim])?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let d = self.weight.size()[0];
        Ok(x.f_layer_norm([d], Some(&self.weight), Some(&self.bias), 1e-5, false)?)
    }
}

fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    Ok(x.f_matmul(&w.f_transpose(0, 1)?)?)
}

/// Perceiver attention: queries from the latents, keys and values from [features; latents].
struct PerceiverAttention {
    norm1: LayerNorm,
    norm2: LayerNorm,
    to_q: Tensor,
    to_kv: Tensor,
    to_out: Tensor,
    heads: i64,
}

impl PerceiverAttention {
    fn new(vb: &Vb<'_>, s: &ResamplerShape) -> Result<Self> {
        let inner = s.heads * DIM_HEAD;
        Ok(Self {
            norm1: LayerNorm::new(&vb.pp("norm1"), s.dim)?,
            norm2: LayerNorm::new(&vb.pp("norm2"), s.dim)?,
            to_q: vb.get("to_q.weight", &[inner, s.dim])?,
            to_kv: vb.get("to_kv.weight", &[2 * inner, s.dim])?,
            to_out: vb.get("to_out.weight", &[s.dim, inner])?,
            heads: s.heads,
        })
    }

    fn forward(&self, x: &Tensor, latents: &Tensor) -> Result<Tensor> {
        let x = self.norm1.forward(x)?;
        let l = self.norm2.forward(latents)?;
        let (b, lq) = (l.size()[0], l.size()[1]);
        let q = matmul_t(&l, &self.to_q)?;
        let kv = matmul_t(&Tensor::f_cat(&[&x, &l], 1)?, &self.to_kv)?;
        let kv = kv.f_chunk(2, -1)?;
        let heads = |t: &Tensor| -> Result<Tensor> {
            Ok(t.f_view([b, -1, self.heads, DIM_HEAD])?.f_transpose(1, 2)?)
        };
        // InstantX scales q and k by 64^(-1/4) each: softmax(q·kᵀ/8), the attention's default.
        let out =
            crate::attention::attention(&heads(&q)?, &heads(&kv[0])?, &heads(&kv[1])?, None, None)?;
        let out = out.f_transpose(1, 2)?.f_reshape([b, lq, -1])?;
        matmul_t(&out, &self.to_out)
    }
}

/// LayerNorm → Linear (no bias) → exact GELU → Linear (no bias).
struct FeedForward {
    norm: LayerNorm,
    up: Tensor,
    down: Tensor,
}

impl FeedForward {
    fn new(vb: &Vb<'_>, s: &ResamplerShape) -> Result<Self> {
        Ok(Self {
            norm: LayerNorm::new(&vb.pp(0), s.dim)?,
            up: vb.pp(1).get("weight", &[s.ff_dim, s.dim])?,
            down: vb.pp(3).get("weight", &[s.dim, s.ff_dim])?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = matmul_t(&self.norm.forward(x)?, &self.up)?.f_gelu("none")?;
        matmul_t(&h, &self.down)
    }
}

/// InstantID's face Resampler (`image_proj` of `ip-adapter.bin`).
pub struct Resampler {
    shape: ResamplerShape,
    latents: Tensor,
    proj_in_w: Tensor,
    proj_in_b: Tensor,
    proj_out_w: Tensor,
    proj_out_b: Tensor,
    norm_out: LayerNorm,
    layers: Vec<(PerceiverAttention, FeedForward)>,
    /// Handles sharing every parameter's tensor (for a memory system that moves them).
    params: Vec<(String, Tensor)>,
}

impl Resampler {
    /// Builds the Resampler from `image_proj`'s tensors (names without the prefix), its shape
    /// read from them, in `kind` on `device`. Strict: a tensor it does not use is an error.
    pub fn from_named(
        named: Vec<(String, Tensor)>,
        kind: Kind,
        device: tch::Device,
    ) -> Result<Self> {
        let shape = ResamplerShape::infer(&named)?;
        let store = WeightStore::from_tensors(named, "ip-adapter image_proj", kind, device)?;
        let vb = store.root();
        let s = &shape;
        let layers = (0..s.depth)
            .map(|i| {
                let l = vb.pp("layers").pp(i);
                Ok((
                    PerceiverAttention::new(&l.pp(0), s)?,
                    FeedForward::new(&l.pp(1), s)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let r = Self {
            shape,
            latents: vb.get("latents", &[1, s.queries, s.dim])?,
            proj_in_w: vb.get("proj_in.weight", &[s.dim, s.embedding_dim])?,
            proj_in_b: vb.get("proj_in.bias", &[s.dim])?,
            proj_out_w: vb.get("proj_out.weight", &[s.output_dim, s.dim])?,
            proj_out_b: vb.get("proj_out.bias", &[s.output_dim])?,
            norm_out: LayerNorm::new(&vb.pp("norm_out"), s.output_dim)?,
            layers,
            params: Vec::new(),
        };
        store.finish()?;
        Ok(Self {
            params: store.take_params(),
            ..r
        })
    }

    pub fn shape(&self) -> &ResamplerShape {
        &self.shape
    }

    /// Every parameter as a named handle sharing the model's tensor (`set_data` on a handle
    /// moves the model's weight), as [`WeightStore::take_params`] hands them out.
    pub fn params(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect()
    }

    /// Face embeddings `[B, N, embedding_dim]` (InstantID: the raw ArcFace embedding, N = 1)
    /// → face tokens `[B, queries, output_dim]` in the Resampler's dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let s = x.size();
        if s.len() != 3 || s[2] != self.shape.embedding_dim {
            return Err(ModelError::InvalidInput(format!(
                "face embeddings {s:?} must be [B, N, {}]",
                self.shape.embedding_dim
            )));
        }
        let x = x
            .f_to_device(self.latents.device())?
            .f_to_kind(self.latents.kind())?;
        let x = matmul_t(&x, &self.proj_in_w)? + &self.proj_in_b;
        let mut l = self.latents.f_repeat([s[0], 1, 1])?;
        for (attn, ff) in &self.layers {
            l = attn.forward(&x, &l)? + &l;
            l = ff.forward(&l)? + &l;
        }
        let out = matmul_t(&l, &self.proj_out_w)? + &self.proj_out_b;
        self.norm_out.forward(&out)
    }
}
