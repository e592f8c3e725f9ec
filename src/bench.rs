//! `ltx-i2v bench pipeline`: the Rust pipeline and diffusers' on the same weights, the same
//! settings and the same CPU, in one run, with per-stage times and the ratio. diffusers runs
//! in a Python subprocess (tools/ltx-fixtures/bench_diffusers.py, which also makes the
//! tiny-but-not-trivial random model both load); without its Python packages that side is
//! skipped with the reason.

mod instantid;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use ltx_pipelines::image::RgbImage;
use ltx_pipelines::{I2vParams, LoadOptions, LtxI2vPipeline, Progress};
use serde_json::{json, Value};
use tch::{Device, Kind};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Rust vs diffusers image-to-video on the CPU, stage by stage.
    Pipeline(PipelineBench),
    /// Rust vs diffusers (InstantX's pipeline) InstantID on the CPU, stage by stage.
    Instantid(instantid::InstantIdBench),
    /// GPU: the memory modes (resident, model, sequential, synchronous baseline) on an
    /// LTX-shaped transformer, and host→device bandwidth raw vs the streamer's.
    Offload(crate::bench_offload::OffloadBench),
    /// GPU: the whole pipeline (LTX-2B shapes) on simulated 16 GB and 8 GB cards in each
    /// memory mode: completes or not, time, peak memory per stage.
    Cards(crate::bench_cards::CardsBench),
    /// Bounded load test of the HTTP API on this machine (in-process server or a loopback --url).
    Http(crate::bench_http::HttpBench),
    /// Face detection + embedding per photo, ltx-i2v vs insightface in the same run.
    Faces(crate::bench_faces::FacesBench),
    /// Bounded soak of the server (a child process, loopback): a random mix for --minutes,
    /// jobs by outcome, 5xx, resident memory over time.
    Soak(crate::bench_soak::SoakBench),
}

/// Seconds per stage (text, image, denoise, decode, total) of one run from its progress marks
/// (seconds since the start at which each stage began) and its total.
pub(crate) fn stage_times(marks: &[(Progress, f64)], total: f64) -> [f64; 5] {
    let at = |want: fn(&Progress) -> bool| {
        marks
            .iter()
            .find(|(p, _)| want(p))
            .map_or(total, |(_, t)| *t)
    };
    let image_at = at(|p| *p == Progress::EncodingImage);
    let denoise_at = at(|p| matches!(p, Progress::Denoising { .. }));
    let decode_at = at(|p| *p == Progress::Decoding);
    [
        image_at,
        denoise_at - image_at,
        decode_at - denoise_at,
        total - decode_at,
        total,
    ]
}

#[derive(Debug, Args)]
pub struct PipelineBench {
    /// i2v (LTXImageToVideoPipeline) or multiscale (the 0.9.7/0.9.8 flow: condition pass,
    /// latent upsample, refine pass, resize).
    #[arg(long, value_enum, default_value = "i2v")]
    flow: crate::bench_cards::Flow,
    /// Multi-scale: the refine pass's step count (it runs int(this × 0.4)).
    #[arg(long, default_value_t = 10)]
    steps_refine: usize,
    /// Python with the packages of tools/ltx-fixtures/requirements.txt.
    #[arg(long, env = "LTX_BENCH_PYTHON", default_value = "python3")]
    python: PathBuf,
    /// Where the benchmark model is (made by the Python script when missing; default
    /// target/bench-model, or target/bench-multiscale for the multi-scale flow).
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// The diffusers side (default tools/ltx-fixtures/bench_diffusers.py, or
    /// bench_multiscale.py for the multi-scale flow).
    #[arg(long)]
    script: Option<PathBuf>,
    #[arg(long, default_value_t = 256)]
    height: i64,
    #[arg(long, default_value_t = 384)]
    width: i64,
    #[arg(long, default_value_t = 25)]
    frames: i64,
    /// Denoising steps (multi-scale: of the first pass).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Runs per side; the fastest is reported.
    #[arg(long, default_value_t = 2)]
    repeat: usize,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

const STAGES: [&str; 5] = ["text", "image", "denoise", "decode", "total"];
const MULTISCALE_STAGES: [&str; 6] = ["text", "pass1", "upsample", "pass2", "decode", "total"];

impl PipelineBench {
    fn multiscale(&self) -> bool {
        self.flow == crate::bench_cards::Flow::Multiscale
    }

    fn model_dir(&self) -> PathBuf {
        self.model_dir.clone().unwrap_or_else(|| {
            let name = if self.multiscale() {
                "bench-multiscale"
            } else {
                "bench-model"
            };
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("target")
                .join(name)
        })
    }

    fn script(&self) -> PathBuf {
        self.script.clone().unwrap_or_else(|| {
            let name = if self.multiscale() {
                "bench_multiscale.py"
            } else {
                "bench_diffusers.py"
            };
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tools/ltx-fixtures")
                .join(name)
        })
    }
}

fn python(b: &PipelineBench, args: &[&str]) -> anyhow::Result<Value> {
    let out = Command::new(&b.python)
        .arg(b.script())
        .args(args)
        .output()
        .with_context(|| format!("running {}", b.python.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no output");
        bail!(
            "{} {}: {last}",
            b.script().display(),
            args.first().unwrap_or(&"")
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .context("no JSON from the Python side")?;
    Ok(serde_json::from_str(line)?)
}

fn python_ready(b: &PipelineBench) -> Result<(), String> {
    let out = Command::new(&b.python)
        .args(["-c", "import diffusers, transformers, torch, sentencepiece"])
        .output()
        .map_err(|e| format!("{}: {e}", b.python.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(err.lines().last().unwrap_or("import failed").to_string())
    }
}

/// Seconds per stage of the fastest of `repeat` runs, from the pipeline's progress marks.
fn rust_side(dir: &Path, b: &PipelineBench) -> anyhow::Result<Value> {
    let opts = LoadOptions {
        device: Device::Cpu,
        dtype: Kind::Float,
    };
    let pipe = LtxI2vPipeline::load(dir, opts, 128)?;
    let image = RgbImage {
        width: b.width as usize,
        height: b.height as usize,
        data: (0..b.width * b.height * 3)
            .map(|i| (i * 7919 % 256) as u8)
            .collect(),
    };
    let params = I2vParams {
        prompt: "a red ball bounces on a wooden table".into(),
        height: b.height,
        width: b.width,
        num_frames: b.frames,
        steps: b.steps,
        guidance_scale: 3.0,
        decode_timestep: 0.05,
        decode_noise_scale: Some(0.025),
        ..I2vParams::default()
    };
    let mut best: Option<[f64; 5]> = None;
    for _ in 0..b.repeat.max(1) {
        let start = Instant::now();
        let mut marks: Vec<(Progress, f64)> = Vec::new();
        let _frames = pipe.generate(&image, &params, &mut |p| {
            marks.push((p, start.elapsed().as_secs_f64()))
        })?;
        let times = stage_times(&marks, start.elapsed().as_secs_f64());
        if best.is_none_or(|b| times[4] < b[4]) {
            best = Some(times);
        }
    }
    let t = best.unwrap_or_default();
    Ok(
        json!({"threads": tch::get_num_threads(), "seconds": STAGES.iter().zip(t).map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>()}),
    )
}

/// The multi-scale flow's seconds per stage (text, pass1, upsample, pass2, decode with the
/// resize, total) of the fastest of `repeat` runs, from the flow's progress marks. The
/// condition image goes in as it is (no H.264 round trip), as on the diffusers side. Ours
/// encodes the prompts once for both passes (diffusers twice: both count in `text`).
fn multiscale_side(dir: &Path, b: &PipelineBench) -> anyhow::Result<Value> {
    use ltx_pipelines::multiscale::{MultiscaleParams, MultiscaleRequest, MultiscaleStage};
    let opts = LoadOptions {
        device: Device::Cpu,
        dtype: Kind::Float,
    };
    let mut pipe = LtxI2vPipeline::load(dir, opts, 128)?;
    pipe.load_upsampler(dir)?;
    let image = RgbImage {
        width: b.width as usize,
        height: b.height as usize,
        data: (0..b.width * b.height * 3)
            .map(|i| (i * 7919 % 256) as u8)
            .collect(),
    };
    let request = MultiscaleRequest {
        prompt: "a red ball bounces on a wooden table".into(),
        negative_prompt: "worst quality, inconsistent motion, blurry, jittery, distorted".into(),
        seed: 0,
        compress_condition: false,
        params: MultiscaleParams {
            width: b.width,
            height: b.height,
            num_frames: b.frames,
            steps_lowres: b.steps,
            steps_refine: b.steps_refine,
            ..MultiscaleParams::default()
        },
    };
    let mut best: Option<[f64; 6]> = None;
    for _ in 0..b.repeat.max(1) {
        let start = Instant::now();
        let mut marks: Vec<(MultiscaleStage, f64)> = Vec::new();
        let _frames = pipe.generate_multiscale(
            &image,
            &request,
            &mut |s| marks.push((s, start.elapsed().as_secs_f64())),
            &|| false,
        )?;
        let total = start.elapsed().as_secs_f64();
        let at = |want: fn(&MultiscaleStage) -> bool| {
            marks
                .iter()
                .find(|(s, _)| want(s))
                .map_or(total, |(_, t)| *t)
        };
        let pass1_at = at(|s| *s == MultiscaleStage::LowResPass);
        let up_at = at(|s| *s == MultiscaleStage::Upsampling);
        let pass2_at = at(|s| *s == MultiscaleStage::RefinePass);
        let decode_at = at(|s| *s == MultiscaleStage::Decoding);
        let times = [
            pass1_at,
            up_at - pass1_at,
            pass2_at - up_at,
            decode_at - pass2_at,
            total - decode_at,
            total,
        ];
        if best.is_none_or(|b| total < b[5]) {
            best = Some(times);
        }
    }
    let t = best.unwrap_or_default();
    Ok(
        json!({"threads": tch::get_num_threads(), "seconds": MULTISCALE_STAGES.iter().zip(t).map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>()}),
    )
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    let b = match cmd {
        BenchCommand::Pipeline(b) => b,
        BenchCommand::Instantid(i) => return instantid::run(i),
        BenchCommand::Http(h) => return crate::bench_http::run(h),
        BenchCommand::Soak(s) => return crate::bench_soak::run(s),
        BenchCommand::Offload(o) => return crate::bench_offload::run(o),
        BenchCommand::Cards(c) => return crate::bench_cards::run(c),
        BenchCommand::Faces(f) => return crate::bench_faces::run(f),
    };
    let py = python_ready(&b);
    let model_dir = b.model_dir();
    if !model_dir.join("model_index.json").is_file() {
        match &py {
            Ok(()) => {
                eprintln!("making the benchmark model in {}", model_dir.display());
                python(&b, &["make-model", model_dir.to_str().context("model dir is not UTF-8")?])?;
            }
            Err(e) => bail!(
                "no benchmark model in {} and the Python side cannot make one ({e}); install tools/ltx-fixtures/requirements.txt or pass --model-dir",
                model_dir.display()
            ),
        }
    }
    let ms = b.multiscale();
    eprintln!(
        "config: {}, {}x{}, {} frames, {} steps{}, CFG on, fp32, CPU; best of {}",
        if ms {
            "multi-scale flow"
        } else {
            "image-to-video"
        },
        b.width,
        b.height,
        b.frames,
        b.steps,
        if ms {
            format!(" + refine int({} × 0.4)", b.steps_refine)
        } else {
            String::new()
        },
        b.repeat
    );
    let rust = if ms {
        multiscale_side(&model_dir, &b)?
    } else {
        rust_side(&model_dir, &b)?
    };
    let diffusers = match &py {
        Ok(()) => {
            let (h, w, f, s, r, sr) = (
                b.height.to_string(),
                b.width.to_string(),
                b.frames.to_string(),
                b.steps.to_string(),
                b.repeat.to_string(),
                b.steps_refine.to_string(),
            );
            let dir = model_dir.to_str().context("model dir is not UTF-8")?;
            let mut args = vec![
                "run", dir, "--height", &h, "--width", &w, "--frames", &f, "--repeat", &r,
            ];
            if ms {
                args.extend(["--steps-lowres", &s, "--steps-refine", &sr]);
            } else {
                args.extend(["--steps", &s]);
            }
            Some(python(&b, &args)?)
        }
        Err(e) => {
            println!("diffusers: skipped ({e}); install tools/ltx-fixtures/requirements.txt and set LTX_BENCH_PYTHON");
            None
        }
    };
    let stages: &[&str] = if ms { &MULTISCALE_STAGES } else { &STAGES };
    println!("| stage    | ltx-i2v (s) | diffusers (s) | diffusers / ltx-i2v |");
    println!("|----------|-------------|---------------|---------------------|");
    for stage in stages {
        let r = rust["seconds"][stage].as_f64().unwrap_or(f64::NAN);
        let d = diffusers
            .as_ref()
            .and_then(|d| d["seconds"][stage].as_f64());
        let (ds, ratio) = match d {
            Some(d) => (format!("{d:.3}"), format!("{:.2}x", d / r)),
            None => ("-".into(), "-".into()),
        };
        println!("| {stage:<8} | {r:>11.3} | {ds:>13} | {ratio:>19} |");
    }
    if let Some(path) = &b.json {
        let doc = json!({"config": {"flow": if ms { "multiscale" } else { "i2v" }, "height": b.height, "width": b.width, "frames": b.frames, "steps": b.steps, "steps_refine": b.steps_refine, "repeat": b.repeat}, "ltx_i2v": rust, "diffusers": diffusers});
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The CUDA device `index` for a GPU benchmark, or None after printing
/// `skipped: no CUDA device (reason)` (the benchmark then exits 0); an error where CUDA is
/// required ([`ltx_gpu::cuda::cuda_required`]), so the benchmark exits non-zero.
pub fn cuda_or_skip(index: usize) -> anyhow::Result<Option<ltx_gpu::CudaDevice>> {
    ltx_gpu::cuda::open_for_suite(index).map_err(anyhow::Error::msg)
}
