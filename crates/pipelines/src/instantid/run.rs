//! One InstantID generation as InstantX's pipeline computes it (spec §3), on the loaded models:
//!
//! 1. prompt: both CLIP encoders' `hidden_states[-2]` side by side, encoder 2's pooled output;
//!    the CFG negative from the negative prompt, or zeros (`force_zeros_for_empty_prompt`);
//! 2. face tokens: the Resampler on `[zeros, embedding]` with CFG (the negative is
//!    Resampler(0), not zero); the keypoint image Lanczos-resized to (W, H), /255, NCHW,
//!    twice with CFG; `add_time_ids` = (H, W, 0, 0, H, W);
//! 3. latents `randn · init_noise_sigma` from a CPU generator of the job's own seeded with `seed`; per step
//!    the IdentityNet on the face tokens with `conditioning_scale`, the UNet on cat[text, face]
//!    with its residuals, CFG, the scheduler step (ancestral draws from the same generator);
//! 4. the VAE decode (float32 for a float16 VAE with `force_upcast`), `(x/2 + 0.5).clamp(0, 1)`,
//!    and diffusers' PIL rounding to bytes.
//!
//! Tensors are `[negative; positive]` along the batch with CFG, as diffusers orders them.

use ltx_models::sdxl::schedulers::SdxlScheduler;
use ltx_models::sdxl::unet::{ControlNetInput, UNetInput};
use ltx_models::{ModelError, Result};
use tch::{Device, Kind, Tensor};

use super::{InstantIdModels, InstantIdParams};
use crate::image::RgbImage;
use crate::memory::Component;
use crate::Progress;

/// Prompt embeddings `[B, L, C]` (both encoders' penultimate states, concatenated) and the
/// pooled embedding `[B, P]` (encoder 2's `text_embeds`).
pub struct PromptEmbeds {
    pub embeds: Tensor,
    pub pooled: Tensor,
}

/// Everything the denoising loop is conditioned on.
pub struct Conditioning {
    pub prompt: PromptEmbeds,
    /// `[B, queries, C]` in the UNet's dtype.
    pub face_tokens: Tensor,
    /// `[B, 3, H, W]` in [0, 1], in the IdentityNet's dtype.
    pub control_image: Tensor,
    /// `[B, 6]`.
    pub time_ids: Tensor,
    pub height: i64,
    pub width: i64,
}

/// What one denoising step computed (for previews and parity checks).
pub struct StepState<'a> {
    pub index: usize,
    pub timestep: f64,
    /// The latents the step started from (`[1, 4, h, w]`).
    pub latents_in: &'a Tensor,
    /// The IdentityNet's mid-block residual (batch as the UNet's).
    pub controlnet_mid: &'a Tensor,
    /// The UNet's output before guidance.
    pub unet_out: &'a Tensor,
    /// After guidance.
    pub noise_pred: &'a Tensor,
    /// The scheduler's result.
    pub latents: &'a Tensor,
}

fn invalid<T>(m: String) -> Result<T> {
    Err(ModelError::InvalidInput(m))
}

impl InstantIdModels {
    fn encode_text(&self, text: &str) -> Result<(Tensor, Tensor)> {
        let dev = self.device;
        let ids1 = self.tokenizer.encode(&[text])?.f_to_device(dev)?;
        let ids2 = self.tokenizer_2.encode(&[text])?.f_to_device(dev)?;
        let o1 = self.text_encoder.forward(&ids1)?;
        let o2 = self.text_encoder_2.forward(&ids2)?;
        let k = self.text_kind;
        let embeds = Tensor::f_cat(
            &[
                o1.penultimate_hidden_state.f_to_kind(k)?,
                o2.penultimate_hidden_state.f_to_kind(k)?,
            ],
            -1,
        )?;
        Ok((embeds, o2.pooled.f_to_kind(k)?))
    }

    /// diffusers' `encode_prompt` for one prompt (`prompt_2` = `prompt`), in text encoder 2's
    /// dtype; with `cfg`, `[negative; positive]`.
    pub fn encode_prompt(
        &self,
        prompt: &str,
        negative_prompt: Option<&str>,
        cfg: bool,
    ) -> Result<PromptEmbeds> {
        let (embeds, pooled) = self.encode_text(prompt)?;
        if !cfg {
            return Ok(PromptEmbeds { embeds, pooled });
        }
        let (neg, neg_pooled) = match negative_prompt {
            None if self.force_zeros_for_empty_prompt => {
                (embeds.f_zeros_like()?, pooled.f_zeros_like()?)
            }
            other => self.encode_text(other.unwrap_or(""))?,
        };
        Ok(PromptEmbeds {
            embeds: Tensor::f_cat(&[neg, embeds], 0)?,
            pooled: Tensor::f_cat(&[neg_pooled, pooled], 0)?,
        })
    }

    /// InstantX's `_encode_prompt_image_emb`: the face embedding (any shape with a multiple of
    /// the Resampler's embedding width values: `[512]`, `[N, 512]`, `[1, N, 512]`) reshaped to
    /// `[1, N, E]`, `[zeros; embedding]` with CFG, through the Resampler, in the UNet's dtype.
    pub fn encode_face(&self, embedding: &Tensor, cfg: bool) -> Result<Tensor> {
        let e = self.resampler.shape().embedding_dim;
        let n = embedding.numel() as i64;
        if !embedding.is_floating_point() {
            return invalid(format!(
                "face embedding must be floating point, got {:?}",
                embedding.kind()
            ));
        }
        if n == 0 || n % e != 0 {
            return invalid(format!(
                "face embedding has {n} values (shape {:?}); it must hold one or more {e}-value \
                 embeddings",
                embedding.size()
            ));
        }
        let emb = embedding.f_to_kind(Kind::Float)?;
        if !bool::try_from(emb.f_isfinite()?.f_all()?)? {
            return invalid("face embedding has NaN or infinite values".into());
        }
        let emb = emb.f_reshape([1, -1, e])?.f_to_device(self.device)?;
        let emb = if cfg {
            Tensor::f_cat(&[emb.f_zeros_like()?, emb], 0)?
        } else {
            emb
        };
        Ok(self.resampler.forward(&emb)?.f_to_kind(self.unet.kind())?)
    }

    /// diffusers' `prepare_image` for the IdentityNet: Pillow's Lanczos resize to
    /// `(width, height)` when the sizes differ, /255, `[1, 3, H, W]`, twice with CFG.
    pub fn control_image(
        &self,
        keypoints: &RgbImage,
        height: i64,
        width: i64,
        cfg: bool,
    ) -> Result<Tensor> {
        check_image(keypoints)?;
        let img = keypoints.resize_lanczos(width as usize, height as usize);
        let t = Tensor::f_from_slice(&img.data)?
            .f_reshape([height, width, 3])?
            .f_permute([2, 0, 1])?
            .f_unsqueeze(0)?
            .f_to_kind(Kind::Float)?
            .f_div_scalar(255.0)?
            .f_to_device(self.device)?
            .f_to_kind(self.controlnet_kind)?;
        Ok(if cfg { Tensor::f_cat(&[&t, &t], 0)? } else { t })
    }

    /// The UNet and IdentityNet inputs of one generation.
    pub fn conditioning(
        &self,
        face_embedding: &Tensor,
        keypoints: &RgbImage,
        p: &InstantIdParams,
    ) -> Result<Conditioning> {
        p.validate()?;
        let (height, width) = self.output_size(keypoints, p)?;
        tch::no_grad(|| {
            let prompt = self.encode_prompt(&p.prompt, p.negative_prompt.as_deref(), p.cfg())?;
            self.finish_conditioning(prompt, face_embedding, keypoints, p, height, width)
        })
    }

    fn finish_conditioning(
        &self,
        prompt: PromptEmbeds,
        face_embedding: &Tensor,
        keypoints: &RgbImage,
        p: &InstantIdParams,
        height: i64,
        width: i64,
    ) -> Result<Conditioning> {
        let cfg = p.cfg();
        let face_tokens = self.encode_face(face_embedding, cfg)?;
        let control_image = self.control_image(keypoints, height, width, cfg)?;
        let (h, w) = (height as f32, width as f32);
        let ids = Tensor::f_from_slice(&[h, w, 0.0, 0.0, h, w])?
            .f_view([1, 6])?
            .f_to_kind(self.text_kind)?
            .f_to_device(self.device)?;
        let time_ids = if cfg { ids.f_repeat([2, 1])? } else { ids };
        Ok(Conditioning {
            prompt,
            face_tokens,
            control_image,
            time_ids,
            height,
            width,
        })
    }

    /// The denoising loop from seeded noise to the final latents `[1, 4, H/8, W/8]`, every
    /// draw from a CPU generator of its own seeded with `p.seed`; sets the UNet's IP scale to
    /// `p.ip_adapter_scale`. `cancelled` is asked before every step.
    pub fn denoise(
        &mut self,
        c: &Conditioning,
        p: &InstantIdParams,
        progress: &mut dyn FnMut(Progress),
        cancelled: &dyn Fn() -> bool,
        on_step: &mut dyn FnMut(&StepState<'_>),
    ) -> Result<Tensor> {
        let mut rng = ltx_gpu::rng::Generator::new(Device::Cpu, p.seed)?;
        self.denoise_from(c, p, &mut rng, progress, cancelled, on_step)
    }

    /// [`Self::denoise`] drawing from `rng` (a CPU generator: the draws are made on the CPU
    /// and moved to the model's device, as diffusers does with a CPU generator), which is
    /// left where diffusers' generator would be after the loop.
    pub fn denoise_from(
        &mut self,
        c: &Conditioning,
        p: &InstantIdParams,
        rng: &mut ltx_gpu::rng::Generator,
        progress: &mut dyn FnMut(Progress),
        cancelled: &dyn Fn() -> bool,
        on_step: &mut dyn FnMut(&StepState<'_>),
    ) -> Result<Tensor> {
        p.validate()?;
        let mut report = crate::reporter(progress, cancelled);
        tch::no_grad(|| self.run_loop(c, p, rng, &mut report, on_step))
    }

    fn run_loop(
        &mut self,
        c: &Conditioning,
        p: &InstantIdParams,
        rng: &mut ltx_gpu::rng::Generator,
        report: &mut dyn FnMut(Progress) -> Result<()>,
        on_step: &mut dyn FnMut(&StepState<'_>),
    ) -> Result<Tensor> {
        let dev = self.device;
        let cfg = p.cfg();
        self.unet.set_ip_scale(p.ip_adapter_scale);
        let mut scheduler = SdxlScheduler::from_json(&self.scheduler_config)?;
        scheduler.set_timesteps(p.steps)?;
        let timesteps = scheduler.timesteps();
        let n = timesteps.len();

        let ratio = self.vae.spatial_ratio();
        let shape = [
            1,
            self.unet.config().in_channels,
            c.height / ratio,
            c.width / ratio,
        ];
        let mut noise = noise_source(rng, dev);
        let mut latents =
            noise(&shape, c.prompt.embeds.kind())?.f_mul_scalar(scheduler.init_noise_sigma())?;
        let unet_kind = self.unet.kind();
        let context = Tensor::f_cat(
            &[
                c.prompt.embeds.f_to_kind(unet_kind)?,
                c.face_tokens.shallow_clone(),
            ],
            1,
        )?;
        for (i, &t) in timesteps.iter().enumerate() {
            report(Progress::Denoising {
                step: i + 1,
                total: n,
            })?;
            let x = if cfg {
                Tensor::f_cat(&[&latents, &latents], 0)?
            } else {
                latents.shallow_clone()
            };
            let x = scheduler.scale_model_input(&x, i)?;
            let timestep = scheduler.timestep(i)?.f_to_device(dev)?;
            let residuals = self.controlnet.forward(&ControlNetInput {
                sample: &x,
                timestep: &timestep,
                encoder_hidden_states: &c.face_tokens,
                text_embeds: &c.prompt.pooled,
                time_ids: &c.time_ids,
                controlnet_cond: &c.control_image,
                conditioning_scale: p.controlnet_conditioning_scale * p.controlnet_keep(i, n),
                guess_mode: false,
            })?;
            let unet_out = self.unet.forward(&UNetInput {
                sample: &x,
                timestep: &timestep,
                encoder_hidden_states: &context,
                text_embeds: &c.prompt.pooled,
                time_ids: &c.time_ids,
                down_block_additional_residuals: Some(&residuals.down_block_res_samples),
                mid_block_additional_residual: Some(&residuals.mid_block_res_sample),
            })?;
            let noise_pred = if cfg {
                let parts = unet_out.f_chunk(2, 0)?;
                let (uncond, text) = (&parts[0], &parts[1]);
                uncond.f_add(&text.f_sub(uncond)?.f_mul_scalar(p.guidance_scale)?)?
            } else {
                unet_out.shallow_clone()
            };
            let next = scheduler.step(&noise_pred, i, &latents, &mut noise)?;
            on_step(&StepState {
                index: i,
                timestep: t,
                latents_in: &latents,
                controlnet_mid: &residuals.mid_block_res_sample,
                unet_out: &unet_out,
                noise_pred: &noise_pred,
                latents: &next,
            });
            latents = next;
        }
        Ok(latents)
    }

    /// Final latents → the image `[H, W, 3]` in [0, 1] (float32): the VAE in its compute dtype
    /// (float32 for float16 weights with `force_upcast`), `latents / scaling_factor`, then
    /// diffusers' `(x / 2 + 0.5).clamp(0, 1)`.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        tch::no_grad(|| {
            let z = latents.f_to_kind(self.vae.compute_kind())?;
            let image = self.vae.decode(&self.vae.unscale_latents(&z)?)?;
            Ok(image
                .f_div_scalar(2.0)?
                .f_add_scalar(0.5)?
                .f_clamp(0.0, 1.0)?
                .f_to_kind(Kind::Float)?
                .f_select(0, 0)?
                .f_permute([1, 2, 0])?
                .f_contiguous()?)
        })
    }

    /// Generates the image as bytes `[H, W, 3]` (RGB), as diffusers' PIL output.
    pub fn generate(
        &mut self,
        face_embedding: &Tensor,
        keypoints: &RgbImage,
        p: &InstantIdParams,
        progress: &mut dyn FnMut(Progress),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Tensor> {
        to_u8(&self.generate_float(face_embedding, keypoints, p, progress, cancelled)?)
    }

    /// Like [`Self::generate`], the image `[H, W, 3]` in [0, 1] before the rounding to bytes.
    pub fn generate_float(
        &mut self,
        face_embedding: &Tensor,
        keypoints: &RgbImage,
        p: &InstantIdParams,
        progress: &mut dyn FnMut(Progress),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Tensor> {
        p.validate()?;
        let (height, width) = self.output_size(keypoints, p)?;
        let mut report = crate::reporter(progress, cancelled);
        let latents = self.run_to_latents(
            face_embedding,
            keypoints,
            p,
            (height, width),
            &mut report,
            &mut |_| Ok(()),
        )?;
        report(Progress::Decoding)?;
        self.decode(&latents)
    }

    /// The output `(height, width)` for this keypoint image (see [`InstantIdParams::size`]).
    pub fn output_size(&self, keypoints: &RgbImage, p: &InstantIdParams) -> Result<(i64, i64)> {
        check_image(keypoints)?;
        p.size(
            (keypoints.height, keypoints.width),
            self.vae.spatial_ratio(),
        )
    }

    /// The stages up to the final latents, reporting each and calling `enter` with the
    /// component a stage needs before it runs (a memory system places the weights there): the
    /// text encoders for the prompt; the denoising networks for the face tokens and control
    /// image (the Resampler belongs to them, as InstantX's model offload leaves it on the
    /// UNet's device) and the loop.
    pub(crate) fn run_to_latents(
        &mut self,
        face_embedding: &Tensor,
        keypoints: &RgbImage,
        p: &InstantIdParams,
        (height, width): (i64, i64),
        report: &mut dyn FnMut(Progress) -> Result<()>,
        enter: &mut dyn FnMut(Component) -> Result<()>,
    ) -> Result<Tensor> {
        tch::no_grad(|| {
            report(Progress::EncodingText)?;
            enter(Component::TextEncoder)?;
            let prompt = self.encode_prompt(&p.prompt, p.negative_prompt.as_deref(), p.cfg())?;
            report(Progress::EncodingImage)?;
            enter(Component::Transformer)?;
            let c =
                self.finish_conditioning(prompt, face_embedding, keypoints, p, height, width)?;
            let mut rng = ltx_gpu::rng::Generator::new(Device::Cpu, p.seed)?;
            self.run_loop(&c, p, &mut rng, report, &mut |_| {})
        })
    }
}

/// Every random draw of a generation (the initial latents, then the scheduler's per-step
/// noise, in diffusers' order): from `rng`, the job's own CPU generator, each draw made on the
/// CPU and moved to `device`, as diffusers does with a CPU generator — so two jobs on two
/// threads draw what each would draw alone. The decode draws nothing.
fn noise_source(
    rng: &mut ltx_gpu::rng::Generator,
    device: Device,
) -> impl FnMut(&[i64], Kind) -> Result<Tensor> + '_ {
    move |shape: &[i64], kind: Kind| -> Result<Tensor> { Ok(rng.randn_to(shape, kind, device)?) }
}

fn check_image(img: &RgbImage) -> Result<()> {
    if img.width == 0 || img.height == 0 || img.data.len() != img.width * img.height * 3 {
        return invalid(format!(
            "keypoint image {}x{} with {} bytes: it must be a non-empty RGB image (width × \
             height × 3 bytes)",
            img.width,
            img.height,
            img.data.len()
        ));
    }
    Ok(())
}

/// `[H, W, 3]` in [0, 1] → bytes as diffusers' `numpy_to_pil`: `round(x · 255)` (half to even).
pub fn to_u8(image: &Tensor) -> Result<Tensor> {
    Ok(image
        .f_to_kind(Kind::Float)?
        .f_mul_scalar(255.0)?
        .f_round()?
        .f_to_kind(Kind::Uint8)?)
}

/// The pipeline's `[H, W, 3]` uint8 image (on any device) as an image the `image` crate
/// writes.
pub fn to_rgb_image(image: &Tensor) -> Result<image::RgbImage> {
    let size = image.size();
    let [h, w, 3] = size[..] else {
        return Err(ModelError::InvalidInput(format!(
            "expected an [H, W, 3] image, got {size:?}"
        )));
    };
    let bytes = Vec::<u8>::try_from(
        image
            .f_to_device(Device::Cpu)?
            .f_contiguous()?
            .f_flatten(0, -1)?,
    )?;
    image::RgbImage::from_raw(w as u32, h as u32, bytes).ok_or_else(|| {
        ModelError::InvalidInput(format!("{w}x{h}: the image's bytes do not fill it"))
    })
}
