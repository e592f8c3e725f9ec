//! `InstantIdPipeline` in the memory modes on the CPU "device" (the placement code of a GPU,
//! with host buffers as the device: the same arenas, the same ring schedule, immediate
//! copies): model offload and sequential offload (prefetch 1 and 2) give the resident image
//! bit for bit, and leave no weight bytes on the device after a generation, a cancelled one
//! included.

mod instantid_common;

use instantid_common::{generator, Case};
use ltx_models::sdxl::unet::UNetInput;
use ltx_models::ModelError;
use ltx_pipelines::instantid::InstantIdPipeline;
use ltx_pipelines::{MemoryOptions, OffloadMode};
use tch::{Device, Kind, Tensor};

fn placed(c: &Case, mode: OffloadMode, prefetch: usize) -> InstantIdPipeline {
    InstantIdPipeline::from_models(c.models(), Device::Cpu, MemoryOptions { mode, prefetch })
        .unwrap()
}

const MODES: [(OffloadMode, usize); 3] = [
    (OffloadMode::Model, 2),
    (OffloadMode::Sequential, 1),
    (OffloadMode::Sequential, 2),
];

#[test]
fn offloaded_generations_equal_the_resident_one_bit_for_bit() {
    for name in ["euler_cfg", "ancestral_zero_negative"] {
        let _g = generator();
        let c = Case::load(name);
        let mut resident = placed(&c, OffloadMode::None, 0);
        let want = resident
            .generate(&c.face, &c.params, &mut |_| {}, &|| false)
            .unwrap();
        let weights = resident.weight_bytes();
        let r = resident.memory_report();
        assert_eq!((r.mode, r.device_bytes, r.host_bytes), (None, 0, weights));
        let sizes = resident.component_sizes();
        assert_eq!(sizes.total(), weights, "the handles cover every weight");
        assert!(sizes.transformer_max_unit > 0 && sizes.transformer_remainder > 0);
        assert!(
            sizes.transformer_remainder + sizes.transformer_max_unit < sizes.transformer,
            "{sizes:?}"
        );

        for (mode, prefetch) in MODES {
            let mut pipe = placed(&c, mode, prefetch);
            assert_eq!(pipe.mode(), mode);
            let r = pipe.memory_report();
            assert_eq!((r.mode, r.device_bytes, r.pinned), (Some(mode), 0, false));
            // Every weight has its master copy in the arenas (plus at most 256 bytes of
            // alignment per tensor).
            assert!(r.host_bytes >= weights, "{r:?}");
            assert!(r.host_bytes < weights + (1 << 20), "{r:?} vs {weights}");
            for run in 0..2 {
                let got = pipe
                    .generate(&c.face, &c.params, &mut |_| {}, &|| false)
                    .unwrap();
                assert!(
                    got.equal(&want),
                    "{name}, {mode} (prefetch {prefetch}), run {run}: max diff {}",
                    instantid_common::max_abs_diff(&got, &want)
                );
                let after = pipe.memory_report();
                assert_eq!(after.device_bytes, 0, "{mode}: weights left on the device");
                assert_eq!(after.host_bytes, r.host_bytes);
            }
            assert_eq!(pipe.component_sizes().total(), weights);
            let e = pipe
                .place(Device::Cpu, MemoryOptions { mode, prefetch })
                .unwrap_err();
            assert!(e.to_string().contains("already placed"), "{e}");
        }
    }
}

#[test]
fn a_cancelled_offloaded_generation_leaves_nothing_on_the_device() {
    let _g = generator();
    let c = Case::load("euler_cfg");
    for (mode, prefetch) in MODES {
        let mut pipe = placed(&c, mode, prefetch);
        let reports = std::cell::Cell::new(0);
        // Cancelled inside the denoising loop, while the UNet's and IdentityNet's weights
        // (or streamers) are on the device.
        let r = pipe.generate(
            &c.face,
            &c.params,
            &mut |_| reports.set(reports.get() + 1),
            &|| reports.get() >= 3,
        );
        assert!(matches!(r, Err(ModelError::Cancelled)), "{:?}", r.err());
        assert_eq!(reports.get(), 3);
        assert_eq!(pipe.memory_report().device_bytes, 0, "{mode}");
        let again = pipe
            .generate(&c.face, &c.params, &mut |_| {}, &|| false)
            .unwrap();
        assert!(instantid_common::max_abs_diff(&again, &c.image_u8) <= 1.0);
    }
}

#[test]
fn sequential_mode_streams_the_unet_only_inside_a_generation() {
    let c = Case::load("euler_no_cfg");
    let pipe = placed(&c, OffloadMode::Sequential, 1);
    // Between generations there is no streamer behind the UNet's block hooks: calling it is an
    // error saying so, not a silent run on the host copies.
    let m = pipe.models();
    let cfg = m.unet.config();
    let sample = Tensor::zeros([1, cfg.in_channels, 8, 8], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[500f32]);
    let cross = match &cfg.cross_attention_dim {
        ltx_models::sdxl::unet::PerBlock::One(d) => *d,
        ltx_models::sdxl::unet::PerBlock::Each(v) => v[0],
    };
    let tokens = Tensor::zeros([1, 77 + 4, cross], (Kind::Float, Device::Cpu));
    let pooled_dim = cfg.projection_class_embeddings_input_dim.unwrap()
        - 6 * cfg.addition_time_embed_dim.unwrap();
    let e = m
        .unet
        .forward(&UNetInput {
            sample: &sample,
            timestep: &t,
            encoder_hidden_states: &tokens,
            text_embeds: &Tensor::zeros([1, pooled_dim], (Kind::Float, Device::Cpu)),
            time_ids: &Tensor::zeros([1, 6], (Kind::Float, Device::Cpu)),
            down_block_additional_residuals: None,
            mid_block_additional_residual: None,
        })
        .unwrap_err();
    assert!(e.to_string().contains("not entered"), "{e}");
}
