//! `LTXConditionPipeline` (diffusers 0.42.1) step for step, on models already placed: the
//! pipeline of LTX-Video 0.9.5+ that the 0.9.7/0.9.8 multi-scale flow runs twice
//! (`../shared/specs/ltx-condition.md` §2). Conditions are images or videos at any frame
//! index with a strength: frame-0 conditions are blended into the latents, others become
//! extra tokens with their own coordinates. The random draws come from the run's own CPU
//! generator in diffusers' order, so a seed gives diffusers' video (its
//! `generator=torch.manual_seed(seed)`), whatever other threads draw meanwhile.
//!
//! Batch 1 only, as diffusers (its `latent_sigma` and extra tokens break for more).

use ltx_gpu::rng::Generators;
use ltx_models::ltx::{LtxTransformer, LtxVae, TransformerInput};
use ltx_models::scheduler::{ConditionSchedule, FlowMatchConfig};
use ltx_models::{ModelError, Result};
use tch::{Device, Kind, Tensor};

use crate::memory::Component;

/// Latent frames at the head of a video condition placed after frame 0 that become extra
/// tokens; the rest are blended into the latents (diffusers' `num_prefix_latent_frames`).
const PREFIX_LATENT_FRAMES: i64 = 2;

/// The models one run uses.
pub struct ConditionModels<'a> {
    pub transformer: &'a LtxTransformer,
    pub vae: &'a LtxVae,
    pub scheduler: &'a FlowMatchConfig,
    /// Called before a component is used (model offload moves it to the device); None when
    /// the weights stay where they are.
    pub enter: Option<&'a dyn Fn(Component) -> Result<()>>,
    /// Decode the video in tiles (None: at once, as diffusers without `enable_tiling()`).
    pub vae_tiling: Option<&'a crate::tiled_decode::TileConfig>,
    /// The CUDA kernels for the tiled decode's accumulation.
    pub kernels: Option<&'a ltx_gpu::kernels::KernelRegistry>,
}

impl<'a> ConditionModels<'a> {
    /// The models as they are: no offload hook, no tiled decode.
    pub fn new(
        transformer: &'a LtxTransformer,
        vae: &'a LtxVae,
        scheduler: &'a FlowMatchConfig,
    ) -> Self {
        Self {
            transformer,
            vae,
            scheduler,
            enter: None,
            vae_tiling: None,
            kernels: None,
        }
    }

    pub(crate) fn enter(&self, c: Component) -> Result<()> {
        self.enter.map_or(Ok(()), |f| f(c))
    }
}

/// One condition: pixels `[1, 3, F, H, W]` in [-1, 1] at the run's size (an image is F = 1),
/// the frame it starts at, and how strongly it holds (1 = exactly).
pub struct Condition {
    pub video: Tensor,
    pub frame_index: i64,
    pub strength: f64,
}

/// A prompt's T5 embeddings `[1, L, C]` and mask `[1, L]` (1 real, 0 padding).
pub struct PromptEmbeds {
    pub embeds: Tensor,
    pub mask: Tensor,
}

/// `__call__`'s numeric arguments, with diffusers' defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ConditionParams {
    pub height: i64,
    pub width: i64,
    pub num_frames: i64,
    /// The model's frame-rate conditioning (RoPE time), not the file's fps.
    pub frame_rate: f64,
    pub steps: usize,
    /// A custom timestep list (then `steps` is its length).
    pub timesteps: Option<Vec<f64>>,
    pub guidance_scale: f64,
    pub guidance_rescale: f64,
    pub image_cond_noise_scale: f64,
    pub denoise_strength: f64,
    pub decode_timestep: f64,
    pub decode_noise_scale: Option<f64>,
}

impl Default for ConditionParams {
    fn default() -> Self {
        Self {
            height: 512,
            width: 704,
            num_frames: 161,
            frame_rate: 25.0,
            steps: 50,
            timesteps: None,
            guidance_scale: 3.0,
            guidance_rescale: 0.0,
            image_cond_noise_scale: 0.15,
            denoise_strength: 1.0,
            decode_timestep: 0.0,
            decode_noise_scale: None,
        }
    }
}

impl ConditionParams {
    pub fn cfg(&self) -> bool {
        self.guidance_scale > 1.0
    }

    /// Latent `(frames, height, width)`: frames `(n − 1)/8 + 1` (96 → 12, decoded to 89).
    pub fn latent_shape(&self) -> (i64, i64, i64) {
        (
            (self.num_frames - 1) / 8 + 1,
            self.height / 32,
            self.width / 32,
        )
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::InvalidInput(m));
        if self.height <= 0 || self.width <= 0 || self.height % 32 != 0 || self.width % 32 != 0 {
            return bad(format!(
                "height and width must be positive multiples of 32, got {}x{}",
                self.width, self.height
            ));
        }
        if self.num_frames < 1 {
            return bad(format!(
                "num_frames must be at least 1, got {}",
                self.num_frames
            ));
        }
        if self.frame_rate.is_nan() || self.frame_rate <= 0.0 {
            return bad(format!(
                "frame_rate must be positive, got {}",
                self.frame_rate
            ));
        }
        if !(0.0..=1.0).contains(&self.denoise_strength) {
            return bad(format!(
                "denoise_strength must be in [0, 1], got {}",
                self.denoise_strength
            ));
        }
        if let Some(t) = &self.timesteps {
            check_timesteps("timesteps", t)?;
        }
        Ok(())
    }
}

/// A custom timestep list as the scheduler takes it: not empty, at most 1000 entries, each in
/// [0, 1000], strictly decreasing (as the distilled lists: `1000, 993, …, 0.03`).
pub fn check_timesteps(name: &str, t: &[f64]) -> Result<()> {
    let bad = |m: String| Err(ModelError::InvalidInput(m));
    if t.is_empty() || t.len() > 1000 {
        return bad(format!(
            "{name} must list 1 to 1000 timesteps, got {}",
            t.len()
        ));
    }
    if let Some(x) = t.iter().find(|x| !(0.0..=1000.0).contains(*x)) {
        return bad(format!(
            "{name}: each timestep must be in [0, 1000], got {x}"
        ));
    }
    if let Some(w) = t.windows(2).find(|w| w[1] >= w[0]) {
        return bad(format!(
            "{name} must be strictly decreasing, got {} then {}",
            w[0], w[1]
        ));
    }
    Ok(())
}

/// Where a run is, for progress reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionStage {
    /// Before denoising step `step` (1-based) of `total`.
    Denoising { step: usize, total: usize },
    /// Before the VAE decode (frames output only).
    Decoding,
}

/// What a run returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionOutput {
    /// Normalised latents `[1, C, F, h, w]` (float32), as `output_type="latent"`: the input of
    /// the latent upsampler and of a refine pass.
    Latents,
    /// Frames `[F, H, W, 3]` in [0, 1] (float32), before diffusers' uint8 conversion.
    Frames,
}

/// Float32 standard normal numbers drawn on the CPU, then moved to `dev` (diffusers'
/// `randn_tensor` with a CPU generator).
fn randn(rng: &mut Generators, shape: &[i64], dev: Device) -> Result<Tensor> {
    Ok(rng.cpu().randn_to(shape, Kind::Float, dev)?)
}

/// `[B, C, F, H, W]` → `[B, F·H·W, C]`.
fn pack(x: &Tensor) -> Result<Tensor> {
    Ok(x.f_flatten(2, 4)?.f_transpose(1, 2)?)
}

/// Integer token coordinates `[1, 3, f·h·w]` (frame, row, column), as `_prepare_video_ids`.
fn video_ids(f: i64, h: i64, w: i64, dev: Device) -> Result<Tensor> {
    let opts = (Kind::Int64, dev);
    let axes = [
        Tensor::f_arange(f, opts)?,
        Tensor::f_arange(h, opts)?,
        Tensor::f_arange(w, opts)?,
    ];
    let mesh = Tensor::f_meshgrid_indexing(&axes, "ij")?;
    Ok(Tensor::f_stack(&mesh, 0)?.f_reshape([1, 3, f * h * w])?)
}

/// `_scale_video_ids`: ×(8, 32, 32), then time `max(8f − 7, 0) + frame_index`.
fn scale_ids(ids: &Tensor, frame_index: i64) -> Result<Tensor> {
    let dev = ids.device();
    let scaled = ids
        * Tensor::from_slice(&[8i64, 32, 32])
            .f_to_device(dev)?
            .f_view([1, 3, 1])?;
    let t = (scaled.f_select(1, 0)? + 1 - 8).f_clamp_min(0)? + frame_index;
    scaled.f_select(1, 0)?.f_copy_(&t)?;
    Ok(scaled)
}

/// diffusers' `trim_conditioning_sequence`: at most `num_frames − frame_index` frames, cut
/// to 8k + 1.
fn trimmed_frames(frame_index: i64, frames: i64, num_frames: i64) -> i64 {
    let n = frames.min(num_frames - frame_index);
    (n - 1).div_euclid(8) * 8 + 1
}

/// Runs the pipeline. `latents` (normalised, `[1, C, F, h, w]`) with `denoise_strength < 1`
/// start from those latents noised to the first kept sigma (the refine pass); with
/// `denoise_strength = 1` they are ignored, as in diffusers. Every random number comes from
/// `rng` (its CPU generator; a noise-injecting decoder's from its device's), continuing its
/// sequences. `progress` is called before each denoising step and before decoding; an error
/// from it stops the run.
#[allow(clippy::too_many_arguments)]
pub fn generate(
    m: &ConditionModels<'_>,
    prompt: &PromptEmbeds,
    negative: Option<&PromptEmbeds>,
    conditions: &[Condition],
    latents: Option<&Tensor>,
    p: &ConditionParams,
    rng: &mut Generators,
    output: ConditionOutput,
    progress: &mut dyn FnMut(ConditionStage) -> Result<()>,
) -> Result<Tensor> {
    p.validate()?;
    if prompt.embeds.size().first() != Some(&1) {
        return Err(ModelError::InvalidInput(format!(
            "the condition pipeline runs one video at a time, got prompt embeddings {:?}",
            prompt.embeds.size()
        )));
    }
    let dev = prompt.embeds.device();
    let dtype = prompt.embeds.kind();
    let vae = m.vae;
    let (f, h, w) = p.latent_shape();
    let channels = m.transformer.config().in_channels;

    // Text: [uncond, cond] with CFG.
    let (text, text_mask) = if p.cfg() {
        let neg = negative.ok_or_else(|| {
            ModelError::InvalidInput(
                "guidance_scale > 1 needs the negative prompt's embeddings".into(),
            )
        })?;
        (
            Tensor::f_cat(&[&neg.embeds, &prompt.embeds], 0)?,
            Tensor::f_cat(&[&neg.mask, &prompt.mask], 0)?,
        )
    } else {
        (prompt.embeds.shallow_clone(), prompt.mask.shallow_clone())
    };

    // Conditions at the run's size, trimmed like diffusers.
    let mut tensors = Vec::with_capacity(conditions.len());
    for (i, c) in conditions.iter().enumerate() {
        let s = c.video.size();
        if s.len() != 5 || s[0] != 1 || s[1] != 3 || s[3] != p.height || s[4] != p.width {
            return Err(ModelError::InvalidInput(format!(
                "condition {i}: pixels {s:?} must be [1, 3, F, {}, {}]",
                p.height, p.width
            )));
        }
        if c.frame_index < 0 || c.frame_index >= p.num_frames {
            return Err(ModelError::InvalidInput(format!(
                "condition {i}: frame_index {} must be in [0, {})",
                c.frame_index, p.num_frames
            )));
        }
        let mut t = c.video.shallow_clone();
        if s[2] > 1 {
            t = t.f_narrow(2, 0, trimmed_frames(c.frame_index, s[2], p.num_frames))?;
        }
        if t.size()[2] % 8 != 1 {
            return Err(ModelError::InvalidInput(format!(
                "condition {i}: {} frames; a video condition needs 8k + 1",
                t.size()[2]
            )));
        }
        tensors.push(t.f_to_device(dev)?.f_to_kind(dtype)?);
    }

    let schedule = ConditionSchedule::new(
        m.scheduler,
        p.timesteps.as_ref().map_or(p.steps, Vec::len),
        p.timesteps.as_deref(),
        p.denoise_strength,
    )?;

    // prepare_latents: the noise first, always.
    let shape = [1, channels, f, h, w];
    let noise = randn(rng, &shape, dev)?;
    let lat = match (latents, schedule.latent_sigma) {
        (Some(given), Some(sigma)) => {
            if given.size() != shape {
                return Err(ModelError::InvalidInput(format!(
                    "latents {:?} must be {shape:?} (normalised, unpacked)",
                    given.size()
                )));
            }
            let given = given.f_to_device(dev)?.f_to_kind(Kind::Float)?;
            let sigma = f64::from(sigma);
            // f32 arithmetic as diffusers' 1-element tensor: (1 − σ) in float32.
            &noise * sigma + given * f64::from(1.0f32 - sigma as f32)
        }
        _ => noise,
    };
    let (mean, std) = vae.latent_stats(dev)?;
    let conditioned = !conditions.is_empty();
    let frame_mask = Tensor::f_zeros([1, f], (Kind::Float, dev))?;
    let (mut extra, mut extra_ids, mut extra_mask) = (Vec::new(), Vec::new(), Vec::new());
    if !conditions.is_empty() {
        m.enter(Component::Vae)?;
    }
    for (c, data) in conditions.iter().zip(&tensors) {
        let post = vae.encode(data)?;
        let sample = &post.mean
            + post.std()? * randn(rng, &post.mean.size(), dev)?.f_to_kind(post.mean.kind())?;
        // diffusers normalises conditions with its default scaling factor, 1.0.
        let mut cl = ((sample - &mean) / &std).f_to_kind(Kind::Float)?;
        let (data_frames, nc) = (data.size()[2], cl.size()[2]);
        let s = c.strength;
        if c.frame_index == 0 {
            let head = lat.f_narrow(2, 0, nc.min(f))?;
            let blended = head.f_lerp(&cl.f_narrow(2, 0, nc.min(f))?, s)?;
            lat.f_narrow(2, 0, nc.min(f))?.f_copy_(&blended)?;
            let _ = frame_mask.f_narrow(1, 0, nc.min(f))?.f_fill_(s)?;
            continue;
        }
        if data_frames > 1 {
            if nc < PREFIX_LATENT_FRAMES {
                return Err(ModelError::InvalidInput(format!(
                    "a video condition after frame 0 needs at least {PREFIX_LATENT_FRAMES} latent frames, got {nc}"
                )));
            }
            if nc > PREFIX_LATENT_FRAMES {
                let start = c.frame_index / 8 + PREFIX_LATENT_FRAMES;
                let len = (nc - PREFIX_LATENT_FRAMES).min(f - start).max(0);
                if len > 0 {
                    let region = lat.f_narrow(2, start, len)?;
                    let blended = region.f_lerp(&cl.f_narrow(2, PREFIX_LATENT_FRAMES, len)?, s)?;
                    lat.f_narrow(2, start, len)?.f_copy_(&blended)?;
                    let _ = frame_mask.f_narrow(1, start, len)?.f_fill_(s)?;
                }
                cl = cl.f_narrow(2, 0, PREFIX_LATENT_FRAMES)?;
            }
        }
        let nz = randn(rng, &cl.size(), dev)?;
        let cl = nz.f_lerp(&cl, s)?;
        let ids = scale_ids(&video_ids(cl.size()[2], h, w, dev)?, c.frame_index)?;
        let packed = pack(&cl)?;
        extra_mask.push(Tensor::f_full(
            [1, packed.size()[1]],
            s,
            (Kind::Float, dev),
        )?);
        extra.push(packed);
        extra_ids.push(ids);
    }
    let ids = video_ids(f, h, w, dev)?;
    let token_mask = if conditioned {
        Some(frame_mask.f_gather(1, &ids.f_select(1, 0)?, false)?)
    } else {
        None
    };
    let mut coords = scale_ids(&ids, 0)?;
    let mut lat = pack(&lat)?;
    let n_extra: i64 = extra.iter().map(|e| e.size()[1]).sum();
    let mut token_mask = token_mask;
    if conditioned && !extra.is_empty() {
        extra.push(lat);
        lat = Tensor::f_cat(&extra, 1)?;
        extra_ids.push(coords);
        coords = Tensor::f_cat(&extra_ids, 2)?;
        if let Some(tm) = token_mask {
            extra_mask.push(tm);
            token_mask = Some(Tensor::f_cat(&extra_mask, 1)?);
        }
    }
    let coords = coords.f_to_kind(Kind::Float)?;
    let time = coords.f_select(1, 0)? * f64::from((1.0 / p.frame_rate) as f32);
    coords.f_select(1, 0)?.f_copy_(&time)?;
    let coords = if p.cfg() {
        Tensor::f_cat(&[&coords, &coords], 0)?
    } else {
        coords
    };
    let init = conditioned.then(|| lat.copy());

    m.enter(Component::Transformer)?;
    let total = schedule.timesteps.len();
    let rows = if p.cfg() { 2 } else { 1 };
    for (i, &t) in schedule.timesteps.iter().enumerate() {
        progress(ConditionStage::Denoising { step: i + 1, total })?;
        let t32 = Tensor::from_slice(&[t]).f_to_device(dev)?.f_squeeze()?;
        if let (Some(init), Some(tm)) = (&init, &token_mask) {
            if p.image_cond_noise_scale > 0.0 {
                let nz = randn(rng, &lat.size(), dev)?;
                let tt = (&t32 / 1000.0).f_square()?;
                let noised = init + (nz * p.image_cond_noise_scale) * tt;
                let hard = tm.f_gt(1.0 - 1e-6)?.f_unsqueeze(-1)?;
                lat = noised.f_where_self(&hard, &lat)?;
            }
        }
        let x_in = if p.cfg() {
            Tensor::f_cat(&[&lat, &lat], 0)?
        } else {
            lat.shallow_clone()
        }
        .f_to_kind(dtype)?;
        let mut tt = t32
            .f_expand([rows], false)?
            .f_unsqueeze(-1)?
            .f_to_kind(Kind::Float)?;
        if let Some(tm) = &token_mask {
            let tm_in = if p.cfg() {
                Tensor::f_cat(&[tm, tm], 0)?
            } else {
                tm.shallow_clone()
            };
            tt = tt.f_minimum(&((tm_in.f_neg()? + 1.0) * 1000.0))?;
        }
        let mut v = m.transformer.forward(&TransformerInput {
            hidden_states: &x_in,
            encoder_hidden_states: &text,
            timestep: &tt,
            encoder_attention_mask: Some(&text_mask),
            num_frames: f,
            height: h,
            width: w,
            rope_interpolation_scale: [1.0, 1.0, 1.0],
            video_coords: Some(&coords),
        })?;
        if p.cfg() {
            let parts = v.f_chunk(2, 0)?;
            let (uncond, cond) = (&parts[0], &parts[1]);
            v = uncond + (cond - uncond) * p.guidance_scale;
            tt = tt.f_chunk(2, 0)?[0].shallow_clone();
            if p.guidance_rescale > 0.0 {
                let dims: Vec<i64> = (1..v.dim() as i64).collect();
                let std_of = |t: &Tensor| t.f_std_correction(dims.as_slice(), 1, true);
                let rescaled = &v * (std_of(cond)? / std_of(&v)?);
                v = rescaled * p.guidance_rescale + v * (1.0 - p.guidance_rescale);
            }
        }
        let stepped = schedule.step_per_token(&tt, &v, &lat)?;
        lat = match &token_mask {
            Some(tm) => {
                let free = (tm.f_neg()? + 1.0).f_gt_tensor(&(&t32 / 1000 - 1e-6))?;
                stepped.f_where_self(&free.f_unsqueeze(-1)?, &lat)?
            }
            None => stepped,
        };
    }

    let lat = if conditioned {
        lat.f_narrow(1, n_extra, f * h * w)?
    } else {
        lat
    };
    let z = lat.f_transpose(1, 2)?.f_reshape([1, -1, f, h, w])?;
    if output == ConditionOutput::Latents {
        return Ok(z);
    }
    progress(ConditionStage::Decoding)?;
    m.enter(Component::Vae)?;
    let scaling = vae.config().scaling_factor;
    let mut z = (z * &std / scaling + &mean).f_to_kind(dtype)?;
    let temb = if vae.config().timestep_conditioning {
        let nz = randn(rng, &z.size(), dev)?.f_to_kind(z.kind())?;
        let dns = p.decode_noise_scale.unwrap_or(p.decode_timestep);
        let dns_t = Tensor::from_slice(&[dns as f32])
            .f_to_device(dev)?
            .f_to_kind(z.kind())?;
        z = (dns_t.f_neg()? + 1.0) * &z + &dns_t * nz;
        Some(
            Tensor::from_slice(&[p.decode_timestep as f32])
                .f_to_device(dev)?
                .f_to_kind(z.kind())?,
        )
    } else {
        None
    };
    // diffusers decodes without a generator: a noise-injecting decoder would draw from the
    // default generator of its device, which the seed seeded too.
    let noise = crate::tiled_decode::noise_for(vae, rng, dev)?;
    let video = match m.vae_tiling {
        Some(cfg) => {
            crate::tiled_decode::decode_tiled(vae, &z, temb.as_ref(), noise, cfg, m.kernels)?
        }
        None => vae.decode(&z, temb.as_ref(), noise)?,
    };
    let frames = (video.f_to_kind(Kind::Float)? * 0.5 + 0.5).f_clamp(0.0, 1.0)?;
    Ok(frames
        .f_select(0, 0)?
        .f_permute([1, 2, 3, 0])?
        .f_contiguous()?)
}

/// Frames in [0, 1] → uint8 on the CPU as diffusers' `output_type="pil"` makes them:
/// `(x·255).round()` (half to even, as numpy), unlike the I2V export's truncation.
pub fn round_to_u8(frames: &Tensor) -> Result<Tensor> {
    Ok((frames * 255.0)
        .f_round()?
        .f_to_kind(Kind::Uint8)?
        .f_to_device(Device::Cpu)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_are_trimmed_like_diffusers() {
        assert_eq!(trimmed_frames(0, 200, 96), 89);
        assert_eq!(trimmed_frames(0, 1, 96), 1);
        assert_eq!(trimmed_frames(16, 30, 49), 25);
    }

    #[test]
    fn token_times_follow_the_causal_rule() {
        let ids = scale_ids(&video_ids(4, 1, 1, Device::Cpu).unwrap(), 0).unwrap();
        assert_eq!(
            Vec::<i64>::try_from(ids.get(0).get(0)).unwrap(),
            vec![0, 1, 9, 17]
        );
        let ids = scale_ids(&video_ids(1, 1, 2, Device::Cpu).unwrap(), 40).unwrap();
        assert_eq!(
            Vec::<i64>::try_from(ids.get(0).get(0)).unwrap(),
            vec![40, 40]
        );
        assert_eq!(
            Vec::<i64>::try_from(ids.get(0).get(2)).unwrap(),
            vec![0, 32]
        );
    }
}
