//! `ltx-i2v generate` as a user runs it: the demo model end to end to an MP4 that ffprobe reads
//! as H.264/yuv420p with the requested frames and size, and bad input refused before any
//! model loads.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;

use common::{ffprobe, BIN};

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("ltx-generate-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn input_png(dir: &Path) -> PathBuf {
    let path = dir.join("first.png");
    let img = image::RgbImage::from_fn(120, 80, |x, y| {
        image::Rgb([(x * 2) as u8, (y * 3) as u8, 128])
    });
    img.save(&path).unwrap();
    path
}

fn generate(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("generate")
        .args(args)
        .env("LTX_DEVICE", "cpu")
        .output()
        .unwrap()
}

#[test]
fn demo_model_writes_a_browser_playable_mp4_and_pngs() {
    let dir = TempDir::new("demo");
    let image = input_png(&dir.0);
    let mp4 = dir.0.join("out.mp4");
    let frames = dir.0.join("frames");
    let out = generate(&[
        "--model",
        "demo",
        "--image",
        image.to_str().unwrap(),
        "--prompt",
        "a red ball bounces",
        "--height",
        "64",
        "--width",
        "96",
        "--frames",
        "9",
        "--steps",
        "2",
        "--seed",
        "3",
        "-o",
        mp4.to_str().unwrap(),
        "--frames-dir",
        frames.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "generate failed: {stderr}");
    assert!(
        stderr.contains("random weights: the video will be noise"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("9 frames, 96x64") && stdout.contains("seed 3"),
        "{stdout}"
    );
    let s = ffprobe(&mp4);
    assert_eq!(s["codec_name"], "h264");
    assert_eq!(s["pix_fmt"], "yuv420p");
    assert_eq!(
        (s["width"].as_i64(), s["height"].as_i64()),
        (Some(96), Some(64))
    );
    assert_eq!(s["nb_read_frames"], "9");
    let pngs = std::fs::read_dir(&frames)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "png")
        })
        .count();
    assert_eq!(pngs, 9);
}

#[test]
fn bad_input_is_refused_before_any_model_loads() {
    let dir = TempDir::new("bad");
    let image = input_png(&dir.0);
    let img = image.to_str().unwrap();
    let mp4 = dir.0.join("out.mp4");
    let o = mp4.to_str().unwrap();
    let not_an_image = dir.0.join("notes.txt");
    std::fs::write(&not_an_image, "hello").unwrap();
    let model_dir = dir.0.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--model", "demo", "--image", "/nonexistent/first.png"],
            "cannot read image /nonexistent/first.png",
        ),
        (
            vec!["--model", "demo", "--image", not_an_image.to_str().unwrap()],
            "is not a readable PNG, JPEG or WebP image",
        ),
        (
            vec!["--model", "demo", "--image", img, "--height", "100"],
            "height must be a positive multiple of 32, got 100",
        ),
        (
            vec!["--model", "demo", "--image", img, "--width", "33"],
            "width must be a positive multiple of 32, got 33",
        ),
        (
            vec!["--model", "demo", "--image", img, "--frames", "10"],
            "num_frames must be 8k+1",
        ),
        (
            vec!["--model", "demo", "--image", img, "--steps", "0"],
            "steps must be at least 1",
        ),
        (
            vec!["--model", model_dir, "--image", img],
            "no model_index.json",
        ),
        (
            vec![
                "--model",
                "demo",
                "--checkpoint",
                "x.safetensors",
                "--image",
                img,
            ],
            "--checkpoint needs --model DIR",
        ),
    ];
    for (mut args, want) in cases {
        args.extend(["--prompt", "x", "-o", o]);
        let out = generate(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("loading"),
            "{args:?} loaded a model before refusing: {stderr}"
        );
    }
    assert!(!mp4.exists());
}

#[test]
fn the_demo_runs_the_multiscale_flow_to_the_requested_size_with_diffusers_frame_count() {
    let dir = TempDir::new("multiscale");
    let image = input_png(&dir.0);
    let mp4 = dir.0.join("ms.mp4");
    let frames = dir.0.join("frames");
    let out = generate(&[
        "--model",
        "demo",
        "--pipeline",
        "multiscale",
        "--image",
        image.to_str().unwrap(),
        "--prompt",
        "a red ball bounces",
        // Not multiples of 32: only the passes are floored; the frames are resized to this.
        "--width",
        "100",
        "--height",
        "70",
        "--frames",
        "24",
        "--steps",
        "2",
        "--steps-refine",
        "5",
        "--fps",
        "30",
        "--seed",
        "4",
        "-o",
        mp4.to_str().unwrap(),
        "--frames-dir",
        frames.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "generate failed: {stderr}");
    assert!(
        stderr.contains("24 frames requested") && stderr.contains("has 17"),
        "{stderr}"
    );
    assert!(stderr.contains("refine pass, step 2/2"), "{stderr}");
    let s = ffprobe(&mp4);
    assert_eq!(s["codec_name"], "h264");
    assert_eq!(
        (s["width"].as_i64(), s["height"].as_i64()),
        (Some(100), Some(70))
    );
    assert_eq!(s["nb_read_frames"], "17");
    assert_eq!(std::fs::read_dir(&frames).unwrap().count(), 17);
}

#[test]
fn multiscale_arguments_are_checked_before_any_model_loads() {
    let dir = TempDir::new("multiscale-bad");
    let image = input_png(&dir.0);
    let out_path = dir.0.join("o.mp4");
    let base = [
        "--model",
        "demo",
        "--image",
        image.to_str().unwrap(),
        "--prompt",
        "x",
        "-o",
        out_path.to_str().unwrap(),
    ];
    for (extra, want) in [
        (
            &[
                "--pipeline",
                "multiscale",
                "--width",
                "40",
                "--height",
                "40",
            ][..],
            "at least 32x32",
        ),
        (
            &["--pipeline", "multiscale", "--denoise-strength", "0.01"][..],
            "leaves no refine step",
        ),
        (
            &["--pipeline", "multiscale", "--downscale-factor", "1.5"][..],
            "downscale_factor must be in (0, 1]",
        ),
        (
            &["--pipeline", "multiscale", "--upsampler", "/nonexistent"][..],
            "upsampler /nonexistent does not exist",
        ),
        (
            &["--pipeline", "i2v", "--upsampler", "demo"][..],
            "--upsampler is not used by --pipeline i2v (it is for --pipeline multiscale)",
        ),
        (
            &["--pipeline", "multiscale", "--timesteps", "1000,1000,3"][..],
            "strictly decreasing",
        ),
        (
            &["--pipeline", "multiscale", "--guidance-rescale", "0.7"][..],
            "--guidance-rescale is not used by --pipeline multiscale",
        ),
        (
            &["--pipeline", "i2v", "--condition", "x.png@3"][..],
            "--condition is not used by --pipeline i2v",
        ),
        (
            &["--pipeline", "condition", "--denoise-strength", "0.5"][..],
            "--denoise-strength is not used by --pipeline condition",
        ),
        (
            &[
                "--pipeline",
                "condition",
                "--condition",
                "/nonexistent.png@3",
            ][..],
            "condition /nonexistent.png does not exist",
        ),
        (
            &["--pipeline", "condition", "--condition", "end.png"][..],
            "expected IMAGE_OR_VIDEO@FRAME[:STRENGTH]",
        ),
        (
            &["--pipeline", "condition", "--width", "100"][..],
            "multiples of 32",
        ),
    ] {
        let out = generate(&[&base[..], extra].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} was accepted");
        assert!(stderr.contains(want), "{extra:?}: {stderr}");
        assert!(
            !stderr.contains("loading"),
            "{extra:?} loaded a model first: {stderr}"
        );
    }
}

#[test]
fn the_demo_runs_the_condition_pipeline_with_image_and_video_conditions() {
    let dir = TempDir::new("condition");
    let image = input_png(&dir.0);
    // A 9-frame H.264 video as a condition from frame 8 (9 frames: 2 latent frames, the
    // least a later video condition may have).
    let clip = dir.0.join("clip.mp4");
    let frames = tch::Tensor::arange(9 * 48 * 64 * 3, (tch::Kind::Int64, tch::Device::Cpu))
        .remainder(251)
        .to_kind(tch::Kind::Uint8)
        .reshape([9, 48, 64, 3]);
    ltx_pipelines::video::write_mp4(&frames, 24.0, &clip).unwrap();
    let mp4 = dir.0.join("cond.mp4");
    let frame_cond = format!("{}@16:0.5", image.display());
    let video_cond = format!("{}@8:0.7", clip.display());
    let base = [
        "--model",
        "demo",
        "--pipeline",
        "condition",
        "--image",
        image.to_str().unwrap(),
        "--condition",
        &video_cond,
        "--condition",
        &frame_cond,
        "--prompt",
        "a red ball bounces",
        "--width",
        "96",
        "--height",
        "64",
        "--frames",
        "17",
        "--timesteps",
        "1000,900,500,0.03",
        "--seed",
        "5",
    ];
    let run = |out: &Path| {
        let o = generate(&[&base[..], &["-o", out.to_str().unwrap()]].concat());
        let stderr = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(o.status.success(), "generate failed: {stderr}");
        stderr
    };
    let stderr = run(&mp4);
    // The timestep list sets the step count.
    assert!(stderr.contains("denoising step 4/4"), "{stderr}");
    let s = ffprobe(&mp4);
    assert_eq!(s["codec_name"], "h264");
    assert_eq!(
        (s["width"].as_i64(), s["height"].as_i64()),
        (Some(96), Some(64))
    );
    assert_eq!(s["nb_read_frames"], "17");
    // The same seed gives the same video.
    let again = dir.0.join("again.mp4");
    run(&again);
    assert_eq!(std::fs::read(&mp4).unwrap(), std::fs::read(&again).unwrap());
}
