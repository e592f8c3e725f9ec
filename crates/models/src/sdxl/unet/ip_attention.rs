//! The decoupled IP-Adapter cross-attention InstantID installs on every UNet `attn2`
//! (InstantX's `IPAttnProcessor2_0`, spec §1.3): the last `num_tokens` context tokens are the
//! image (face) tokens; the text branch is the usual attention over the other tokens, the
//! image branch attends with the same query to `to_k_ip(ip)` / `to_v_ip(ip)` (no biases), and
//! `text_out + scale·ip_out` goes through `to_out.0`. Both branches use
//! [`crate::attention::attention`], so the process-wide backend (`LTX_ATTENTION`) applies.
//!
//! Layer order is that of `unet.attn_processors` (module registration): `down_blocks`, then
//! `up_blocks`, then `mid_block`, each `attentions.j.transformer_blocks.k.{attn1, attn2}`.
//! In that list of all processors the attn2 layers sit at the odd positions n = 1, 3, …, which
//! is how `ip-adapter.bin` names their weights (`{n}.to_k_ip.weight`); SDXL has 70 of them
//! (n = 1…139).

use tch::Tensor;

use super::transformer::{Attention, Transformer2D};
use super::UNet2DConditionModel;
use crate::attention::attention;
use crate::{ModelError, Result};

/// One `attn2` that takes IP-Adapter weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpSlot {
    /// Position in `unet.attn_processors` (attn1 and attn2 alike): the `n` of
    /// `ip-adapter.bin`'s `{n}.to_k_ip.weight` / `{n}.to_v_ip.weight`.
    pub n: usize,
    /// Module name, e.g. `down_blocks.1.attentions.0.transformer_blocks.0.attn2`.
    pub name: String,
    /// Rows of `to_k_ip` / `to_v_ip` (the attention width).
    pub query_dim: i64,
    /// Columns: the image tokens' width (`cross_attention_dim`).
    pub cross_dim: i64,
}

/// `to_k_ip` / `to_v_ip` of one attn2, `[query_dim, cross_dim]` each.
pub(crate) struct IpWeights {
    pub to_k_ip: Tensor,
    pub to_v_ip: Tensor,
}

impl IpWeights {
    /// The image branch: `attention(q, to_k_ip(ip), to_v_ip(ip))` with the heads merged.
    pub fn forward(&self, attn: &Attention, q: &Tensor, ip: &Tensor) -> Result<Tensor> {
        let k = attn.split_heads(&ip.f_linear::<&Tensor>(&self.to_k_ip, None)?)?;
        let v = attn.split_heads(&ip.f_linear::<&Tensor>(&self.to_v_ip, None)?)?;
        Attention::merge_heads(&attention(q, &k, &v, None, None)?, q.kind())
    }
}

/// The image tokens and scale of one forward pass.
pub(crate) struct IpInput<'a> {
    pub tokens: &'a Tensor,
    pub scale: f64,
}

/// InstantID's scale when it loads the adapter (`load_ip_adapter_instantid(scale=0.5)`).
pub const DEFAULT_IP_SCALE: f64 = 0.5;

type Named<'a> = Vec<(String, &'a Attention)>;

fn walk<'a>(prefix: String, attentions: &'a [Transformer2D], out: &mut Named<'a>) {
    for (j, t) in attentions.iter().enumerate() {
        for (k, a) in t.attn2().enumerate() {
            out.push((
                format!("{prefix}.attentions.{j}.transformer_blocks.{k}.attn2"),
                a,
            ));
        }
    }
}

impl UNet2DConditionModel {
    /// Every attn2 with its name, in `attn_processors` order.
    fn attn2_named(&self) -> Named<'_> {
        let mut out = Vec::new();
        for (i, b) in self.encoder.down_blocks.iter().enumerate() {
            walk(format!("down_blocks.{i}"), &b.attentions, &mut out);
        }
        for (i, b) in self.up_blocks.iter().enumerate() {
            walk(format!("up_blocks.{i}"), &b.attentions, &mut out);
        }
        if let Some(m) = &self.encoder.mid_block {
            walk("mid_block".into(), &m.attentions, &mut out);
        }
        out
    }

    fn attn2_mut(&mut self) -> Vec<&mut Attention> {
        let down = self
            .encoder
            .down_blocks
            .iter_mut()
            .flat_map(|b| b.attentions.iter_mut());
        let up = self
            .up_blocks
            .iter_mut()
            .flat_map(|b| b.attentions.iter_mut());
        let mid = self
            .encoder
            .mid_block
            .iter_mut()
            .flat_map(|m| m.attentions.iter_mut());
        down.chain(up)
            .chain(mid)
            .flat_map(|t| t.attn2_mut())
            .collect()
    }

    /// The attn2 layers IP-Adapter weights go to, in `unet.attn_processors` order (down
    /// blocks, up blocks, mid block): the order of `ip-adapter.bin`'s `ip_adapter` keys.
    pub fn ip_attention_layers(&self) -> Vec<IpSlot> {
        self.attn2_named()
            .into_iter()
            .enumerate()
            .map(|(j, (name, a))| IpSlot {
                n: 2 * j + 1,
                name,
                query_dim: a.query_dim,
                cross_dim: a.cross_dim,
            })
            .collect()
    }

    /// Installs `(to_k_ip, to_v_ip)` for every layer of [`Self::ip_attention_layers`], in that
    /// order, each `[query_dim, cross_dim]`; from now on the last `num_tokens` context tokens
    /// of every call are the image tokens. Nothing changes unless all layers fit. The
    /// weights are converted to the model's dtype and device. The scale stays as it is
    /// ([`DEFAULT_IP_SCALE`] after loading).
    pub fn set_ip_adapter(&mut self, layers: Vec<(Tensor, Tensor)>, num_tokens: i64) -> Result<()> {
        let slots = self.ip_attention_layers();
        if num_tokens <= 0 {
            return Err(ModelError::InvalidInput(format!(
                "IP-Adapter: num_tokens {num_tokens} must be positive"
            )));
        }
        if layers.len() != slots.len() {
            let hint = match slots.get(layers.len()) {
                Some(s) => format!(
                    "the first layer without weights is {} (n = {})",
                    s.name, s.n
                ),
                None => "there are more weight pairs than attn2 layers".into(),
            };
            return Err(ModelError::InvalidInput(format!(
                "IP-Adapter: {} (to_k_ip, to_v_ip) pairs for the UNet's {} attn2 layers; {hint}",
                layers.len(),
                slots.len()
            )));
        }
        let (kind, device) = (self.kind, self.device);
        let mut weights = Vec::with_capacity(layers.len());
        for (slot, (k, v)) in slots.iter().zip(layers) {
            let want = [slot.query_dim, slot.cross_dim];
            for (t, which) in [(&k, "to_k_ip"), (&v, "to_v_ip")] {
                if t.size() != want {
                    return Err(ModelError::ShapeMismatch {
                        name: format!("{}.{which}.weight (layer {})", slot.n, slot.name),
                        found: t.size(),
                        expected: want.to_vec(),
                        source_desc: "the IP-Adapter weights given".into(),
                    });
                }
            }
            weights.push(IpWeights {
                to_k_ip: k.f_to_device(device)?.f_to_kind(kind)?,
                to_v_ip: v.f_to_device(device)?.f_to_kind(kind)?,
            });
        }
        for (a, w) in self.attn2_mut().into_iter().zip(weights) {
            a.ip = Some(w);
        }
        self.ip_tokens = Some(num_tokens);
        Ok(())
    }

    /// The image branch's weight in `text_out + scale·ip_out` (0.5 after loading, as
    /// InstantID; its `ip_adapter_scale` argument sets it per call). Kept across
    /// [`Self::set_ip_adapter`] calls; without IP weights it is only remembered.
    pub fn set_ip_scale(&mut self, scale: f64) {
        self.ip_scale = scale;
    }

    pub fn ip_scale(&self) -> f64 {
        self.ip_scale
    }

    /// The number of image tokens split off the context, if IP weights are set.
    pub fn ip_num_tokens(&self) -> Option<i64> {
        self.ip_tokens
    }

    /// Removes the IP weights: plain SDXL again (the whole context is text).
    pub fn clear_ip_adapter(&mut self) {
        for a in self.attn2_mut() {
            a.ip = None;
        }
        self.ip_tokens = None;
    }

    /// The IP weights as named handles sharing the model's tensors
    /// (`{attn2 name}.to_k_ip.weight`, …), so an offloader can place them with their
    /// `attentions.j` unit; empty without IP weights.
    pub fn ip_params(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (name, a) in self.attn2_named() {
            if let Some(w) = &a.ip {
                out.push((format!("{name}.to_k_ip.weight"), w.to_k_ip.shallow_clone()));
                out.push((format!("{name}.to_v_ip.weight"), w.to_v_ip.shallow_clone()));
            }
        }
        out
    }
}
