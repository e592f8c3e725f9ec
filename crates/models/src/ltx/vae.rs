//! `AutoencoderKLLTXVideo` (diffusers `models/autoencoders/autoencoder_kl_ltx.py`): the causal
//! 3D VAE of LTX-Video, all three released layouts — 0.9.0 (plain), 0.9.1 (timestep-conditioned
//! decoder with noise injection and residual upsamplers) and 0.9.5+ (space-to-depth
//! downsamplers) — selected by `config.json` as diffusers does.

use ltx_gpu::rng::Generator;
use serde::Deserialize;
use tch::{Kind, Tensor};

use crate::nn::{rms_norm, timestep_embedding, Linear};
use crate::weights::Vb;
use crate::{ModelError, Result};

/// `vae/config.json`. Defaults are diffusers' (the 0.9.0 layout).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct LtxVaeConfig {
    pub in_channels: i64,
    pub out_channels: i64,
    pub latent_channels: i64,
    pub block_out_channels: Vec<i64>,
    pub down_block_types: Vec<String>,
    pub decoder_block_out_channels: Vec<i64>,
    pub layers_per_block: Vec<i64>,
    pub decoder_layers_per_block: Vec<i64>,
    pub spatio_temporal_scaling: Vec<bool>,
    pub decoder_spatio_temporal_scaling: Vec<bool>,
    pub decoder_inject_noise: Vec<bool>,
    pub downsample_type: Vec<String>,
    pub upsample_residual: Vec<bool>,
    pub upsample_factor: Vec<i64>,
    pub timestep_conditioning: bool,
    pub patch_size: i64,
    pub patch_size_t: i64,
    pub resnet_norm_eps: f64,
    pub scaling_factor: f64,
    pub encoder_causal: bool,
    pub decoder_causal: bool,
    pub spatial_compression_ratio: Option<i64>,
    pub temporal_compression_ratio: Option<i64>,
}

impl Default for LtxVaeConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            latent_channels: 128,
            block_out_channels: vec![128, 256, 512, 512],
            down_block_types: vec!["LTXVideoDownBlock3D".into(); 4],
            decoder_block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: vec![4, 3, 3, 3, 4],
            decoder_layers_per_block: vec![4, 3, 3, 3, 4],
            spatio_temporal_scaling: vec![true, true, true, false],
            decoder_spatio_temporal_scaling: vec![true, true, true, false],
            decoder_inject_noise: vec![false; 5],
            downsample_type: vec!["conv".into(); 4],
            upsample_residual: vec![false; 4],
            upsample_factor: vec![1; 4],
            timestep_conditioning: false,
            patch_size: 4,
            patch_size_t: 1,
            resnet_norm_eps: 1e-6,
            scaling_factor: 1.0,
            encoder_causal: true,
            decoder_causal: false,
            spatial_compression_ratio: None,
            temporal_compression_ratio: None,
        }
    }
}

impl LtxVaeConfig {
    /// Pixels per latent pixel (32 for every released LTX VAE).
    /// Whether the decoder adds noise (0.9.1's `decoder_inject_noise`): its decode draws random
    /// numbers and needs a generator.
    pub fn injects_noise(&self) -> bool {
        self.decoder_inject_noise.iter().any(|&n| n)
    }

    pub fn spatial_ratio(&self) -> i64 {
        self.spatial_compression_ratio.unwrap_or_else(|| {
            self.patch_size
                * 2i64.pow(self.spatio_temporal_scaling.iter().filter(|s| **s).count() as u32)
        })
    }

    /// Frames per latent frame (8 for every released LTX VAE).
    pub fn temporal_ratio(&self) -> i64 {
        self.temporal_compression_ratio.unwrap_or_else(|| {
            self.patch_size_t
                * 2i64.pow(self.spatio_temporal_scaling.iter().filter(|s| **s).count() as u32)
        })
    }

    fn is_095(&self) -> bool {
        self.down_block_types
            .last()
            .is_some_and(|t| t == "LTXVideo095DownBlock3D")
    }

    /// Down blocks of the encoder: one per block_out_channels entry, one fewer for 0.9.5+
    /// (where each block maps block_out_channels[i] to [i + 1]).
    fn encoder_blocks(&self) -> usize {
        self.block_out_channels
            .len()
            .saturating_sub(usize::from(self.is_095()))
    }

    /// Checks that the lists in the config fit together, naming the first one that does not.
    pub fn validate(&self) -> Result<()> {
        let n = self.encoder_blocks();
        let dn = self.decoder_block_out_channels.len();
        let checks = [
            (
                n > 0 && dn > 0,
                "block_out_channels and decoder_block_out_channels must not be empty",
            ),
            (
                self.layers_per_block.len() == n + 1,
                "layers_per_block must have one entry per down block plus one for the mid block",
            ),
            (
                self.down_block_types.len() >= n,
                "down_block_types is shorter than the encoder",
            ),
            (
                self.spatio_temporal_scaling.len() >= n,
                "spatio_temporal_scaling is shorter than the encoder",
            ),
            (
                self.decoder_layers_per_block.len() == dn + 1,
                "decoder_layers_per_block must have one entry more than decoder_block_out_channels",
            ),
            (
                self.decoder_spatio_temporal_scaling.len() == dn,
                "decoder_spatio_temporal_scaling must match decoder_block_out_channels",
            ),
            (
                self.decoder_inject_noise.len() == dn + 1,
                "decoder_inject_noise must have one entry more than decoder_block_out_channels",
            ),
            (
                self.upsample_residual.len() == dn && self.upsample_factor.len() == dn,
                "upsample_residual/upsample_factor must match decoder_block_out_channels",
            ),
            (self.patch_size_t == 1, "patch_size_t other than 1"),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, what)) => Err(ModelError::UnsupportedConfig(format!("LTX VAE: {what}"))),
            None => Ok(()),
        }
    }
}

/// `LTXVideoCausalConv3d`: zero padding in H/W inside the conv, edge-frame replication in time
/// (all in front when causal, split front/back otherwise).
struct CausalConv3d {
    weight: Tensor,
    bias: Tensor,
    kt: i64,
    stride: [i64; 3],
    pad_hw: i64,
    causal: bool,
}

impl CausalConv3d {
    fn new(
        vb: &Vb<'_>,
        cin: i64,
        cout: i64,
        k: i64,
        stride: [i64; 3],
        causal: bool,
    ) -> Result<Self> {
        let vb = vb.pp("conv");
        Ok(Self {
            weight: vb.get("weight", &[cout, cin, k, k, k])?,
            bias: vb.get("bias", &[cout])?,
            kt: k,
            stride,
            pad_hw: k / 2,
            causal,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let first = x.f_narrow(2, 0, 1)?;
        let x = if self.causal {
            let front = first.f_repeat([1, 1, self.kt - 1, 1, 1])?;
            Tensor::f_cat(&[&front, x], 2)?
        } else {
            let n = (self.kt - 1) / 2;
            let last = x.f_narrow(2, x.size()[2] - 1, 1)?;
            Tensor::f_cat(
                &[
                    &first.f_repeat([1, 1, n, 1, 1])?,
                    x,
                    &last.f_repeat([1, 1, n, 1, 1])?,
                ],
                2,
            )?
        };
        Ok(x.f_conv3d(
            &self.weight,
            Some(&self.bias),
            self.stride,
            [0, self.pad_hw, self.pad_hw],
            1,
            1,
        )?)
    }
}

fn channels_last<F: FnOnce(&Tensor) -> Result<Tensor>>(x: &Tensor, f: F) -> Result<Tensor> {
    Ok(f(&x.f_movedim(1, -1)?)?.f_movedim(-1, 1)?)
}

/// `PixArtAlphaCombinedTimestepSizeEmbeddings(dim, 0)`: 256-d sinusoid, Linear, SiLU, Linear.
struct TimeEmbedder {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimeEmbedder {
    fn new(vb: &Vb<'_>, dim: i64) -> Result<Self> {
        let vb = vb.pp("timestep_embedder");
        Ok(Self {
            linear_1: Linear::new(&vb.pp("linear_1"), 256, dim, true)?,
            linear_2: Linear::new(&vb.pp("linear_2"), dim, dim, true)?,
        })
    }

    /// `[B]` timesteps → `[B, dim, 1, 1, 1]`.
    fn forward(&self, t: &Tensor, dtype: Kind) -> Result<Tensor> {
        let b = t.size()[0];
        let proj = timestep_embedding(&t.f_flatten(0, -1)?, 256)?.f_to_kind(dtype)?;
        let e = self
            .linear_2
            .forward(&self.linear_1.forward(&proj)?.f_silu()?)?;
        Ok(e.f_view([b, -1, 1, 1, 1])?)
    }
}

/// `LTXVideoResnetBlock3d`.
struct ResnetBlock {
    conv1: CausalConv3d,
    conv2: CausalConv3d,
    norm3: Option<(Tensor, Tensor)>,
    shortcut: Option<CausalConv3d>,
    noise_scales: Option<(Tensor, Tensor)>,
    scale_shift_table: Option<Tensor>,
    eps: f64,
}

impl ResnetBlock {
    fn new(
        vb: &Vb<'_>,
        cin: i64,
        cout: i64,
        eps: f64,
        causal: bool,
        noise: bool,
        temb: bool,
    ) -> Result<Self> {
        let (norm3, shortcut) = if cin != cout {
            let n = vb.pp("norm3");
            (
                Some((n.get("weight", &[cin])?, n.get("bias", &[cin])?)),
                Some(CausalConv3d::new(
                    &vb.pp("conv_shortcut"),
                    cin,
                    cout,
                    1,
                    [1, 1, 1],
                    causal,
                )?),
            )
        } else {
            (None, None)
        };
        Ok(Self {
            conv1: CausalConv3d::new(&vb.pp("conv1"), cin, cout, 3, [1, 1, 1], causal)?,
            conv2: CausalConv3d::new(&vb.pp("conv2"), cout, cout, 3, [1, 1, 1], causal)?,
            norm3,
            shortcut,
            noise_scales: if noise {
                Some((
                    vb.get("per_channel_scale1", &[cin, 1, 1])?,
                    vb.get("per_channel_scale2", &[cin, 1, 1])?,
                ))
            } else {
                None
            },
            scale_shift_table: if temb {
                Some(vb.get("scale_shift_table", &[4, cin])?)
            } else {
                None
            },
            eps,
        })
    }

    /// Adds `randn(H, W) · scale[C, 1, 1]` (one spatial draw, shared by every frame), drawn
    /// from `rng` in `h`'s dtype: diffusers draws from the default generator of `h`'s device,
    /// which a generator on that device seeded alike reproduces.
    fn inject(h: Tensor, scale: &Tensor, rng: Option<&mut Generator>) -> Result<Tensor> {
        let rng = rng.ok_or_else(|| {
            ModelError::InvalidInput(
                "this VAE decoder injects noise (decoder_inject_noise): decode needs a generator"
                    .into(),
            )
        })?;
        let size = h.size();
        let noise = rng
            .randn_to(&[size[3], size[4]], h.kind(), h.device())?
            .f_unsqueeze(0)?;
        Ok(h + (noise * scale).f_unsqueeze(0)?.f_unsqueeze(2)?)
    }

    /// `noise` draws the injected noise of a block that has some (the 0.9.1 decoder's).
    fn forward(
        &self,
        input: &Tensor,
        temb: Option<&Tensor>,
        mut noise: Option<&mut Generator>,
    ) -> Result<Tensor> {
        let mut h = channels_last(input, |t| rms_norm(t, 1e-8))?;
        let mods = match (&self.scale_shift_table, temb) {
            (Some(table), Some(temb)) => {
                let t = temb.f_unflatten(1, [4, -1])? + table.f_view([1, 4, -1, 1, 1, 1])?;
                Some(t.f_unbind(1)?)
            }
            (Some(_), None) => {
                return Err(ModelError::InvalidInput(
                    "this VAE decoder is timestep-conditioned: decode needs a timestep".into(),
                ))
            }
            _ => None,
        };
        if let Some(m) = &mods {
            h = h * (&m[1] + 1.0) + &m[0];
        }
        h = self.conv1.forward(&h.f_silu()?)?;
        if let Some((s1, _)) = &self.noise_scales {
            h = Self::inject(h, s1, noise.as_deref_mut())?;
        }
        h = channels_last(&h, |t| rms_norm(t, 1e-8))?;
        if let Some(m) = &mods {
            h = h * (&m[3] + 1.0) + &m[2];
        }
        h = self.conv2.forward(&h.f_silu()?)?;
        if let Some((_, s2)) = &self.noise_scales {
            h = Self::inject(h, s2, noise)?;
        }
        let mut skip = input.shallow_clone();
        if let Some((w, b)) = &self.norm3 {
            let c = w.size()[0];
            skip = channels_last(&skip, |t| {
                Ok(t.f_layer_norm([c], Some(w), Some(b), self.eps, true)?)
            })?;
        }
        if let Some(conv) = &self.shortcut {
            skip = conv.forward(&skip)?;
        }
        Ok(h + skip)
    }
}

fn resnets(
    vb: &Vb<'_>,
    n: i64,
    c: i64,
    eps: f64,
    causal: bool,
    noise: bool,
    temb: bool,
) -> Result<Vec<ResnetBlock>> {
    (0..n)
        .map(|j| ResnetBlock::new(&vb.pp("resnets").pp(j), c, c, eps, causal, noise, temb))
        .collect()
}

/// Space-to-depth of `[B, C, F, H, W]` by `(st, sh, sw)`: channel index `((c·st+t)·sh+h)·sw+w`.
fn space_to_depth(x: &Tensor, s: [i64; 3]) -> Result<Tensor> {
    Ok(x.f_unflatten(4, [-1, s[2]])?
        .f_unflatten(3, [-1, s[1]])?
        .f_unflatten(2, [-1, s[0]])?
        .f_permute([0, 1, 3, 5, 7, 2, 4, 6])?
        .f_flatten(1, 4)?)
}

/// `LTXVideoDownsampler3d` (0.9.5+): causal conv to `out/(st·sh·sw)` channels, space-to-depth,
/// plus the space-to-depth of the input averaged over channel groups.
struct Downsampler {
    conv: CausalConv3d,
    stride: [i64; 3],
    group: i64,
}

impl Downsampler {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = Tensor::f_cat(&[&x.f_narrow(2, 0, self.stride[0] - 1)?, x], 2)?;
        let residual = space_to_depth(&x, self.stride)?
            .f_unflatten(1, [-1, self.group])?
            .f_mean_dim(2, false, None::<Kind>)?;
        Ok(space_to_depth(&self.conv.forward(&x)?, self.stride)? + residual)
    }
}

enum Down {
    Conv(CausalConv3d),
    SpaceToDepth(Downsampler),
}

struct DownBlock {
    resnets: Vec<ResnetBlock>,
    down: Option<Down>,
    conv_out: Option<ResnetBlock>,
}

impl DownBlock {
    fn forward(&self, mut x: Tensor) -> Result<Tensor> {
        for r in &self.resnets {
            x = r.forward(&x, None, None)?;
        }
        x = match &self.down {
            Some(Down::Conv(c)) => c.forward(&x)?,
            Some(Down::SpaceToDepth(d)) => d.forward(&x)?,
            None => x,
        };
        match &self.conv_out {
            Some(r) => r.forward(&x, None, None),
            None => Ok(x),
        }
    }
}

struct Encoder {
    patch: i64,
    conv_in: CausalConv3d,
    down_blocks: Vec<DownBlock>,
    mid: Vec<ResnetBlock>,
    conv_out: CausalConv3d,
}

impl Encoder {
    fn new(vb: &Vb<'_>, c: &LtxVaeConfig) -> Result<Self> {
        let causal = c.encoder_causal;
        let eps = c.resnet_norm_eps;
        let bo = &c.block_out_channels;
        let is_095 = c.is_095();
        let n = c.encoder_blocks();
        let mut out = bo[0];
        let conv_in = CausalConv3d::new(
            &vb.pp("conv_in"),
            c.in_channels * c.patch_size * c.patch_size,
            out,
            3,
            [1, 1, 1],
            causal,
        )?;
        let mut down_blocks = Vec::new();
        for i in 0..n {
            let cin = out;
            out = if is_095 || i + 1 < n {
                bo[i + 1]
            } else {
                bo[i]
            };
            let b = vb.pp("down_blocks").pp(i);
            let res = resnets(&b, c.layers_per_block[i], cin, eps, causal, false, false)?;
            let scale = c.spatio_temporal_scaling[i];
            let block = match c.down_block_types[i].as_str() {
                "LTXVideoDownBlock3D" => DownBlock {
                    resnets: res,
                    down: if scale {
                        Some(Down::Conv(CausalConv3d::new(
                            &b.pp("downsamplers").pp(0),
                            cin,
                            cin,
                            3,
                            [2, 2, 2],
                            causal,
                        )?))
                    } else {
                        None
                    },
                    conv_out: if cin != out {
                        Some(ResnetBlock::new(
                            &b.pp("conv_out"),
                            cin,
                            out,
                            eps,
                            causal,
                            false,
                            false,
                        )?)
                    } else {
                        None
                    },
                },
                "LTXVideo095DownBlock3D" => {
                    let down = if scale {
                        let kind = c
                            .downsample_type
                            .get(i)
                            .map(String::as_str)
                            .unwrap_or("conv");
                        let stride = match kind {
                            "conv" => None,
                            "spatial" => Some([1, 2, 2]),
                            "temporal" => Some([2, 1, 1]),
                            "spatiotemporal" => Some([2, 2, 2]),
                            other => {
                                return Err(ModelError::UnsupportedConfig(format!(
                                    "LTX VAE downsample_type {other:?}"
                                )))
                            }
                        };
                        let dvb = b.pp("downsamplers").pp(0);
                        Some(match stride {
                            None => {
                                Down::Conv(CausalConv3d::new(&dvb, cin, cin, 3, [2, 2, 2], causal)?)
                            }
                            Some(s) => {
                                let prod = s[0] * s[1] * s[2];
                                Down::SpaceToDepth(Downsampler {
                                    conv: CausalConv3d::new(
                                        &dvb.pp("conv"),
                                        cin,
                                        out / prod,
                                        3,
                                        [1, 1, 1],
                                        causal,
                                    )?,
                                    stride: s,
                                    group: cin * prod / out,
                                })
                            }
                        })
                    } else {
                        None
                    };
                    DownBlock {
                        resnets: res,
                        down,
                        conv_out: None,
                    }
                }
                other => {
                    return Err(ModelError::UnsupportedConfig(format!(
                        "LTX VAE down block type {other:?}"
                    )))
                }
            };
            down_blocks.push(block);
        }
        let mid = resnets(
            &vb.pp("mid_block"),
            *c.layers_per_block.last().unwrap_or(&0),
            out,
            eps,
            causal,
            false,
            false,
        )?;
        let conv_out = CausalConv3d::new(
            &vb.pp("conv_out"),
            out,
            c.latent_channels + 1,
            3,
            [1, 1, 1],
            causal,
        )?;
        Ok(Self {
            patch: c.patch_size,
            conv_in,
            down_blocks,
            mid,
            conv_out,
        })
    }

    /// `[B, 3, F, H, W]` → `[B, 2·latent, f, h, w]` (means, then the log-variance channel repeated).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let s = x.size();
        let p = self.patch;
        let x = x
            .f_reshape([s[0], s[1], s[2], 1, s[3] / p, p, s[4] / p, p])?
            .f_permute([0, 1, 3, 7, 5, 2, 4, 6])?
            .f_flatten(1, 4)?;
        let mut h = self.conv_in.forward(&x)?;
        for b in &self.down_blocks {
            h = b.forward(h)?;
        }
        for r in &self.mid {
            h = r.forward(&h, None, None)?;
        }
        h = channels_last(&h, |t| rms_norm(t, 1e-8))?;
        let h = self.conv_out.forward(&h.f_silu()?)?;
        let channels = h.size()[1];
        let last = h
            .f_narrow(1, channels - 1, 1)?
            .f_repeat([1, channels - 2, 1, 1, 1])?;
        Ok(Tensor::f_cat(&[h, last], 1)?)
    }
}

/// `LTXVideoUpsampler3d`: conv, depth-to-space (channel index `c·8+t·4+h·2+w`), first frame
/// dropped; optionally plus the input's depth-to-space tiled over channels.
struct Upsampler {
    conv: CausalConv3d,
    residual: bool,
    factor: i64,
}

fn depth_to_space(x: &Tensor) -> Result<Tensor> {
    let s = x.size();
    Ok(x.f_reshape([s[0], -1, 2, 2, 2, s[2], s[3], s[4]])?
        .f_permute([0, 1, 5, 2, 6, 3, 7, 4])?
        .f_flatten(6, 7)?
        .f_flatten(4, 5)?
        .f_flatten(2, 3)?)
}

impl Upsampler {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = depth_to_space(&self.conv.forward(x)?)?;
        h = h.f_narrow(2, 1, h.size()[2] - 1)?;
        if self.residual {
            let r = depth_to_space(x)?.f_repeat([1, 8 / self.factor, 1, 1, 1])?;
            h = h.f_add(&r.f_narrow(2, 1, r.size()[2] - 1)?)?;
        }
        Ok(h)
    }
}

struct UpBlock {
    time_embedder: Option<TimeEmbedder>,
    conv_in: Option<ResnetBlock>,
    upsampler: Option<Upsampler>,
    resnets: Vec<ResnetBlock>,
}

struct Decoder {
    conv_in: CausalConv3d,
    mid_time_embedder: Option<TimeEmbedder>,
    mid: Vec<ResnetBlock>,
    up_blocks: Vec<UpBlock>,
    conv_out: CausalConv3d,
    timestep_scale_multiplier: Option<Tensor>,
    time_embedder: Option<TimeEmbedder>,
    scale_shift_table: Option<Tensor>,
    patch: i64,
}

impl Decoder {
    fn new(vb: &Vb<'_>, c: &LtxVaeConfig) -> Result<Self> {
        let causal = c.decoder_causal;
        let eps = c.resnet_norm_eps;
        let temb = c.timestep_conditioning;
        let rev = |v: &[i64]| v.iter().rev().copied().collect::<Vec<_>>();
        let bo = rev(&c.decoder_block_out_channels);
        let layers = rev(&c.decoder_layers_per_block);
        let scaling: Vec<bool> = c
            .decoder_spatio_temporal_scaling
            .iter()
            .rev()
            .copied()
            .collect();
        let noise: Vec<bool> = c.decoder_inject_noise.iter().rev().copied().collect();
        let residual: Vec<bool> = c.upsample_residual.iter().rev().copied().collect();
        let factor = rev(&c.upsample_factor);
        let mut out = bo[0];
        let conv_in = CausalConv3d::new(
            &vb.pp("conv_in"),
            c.latent_channels,
            out,
            3,
            [1, 1, 1],
            causal,
        )?;
        let mvb = vb.pp("mid_block");
        let mid_time_embedder = if temb {
            Some(TimeEmbedder::new(&mvb.pp("time_embedder"), out * 4)?)
        } else {
            None
        };
        let mid = resnets(&mvb, layers[0], out, eps, causal, noise[0], temb)?;
        let mut up_blocks = Vec::new();
        for i in 0..bo.len() {
            let cin = out / factor[i];
            out = bo[i] / factor[i];
            let b = vb.pp("up_blocks").pp(i);
            up_blocks.push(UpBlock {
                time_embedder: if temb {
                    Some(TimeEmbedder::new(&b.pp("time_embedder"), cin * 4)?)
                } else {
                    None
                },
                conv_in: if cin != out {
                    Some(ResnetBlock::new(
                        &b.pp("conv_in"),
                        cin,
                        out,
                        eps,
                        causal,
                        noise[i + 1],
                        temb,
                    )?)
                } else {
                    None
                },
                upsampler: if scaling[i] {
                    let ch = out * factor[i];
                    Some(Upsampler {
                        conv: CausalConv3d::new(
                            &b.pp("upsamplers").pp(0).pp("conv"),
                            ch,
                            ch * 8 / factor[i],
                            3,
                            [1, 1, 1],
                            causal,
                        )?,
                        residual: residual[i],
                        factor: factor[i],
                    })
                } else {
                    None
                },
                resnets: resnets(&b, layers[i + 1], out, eps, causal, noise[i + 1], temb)?,
            });
        }
        let p = c.patch_size;
        Ok(Self {
            conv_out: CausalConv3d::new(
                &vb.pp("conv_out"),
                out,
                c.out_channels * p * p,
                3,
                [1, 1, 1],
                causal,
            )?,
            timestep_scale_multiplier: if temb {
                Some(vb.get_f32("timestep_scale_multiplier", &[])?)
            } else {
                None
            },
            time_embedder: if temb {
                Some(TimeEmbedder::new(&vb.pp("time_embedder"), out * 2)?)
            } else {
                None
            },
            scale_shift_table: if temb {
                Some(vb.get("scale_shift_table", &[2, out])?)
            } else {
                None
            },
            conv_in,
            mid_time_embedder,
            mid,
            up_blocks,
            patch: p,
        })
    }

    fn forward(
        &self,
        z: &Tensor,
        temb: Option<&Tensor>,
        mut noise: Option<&mut Generator>,
    ) -> Result<Tensor> {
        let mut h = self.conv_in.forward(z)?;
        let dtype = h.kind();
        let temb = match (&self.timestep_scale_multiplier, temb) {
            (Some(m), Some(t)) => Some(t * m),
            (Some(_), None) => {
                return Err(ModelError::InvalidInput(
                    "this VAE decoder is timestep-conditioned: decode needs a timestep".into(),
                ))
            }
            (None, _) => None,
        };
        let block_temb = |e: &Option<TimeEmbedder>| -> Result<Option<Tensor>> {
            match (e, &temb) {
                (Some(e), Some(t)) => Ok(Some(e.forward(t, dtype)?)),
                _ => Ok(temb.as_ref().map(Tensor::shallow_clone)),
            }
        };
        let mid_t = block_temb(&self.mid_time_embedder)?;
        for r in &self.mid {
            h = r.forward(&h, mid_t.as_ref(), noise.as_deref_mut())?;
        }
        for up in &self.up_blocks {
            if let Some(c) = &up.conv_in {
                h = c.forward(&h, temb.as_ref(), noise.as_deref_mut())?;
            }
            let t = block_temb(&up.time_embedder)?;
            if let Some(u) = &up.upsampler {
                h = u.forward(&h)?;
            }
            for r in &up.resnets {
                h = r.forward(&h, t.as_ref(), noise.as_deref_mut())?;
            }
        }
        h = channels_last(&h, |t| rms_norm(t, 1e-8))?;
        if let (Some(e), Some(table), Some(t)) =
            (&self.time_embedder, &self.scale_shift_table, &temb)
        {
            let m = (e.forward(t, dtype)?.f_unflatten(1, [2, -1])?
                + table.f_view([1, 2, -1, 1, 1, 1])?)
            .f_unbind(1)?;
            h = h * (&m[1] + 1.0) + &m[0];
        }
        let h = self.conv_out.forward(&h.f_silu()?)?;
        let s = h.size();
        let p = self.patch;
        Ok(h.f_reshape([s[0], -1, 1, p, p, s[2], s[3], s[4]])?
            .f_permute([0, 1, 5, 2, 6, 4, 7, 3])?
            .f_flatten(6, 7)?
            .f_flatten(4, 5)?
            .f_flatten(2, 3)?)
    }
}

pub use crate::nn::Posterior;

pub struct LtxVae {
    cfg: LtxVaeConfig,
    encoder: Encoder,
    decoder: Decoder,
    pub latents_mean: Tensor,
    pub latents_std: Tensor,
}

impl LtxVae {
    pub fn new(vb: &Vb<'_>, cfg: LtxVaeConfig) -> Result<Self> {
        cfg.validate()?;
        let l = cfg.latent_channels;
        Ok(Self {
            encoder: Encoder::new(&vb.pp("encoder"), &cfg)?,
            decoder: Decoder::new(&vb.pp("decoder"), &cfg)?,
            latents_mean: vb.get_f32("latents_mean", &[l])?,
            latents_std: vb.get_f32("latents_std", &[l])?,
            cfg,
        })
    }

    pub fn config(&self) -> &LtxVaeConfig {
        &self.cfg
    }

    /// `latents_mean` and `latents_std` as float32 `[1, C, 1, 1, 1]` on `device`, copies with
    /// their own storage: the VAE's tensors may be host copies of an offloaded model now, and a
    /// view would keep a device copy alive after the VAE is offloaded.
    pub fn latent_stats(&self, device: tch::Device) -> Result<(Tensor, Tensor)> {
        let stat = |t: &Tensor| -> Result<Tensor> {
            Ok(t.f_view([1, -1, 1, 1, 1])?
                .f_to_kind(Kind::Float)?
                .f_to_device(device)?
                .f_detach_copy()?)
        };
        Ok((stat(&self.latents_mean)?, stat(&self.latents_std)?))
    }

    /// Encodes `[B, 3, F, H, W]` in [-1, 1] (F = 8k+1, H and W multiples of 32).
    pub fn encode(&self, video: &Tensor) -> Result<Posterior> {
        let h = self.encoder.forward(video)?;
        let parts = h.f_chunk(2, 1)?;
        Ok(Posterior {
            mean: parts[0].shallow_clone(),
            logvar: parts[1].f_clamp(-30.0, 20.0)?,
        })
    }

    /// Decodes `[B, latent, f, h, w]` to `[B, 3, 8(f−1)+1, 32h, 32w]`; `timestep` `[B]` is
    /// required by timestep-conditioned decoders (0.9.1+) and ignored by others. `noise` draws
    /// the noise a decoder with [`LtxVaeConfig::injects_noise`] injects (required by those,
    /// ignored by others); diffusers draws it from the default generator of the decoder's
    /// device, so a generator on that device seeded as torch's was gives its numbers.
    pub fn decode(
        &self,
        z: &Tensor,
        timestep: Option<&Tensor>,
        noise: Option<&mut Generator>,
    ) -> Result<Tensor> {
        self.decoder.forward(z, timestep, noise)
    }
}
