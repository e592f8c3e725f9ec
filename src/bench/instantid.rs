//! `ltx-i2v bench instantid`: our InstantID denoising loop and diffusers' (InstantX's pipeline:
//! StableDiffusionXLControlNetPipeline + the face path, tools/sdxl-fixtures/bench_instantid.py)
//! on the same tiny-but-not-trivial random model set, the same settings and the same CPU, in
//! one run, per stage: text encoding, face tokens + control image + latents, the
//! IdentityNet + UNet steps, the VAE decode. Without the Python packages the diffusers side is
//! skipped with the reason.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use ltx_pipelines::image::RgbImage;
use ltx_pipelines::instantid::{
    InstantIdLoadOptions, InstantIdModels, InstantIdParams, InstantIdPaths,
};
use ltx_pipelines::Progress;
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

#[derive(Debug, Args)]
pub struct InstantIdBench {
    /// Python with the packages of tools/ltx-fixtures/requirements.txt.
    #[arg(long, env = "LTX_BENCH_PYTHON", default_value = "python3")]
    python: PathBuf,
    /// Where the benchmark model set is (made by the Python script when missing; default
    /// target/bench-instantid).
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// The diffusers side (default tools/sdxl-fixtures/bench_instantid.py).
    #[arg(long)]
    script: Option<PathBuf>,
    #[arg(long, default_value_t = 256)]
    height: i64,
    #[arg(long, default_value_t = 256)]
    width: i64,
    #[arg(long, default_value_t = 8)]
    steps: usize,
    /// Runs per side; the fastest is reported.
    #[arg(long, default_value_t = 2)]
    repeat: usize,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

const STAGES: [&str; 5] = ["text", "image", "denoise", "decode", "total"];

impl InstantIdBench {
    fn model_dir(&self) -> PathBuf {
        self.model_dir
            .clone()
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-instantid"))
    }

    fn script(&self) -> PathBuf {
        self.script.clone().unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/sdxl-fixtures/bench_instantid.py")
        })
    }

    fn python(&self, args: &[&str]) -> anyhow::Result<Value> {
        let out = Command::new(&self.python)
            .arg(self.script())
            .args(args)
            .output()
            .with_context(|| format!("running {}", self.python.display()))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
            bail!(
                "{} {}: {}",
                self.script().display(),
                args[0],
                last.unwrap_or("no output")
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

    fn python_ready(&self) -> Result<(), String> {
        let out = Command::new(&self.python)
            .args(["-c", "import diffusers, transformers, torch, PIL"])
            .output()
            .map_err(|e| format!("{}: {e}", self.python.display()))?;
        if out.status.success() {
            return Ok(());
        }
        let err = String::from_utf8_lossy(&out.stderr);
        Err(err.lines().last().unwrap_or("import failed").to_string())
    }
}

/// Seconds per stage of the fastest of `repeat` runs, from the pipeline's progress marks.
fn rust_side(dir: &Path, b: &InstantIdBench) -> anyhow::Result<Value> {
    let paths = InstantIdPaths::from_checkpoints(&dir.join("sdxl"), dir);
    let mut models =
        InstantIdModels::load(&paths, &InstantIdLoadOptions::new(Device::Cpu, Kind::Float))?;
    tch::manual_seed(0);
    let face = Tensor::f_randn([1, 512], (Kind::Float, Device::Cpu))?;
    // A keypoint-like picture: dark with a few bright blobs (its content does not change the work).
    let (w, h) = (b.width as usize, b.height as usize);
    let data = (0..w * h * 3)
        .map(|i| {
            let (x, y) = ((i / 3) % w, (i / 3) / w);
            if (x / 16 + y / 16) % 7 == 0 {
                200
            } else {
                0
            }
        })
        .collect();
    let kps = RgbImage {
        width: w,
        height: h,
        data,
    };
    let params = InstantIdParams {
        prompt: "a portrait of a woman, film grain".into(),
        negative_prompt: Some("lowres, watermark".into()),
        height: Some(b.height),
        width: Some(b.width),
        steps: b.steps,
        guidance_scale: 5.0,
        controlnet_conditioning_scale: 0.8,
        ip_adapter_scale: 0.8,
        ..InstantIdParams::default()
    };
    let mut best: Option<[f64; 5]> = None;
    for _ in 0..b.repeat.max(1) {
        let start = Instant::now();
        let mut marks: Vec<(Progress, f64)> = Vec::new();
        let _image = models.generate(
            &face,
            &kps,
            &params,
            &mut |p| marks.push((p, start.elapsed().as_secs_f64())),
            &|| false,
        )?;
        let times = super::stage_times(&marks, start.elapsed().as_secs_f64());
        if best.is_none_or(|b| times[4] < b[4]) {
            best = Some(times);
        }
    }
    let t = best.unwrap_or_default();
    let seconds: serde_json::Map<_, _> = STAGES
        .iter()
        .zip(t)
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    Ok(json!({"threads": tch::get_num_threads(), "seconds": seconds}))
}

pub fn run(b: InstantIdBench) -> anyhow::Result<()> {
    let py = b.python_ready();
    let dir = b.model_dir();
    let dir_str = dir.to_str().context("model dir is not UTF-8")?.to_string();
    if !dir.join("sdxl/model_index.json").is_file() {
        match &py {
            Ok(()) => {
                eprintln!("making the InstantID benchmark model set in {}", dir.display());
                b.python(&["make-model", &dir_str])?;
            }
            Err(e) => bail!(
                "no benchmark model set in {} and the Python side cannot make one ({e}); install tools/ltx-fixtures/requirements.txt or pass --model-dir",
                dir.display()
            ),
        }
    }
    eprintln!(
        "config: InstantID, {}x{}, {} steps, CFG on, fp32, CPU; best of {}",
        b.width, b.height, b.steps, b.repeat
    );
    let rust = rust_side(&dir, &b)?;
    let diffusers = match &py {
        Ok(()) => {
            let (h, w, s, r) = (
                b.height.to_string(),
                b.width.to_string(),
                b.steps.to_string(),
                b.repeat.to_string(),
            );
            let args = [
                "run", &dir_str, "--height", &h, "--width", &w, "--steps", &s, "--repeat", &r,
            ];
            Some(b.python(&args)?)
        }
        Err(e) => {
            println!("diffusers: skipped ({e}); install tools/ltx-fixtures/requirements.txt and set LTX_BENCH_PYTHON");
            None
        }
    };
    println!("| stage    | ltx-i2v (s) | diffusers (s) | diffusers / ltx-i2v |");
    println!("|----------|-------------|---------------|---------------------|");
    for stage in STAGES {
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
        let doc = json!({"config": {"flow": "instantid", "height": b.height, "width": b.width, "steps": b.steps, "repeat": b.repeat}, "ltx_i2v": rust, "diffusers": diffusers});
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
