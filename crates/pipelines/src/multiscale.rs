//! The LTX-Video 0.9.7/0.9.8 multi-scale flow the replaced service runs behind `POST /i2v`
//! (`../shared/specs/replaced-service.md`, "What it ran"; diffusers' docs flow): a
//! low-resolution `LTXConditionPipeline` pass to latents, a 2× latent upsample, a short refine
//! pass at twice the pass-1 size from those latents, then every frame Lanczos-resized to the
//! requested size. One seeded set of generators (the run's own) across all of it.

use ltx_gpu::rng::Generators;
use ltx_models::ltx::LtxLatentUpsampler;
use ltx_models::{ModelError, Result};
use tch::Tensor;

use crate::image::RgbImage;
use crate::latent_upsample::{upsample_latents, UpsampleParams};
use crate::ltx_condition::{
    generate, Condition, ConditionModels, ConditionOutput, ConditionParams, ConditionStage,
    PromptEmbeds,
};

/// The flow's settings; defaults are the replaced service's.
#[derive(Debug, Clone, PartialEq)]
pub struct MultiscaleParams {
    /// The output size; any size (only the pass sizes are multiples of 32).
    pub width: i64,
    pub height: i64,
    /// Requested frames; the video has `8·((n − 1)/8) + 1` (96 → 89).
    pub num_frames: i64,
    pub downscale_factor: f64,
    pub steps_lowres: usize,
    pub steps_refine: usize,
    /// The refine pass runs `int(steps_refine · denoise_strength)` steps.
    pub denoise_strength: f64,
    pub decode_timestep: f64,
    /// The refine pass's image-condition noise (pass 1 keeps diffusers' 0.15).
    pub image_cond_noise_scale: f64,
    pub guidance_scale: f64,
    /// The model's frame-rate conditioning (diffusers' default 25), not the file's fps.
    pub frame_rate: f64,
    /// Custom timestep lists for the passes (the distilled models' lists); the pass then runs
    /// its list (the refine pass: the part `denoise_strength` keeps) instead of `steps_*`.
    pub timesteps_lowres: Option<Vec<f64>>,
    pub timesteps_refine: Option<Vec<f64>>,
}

impl Default for MultiscaleParams {
    fn default() -> Self {
        Self {
            width: 704,
            height: 480,
            num_frames: 96,
            downscale_factor: 2.0 / 3.0,
            steps_lowres: 40,
            steps_refine: 15,
            denoise_strength: 0.4,
            decode_timestep: 0.05,
            image_cond_noise_scale: 0.025,
            guidance_scale: 3.0,
            frame_rate: 25.0,
            timesteps_lowres: None,
            timesteps_refine: None,
        }
    }
}

/// Where the flow is, for progress reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MultiscaleStage {
    /// The prompts (once for both passes).
    EncodingText,
    /// Pass 1 begins: its condition is encoded and its latents prepared.
    LowResPass,
    LowRes {
        step: usize,
        total: usize,
    },
    Upsampling,
    /// Pass 2 begins: its condition is encoded and the upsampled latents noised.
    RefinePass,
    Refine {
        step: usize,
        total: usize,
    },
    /// The refine pass's VAE decode.
    Decoding,
    Resizing,
}

impl MultiscaleParams {
    /// `(width, height)` of pass 1 (`int(size · factor)` floored to 32) and pass 2 (twice it).
    pub fn pass_sizes(&self) -> Result<((i64, i64), (i64, i64))> {
        let floor32 = |v: i64| v - v.rem_euclid(32);
        let w = floor32((self.width as f64 * self.downscale_factor) as i64);
        let h = floor32((self.height as f64 * self.downscale_factor) as i64);
        if w < 32 || h < 32 {
            return Err(ModelError::InvalidInput(format!(
                "{}x{} with downscale_factor {} gives a {w}x{h} first pass; it needs at least 32x32",
                self.width, self.height, self.downscale_factor
            )));
        }
        Ok(((w, h), (2 * w, 2 * h)))
    }

    /// Frames the video will have (diffusers decodes `(n − 1)/8 + 1` latent frames).
    pub fn output_frames(&self) -> i64 {
        (self.num_frames - 1) / 8 * 8 + 1
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::InvalidInput(m));
        if self.width < 1 || self.height < 1 {
            return bad(format!(
                "width and height must be positive, got {}x{}",
                self.width, self.height
            ));
        }
        if self.downscale_factor.is_nan()
            || self.downscale_factor <= 0.0
            || self.downscale_factor > 1.0
        {
            return bad(format!(
                "downscale_factor must be in (0, 1], got {}",
                self.downscale_factor
            ));
        }
        if self.frame_rate.is_nan() || self.frame_rate <= 0.0 {
            return bad(format!(
                "frame_rate must be positive, got {}",
                self.frame_rate
            ));
        }
        if self.num_frames < 1 {
            return bad(format!(
                "num_frames must be at least 1, got {}",
                self.num_frames
            ));
        }
        if self.steps_lowres < 1 || self.steps_refine < 1 {
            return bad("steps_lowres and steps_refine must be at least 1".into());
        }
        if let Some(t) = &self.timesteps_lowres {
            crate::ltx_condition::check_timesteps("timesteps_lowres", t)?;
        }
        if let Some(t) = &self.timesteps_refine {
            crate::ltx_condition::check_timesteps("timesteps_refine", t)?;
        }
        let refine_steps = self
            .timesteps_refine
            .as_ref()
            .map_or(self.steps_refine, Vec::len);
        if (refine_steps as f64 * self.denoise_strength) < 1.0 {
            return bad(format!(
                "{refine_steps} refine steps × denoise_strength {} leaves no refine step",
                self.denoise_strength
            ));
        }
        self.pass_sizes().map(|_| ())
    }
}

/// Runs the flow on a condition image (already through the H.264 round trip when that is
/// wanted) and returns uint8 frames `[F, height, width, 3]`: the decoded frames rounded to
/// uint8 (diffusers' `output_type="pil"`), then Lanczos-resized to the requested size.
#[allow(clippy::too_many_arguments)]
pub fn generate_multiscale(
    m: &ConditionModels<'_>,
    upsampler: &LtxLatentUpsampler,
    prompt: &PromptEmbeds,
    negative: Option<&PromptEmbeds>,
    image: &RgbImage,
    p: &MultiscaleParams,
    rng: &mut Generators,
    progress: &mut dyn FnMut(MultiscaleStage) -> Result<()>,
) -> Result<Tensor> {
    p.validate()?;
    let ((w1, h1), (w2, h2)) = p.pass_sizes()?;
    let dev = prompt.embeds.device();
    let kind = prompt.embeds.kind();
    let pass = |w: i64, h: i64| ConditionParams {
        width: w,
        height: h,
        num_frames: p.num_frames,
        frame_rate: p.frame_rate,
        guidance_scale: p.guidance_scale,
        ..ConditionParams::default()
    };
    let cond = |w, h| -> Result<Vec<Condition>> {
        Ok(vec![Condition {
            // [1, 3, 1, H, W]: a one-frame video, as diffusers' preprocess_video makes it.
            video: image.to_pixels(w, h, kind, dev)?.f_unsqueeze(2)?,
            frame_index: 0,
            strength: 1.0,
        }])
    };
    let low = ConditionParams {
        steps: p.steps_lowres,
        timesteps: p.timesteps_lowres.clone(),
        ..pass(w1, h1)
    };
    progress(MultiscaleStage::LowResPass)?;
    let latents = generate(
        m,
        prompt,
        negative,
        &cond(w1, h1)?,
        None,
        &low,
        rng,
        ConditionOutput::Latents,
        &mut |s| match s {
            ConditionStage::Denoising { step, total } => {
                progress(MultiscaleStage::LowRes { step, total })
            }
            ConditionStage::Decoding => Ok(()),
        },
    )?;
    progress(MultiscaleStage::Upsampling)?;
    m.enter(crate::memory::Component::Upsampler)?;
    let up = upsample_latents(upsampler, m.vae, &latents, &UpsampleParams::default())?;
    progress(MultiscaleStage::RefinePass)?;
    let refine = ConditionParams {
        steps: p.steps_refine,
        timesteps: p.timesteps_refine.clone(),
        denoise_strength: p.denoise_strength,
        decode_timestep: p.decode_timestep,
        image_cond_noise_scale: p.image_cond_noise_scale,
        ..pass(w2, h2)
    };
    let frames = generate(
        m,
        prompt,
        negative,
        &cond(w2, h2)?,
        Some(&up),
        &refine,
        rng,
        ConditionOutput::Frames,
        &mut |s| match s {
            ConditionStage::Denoising { step, total } => {
                progress(MultiscaleStage::Refine { step, total })
            }
            ConditionStage::Decoding => progress(MultiscaleStage::Decoding),
        },
    )?;
    progress(MultiscaleStage::Resizing)?;
    // Rounded to uint8 (diffusers' "pil"), then Lanczos.
    let bytes = crate::ltx_condition::round_to_u8(&frames)?;
    let n = bytes.size()[0];
    let (ow, oh) = (p.width as usize, p.height as usize);
    let mut out = Vec::with_capacity(n as usize * ow * oh * 3);
    for i in 0..n {
        let data = Vec::<u8>::try_from(bytes.get(i).f_flatten(0, -1)?)?;
        let frame = RgbImage {
            width: w2 as usize,
            height: h2 as usize,
            data,
        };
        out.extend_from_slice(&frame.resize_lanczos(ow, oh).data);
    }
    Ok(Tensor::from_slice(&out).f_reshape([n, p.height, p.width, 3])?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_sizes_follow_the_service() {
        let p = MultiscaleParams {
            width: 704,
            height: 396,
            ..Default::default()
        };
        // int(704·2/3) = 469 → 448; int(396·2/3) = 264 → 256.
        assert_eq!(p.pass_sizes().unwrap(), ((448, 256), (896, 512)));
        assert_eq!(p.output_frames(), 89);
        let tiny = MultiscaleParams {
            width: 40,
            height: 40,
            ..Default::default()
        };
        assert!(tiny
            .validate()
            .unwrap_err()
            .to_string()
            .contains("at least 32x32"));
    }
}

/// Prompt tokens of `LTXConditionPipeline` (`max_sequence_length` 256).
pub const CONDITION_TOKENS: usize = 256;

/// The prompt and seed of one multi-scale generation.
#[derive(Debug, Clone, PartialEq)]
pub struct MultiscaleRequest {
    pub prompt: String,
    pub negative_prompt: String,
    pub seed: u64,
    /// Pass the condition image through a one-frame H.264 video first (the model was trained
    /// on compressed video; `LTX_CONDITION_COMPRESSION`).
    pub compress_condition: bool,
    pub params: MultiscaleParams,
}

impl crate::LtxI2vPipeline {
    /// The prompt embeddings as `LTXConditionPipeline.encode_prompt` makes them: 256 tokens,
    /// the attention mask passed to T5; the negative prompt only with CFG. The text encoder
    /// enters the device first (offload modes).
    pub fn encode_condition_prompts(
        &self,
        prompt: &str,
        negative: &str,
        cfg: bool,
    ) -> Result<(PromptEmbeds, Option<PromptEmbeds>)> {
        self.enter(crate::memory::Component::TextEncoder)?;
        let tokenizer = self.tokenizer.with_max_length(CONDITION_TOKENS)?;
        let embed = |text: &str| -> Result<PromptEmbeds> {
            let tokens = tokenizer.encode(&[text])?;
            let dev = self.opts.device;
            let ids = tokens.input_ids.f_to_device(dev)?;
            let mask = tokens.attention_mask.f_to_device(dev)?;
            let embeds = tch::no_grad(|| self.text_encoder.forward_masked(&ids, &mask))?
                .f_to_kind(self.opts.dtype)?;
            Ok(PromptEmbeds { embeds, mask })
        };
        let pos = embed(prompt)?;
        let neg = if cfg { Some(embed(negative)?) } else { None };
        Ok((pos, neg))
    }

    /// Attaches the flow's latent upsampler (`params`: its parameter handles, as
    /// `open_upsampler` returns them). Without a memory mode it must be on the pipeline's
    /// device and stays resident; in `model` and `sequential` mode its weights move to host
    /// memory (pinned for CUDA) and onto the device only while it upsamples, like every
    /// model-offloaded component. A previous upsampler is dropped.
    pub fn set_upsampler(
        &mut self,
        upsampler: LtxLatentUpsampler,
        params: Vec<(String, Tensor)>,
    ) -> Result<()> {
        let (bytes, _, _) = ltx_offload::weights::group_sizes(&params, |_| None);
        match &self.memory {
            Some(m) => m
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .add_upsampler(params)?,
            None => {
                if let Some((name, t)) = params.iter().find(|(_, t)| t.device() != self.opts.device)
                {
                    return Err(ModelError::Memory(format!(
                        "the upsampler's {name} is on {:?}, the pipeline on {:?}",
                        t.device(),
                        self.opts.device
                    )));
                }
            }
        }
        self.weight_bytes = self.weight_bytes - self.sizes.upsampler + bytes;
        self.sizes.upsampler = bytes;
        self.upsampler = Some(upsampler);
        Ok(())
    }

    /// Opens a latent upsampler (a folder or an original `.safetensors` file, see
    /// `open_upsampler`) for this pipeline and attaches it: read onto the host when a memory
    /// mode will place it, else onto the pipeline's device.
    pub fn load_upsampler(&mut self, path: &std::path::Path) -> Result<()> {
        let device = if self.memory.is_some() {
            tch::Device::Cpu
        } else {
            self.opts.device
        };
        let (up, params) =
            ltx_models::ltx::upsampler::open_upsampler(path, self.opts.dtype, device)?;
        self.set_upsampler(up, params)
    }

    pub fn has_upsampler(&self) -> bool {
        self.upsampler.is_some()
    }

    /// The device memory a multi-scale generation needs besides weights: the larger of the two
    /// passes per stage (the refine pass, at twice the first pass's size, in practice), 256-token
    /// prompts, the decode at the refine size, and the latent upsample (see
    /// [`ltx_offload::budget`]).
    pub fn multiscale_workload(
        &self,
        p: &MultiscaleParams,
    ) -> Result<ltx_offload::budget::Workload> {
        let mid = self.upsampler.as_ref().map_or(
            ltx_models::ltx::LtxUpsamplerConfig::default().mid_channels,
            |u| u.config().mid_channels,
        );
        multiscale_workload(
            self.transformer.config(),
            self.vae.config(),
            self.opts.dtype,
            self.vae_tiling.as_ref(),
            mid,
            p,
        )
    }

    /// The multi-scale flow on this pipeline's components and its attached upsampler
    /// ([`crate::LtxI2vPipeline::set_upsampler`]; 0.9.5+ VAE layout): the prompt encoded as
    /// the condition pipeline does, the image optionally through the H.264 round trip, then
    /// [`generate_multiscale`]; components enter the device as the memory mode places them.
    /// Returns uint8 frames `[F, height, width, 3]`.
    pub fn generate_multiscale(
        &self,
        image: &RgbImage,
        r: &MultiscaleRequest,
        progress: &mut dyn FnMut(MultiscaleStage),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Tensor> {
        r.params.validate()?;
        let upsampler = self.upsampler.as_ref().ok_or_else(|| {
            ModelError::UnsupportedConfig(
                "the multi-scale flow needs a latent upsampler; none is attached".into(),
            )
        })?;
        let mut report = crate::reporter(progress, cancelled);
        let _attention = self.attention_scope();
        let out = tch::no_grad(|| -> Result<Tensor> {
            let image = if r.compress_condition {
                crate::video::h264_round_trip(image)
                    .map_err(|e| ModelError::InvalidInput(format!("condition image: {e}")))?
            } else {
                image.clone()
            };
            report(MultiscaleStage::EncodingText)?;
            let cfg = r.params.guidance_scale > 1.0;
            let (prompt, negative) =
                self.encode_condition_prompts(&r.prompt, &r.negative_prompt, cfg)?;
            let enter = |c| self.enter(c);
            let m = ConditionModels {
                enter: Some(&enter),
                vae_tiling: self.vae_tiling.as_ref(),
                kernels: self.kernels(),
                ..ConditionModels::new(&self.transformer, &self.vae, &self.scheduler)
            };
            let mut rng = Generators::new(r.seed)?;
            generate_multiscale(
                &m,
                upsampler,
                &prompt,
                negative.as_ref(),
                &image,
                &r.params,
                &mut rng,
                &mut report,
            )
        });
        let idle = self.idle();
        let out = out?;
        idle?;
        Ok(out)
    }
}

/// [`LtxI2vPipeline::multiscale_workload`] from the configs alone (the server plans a job
/// before the model is loaded); `upsampler_mid_channels` is the latent upsampler's width.
pub fn multiscale_workload(
    tcfg: &ltx_models::ltx::LtxTransformerConfig,
    vcfg: &ltx_models::ltx::LtxVaeConfig,
    dtype: tch::Kind,
    tiling: Option<&crate::tiled_decode::TileConfig>,
    upsampler_mid_channels: i64,
    p: &MultiscaleParams,
) -> Result<ltx_offload::budget::Workload> {
    let ((w1, h1), (w2, h2)) = p.pass_sizes()?;
    let pass = |width, height| crate::I2vParams {
        width,
        height,
        num_frames: p.output_frames(),
        steps: 1,
        guidance_scale: p.guidance_scale,
        max_sequence_length: CONDITION_TOKENS,
        ..crate::I2vParams::default()
    };
    let workload = |q| crate::ltx_i2v::i2v_workload(tcfg, vcfg, dtype, tiling, &q);
    let (low, refine) = (workload(pass(w1, h1)), workload(pass(w2, h2)));
    let (sr, tr) = (vcfg.spatial_ratio(), vcfg.temporal_ratio());
    let latent_frames = ((p.output_frames() - 1) / tr + 1) as u64;
    let mid = upsampler_mid_channels as u64;
    let up_pixels = latent_frames * (2 * (h1 / sr) as u64) * (2 * (w1 / sr) as u64);
    Ok(ltx_offload::budget::Workload {
        text_activations: low.text_activations.max(refine.text_activations),
        transformer_activations: low
            .transformer_activations
            .max(refine.transformer_activations),
        decode_activations: refine.decode_activations,
        upsample_activations: 4 * mid * up_pixels * dtype.elt_size_in_bytes() as u64,
    })
}
