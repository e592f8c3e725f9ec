//! The built-in demo model: builds with nothing downloaded, generates the requested shape,
//! and is deterministic (same weights and same video for the same seed on every run).

use ltx_pipelines::demo::demo_pipeline;
use ltx_pipelines::image::RgbImage;
use ltx_pipelines::{I2vParams, LoadOptions, ModelSource};
use tch::{Device, Kind};

#[test]
fn demo_generates_the_requested_video_deterministically() {
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
