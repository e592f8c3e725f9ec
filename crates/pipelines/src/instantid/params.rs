//! One InstantID generation's settings, with InstantX's `__call__` names and defaults, and the
//! checks that turn bad values into errors naming the field and the rule.

use ltx_models::sdxl::unet::DEFAULT_IP_SCALE;
use ltx_models::{ModelError, Result};

/// The largest height or width accepted (SDXL works at about 1024; InstantID's `infer.py`
/// makes the long side 1280).
pub const MAX_SIDE: i64 = 4096;

/// The most denoising steps accepted (SDXL's schedulers have 1000 training steps).
pub const MAX_STEPS: usize = 1000;

/// `StableDiffusionXLInstantIDPipeline.__call__`'s arguments this pipeline takes.
#[derive(Debug, Clone, PartialEq)]
pub struct InstantIdParams {
    pub prompt: String,
    /// None: zeros as the CFG negative when the folder's `force_zeros_for_empty_prompt` is set
    /// (SDXL's is), else the embeddings of `""`.
    pub negative_prompt: Option<String>,
    /// None: the keypoint image's height, floored to a multiple of 8 (diffusers' default).
    pub height: Option<i64>,
    /// None: the keypoint image's width, floored to a multiple of 8.
    pub width: Option<i64>,
    pub steps: usize,
    /// Classifier-free guidance is on when this is > 1.
    pub guidance_scale: f64,
    /// The IdentityNet residuals' weight.
    pub controlnet_conditioning_scale: f64,
    /// The face tokens' weight in every decoupled cross-attention (InstantX: 0.5 after loading
    /// unless `ip_adapter_scale` is passed; here it is applied on every call).
    pub ip_adapter_scale: f64,
    /// The fraction of the steps during which the IdentityNet is applied, start and end.
    pub control_guidance_start: f64,
    pub control_guidance_end: f64,
    /// Seeds torch's CPU generator, which draws the initial latents and the ancestral noise.
    pub seed: u64,
}

impl Default for InstantIdParams {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: None,
            height: None,
            width: None,
            steps: 50,
            guidance_scale: 5.0,
            controlnet_conditioning_scale: 1.0,
            ip_adapter_scale: DEFAULT_IP_SCALE,
            control_guidance_start: 0.0,
            control_guidance_end: 1.0,
            seed: 0,
        }
    }
}

fn bad<T>(m: String) -> Result<T> {
    Err(ModelError::InvalidInput(m))
}

fn finite_nonnegative(name: &str, v: f64) -> Result<()> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        bad(format!("{name} must be a finite number ≥ 0, got {v}"))
    }
}

impl InstantIdParams {
    /// Checks the values that do not depend on the inputs.
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 || self.steps > MAX_STEPS {
            return bad(format!(
                "steps must be between 1 and {MAX_STEPS}, got {}",
                self.steps
            ));
        }
        finite_nonnegative("guidance_scale", self.guidance_scale)?;
        finite_nonnegative(
            "controlnet_conditioning_scale",
            self.controlnet_conditioning_scale,
        )?;
        if !self.ip_adapter_scale.is_finite() {
            return bad(format!(
                "ip_adapter_scale must be a finite number, got {}",
                self.ip_adapter_scale
            ));
        }
        let (s, e) = (self.control_guidance_start, self.control_guidance_end);
        if !(s.is_finite() && e.is_finite() && 0.0 <= s && s < e && e <= 1.0) {
            return bad(format!(
                "control_guidance_start {s} and control_guidance_end {e} must satisfy \
                 0 ≤ start < end ≤ 1"
            ));
        }
        Ok(())
    }

    /// Classifier-free guidance on.
    pub fn cfg(&self) -> bool {
        self.guidance_scale > 1.0
    }

    /// The output size `(height, width)`: the given sides, or the keypoint image's floored to
    /// multiples of `multiple`; each must be a positive multiple of it, at most [`MAX_SIDE`].
    pub fn size(&self, keypoints: (usize, usize), multiple: i64) -> Result<(i64, i64)> {
        let (kh, kw) = (keypoints.0 as i64, keypoints.1 as i64);
        let h = self.height.unwrap_or(kh - kh % multiple);
        let w = self.width.unwrap_or(kw - kw % multiple);
        for (name, v, given) in [
            ("height", h, self.height.is_some()),
            ("width", w, self.width.is_some()),
        ] {
            if v <= 0 || v % multiple != 0 || v > MAX_SIDE {
                let from = if given {
                    String::new()
                } else {
                    " (from the keypoint image's size)".into()
                };
                return bad(format!(
                    "{name} must be a positive multiple of {multiple} up to {MAX_SIDE}, got {v}{from}"
                ));
            }
        }
        Ok((h, w))
    }

    /// diffusers' `controlnet_keep[i]`: 1 while step `i` of `n` lies inside
    /// [control_guidance_start, control_guidance_end], else 0.
    pub fn controlnet_keep(&self, i: usize, n: usize) -> f64 {
        let (i, n) = (i as f64, n as f64);
        let off = i / n < self.control_guidance_start || (i + 1.0) / n > self.control_guidance_end;
        if off {
            0.0
        } else {
            1.0
        }
    }
}
