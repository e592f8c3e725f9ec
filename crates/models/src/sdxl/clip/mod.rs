//! SDXL's two CLIP text encoders as transformers 5 runs them: `text_encoder/`
//! (`CLIPTextModel`, OpenAI CLIP ViT-L/14, `quick_gelu`) and `text_encoder_2/`
//! (`CLIPTextModelWithProjection`, OpenCLIP ViT-bigG/14, `gelu`, plus `text_projection`).
//! Token + position embeddings, pre-norm layers of causal self-attention and an MLP, a final
//! layer norm; parameter names are transformers' (`text_model.encoder.layers.{i}.self_attn.q_proj`,
//! …). SDXL uses `hidden_states[-2]` (the input of the last layer, not normed) as the prompt
//! embedding and encoder 2's `text_embeds` as the pooled embedding. A TorchScript export of
//! either runs through [`torchscript::ClipTorchScript`].

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use crate::attention::attention;
use crate::config::read_config;
use crate::hooks::{run_blocks, BlockHooks};
use crate::nn::Linear;
use crate::weights::{Vb, WeightStore};
use crate::{ModelError, Result};

pub mod torchscript;

/// `config.json` of a CLIP text encoder (transformers' `CLIPTextConfig`); defaults are
/// transformers'. Unknown keys are ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub projection_dim: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub max_position_embeddings: i64,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    pub bos_token_id: i64,
    pub eos_token_id: i64,
    pub pad_token_id: i64,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            projection_dim: 512,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            bos_token_id: 49406,
            eos_token_id: 49407,
            pad_token_id: 1,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Activation {
    /// `x · sigmoid(1.702 x)`
    QuickGelu,
    /// exact (erf) GELU
    Gelu,
    /// GELU with the tanh approximation (`gelu_new`, `gelu_pytorch_tanh`)
    GeluTanh,
}

impl Activation {
    fn parse(name: &str) -> Result<Self> {
        match name {
            "quick_gelu" => Ok(Self::QuickGelu),
            "gelu" => Ok(Self::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" => Ok(Self::GeluTanh),
            other => Err(ModelError::UnsupportedConfig(format!(
                "CLIP hidden_act {other:?} (expected quick_gelu, gelu, gelu_new or gelu_pytorch_tanh)"
            ))),
        }
    }

    fn forward(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::QuickGelu => x * x.f_mul_scalar(1.702)?.f_sigmoid()?,
            Self::Gelu => x.f_gelu("none")?,
            Self::GeluTanh => x.f_gelu("tanh")?,
        })
    }
}

/// `torch.nn.LayerNorm(dim, eps)` with weight and bias.
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    dim: i64,
    eps: f64,
}

impl LayerNorm {
    fn new(vb: &Vb<'_>, dim: i64, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get("weight", &[dim])?,
            bias: vb.get("bias", &[dim])?,
            dim,
            eps,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_layer_norm(
            [self.dim],
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            true,
        )?)
    }
}

/// `CLIPEncoderLayer`: `x + attn(ln1(x))`, then `x + fc2(act(fc1(ln2(x))))`.
struct EncoderLayer {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    layer_norm1: LayerNorm,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl EncoderLayer {
    fn new(vb: &Vb<'_>, c: &ClipTextConfig) -> Result<Self> {
        let h = c.hidden_size;
        let attn = vb.pp("self_attn");
        let mlp = vb.pp("mlp");
        Ok(Self {
            q_proj: Linear::new(&attn.pp("q_proj"), h, h, true)?,
            k_proj: Linear::new(&attn.pp("k_proj"), h, h, true)?,
            v_proj: Linear::new(&attn.pp("v_proj"), h, h, true)?,
            out_proj: Linear::new(&attn.pp("out_proj"), h, h, true)?,
            layer_norm1: LayerNorm::new(&vb.pp("layer_norm1"), h, c.layer_norm_eps)?,
            layer_norm2: LayerNorm::new(&vb.pp("layer_norm2"), h, c.layer_norm_eps)?,
            fc1: Linear::new(&mlp.pp("fc1"), h, c.intermediate_size, true)?,
            fc2: Linear::new(&mlp.pp("fc2"), c.intermediate_size, h, true)?,
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor, heads: i64, act: Activation) -> Result<Tensor> {
        let n = self.layer_norm1.forward(x)?;
        let split =
            |t: Tensor| -> Result<Tensor> { Ok(t.f_unflatten(2, [heads, -1])?.f_transpose(1, 2)?) };
        let q = split(self.q_proj.forward(&n)?)?;
        let k = split(self.k_proj.forward(&n)?)?;
        let v = split(self.v_proj.forward(&n)?)?;
        let a = attention(&q, &k, &v, Some(mask), None)?
            .f_transpose(1, 2)?
            .f_flatten(2, 3)?;
        let x = x + self.out_proj.forward(&a)?;
        let n = self.layer_norm2.forward(&x)?;
        let h = act.forward(&self.fc1.forward(&n)?)?;
        Ok(&x + self.fc2.forward(&h)?)
    }
}

/// What SDXL takes from a CLIP text encoder, for `input_ids` `[B, L]`.
pub struct ClipTextOutput {
    /// `hidden_states[-2]` `[B, L, hidden]` (with a clip skip `n`: `hidden_states[-(n + 2)]`),
    /// the output of the layer before the last, without the final layer norm.
    pub penultimate_hidden_state: Tensor,
    /// `last_hidden_state` `[B, L, hidden]`: the last layer's output, final-layer-normed.
    pub last_hidden_state: Tensor,
    /// `pooler_output` `[B, hidden]` of `CLIPTextModel`, or `text_embeds` `[B, projection_dim]`
    /// of `CLIPTextModelWithProjection`: the last hidden state at the pooled position.
    pub pooled: Tensor,
}

/// transformers' `CLIPTextModel.text_model` (the `text_model.*` parameters).
pub struct ClipTextTransformer {
    cfg: ClipTextConfig,
    act: Activation,
    token_embedding: Tensor,
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    hooks: Option<Arc<dyn BlockHooks>>,
}

impl ClipTextTransformer {
    /// Builds from `vb` at `text_model`. A saved `embeddings.position_ids` buffer (older
    /// transformers wrote it) is checked for shape and otherwise ignored, as transformers does.
    pub fn new(vb: &Vb<'_>, cfg: ClipTextConfig) -> Result<Self> {
        let act = Activation::parse(&cfg.hidden_act)?;
        let (h, heads) = (cfg.hidden_size, cfg.num_attention_heads);
        if heads <= 0 || h % heads != 0 {
            return Err(ModelError::UnsupportedConfig(format!(
                "CLIP hidden_size {h} is not a multiple of num_attention_heads {heads}"
            )));
        }
        if cfg.num_hidden_layers < 1 {
            return Err(ModelError::UnsupportedConfig(format!(
                "CLIP num_hidden_layers {} (at least 1)",
                cfg.num_hidden_layers
            )));
        }
        let emb = vb.pp("embeddings");
        if emb.contains("position_ids") {
            let _buffer = emb.get("position_ids", &[1, cfg.max_position_embeddings])?;
        }
        let enc = vb.pp("encoder").pp("layers");
        Ok(Self {
            token_embedding: emb
                .pp("token_embedding")
                .get("weight", &[cfg.vocab_size, h])?,
            position_embedding: emb
                .pp("position_embedding")
                .get("weight", &[cfg.max_position_embeddings, h])?,
            layers: (0..cfg.num_hidden_layers)
                .map(|i| EncoderLayer::new(&enc.pp(i), &cfg))
                .collect::<Result<_>>()?,
            final_layer_norm: LayerNorm::new(&vb.pp("final_layer_norm"), h, cfg.layer_norm_eps)?,
            act,
            cfg,
            hooks: None,
        })
    }

    pub fn config(&self) -> &ClipTextConfig {
        &self.cfg
    }

    /// Checks `input_ids` (an out-of-range id would be a device-side assert on CUDA).
    fn check_ids(&self, ids: &Tensor) -> Result<()> {
        let size = ids.size();
        let bad = |what: String| Err(ModelError::InvalidInput(format!("CLIP input_ids: {what}")));
        if size.len() != 2 || size[0] == 0 || size[1] == 0 {
            return bad(format!(
                "expected a non-empty [batch, length] tensor, got {size:?}"
            ));
        }
        if !matches!(
            ids.kind(),
            Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8
        ) {
            return bad(format!("expected integer ids, got {:?}", ids.kind()));
        }
        if size[1] > self.cfg.max_position_embeddings {
            return bad(format!(
                "length {} exceeds max_position_embeddings {}",
                size[1], self.cfg.max_position_embeddings
            ));
        }
        let (lo, hi) = (ids.f_min()?.int64_value(&[]), ids.f_max()?.int64_value(&[]));
        if lo < 0 || hi >= self.cfg.vocab_size {
            return bad(format!(
                "ids must lie in [0, {}), got [{lo}, {hi}]",
                self.cfg.vocab_size
            ));
        }
        Ok(())
    }

    /// transformers' pooled position per row: `argmax(input_ids)` when the config's
    /// `eos_token_id` is 2 (SDXL's legacy configs; the first maximal id), else the first
    /// position of `eos_token_id` (0 in a row without one).
    fn pooled_positions(&self, ids: &Tensor) -> Result<Tensor> {
        let ids = ids.f_to_kind(Kind::Int)?;
        let pos = if self.cfg.eos_token_id == 2 {
            ids.f_argmax(-1, false)?
        } else {
            ids.f_eq(self.cfg.eos_token_id)?
                .f_to_kind(Kind::Int)?
                .f_argmax(-1, false)?
        };
        Ok(pos)
    }

    /// The encoder's outputs with `hidden_states[-(clip_skip + 2)]` as the penultimate state
    /// (diffusers' `clip_skip`; 0 is SDXL's default `hidden_states[-2]`).
    pub fn forward(&self, input_ids: &Tensor, clip_skip: usize) -> Result<ClipTextOutput> {
        let layers = self.layers.len();
        // hidden_states = [embeddings, layer 0, …, layer n-1]; index from the end.
        let Some(wanted) = (layers + 1).checked_sub(clip_skip + 2) else {
            return Err(ModelError::InvalidInput(format!(
                "clip skip {clip_skip} with {layers} layers: hidden_states[-{}] does not exist",
                clip_skip + 2
            )));
        };
        self.check_ids(input_ids)?;
        let device = self.token_embedding.device();
        let ids = input_ids.f_to_device(device)?.f_to_kind(Kind::Int64)?;
        let len = ids.size()[1];
        let x = Tensor::f_embedding(&self.token_embedding, &ids, -1, false, false)?
            + self
                .position_embedding
                .f_narrow(0, 0, len)?
                .f_unsqueeze(0)?;
        let mask = causal_mask(len, x.kind(), device)?;
        let mut penultimate = (wanted == 0).then(|| x.shallow_clone());
        let mut index = 0;
        let x = run_blocks(&self.layers, self.hooks.as_deref(), x, |layer, x| {
            let y = layer.forward(&x, &mask, self.cfg.num_attention_heads, self.act)?;
            index += 1;
            if index == wanted {
                penultimate = Some(y.shallow_clone());
            }
            Ok(y)
        })?;
        let last = self.final_layer_norm.forward(&x)?;
        let rows = Tensor::f_arange(last.size()[0], (Kind::Int64, device))?;
        let pos = self.pooled_positions(&ids)?.f_to_kind(Kind::Int64)?;
        let pooled = last.f_index(&[Some(rows), Some(pos)])?;
        Ok(ClipTextOutput {
            penultimate_hidden_state: penultimate.unwrap_or_else(|| x.shallow_clone()),
            last_hidden_state: last,
            pooled,
        })
    }
}

/// Additive causal mask `[1, 1, L, L]`: 0 on and below the diagonal, the dtype's lowest value
/// above (what transformers' eager path adds; its SDPA path's `is_causal` is the same).
fn causal_mask(len: i64, kind: Kind, device: Device) -> Result<Tensor> {
    let lowest = match kind {
        Kind::Half => -65504.0,
        Kind::BFloat16 => -3.3895313892515355e38,
        Kind::Double => f64::MIN,
        _ => f64::from(f32::MIN),
    };
    Ok(Tensor::f_full([len, len], lowest, (kind, device))?
        .f_triu(1)?
        .f_view([1, 1, len, len])?)
}

fn load<T>(
    dir: &Path,
    kind: Kind,
    device: Device,
    build: impl FnOnce(&Vb<'_>, ClipTextConfig) -> Result<T>,
) -> Result<T> {
    let cfg: ClipTextConfig = read_config(&dir.join("config.json"))?;
    let store = WeightStore::from_component_dir(dir, kind, device)?;
    let model = build(&store.root(), cfg)?;
    store.finish()?;
    Ok(model)
}

/// SDXL's `text_encoder/`: transformers' `CLIPTextModel`; `pooled` is its `pooler_output`.
pub struct ClipTextModel {
    pub text_model: ClipTextTransformer,
}

impl ClipTextModel {
    /// Builds from the parameters as SDXL ships them (`text_model.embeddings…`, written by
    /// transformers 4) or as transformers 5 saves a `CLIPTextModel` (`embeddings…`, no
    /// `text_model.` prefix); transformers 5 loads either.
    pub fn new(vb: &Vb<'_>, cfg: ClipTextConfig) -> Result<Self> {
        let prefixed = vb.contains("text_model.embeddings.token_embedding.weight");
        let at = if prefixed {
            vb.pp("text_model")
        } else {
            vb.clone()
        };
        Ok(Self {
            text_model: ClipTextTransformer::new(&at, cfg)?,
        })
    }

    /// Reads `dir/config.json` and the folder's safetensors in `kind` on `device`; every
    /// tensor must be used.
    pub fn from_dir(dir: &Path, kind: Kind, device: Device) -> Result<Self> {
        load(dir, kind, device, Self::new)
    }

    pub fn config(&self) -> &ClipTextConfig {
        self.text_model.config()
    }

    /// Calls `hooks` around each of `text_model.encoder.layers.{i}` (layer streaming).
    pub fn set_block_hooks(&mut self, hooks: Option<Arc<dyn BlockHooks>>) {
        self.text_model.hooks = hooks;
    }

    /// Outputs for `input_ids` `[B, L]` (`L` ≤ `max_position_embeddings`), SDXL's
    /// `hidden_states[-2]` as the penultimate state.
    pub fn forward(&self, input_ids: &Tensor) -> Result<ClipTextOutput> {
        self.text_model.forward(input_ids, 0)
    }

    /// Like [`ClipTextModel::forward`] with diffusers' `clip_skip` (`hidden_states[-(n + 2)]`).
    pub fn forward_clip_skip(
        &self,
        input_ids: &Tensor,
        clip_skip: usize,
    ) -> Result<ClipTextOutput> {
        self.text_model.forward(input_ids, clip_skip)
    }
}

/// SDXL's `text_encoder_2/`: transformers' `CLIPTextModelWithProjection`; `pooled` is its
/// `text_embeds` = `text_projection(pooler_output)` (no bias).
pub struct ClipTextModelWithProjection {
    pub text_model: ClipTextTransformer,
    text_projection: Linear,
}

impl ClipTextModelWithProjection {
    pub fn new(vb: &Vb<'_>, cfg: ClipTextConfig) -> Result<Self> {
        let (h, p) = (cfg.hidden_size, cfg.projection_dim);
        Ok(Self {
            text_model: ClipTextTransformer::new(&vb.pp("text_model"), cfg)?,
            text_projection: Linear::new(&vb.pp("text_projection"), h, p, false)?,
        })
    }

    /// Reads `dir/config.json` and the folder's safetensors in `kind` on `device`; every
    /// tensor must be used.
    pub fn from_dir(dir: &Path, kind: Kind, device: Device) -> Result<Self> {
        load(dir, kind, device, Self::new)
    }

    pub fn config(&self) -> &ClipTextConfig {
        self.text_model.config()
    }

    /// Calls `hooks` around each of `text_model.encoder.layers.{i}` (layer streaming).
    pub fn set_block_hooks(&mut self, hooks: Option<Arc<dyn BlockHooks>>) {
        self.text_model.hooks = hooks;
    }

    /// Outputs for `input_ids` `[B, L]`, `pooled` being `text_embeds` `[B, projection_dim]`.
    pub fn forward(&self, input_ids: &Tensor) -> Result<ClipTextOutput> {
        self.forward_clip_skip(input_ids, 0)
    }

    /// Like [`ClipTextModelWithProjection::forward`] with diffusers' `clip_skip`.
    pub fn forward_clip_skip(
        &self,
        input_ids: &Tensor,
        clip_skip: usize,
    ) -> Result<ClipTextOutput> {
        let out = self.text_model.forward(input_ids, clip_skip)?;
        Ok(ClipTextOutput {
            pooled: self.text_projection.forward(&out.pooled)?,
            ..out
        })
    }
}
