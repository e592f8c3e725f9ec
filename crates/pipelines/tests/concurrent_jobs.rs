//! Two jobs at once on two threads (as two device workers run them) each give, bit for bit,
//! what they give alone: every draw comes from the job's own generators and the attention
//! backend belongs to the pipeline, so nothing one thread does reaches the other — not its
//! draws, not its backend, not a third thread reseeding torch's process-wide generator and
//! switching its own backend meanwhile.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;

use ltx_models::attention::{self, AttentionBackend};
use ltx_models::ltx::LtxVaeConfig;
use ltx_models::weights::shared_generator;
use ltx_pipelines::demo::{attach_demo_upsampler, random_pipeline, RandomShapes, DEMO_SEED};
use ltx_pipelines::image::RgbImage;
use ltx_pipelines::multiscale::{MultiscaleParams, MultiscaleRequest};
use ltx_pipelines::tiled_decode::{TileConfig, TilingMode};
use ltx_pipelines::{I2vParams, LoadOptions, LtxI2vPipeline};
use tch::{Device, Kind, Tensor};

/// The demo model with noise injected in every decoder block (the 0.9.1 decoder's draws on
/// the decoder's device), on the CPU in float32.
fn pipeline(attention: AttentionBackend) -> LtxI2vPipeline {
    let demo = RandomShapes::demo();
    let shapes = RandomShapes {
        vae: LtxVaeConfig {
            decoder_inject_noise: vec![true; 4],
            ..demo.vae
        },
        ..demo
    };
    let opts = LoadOptions {
        device: Device::Cpu,
        dtype: Kind::Float,
    };
    let rng = shared_generator(Device::Cpu, DEMO_SEED).unwrap();
    let mut pipe = random_pipeline(&shapes, opts, rng, 128).unwrap();
    pipe.set_attention(attention);
    pipe
}

fn image() -> RgbImage {
    RgbImage {
        width: 48,
        height: 40,
        data: (0..48 * 40 * 3).map(|i| (i * 11 % 251) as u8).collect(),
    }
}

/// One image-to-video job: the posterior sample, the latent noise, the decode-timestep noise
/// and the decoder's injected noise (tiled: tile after tile) are all drawn.
fn i2v_job(seed: u64, attention: AttentionBackend) -> Tensor {
    let mut pipe = pipeline(attention);
    pipe.set_vae_tiling(Some(TileConfig {
        mode: TilingMode::Weighted,
        tile_sample_height: 64,
        tile_sample_width: 64,
        stride_sample_height: 32,
        stride_sample_width: 32,
        ..TileConfig::default()
    }))
    .unwrap();
    let p = I2vParams {
        prompt: "a red ball".into(),
        negative_prompt: "blurry".into(),
        height: 64,
        width: 96,
        num_frames: 9,
        steps: 2,
        seed,
        decoder_noise_seed: seed + 100,
        decode_timestep: 0.05,
        ..I2vParams::default()
    };
    assert_eq!(pipe.attention(), attention);
    pipe.generate(&image(), &p, &mut |_| {}).unwrap()
}

/// One multi-scale job (the replaced service's flow): two condition passes and the upsampler
/// on one set of generators.
fn multiscale_job(seed: u64, attention: AttentionBackend) -> Tensor {
    let mut pipe = pipeline(attention);
    attach_demo_upsampler(&mut pipe).unwrap();
    let r = MultiscaleRequest {
        prompt: "a red ball".into(),
        negative_prompt: "blurry".into(),
        seed,
        compress_condition: false,
        params: MultiscaleParams {
            width: 100,
            height: 70,
            num_frames: 9,
            steps_lowres: 2,
            steps_refine: 5,
            ..MultiscaleParams::default()
        },
    };
    pipe.generate_multiscale(&image(), &r, &mut |_| {}, &|| false)
        .unwrap()
}

/// Runs `a` and `b` at once on two threads (started together), twice each, while a third
/// thread keeps reseeding and drawing from torch's process-wide generator and switching its
/// own attention backend; returns every result.
fn together(
    a: impl Fn() -> Tensor + Sync,
    b: impl Fn() -> Tensor + Sync,
) -> (Vec<Tensor>, Vec<Tensor>) {
    let start = Barrier::new(3);
    let done = AtomicBool::new(false);
    let run = |f: &(dyn Fn() -> Tensor + Sync)| {
        start.wait();
        (0..2).map(|_| f()).collect::<Vec<_>>()
    };
    std::thread::scope(|s| {
        let noise = s.spawn(|| {
            start.wait();
            let mut n = 0u64;
            while !done.load(Ordering::Relaxed) {
                tch::manual_seed(n as i64);
                let _ = Tensor::randn([4096], (Kind::Float, Device::Cpu));
                attention::set_backend(if n.is_multiple_of(2) {
                    AttentionBackend::Sliced
                } else {
                    AttentionBackend::Math
                });
                n += 1;
                std::thread::yield_now();
            }
            n
        });
        let ha = s.spawn(|| run(&a));
        let hb = s.spawn(|| run(&b));
        let (ra, rb) = (ha.join().unwrap(), hb.join().unwrap());
        done.store(true, Ordering::Relaxed);
        let draws = noise.join().unwrap();
        assert!(draws > 0, "the neighbour thread never drew");
        (ra, rb)
    })
}

fn assert_bitwise(name: &str, alone: &Tensor, runs: &[Tensor]) {
    for (i, got) in runs.iter().enumerate() {
        assert_eq!(got.size(), alone.size(), "{name}, run {i}");
        assert!(
            got.equal(alone),
            "{name}, concurrent run {i}: not its single-job result"
        );
    }
}

#[test]
fn two_i2v_jobs_at_once_give_their_single_job_results() {
    use AttentionBackend::{Math, Sdpa};
    // Alone, one after the other.
    let a = i2v_job(1, Sdpa);
    let b = i2v_job(2, Sdpa);
    let b_math = i2v_job(2, Math);
    // The test could fail: the seeds and the backends change the bits.
    assert!(!a.equal(&b), "two seeds gave one video");
    assert!(
        !b.equal(&b_math),
        "sdpa and math attention gave identical bits: the backend pair proves nothing"
    );

    // Different seeds, one backend.
    let (ra, rb) = together(|| i2v_job(1, Sdpa), || i2v_job(2, Sdpa));
    assert_bitwise("seed 1 (sdpa)", &a, &ra);
    assert_bitwise("seed 2 (sdpa)", &b, &rb);

    // Different seeds and different backends.
    let (ra, rb) = together(|| i2v_job(1, Sdpa), || i2v_job(2, Math));
    assert_bitwise("seed 1 (sdpa) beside math", &a, &ra);
    assert_bitwise("seed 2 (math) beside sdpa", &b_math, &rb);
}

#[test]
fn two_multiscale_jobs_at_once_give_their_single_job_results() {
    use AttentionBackend::{Math, Sdpa};
    let a = multiscale_job(5, Sdpa);
    let b = multiscale_job(6, Math);
    assert!(!a.equal(&b));
    assert!(
        !multiscale_job(6, Sdpa).equal(&b),
        "the backend changes no bit: the pair proves nothing"
    );
    let (ra, rb) = together(|| multiscale_job(5, Sdpa), || multiscale_job(6, Math));
    assert_bitwise("multiscale seed 5 (sdpa)", &a, &ra);
    assert_bitwise("multiscale seed 6 (math)", &b, &rb);
}

#[test]
fn a_pipeline_without_its_own_backend_runs_with_the_callers() {
    // The server's worker sets a job's backend on its thread (the host plan's chunked
    // attention); a pipeline that has none of its own follows it.
    let demo = ltx_pipelines::demo::demo_pipeline(
        LoadOptions {
            device: Device::Cpu,
            dtype: Kind::Float,
        },
        128,
    )
    .unwrap();
    let g = attention::scoped(AttentionBackend::Math);
    assert_eq!(demo.attention(), AttentionBackend::Math);
    drop(g);
    assert_eq!(demo.attention(), attention::backend());
}

/// One InstantID job on the demo family (its initial latents from the job's generator).
fn instantid_job(seed: u64) -> Tensor {
    use ltx_pipelines::instantid::{demo::demo_instantid, InstantIdLoadOptions, InstantIdParams};
    let mut m = demo_instantid(&InstantIdLoadOptions::new(Device::Cpu, Kind::Float)).unwrap();
    let face = Tensor::from_slice(
        &(0..512)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 3.0)
            .collect::<Vec<_>>(),
    )
    .reshape([1, 512]);
    let p = InstantIdParams {
        prompt: "a portrait".into(),
        height: Some(64),
        width: Some(64),
        steps: 2,
        guidance_scale: 5.0,
        seed,
        ..InstantIdParams::default()
    };
    m.generate(&face, &image(), &p, &mut |_| {}, &|| false)
        .unwrap()
}

#[test]
fn an_instantid_job_beside_a_video_job_gives_its_single_job_result() {
    use AttentionBackend::Sdpa;
    let portrait = instantid_job(3);
    let video = i2v_job(4, Sdpa);
    assert!(
        !instantid_job(4).equal(&portrait),
        "two seeds gave one portrait"
    );
    let (rp, rv) = together(|| instantid_job(3), || i2v_job(4, Sdpa));
    assert_bitwise("instantid seed 3", &portrait, &rp);
    assert_bitwise("i2v seed 4 beside instantid", &video, &rv);
}
