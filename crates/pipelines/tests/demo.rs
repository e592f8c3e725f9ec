//! The built-in demo model: builds with nothing downloaded, generates the requested shape,
//! and is deterministic (same weights and same video for the same seed on every run).

use ltx_pipelines::demo::demo_pipeline;
use ltx_pipelines::image::RgbImage;
use ltx_pipelines::{I2vParams, LoadOptions, ModelSource};
use tch::{Device, Kind};

/// Building the demo model and generating both seed torch's process-wide generator.
static GLOBAL_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn demo_generates_the_requested_video_deterministically() {
    let _rng = GLOBAL_RNG.lock().unwrap_or_else(|p| p.into_inner());
    let opts = LoadOptions {
        device: Device::Cpu,
        dtype: Kind::Float,
    };
    let image = RgbImage {
        width: 80,
        height: 48,
        data: (0..80 * 48 * 3).map(|i| (i % 251) as u8).collect(),
    };
    let p = I2vParams {
        prompt: "a red ball".into(),
        height: 64,
        width: 96,
        num_frames: 17,
        steps: 2,
        seed: 7,
        ..I2vParams::default()
    };
    let run = || {
        let pipe = demo_pipeline(opts, 128).unwrap();
        assert_eq!(pipe.source(), &ModelSource::Demo);
        pipe.generate(&image, &p, &mut |_| {}).unwrap()
    };
    let a = run();
    assert_eq!(a.size(), [17, 64, 96, 3]);
    let (lo, hi) = (a.min().double_value(&[]), a.max().double_value(&[]));
    assert!(
        (0.0..=1.0).contains(&lo) && (0.0..=1.0).contains(&hi) && hi > lo,
        "frames in [{lo}, {hi}]"
    );
    let b = run();
    assert_eq!(
        (&a - &b).abs().max().double_value(&[]),
        0.0,
        "same seed, different video"
    );
}

#[test]
fn a_cancelled_generation_stops_at_a_step_boundary() {
    let _rng = GLOBAL_RNG.lock().unwrap_or_else(|p| p.into_inner());
    let pipe = demo_pipeline(
        LoadOptions {
            device: Device::Cpu,
            dtype: Kind::Float,
        },
        128,
    )
    .unwrap();
    let image = RgbImage {
        width: 32,
        height: 32,
        data: vec![128; 32 * 32 * 3],
    };
    let p = I2vParams {
        prompt: "x".into(),
        height: 32,
        width: 32,
        num_frames: 9,
        steps: 5,
        ..I2vParams::default()
    };
    let steps = std::cell::Cell::new(0);
    let err = pipe
        .generate_cancellable(
            &image,
            &p,
            &mut |s| {
                if let ltx_pipelines::Progress::Denoising { step, .. } = s {
                    steps.set(step);
                }
            },
            &|| steps.get() >= 2,
        )
        .unwrap_err();
    assert!(matches!(err, ltx_models::ModelError::Cancelled), "{err}");
    assert_eq!(steps.get(), 2, "stopped before step 3");
}
