//! `LTXConditionPipeline` on a loaded pipeline, as a user runs it (`ltx-i2v generate
//! --pipeline condition`): conditions given as images or videos at frame indices with
//! strengths, prompts encoded as the condition pipeline does (256 tokens, the mask to T5),
//! components entered as the memory mode places them, the frames rounded to uint8 as
//! diffusers' `output_type="pil"`.

use ltx_models::{ModelError, Result};
use tch::Tensor;

use crate::image::RgbImage;
use crate::ltx_condition::{
    generate, round_to_u8, Condition, ConditionModels, ConditionOutput, ConditionParams,
    ConditionStage,
};
use crate::Progress;

/// One condition as a user gives it: its frames (one for an image), the output frame it
/// starts at, and how strongly it holds (1 = exactly, 0 = not at all).
#[derive(Debug, Clone)]
pub struct ConditionInput {
    pub frames: Vec<RgbImage>,
    pub frame_index: i64,
    pub strength: f64,
}

impl ConditionInput {
    /// Checks what can be checked before a model loads: frames present, `frame_index` within
    /// the video, `strength` in [0, 1].
    pub fn validate(&self, num_frames: i64) -> Result<()> {
        let bad = |m: String| Err(ModelError::InvalidInput(m));
        if self.frames.is_empty() {
            return bad("a condition needs at least one frame".into());
        }
        if self.frame_index < 0 || self.frame_index >= num_frames {
            return bad(format!(
                "a condition's frame index must be in [0, {num_frames}) for {num_frames} frames, got {}",
                self.frame_index
            ));
        }
        if !(0.0..=1.0).contains(&self.strength) {
            return bad(format!(
                "a condition's strength must be in [0, 1], got {}",
                self.strength
            ));
        }
        Ok(())
    }
}

/// The prompts, seed and settings of one condition-pipeline generation.
#[derive(Debug, Clone)]
pub struct ConditionRequest {
    pub prompt: String,
    pub negative_prompt: String,
    pub seed: u64,
    /// Pass image conditions (one frame) through a one-frame H.264 video first, as for the
    /// multi-scale flow (`LTX_CONDITION_COMPRESSION`); videos are used as decoded.
    pub compress_images: bool,
    pub params: ConditionParams,
}

impl crate::LtxI2vPipeline {
    /// Runs `LTXConditionPipeline` with `conditions` (none: text to video) and returns uint8
    /// frames `[F, height, width, 3]` (F = `8·((num_frames − 1)/8) + 1`). The random draws
    /// follow diffusers' order from `torch.manual_seed(r.seed)`, from generators of the run's
    /// own.
    pub fn generate_condition(
        &self,
        conditions: &[ConditionInput],
        r: &ConditionRequest,
        progress: &mut dyn FnMut(Progress),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Tensor> {
        let p = &r.params;
        p.validate()?;
        for c in conditions {
            c.validate(p.num_frames)?;
        }
        let mut report = crate::reporter(progress, cancelled);
        let _attention = self.attention_scope();
        let out = tch::no_grad(|| -> Result<Tensor> {
            let (dev, kind) = (self.opts.device, self.opts.dtype);
            let mut tensors = Vec::with_capacity(conditions.len());
            for c in conditions {
                let mut pixels = Vec::with_capacity(c.frames.len());
                for frame in &c.frames {
                    let frame = if r.compress_images && c.frames.len() == 1 {
                        crate::video::h264_round_trip(frame).map_err(|e| {
                            ModelError::InvalidInput(format!("condition image: {e}"))
                        })?
                    } else {
                        frame.clone()
                    };
                    pixels.push(frame.to_pixels(p.width, p.height, kind, dev)?);
                }
                // [1, 3, F, H, W], as diffusers' preprocess_video stacks the frames.
                tensors.push(Condition {
                    video: Tensor::f_stack(&pixels, 2)?,
                    frame_index: c.frame_index,
                    strength: c.strength,
                });
            }
            report(Progress::EncodingText)?;
            let (prompt, negative) =
                self.encode_condition_prompts(&r.prompt, &r.negative_prompt, p.cfg())?;
            report(Progress::EncodingImage)?;
            let enter = |c| self.enter(c);
            let m = ConditionModels {
                enter: Some(&enter),
                vae_tiling: self.vae_tiling.as_ref(),
                kernels: self.kernels(),
                ..ConditionModels::new(&self.transformer, &self.vae, &self.scheduler)
            };
            let mut rng = ltx_gpu::rng::Generators::new(r.seed)?;
            let frames = generate(
                &m,
                &prompt,
                negative.as_ref(),
                &tensors,
                None,
                p,
                &mut rng,
                ConditionOutput::Frames,
                &mut |s| match s {
                    ConditionStage::Denoising { step, total } => {
                        report(Progress::Denoising { step, total })
                    }
                    ConditionStage::Decoding => report(Progress::Decoding),
                },
            )?;
            round_to_u8(&frames)
        });
        let idle = self.idle();
        let out = out?;
        idle?;
        Ok(out)
    }
}
