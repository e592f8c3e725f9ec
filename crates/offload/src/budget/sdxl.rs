//! The activation terms of an SDXL generation (InstantID: the UNet with the IdentityNet's
//! residuals), with the structure of the LTX formula in the parent module.
//!
//! With `S_l = h·w / 4^l` latent positions at resolution level `l` (h × w = H/8 × W/8), `c_l`
//! the UNet's `block_out_channels`, `n_l` its `layers_per_block`, `B` the batch (2 with CFG) and
//! `e` bytes per element:
//!
//! - **denoising step** — `B·e · (R + K + max(W_res, W_attn)) + 4·B·c_in·S_0·4`:
//!   - `K`, the UNet's skip tensors, alive from the down path to the up path:
//!     `c_0·S_0` (conv_in) + `Σ_l n_l·c_l·S_l` + `c_l·S_{l+1}` per downsampler;
//!   - `R = K + c_last·S_last`, the IdentityNet's residuals (one per skip, plus the mid block's),
//!     computed before the UNet runs and held through it;
//!   - `W_res = max 3·(in + out)·S_l` over the resnets of both paths (input, its normalisation
//!     and activation; the convolutions' outputs): the widest is the last up block's first
//!     resnet, which reads the upsampled previous stage concatenated with a skip (SDXL:
//!     640 + 320 channels at the full latent size);
//!   - `W_attn = max 20·c_l·S_l` over the levels with transformers, largest at the first of
//!     them (SDXL at 1024²: 640 channels at 64²): during a block's feed-forward, the
//!     Transformer2DModel's input and the block's residual stream (2C), the normalised input
//!     (C), the GEGLU projection (8C), the GELU of its gate and the product (4C + 4C) and the
//!     output (C). Attention is SDPA (linear in tokens); the `math` backend's score matrices
//!     come on top ([`SdxlShape::largest_attention`] with [`super::attention_scores_bytes`]);
//!   - the step's latents, CFG input, prediction and result in float32.
//! - **text** — `8·B·L·d·e_text` with L = 77 tokens and d the wider encoder's hidden size (the
//!   LTX text term);
//! - **decode** — the parent's decode term at `P = H·W` (one frame, no patching) in the VAE's
//!   compute dtype (float32 for SDXL's float16 VAE with `force_upcast`), with the decoder's last
//!   stage as `(3·C_prev + C)·P·e_vae`: its first resnet reads the previous stage's `C_prev`
//!   channels upsampled to full resolution (that input, its normalisation and activation) and
//!   writes `C` (SDXL: 256 and 128).

use super::{decode_peak, Workload};

/// The shapes behind [`Workload::of_sdxl`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdxlShape {
    /// Batch through the UNet and the IdentityNet (2 with classifier-free guidance).
    pub batch: u64,
    /// Latent rows and columns (the image's size over the VAE's ratio).
    pub latent_height: u64,
    pub latent_width: u64,
    pub latent_channels: u64,
    /// The UNet's `block_out_channels`, one per resolution level.
    pub channels: Vec<u64>,
    /// Resnets per down block (up blocks have one more).
    pub layers_per_block: Vec<u64>,
    /// Attention heads of each level's transformers; 0 for a level without them.
    pub heads: Vec<u64>,
    pub text_len: u64,
    /// The wider text encoder's hidden size.
    pub text_hidden: u64,
    /// Output height and width in pixels.
    pub height: u64,
    pub width: u64,
    /// The VAE decoder's last stage's channels, and those of the stage before it.
    pub decoder_channels: u64,
    pub decoder_prev_channels: u64,
    /// Tiled decoding: a tile's height and width in pixels (None: untiled).
    pub decode_tile: Option<[u64; 2]>,
    /// Bytes per element of the UNet's and IdentityNet's activations, the text encoders', and
    /// the VAE's compute dtype.
    pub elem: u64,
    pub text_elem: u64,
    pub vae_elem: u64,
}

impl SdxlShape {
    fn levels(&self) -> usize {
        self.channels.len()
    }

    /// Latent positions at level `l`.
    fn positions(&self, l: usize) -> u64 {
        let (mut h, mut w) = (self.latent_height, self.latent_width);
        for _ in 0..l {
            // A stride-2 convolution with padding 1: ceil(x / 2).
            h = h.div_ceil(2);
            w = w.div_ceil(2);
        }
        h * w
    }

    fn layers(&self, l: usize) -> u64 {
        self.layers_per_block.get(l).copied().unwrap_or(1)
    }

    /// The skip tensors in push order as (channels, level).
    fn skips(&self) -> Vec<(u64, usize)> {
        let n = self.levels();
        let mut out = vec![(self.channels[0], 0)];
        for l in 0..n {
            out.extend((0..self.layers(l)).map(|_| (self.channels[l], l)));
            if l + 1 < n {
                out.push((self.channels[l], l + 1));
            }
        }
        out
    }

    /// `max 3·(in + out)·S_l` over every resnet, down and up.
    fn widest_resnet(&self) -> u64 {
        let n = self.levels();
        let c = &self.channels;
        let resnet = |cin: u64, cout: u64, l: usize| 3 * (cin + cout) * self.positions(l);
        let mut widest = 0;
        let mut cur = c[0];
        for (l, &cl) in c.iter().enumerate() {
            for _ in 0..self.layers(l) {
                widest = widest.max(resnet(cur, cl, l));
                cur = cl;
            }
        }
        let mut skips = self.skips();
        for l in (0..n).rev() {
            for _ in 0..=self.layers(l) {
                let skip = skips.pop().map_or(0, |(ch, _)| ch);
                widest = widest.max(resnet(cur + skip, c[l], l));
                cur = c[l];
            }
        }
        widest
    }

    /// `(batch, heads, tokens)` of the largest self-attention call: the first level with
    /// transformers (SDXL at 1024²: 10 heads over 64² tokens).
    pub fn largest_attention(&self) -> (u64, u64, u64) {
        (0..self.levels())
            .filter(|&l| self.heads.get(l).copied().unwrap_or(0) > 0)
            .map(|l| (self.batch, self.heads[l], self.positions(l)))
            .max_by_key(|&(b, h, s)| b * h * s * s)
            .unwrap_or((self.batch, 0, 0))
    }

    /// `(batch, heads, tokens)` of the VAE's mid-block attention (one head over the latent).
    pub fn decoder_attention(&self) -> (u64, u64, u64) {
        let tokens = match self.decode_tile {
            Some([h, w]) => h.min(self.height) * w.min(self.width) / self.pixels_per_latent(),
            None => self.positions(0),
        };
        (1, 1, tokens)
    }

    fn pixels_per_latent(&self) -> u64 {
        let r = (self.height / self.latent_height.max(1)).max(1);
        r * r
    }
}

impl Workload {
    /// An SDXL generation's activations (see the module documentation for the formula).
    pub fn of_sdxl(s: &SdxlShape) -> Self {
        if s.channels.is_empty() {
            return Self::default();
        }
        let n = s.levels();
        let skips: u64 = s.skips().iter().map(|&(ch, l)| ch * s.positions(l)).sum();
        let residuals = skips + s.channels[n - 1] * s.positions(n - 1);
        let attention = (0..n)
            .filter(|&l| s.heads.get(l).copied().unwrap_or(0) > 0)
            .map(|l| 20 * s.channels[l] * s.positions(l))
            .max()
            .unwrap_or(0);
        let latents = 4 * s.batch * s.latent_channels * s.positions(0) * 4;
        let step =
            s.batch * s.elem * (residuals + skips + s.widest_resnet().max(attention)) + latents;
        let pixels = s.height * s.width;
        let tile = s.decode_tile.map(|[h, w]| h.min(s.height) * w.min(s.width));
        let decode = decode_peak(pixels, tile, |px| {
            (3 * s.decoder_prev_channels + s.decoder_channels) * px * s.vae_elem
        });
        Self {
            text_activations: 8 * s.batch * s.text_len * s.text_hidden * s.text_elem,
            transformer_activations: step,
            decode_activations: decode,
            upsample_activations: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::{attention_scores_bytes, estimate_peak, ComponentSizes};
    use crate::OffloadMode;

    /// SDXL base at 1024², CFG, float16 with the VAE upcast to float32.
    fn sdxl_1024() -> SdxlShape {
        SdxlShape {
            batch: 2,
            latent_height: 128,
            latent_width: 128,
            latent_channels: 4,
            channels: vec![320, 640, 1280],
            layers_per_block: vec![2, 2, 2],
            heads: vec![0, 10, 20],
            text_len: 77,
            text_hidden: 1280,
            height: 1024,
            width: 1024,
            decoder_channels: 128,
            decoder_prev_channels: 256,
            decode_tile: None,
            elem: 2,
            text_elem: 2,
            vae_elem: 4,
        }
    }

    #[test]
    fn sdxl_at_1024_with_cfg() {
        let s = sdxl_1024();
        let w = Workload::of_sdxl(&s);
        let s0 = 128 * 128;
        // Skips: conv_in 320, two resnets of 320, the 320 downsample at ¼, two of 640 at ¼,
        // the 640 downsample at 1/16, two of 1280 at 1/16 — in units of S_0.
        let k = 320 + 2 * 320 + 320 / 4 + 2 * 640 / 4 + 640 / 16 + 2 * 1280 / 16;
        assert_eq!(k, 1560);
        let r = k + 1280 / 16;
        // The widest resnet: up_blocks.2's first, 640 + 320 → 320 at full latent size; the
        // transformer at 64² is 20·640/4 = 3200 < 3·1280 = 3840.
        assert_eq!(s.widest_resnet(), 3 * (960 + 320) * s0);
        let step = 2 * 2 * (r + k + 3840) * s0 + 4 * 2 * 4 * s0 * 4;
        assert_eq!(w.transformer_activations, step);
        assert_eq!(step, 463_470_592);
        // CLIP: 8 · 2 · 77 · 1280 · 2.
        assert_eq!(w.text_activations, 3_153_920);
        // The decode in float32 at 1024²: (3·256 + 128) channels, four float32 RGB images,
        // the bytes.
        let p = 1024 * 1024;
        assert_eq!(w.decode_activations, 896 * p * 4 + 48 * p + 3 * p);
        assert_eq!(w.decode_activations, 3_811_573_760);
        assert_eq!(s.largest_attention(), (2, 10, 64 * 64));
        assert_eq!(
            attention_scores_bytes(2, 10, 4096, 4096),
            2 * 2 * 10 * 4096 * 4096 * 4
        );
        assert_eq!(s.decoder_attention(), (1, 1, s0));
    }

    #[test]
    fn tiling_and_cfg_shrink_the_sdxl_terms() {
        let s = sdxl_1024();
        let full = Workload::of_sdxl(&s);
        let tiled = Workload::of_sdxl(&SdxlShape {
            decode_tile: Some([512, 512]),
            ..s.clone()
        });
        let p = 1024 * 1024;
        let tile = 512 * 512;
        assert_eq!(
            tiled.decode_activations,
            896 * tile * 4 + 48 * tile + 7 * p * 4
        );
        assert!(tiled.decode_activations * 2 < full.decode_activations);
        assert_eq!(
            SdxlShape {
                decode_tile: Some([512, 512]),
                ..s.clone()
            }
            .decoder_attention(),
            (1, 1, 64 * 64)
        );
        let no_cfg = Workload::of_sdxl(&SdxlShape {
            batch: 1,
            ..s.clone()
        });
        assert_eq!(
            no_cfg.transformer_activations * 2,
            full.transformer_activations
        );
        // With SDXL-base-like fp16 weights the decode is the model-offload peak's stage.
        let c = ComponentSizes {
            text_encoder: 1_640_000_000,
            transformer: 5_130_000_000 + 2_500_000_000 + 160_000_000,
            vae: 167_000_000,
            ..ComponentSizes::default()
        };
        let model = estimate_peak(&full, &c, OffloadMode::Model, 2);
        assert_eq!(model, c.transformer + full.transformer_activations);
        let model_tiled = estimate_peak(&tiled, &c, OffloadMode::Model, 2);
        assert_eq!(
            model, model_tiled,
            "the denoising stage dominates either way"
        );
    }

    #[test]
    fn odd_latent_sizes_round_up_at_each_downsample() {
        let s = SdxlShape {
            latent_height: 5,
            latent_width: 7,
            ..sdxl_1024()
        };
        assert_eq!(s.positions(1), 3 * 4);
        assert_eq!(s.positions(2), 2 * 2);
        assert!(
            Workload::of_sdxl(&SdxlShape {
                channels: vec![],
                ..s
            })
            .transformer_activations
                == 0
        );
    }
}
