//! `ltx-i2v generate --pipeline multiscale|condition`: the 0.9.7/0.9.8 multi-scale flow and
//! `LTXConditionPipeline` once, every input checked before any model loads.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use ltx_pipelines::condition_run::{ConditionInput, ConditionRequest};
use ltx_pipelines::ltx_condition::ConditionParams;

use crate::generate::{
    check_output, load_pipeline, read_image, report, status_line, write_outputs, GenerateArgs,
    PipelineKind,
};

/// A comma-separated timestep list (`1000,993,…,0.03`).
fn parse_timesteps(flag: &str, list: &str) -> anyhow::Result<Vec<f64>> {
    list.split(',')
        .map(|t| {
            t.trim().parse::<f64>().map_err(|_| {
                anyhow::anyhow!("{flag}: {t:?} is not a number (expected e.g. 1000,909,725,421,0)")
            })
        })
        .collect()
}

/// `PATH@FRAME[:STRENGTH]` (the last `@` splits, so paths may hold one).
fn parse_condition(spec: &str) -> anyhow::Result<(PathBuf, i64, f64)> {
    let usage = || {
        anyhow::anyhow!(
            "--condition {spec:?}: expected IMAGE_OR_VIDEO@FRAME[:STRENGTH], e.g. end.png@40:0.8"
        )
    };
    let (path, at) = spec.rsplit_once('@').ok_or_else(usage)?;
    let (frame, strength) = match at.split_once(':') {
        Some((f, s)) => (f, Some(s)),
        None => (at, None),
    };
    let frame = frame.trim().parse::<i64>().map_err(|_| usage())?;
    let strength = match strength {
        Some(s) => s.trim().parse::<f64>().map_err(|_| usage())?,
        None => 1.0,
    };
    if path.is_empty() {
        return Err(usage());
    }
    Ok((PathBuf::from(path), frame, strength))
}

/// An image, or a video: an `.mp4` or a folder of frames.
fn read_media(path: &Path) -> anyhow::Result<Vec<ltx_pipelines::image::RgbImage>> {
    if !path.exists() {
        bail!("condition {} does not exist", path.display());
    }
    let is_video = path.is_dir()
        || path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("mp4"));
    if is_video {
        Ok(ltx_pipelines::video_in::read_video(path)?)
    } else {
        Ok(vec![read_image(path)?])
    }
}

/// Flags that the chosen pipeline would ignore are refused rather than silently dropped.
pub(crate) fn refuse_unused(args: &GenerateArgs, kind: PipelineKind) -> anyhow::Result<()> {
    let name = match kind {
        PipelineKind::I2v => "i2v",
        PipelineKind::Multiscale => "multiscale",
        PipelineKind::Condition => "condition",
    };
    let unused: &[(&str, bool)] = match kind {
        PipelineKind::I2v => &[
            ("--upsampler", args.upsampler.is_some()),
            ("--condition", !args.conditions.is_empty()),
            ("--timesteps", args.timesteps.is_some()),
            ("--timesteps-refine", args.timesteps_refine.is_some()),
            ("--denoise-strength", args.denoise_strength.is_some()),
            (
                "--image-cond-noise-scale",
                args.image_cond_noise_scale.is_some(),
            ),
        ],
        PipelineKind::Multiscale => &[
            ("--condition", !args.conditions.is_empty()),
            ("--checkpoint", args.checkpoint.is_some()),
            ("--guidance-rescale", args.guidance_rescale != 0.0),
            ("--decode-noise-scale", args.decode_noise_scale.is_some()),
        ],
        PipelineKind::Condition => &[
            ("--upsampler", args.upsampler.is_some()),
            ("--checkpoint", args.checkpoint.is_some()),
            ("--timesteps-refine", args.timesteps_refine.is_some()),
            // diffusers applies it to given latents, which only the multi-scale refine has.
            ("--denoise-strength", args.denoise_strength.is_some()),
        ],
    };
    if let Some((flag, _)) = unused.iter().find(|(_, set)| *set) {
        let hint = match *flag {
            "--upsampler" | "--timesteps-refine" | "--denoise-strength" => {
                " (it is for --pipeline multiscale)"
            }
            "--condition" => " (it is for --pipeline condition)",
            "--checkpoint" => " (it is for --pipeline i2v)",
            _ => "",
        };
        bail!("{flag} is not used by --pipeline {name}{hint}");
    }
    Ok(())
}

fn note_frames(requested: i64) {
    let made = (requested - 1) / 8 * 8 + 1;
    if made != requested {
        eprintln!(
            "note: {requested} frames requested; the model makes 8k+1, so the video has {made} (as diffusers)"
        );
    }
}

/// `--pipeline multiscale`: the 0.9.7/0.9.8 flow with the upsampler.
pub(crate) fn run_multiscale(args: GenerateArgs, seed: u64) -> anyhow::Result<()> {
    use ltx_pipelines::multiscale::{MultiscaleParams, MultiscaleRequest, MultiscaleStage};
    refuse_unused(&args, PipelineKind::Multiscale)?;
    let params = MultiscaleParams {
        width: args.width,
        height: args.height,
        num_frames: args.frames,
        downscale_factor: args.downscale_factor,
        steps_lowres: args.steps,
        steps_refine: args.steps_refine,
        denoise_strength: args.denoise_strength.unwrap_or(0.4),
        decode_timestep: args.decode_timestep,
        image_cond_noise_scale: args.image_cond_noise_scale.unwrap_or(0.025),
        guidance_scale: args.guidance,
        frame_rate: args.frame_rate.unwrap_or(25.0),
        timesteps_lowres: args
            .timesteps
            .as_deref()
            .map(|t| parse_timesteps("--timesteps", t))
            .transpose()?,
        timesteps_refine: args
            .timesteps_refine
            .as_deref()
            .map(|t| parse_timesteps("--timesteps-refine", t))
            .transpose()?,
    };
    params.validate()?;
    let upsampler = match args.upsampler.as_deref() {
        Some("demo") => None,
        Some(path) => {
            let p = PathBuf::from(path);
            if !p.exists() {
                bail!("upsampler {} does not exist", p.display());
            }
            Some(p)
        }
        None if args.model == "demo" => None,
        None => bail!("--pipeline multiscale needs --upsampler (a folder or .safetensors file)"),
    };
    let Some(image_path) = &args.image else {
        bail!("--pipeline multiscale needs --image (the condition frame)");
    };
    let image = read_image(image_path)?;
    check_output(&args.output)?;
    note_frames(params.num_frames);
    let start = Instant::now();
    let mut pipe = load_pipeline(&args, ltx_pipelines::multiscale::CONDITION_TOKENS)?;
    match &upsampler {
        Some(path) => pipe.load_upsampler(path)?,
        None => ltx_pipelines::demo::attach_demo_upsampler(&mut pipe)?,
    }
    let loaded = start.elapsed();
    let request = MultiscaleRequest {
        prompt: args.prompt.clone(),
        negative_prompt: args.negative_prompt.clone(),
        seed,
        compress_condition: args.condition_compression,
        params,
    };
    let tty = std::io::stderr().is_terminal();
    let mut report = |s: MultiscaleStage| {
        status_line(
            tty,
            &match s {
                MultiscaleStage::EncodingText => "encoding the prompt".to_string(),
                MultiscaleStage::LowResPass => {
                    "low-resolution pass: encoding the image".to_string()
                }
                MultiscaleStage::RefinePass => "refine pass: encoding the image".to_string(),
                MultiscaleStage::LowRes { step, total } => {
                    format!("low-resolution pass, step {step}/{total}")
                }
                MultiscaleStage::Upsampling => "upsampling the latents".to_string(),
                MultiscaleStage::Refine { step, total } => {
                    format!("refine pass, step {step}/{total}")
                }
                MultiscaleStage::Decoding => "decoding the video".to_string(),
                MultiscaleStage::Resizing => "resizing the frames".to_string(),
            },
        )
    };
    let frames = pipe.generate_multiscale(&image, &request, &mut report, &|| false)?;
    if tty {
        eprintln!();
    }
    write_outputs(&args, &frames, args.fps, seed, &pipe, start, loaded)
}

/// `--pipeline condition`: `LTXConditionPipeline` once with `--image` at frame 0 and the
/// `--condition`s.
pub(crate) fn run_condition(args: GenerateArgs, seed: u64) -> anyhow::Result<()> {
    refuse_unused(&args, PipelineKind::Condition)?;
    let params = ConditionParams {
        height: args.height,
        width: args.width,
        num_frames: args.frames,
        frame_rate: args.frame_rate.unwrap_or(25.0),
        steps: args.steps,
        timesteps: args
            .timesteps
            .as_deref()
            .map(|t| parse_timesteps("--timesteps", t))
            .transpose()?,
        guidance_scale: args.guidance,
        guidance_rescale: args.guidance_rescale,
        image_cond_noise_scale: args.image_cond_noise_scale.unwrap_or(0.15),
        denoise_strength: 1.0,
        decode_timestep: args.decode_timestep,
        decode_noise_scale: args.decode_noise_scale,
    };
    params.validate()?;
    let mut specs = Vec::new();
    if let Some(image) = &args.image {
        specs.push((image.clone(), 0, 1.0));
    }
    for c in &args.conditions {
        specs.push(parse_condition(c)?);
    }
    let mut conditions = Vec::with_capacity(specs.len());
    for (path, frame_index, strength) in specs {
        let c = ConditionInput {
            frames: read_media(&path)?,
            frame_index,
            strength,
        };
        c.validate(params.num_frames)
            .with_context(|| format!("condition {}", path.display()))?;
        conditions.push(c);
    }
    check_output(&args.output)?;
    note_frames(params.num_frames);
    let start = Instant::now();
    let pipe = load_pipeline(&args, ltx_pipelines::multiscale::CONDITION_TOKENS)?;
    let loaded = start.elapsed();
    let request = ConditionRequest {
        prompt: args.prompt.clone(),
        negative_prompt: args.negative_prompt.clone(),
        seed,
        compress_images: args.condition_compression,
        params,
    };
    let tty = std::io::stderr().is_terminal();
    let frames =
        pipe.generate_condition(&conditions, &request, &mut |p| report(tty, p), &|| false)?;
    if tty {
        eprintln!();
    }
    write_outputs(&args, &frames, args.fps, seed, &pipe, start, loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn condition_specs_parse_with_defaults_and_paths_with_at_signs() {
        assert_eq!(
            parse_condition("a@b/end.png@40:0.8").unwrap(),
            (PathBuf::from("a@b/end.png"), 40, 0.8)
        );
        assert_eq!(
            parse_condition("clip.mp4@16").unwrap(),
            (PathBuf::from("clip.mp4"), 16, 1.0)
        );
        for bad in ["end.png", "end.png@x", "end.png@4:y", "@3"] {
            let e = parse_condition(bad).unwrap_err().to_string();
            assert!(e.contains("IMAGE_OR_VIDEO@FRAME"), "{bad}: {e}");
        }
        assert_eq!(
            parse_timesteps("--timesteps", "1000, 909,0.03").unwrap(),
            vec![1000.0, 909.0, 0.03]
        );
        assert!(parse_timesteps("--timesteps", "1000,,3")
            .unwrap_err()
            .to_string()
            .contains("not a number"));
    }
}
