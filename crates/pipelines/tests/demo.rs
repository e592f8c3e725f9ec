//! The built-in demo model: builds with nothing downloaded, generates the requested shape,
//! and is deterministic (same weights and same video for the same seed on every run).

use ltx_pipelines::demo::demo_pipeline;
use ltx_pipelines::image::RgbImage;
use ltx_pipelines::tiled_decode::{TileConfig, TilingMode};
use ltx_pipelines::{I2vParams, LoadOptions, ModelSource};
use tch::{Device, Kind};

/// The demo model on the CPU in float32.
fn cpu_fp32() -> LoadOptions {
    LoadOptions {
        device: Device::Cpu,
        dtype: Kind::Float,
    }
}

/// Tiles of 64 px every 32 px (several per axis at the tests' sizes).
fn small_tiles(mode: TilingMode) -> TileConfig {
    TileConfig {
        mode,
        tile_sample_height: 64,
        tile_sample_width: 64,
        stride_sample_height: 32,
        stride_sample_width: 32,
        ..TileConfig::default()
    }
}

#[test]
fn demo_generates_the_requested_video_deterministically() {
    let opts = cpu_fp32();
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
    let pipe = demo_pipeline(cpu_fp32(), 128).unwrap();
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

#[test]
fn model_and_sequential_offload_give_the_resident_video() {
    use ltx_pipelines::{MemoryOptions, OffloadMode};
    let opts = cpu_fp32();
    let image = RgbImage {
        width: 64,
        height: 32,
        data: (0..64 * 32 * 3).map(|i| (i * 7 % 253) as u8).collect(),
    };
    let p = I2vParams {
        prompt: "a red ball".into(),
        negative_prompt: "blur".into(),
        height: 32,
        width: 64,
        num_frames: 9,
        steps: 3,
        seed: 5,
        ..I2vParams::default()
    };
    let resident = demo_pipeline(opts, 128).unwrap();
    let want = resident.generate(&image, &p, &mut |_| {}).unwrap();
    assert_eq!(resident.memory_report().mode, None);
    for (mode, prefetch) in [
        (OffloadMode::Model, 0),
        (OffloadMode::Sequential, 0),
        (OffloadMode::Sequential, 1),
        (OffloadMode::Sequential, 3),
    ] {
        let mut pipe = demo_pipeline(opts, 128).unwrap();
        // The CPU stands in for the device: same placement code, a host buffer as "VRAM".
        pipe.place(Device::Cpu, MemoryOptions { mode, prefetch })
            .unwrap();
        for run in 0..2 {
            let got = pipe.generate(&image, &p, &mut |_| {}).unwrap();
            assert!(
                got.equal(&want),
                "{mode} (prefetch {prefetch}), run {run}: max diff {}",
                (&got - &want).abs().max().double_value(&[])
            );
        }
        let r = pipe.memory_report();
        assert_eq!(r.mode, Some(mode));
        assert!(r.host_bytes >= resident.weight_bytes(), "{r:?}");
        if mode == OffloadMode::Model {
            assert_eq!(
                r.device_bytes, 0,
                "nothing stays on the device between jobs"
            );
        } else {
            assert!(
                r.device_bytes > 0 && r.device_bytes < resident.weight_bytes(),
                "{r:?}"
            );
        }
        assert!(pipe
            .place(Device::Cpu, MemoryOptions { mode, prefetch })
            .is_err());
    }
}

#[test]
fn an_injected_out_of_memory_is_retried_one_rung_down_with_the_same_video() {
    use ltx_models::ModelError;
    use ltx_pipelines::budget::run_with_ladder;
    use ltx_pipelines::{MemoryOptions, OffloadMode};
    let opts = cpu_fp32();
    let image = RgbImage {
        width: 32,
        height: 32,
        data: vec![90; 32 * 32 * 3],
    };
    let p = I2vParams {
        prompt: "x".into(),
        height: 32,
        width: 32,
        num_frames: 9,
        steps: 2,
        seed: 3,
        ..I2vParams::default()
    };
    let want = demo_pipeline(opts, 128)
        .unwrap()
        .generate(&image, &p, &mut |_| {})
        .unwrap();
    let mut modes = Vec::new();
    let (got, note) = run_with_ladder(
        (OffloadMode::Model, 1),
        |mode, prefetch, retry| -> Result<tch::Tensor, ModelError> {
            modes.push((mode, prefetch, retry));
            let mut pipe = demo_pipeline(opts, 128)?;
            pipe.place(Device::Cpu, MemoryOptions { mode, prefetch })?;
            if !retry {
                // The allocation failure, injected where the generation would have hit it.
                return Err(ModelError::Memory(
                    "CUDA out of memory. Tried to allocate 20.00 GiB (injected)".into(),
                ));
            }
            pipe.generate(&image, &p, &mut |_| {})
        },
        |e| e.to_string().contains("out of memory"),
    )
    .unwrap();
    assert_eq!(
        modes,
        vec![
            (OffloadMode::Model, 1, false),
            (OffloadMode::Sequential, 1, true)
        ]
    );
    assert!(note.unwrap().contains("retried in sequential"));
    assert!(got.equal(&want));
}

#[test]
fn tiled_decoding_in_the_pipeline_keeps_the_shape_and_range() {
    let opts = cpu_fp32();
    let image = RgbImage {
        width: 96,
        height: 64,
        data: (0..96 * 64 * 3).map(|i| (i * 5 % 251) as u8).collect(),
    };
    let p = I2vParams {
        prompt: "tiles".into(),
        height: 64,
        width: 96,
        num_frames: 9,
        steps: 2,
        seed: 4,
        ..I2vParams::default()
    };
    let mut pipe = demo_pipeline(opts, 128).unwrap();
    let untiled = pipe.generate(&image, &p, &mut |_| {}).unwrap();
    for mode in [TilingMode::Weighted, TilingMode::DiffusersCompatible] {
        pipe.set_vae_tiling(Some(small_tiles(mode))).unwrap();
        let tiled = pipe.generate(&image, &p, &mut |_| {}).unwrap();
        assert_eq!(tiled.size(), untiled.size(), "{mode:?}");
        let (lo, hi) = (tiled.min().double_value(&[]), tiled.max().double_value(&[]));
        assert!(
            (0.0..=1.0).contains(&lo) && (0.0..=1.0).contains(&hi),
            "{mode:?}"
        );
        assert!(!tiled.equal(&untiled), "{mode:?}: the decode was not tiled");
    }
    let bad = TileConfig {
        stride_sample_width: 8,
        ..TileConfig::default()
    };
    assert!(pipe.set_vae_tiling(Some(bad)).is_err());
}

#[test]
fn the_uint8_output_is_the_bytes_of_the_float_output() {
    use ltx_pipelines::video::frames_to_u8;
    let opts = cpu_fp32();
    let image = RgbImage {
        width: 96,
        height: 64,
        data: (0..96 * 64 * 3).map(|i| (i * 3 % 251) as u8).collect(),
    };
    let p = I2vParams {
        prompt: "bytes".into(),
        height: 64,
        width: 96,
        num_frames: 9,
        steps: 2,
        seed: 8,
        ..I2vParams::default()
    };
    let mut pipe = demo_pipeline(opts, 128).unwrap();
    // Untiled, diffusers-tiled, and weighted-tiled (where the canvas goes straight to bytes).
    for tiling in [
        None,
        Some(small_tiles(TilingMode::DiffusersCompatible)),
        Some(small_tiles(TilingMode::Weighted)),
    ] {
        pipe.set_vae_tiling(tiling.clone()).unwrap();
        let floats = pipe.generate(&image, &p, &mut |_| {}).unwrap();
        let bytes = pipe
            .generate_u8(&image, &p, &mut |_| {}, &|| false)
            .unwrap();
        assert_eq!(bytes.kind(), Kind::Uint8);
        assert_eq!(bytes.size(), floats.size());
        let want: Vec<u8> = frames_to_u8(&floats).unwrap().concat();
        let got = Vec::<u8>::try_from(&bytes.flatten(0, -1)).unwrap();
        assert!(got == want, "{tiling:?}: the bytes differ");
        assert_eq!(
            frames_to_u8(&bytes).unwrap().concat(),
            want,
            "u8 frames pass through"
        );
    }
}

#[test]
fn the_demo_runs_the_multiscale_flow_deterministically_and_offloaded_like_resident() {
    use ltx_pipelines::demo::attach_demo_upsampler;
    use ltx_pipelines::multiscale::{MultiscaleParams, MultiscaleRequest, MultiscaleStage};
    use ltx_pipelines::{MemoryOptions, OffloadMode};
    let opts = cpu_fp32();
    let image = RgbImage {
        width: 90,
        height: 60,
        data: (0..90 * 60 * 3).map(|i| (i * 13 % 255) as u8).collect(),
    };
    let r = MultiscaleRequest {
        prompt: "a red ball".into(),
        negative_prompt: "blurry".into(),
        seed: 3,
        compress_condition: true,
        params: MultiscaleParams {
            width: 100,
            height: 70,
            num_frames: 24,
            steps_lowres: 2,
            steps_refine: 5,
            ..MultiscaleParams::default()
        },
    };
    let run = |pipe: &ltx_pipelines::LtxI2vPipeline| {
        let mut stages = Vec::new();
        let v = pipe
            .generate_multiscale(&image, &r, &mut |s| stages.push(s), &|| false)
            .unwrap();
        (v, stages)
    };
    let with_upsampler = |mut p: ltx_pipelines::LtxI2vPipeline| {
        attach_demo_upsampler(&mut p).unwrap();
        p
    };
    let bare = demo_pipeline(opts, 128).unwrap();
    let e = bare
        .generate_multiscale(&image, &r, &mut |_| {}, &|| false)
        .err()
        .unwrap();
    assert!(e.to_string().contains("needs a latent upsampler"), "{e}");
    let resident = with_upsampler(bare);
    let (a, stages) = run(&resident);
    // 24 requested frames: (24 − 1)/8 + 1 = 3 latent frames, decoded to 17; any output size.
    assert_eq!(a.size(), [17, 70, 100, 3]);
    assert_eq!(a.kind(), Kind::Uint8);
    assert_eq!(
        stages
            .iter()
            .filter(|s| matches!(s, MultiscaleStage::Refine { .. }))
            .count(),
        2
    );
    let (b, _) = run(&resident);
    assert!(a.equal(&b), "same seed, different video");
    // The residency estimate has the upsample stage: 4 tensors of the demo upsampler's 32
    // mid channels at the doubled pass-1 latent (pass 1 is 64x32 → 2x1 latents → 4x2), 3
    // latent frames, fp32.
    let w = resident.multiscale_workload(&r.params).unwrap();
    assert_eq!(w.upsample_activations, 4 * 32 * 3 * 4 * 2 * 4);
    assert!(w.decode_activations > 0 && w.transformer_activations > 0);
    let mut placed = demo_pipeline(opts, 128).unwrap();
    placed
        .place(
            Device::Cpu,
            MemoryOptions {
                mode: OffloadMode::Model,
                prefetch: 0,
            },
        )
        .unwrap();
    let placed = with_upsampler(placed);
    // The upsampler is model-offloaded too: in host memory, none of it left on the "device".
    let before = placed.memory_report();
    let (c, _) = run(&placed);
    assert!(a.equal(&c), "model offload changed the video");
    let after = placed.memory_report();
    assert_eq!(after.device_bytes, 0, "weights left on the device");
    assert_eq!(after.host_bytes, before.host_bytes);
    assert!(placed.component_sizes().upsampler > 0);
    // VAE tiling applies to the flow's decode too (the residency manager may turn it on).
    let mut tiled = with_upsampler(demo_pipeline(opts, 128).unwrap());
    tiled
        .set_vae_tiling(Some(small_tiles(TilingMode::Weighted)))
        .unwrap();
    let (t, _) = run(&tiled);
    assert_eq!(t.size(), a.size());
    assert!(!t.equal(&a), "the tiled decode did not run");
    let mean_diff = (t.to_kind(Kind::Float) - a.to_kind(Kind::Float))
        .abs()
        .mean(Kind::Float)
        .double_value(&[]);
    assert!(
        mean_diff < 40.0,
        "tiled decode far from untiled: {mean_diff}"
    );
    // Cancelling stops the flow with the cancellation, not a video.
    let e = resident
        .generate_multiscale(&image, &r, &mut |_| {}, &|| true)
        .err()
        .unwrap();
    assert!(matches!(e, ltx_models::ModelError::Cancelled), "{e}");
}
