//! `ltx-i2v bench faces`: detection and embedding time per photo, ltx-i2v against insightface
//! 2.1 in the same run (a Python subprocess; skipped with a note when it is not installed).
//! Best of `--repeat` runs per side, after one warm-up.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use ltx_face::{decode_image, AnalysisOptions, FaceAnalysis, FaceDevice, SessionOptions};
use serde_json::{json, Value};

#[derive(Debug, Args)]
pub struct FacesBench {
    /// The face model folder (antelopev2 as downloaded; the fixtures' tiny graphs also run).
    #[arg(long, env = "INSTANTID_FACE_MODELS")]
    face_models: PathBuf,
    /// cpu, cuda or cuda:N (insightface's side always runs on the CPU).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Intra-op threads, the same on both sides.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Runs per photo and side; the fastest is reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Python with tools/face-fixtures/requirements.txt installed.
    #[arg(long, env = "LTX_BENCH_PYTHON", default_value = "python3")]
    python: PathBuf,
    #[arg(long, default_value = "tools/face-fixtures/bench_insightface.py")]
    script: PathBuf,
    /// Also write the results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Photos (PNG, JPEG or WebP).
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

fn insightface(b: &FacesBench) -> anyhow::Result<Value> {
    let mut cmd = Command::new(&b.python);
    cmd.arg(&b.script)
        .arg(&b.face_models)
        .arg(b.threads.to_string())
        .arg(b.repeat.max(1).to_string());
    cmd.args(&b.images);
    let out = cmd
        .output()
        .with_context(|| format!("running {}", b.python.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        anyhow::bail!("{}", err.lines().last().unwrap_or("failed"));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

pub fn run(b: FacesBench) -> anyhow::Result<()> {
    let device: FaceDevice = b.device.parse()?;
    let opts = AnalysisOptions {
        session: SessionOptions {
            device,
            threads: b.threads,
        },
        ..Default::default()
    };
    let t = Instant::now();
    let mut fa = FaceAnalysis::new(&b.face_models, opts)?;
    let load = t.elapsed().as_secs_f64();
    let mut rust = serde_json::Map::new();
    for path in &b.images {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let img = decode_image(&bytes, u64::MAX)?;
        fa.analyze(&img)?;
        let (mut best_det, mut best_rec, mut faces) = (f64::INFINITY, f64::INFINITY, 0);
        for _ in 0..b.repeat.max(1) {
            let t = Instant::now();
            let dets = fa.detect(&img)?;
            let t_det = t.elapsed().as_secs_f64();
            let t = Instant::now();
            for d in &dets {
                if let Some(kps) = &d.kps {
                    let crop = fa.align(&img, kps)?;
                    fa.embed(&crop)?;
                }
            }
            best_det = best_det.min(t_det);
            best_rec = best_rec.min(t.elapsed().as_secs_f64());
            faces = dets.len();
        }
        rust.insert(
            path.display().to_string(),
            json!({"faces": faces, "detect_s": best_det, "embed_s": best_rec}),
        );
    }
    let py = match insightface(&b) {
        Ok(v) => Some(v),
        Err(e) => {
            println!("insightface: skipped ({e}); install tools/face-fixtures/requirements.txt and set LTX_BENCH_PYTHON");
            None
        }
    };
    println!(
        "provider {} · {} thread(s) · best of {}",
        fa.providers()[0].name,
        b.threads,
        b.repeat.max(1)
    );
    println!("| photo | faces | detect ltx-i2v (ms) | detect insightface (ms) | embed/face ltx-i2v (ms) | embed/face insightface (ms) |");
    println!("|---|---|---|---|---|---|");
    let ms = |v: &Value, k: &str| v[k].as_f64().map(|s| s * 1e3);
    for path in &b.images {
        let key = path.display().to_string();
        let r = &rust[&key];
        let p = py
            .as_ref()
            .map(|p| p["images"][&key].clone())
            .unwrap_or(Value::Null);
        let n = r["faces"].as_u64().unwrap_or(0).max(1) as f64;
        let fmt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
        println!(
            "| {key} | {} | {} | {} | {} | {} |",
            r["faces"],
            fmt(ms(r, "detect_s")),
            fmt(ms(&p, "detect_s")),
            fmt(ms(r, "embed_s").map(|v| v / n)),
            fmt(ms(&p, "embed_s").map(|v| v / p["faces"].as_u64().unwrap_or(0).max(1) as f64)),
        );
    }
    println!(
        "model load: ltx-i2v {:.3} s, insightface {}",
        load,
        py.as_ref()
            .and_then(|p| p["load_s"].as_f64())
            .map_or("-".into(), |s| format!("{s:.3} s"))
    );
    if let Some(out) = &b.json {
        let doc = json!({"threads": b.threads, "repeat": b.repeat, "provider": fa.providers()[0].name,
                         "ltx_i2v": {"load_s": load, "images": rust}, "insightface": py});
        std::fs::write(out, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}
