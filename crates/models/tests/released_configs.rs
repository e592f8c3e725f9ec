//! The LTX-Video 0.9.7/0.9.8 configs against `../shared/specs/ltx-condition.md` §4 (diffusers'
//! `convert_ltx_to_diffusers.py` for "0.9.7"; dev and distilled share them): the 13B
//! transformer, the VAE (the 0.9.5 layout), and the spatial upscaler's defaults.

use ltx_models::ltx::single_file::{released_vae_config, VaeLayout};
use ltx_models::ltx::{LtxTransformerConfig, LtxUpsamplerConfig};
use ltx_models::scheduler::FlowMatchConfig;

#[test]
fn the_13b_transformer_config_is_the_specs() {
    let c = LtxTransformerConfig::ltx_13b();
    assert_eq!((c.in_channels, c.out_channels), (128, 128));
    assert_eq!((c.patch_size, c.patch_size_t), (1, 1));
    assert_eq!(
        (c.num_attention_heads, c.attention_head_dim, c.inner_dim()),
        (32, 128, 4096)
    );
    assert_eq!(
        (c.cross_attention_dim, c.num_layers, c.caption_channels),
        (4096, 48, 4096)
    );
    assert_eq!(c.activation_fn, "gelu-approximate");
    assert_eq!(c.qk_norm, "rms_norm_across_heads");
    assert!(!c.norm_elementwise_affine);
    assert_eq!(c.norm_eps, 1e-6);
    assert!(c.attention_bias && c.attention_out_bias);
}

#[test]
fn the_0_9_7_vae_config_is_the_0_9_5_layout_of_the_spec() {
    let v = released_vae_config(VaeLayout::V095);
    assert_eq!(v.block_out_channels, [128, 256, 512, 1024, 2048]);
    assert_eq!(v.down_block_types, ["LTXVideo095DownBlock3D"; 4]);
    assert_eq!(v.layers_per_block, [4, 6, 6, 2, 2]);
    assert_eq!(
        v.downsample_type,
        ["spatial", "temporal", "spatiotemporal", "spatiotemporal"]
    );
    assert_eq!(v.decoder_block_out_channels, [256, 512, 1024]);
    assert_eq!(v.decoder_layers_per_block, [5, 5, 5, 5]);
    assert_eq!(v.decoder_spatio_temporal_scaling, [true, true, true]);
    assert!(v.decoder_inject_noise.iter().all(|n| !n));
    assert_eq!(v.upsample_residual, [true, true, true]);
    assert_eq!(v.upsample_factor, [2, 2, 2]);
    assert!(v.timestep_conditioning);
    assert_eq!((v.patch_size, v.patch_size_t), (4, 1));
    assert!(v.encoder_causal && !v.decoder_causal);
    assert_eq!(v.scaling_factor, 1.0);
    assert_eq!((v.spatial_ratio(), v.temporal_ratio()), (32, 8));
}

#[test]
fn the_upscaler_and_scheduler_defaults_are_the_specs() {
    let u = LtxUpsamplerConfig::default();
    assert_eq!(
        (
            u.in_channels,
            u.mid_channels,
            u.num_blocks_per_stage,
            u.dims
        ),
        (128, 512, 4, 3)
    );
    assert!(u.spatial_upsample && !u.temporal_upsample);
    // A config.json that declares only `_class_name` (as the upscaler repo's does) is all
    // defaults.
    let parsed: LtxUpsamplerConfig =
        serde_json::from_str(r#"{"_class_name": "LTXLatentUpsamplerModel"}"#).unwrap();
    assert_eq!(parsed, u);
    // 0.9.7's scheduler: every default, no dynamic shifting (which the condition pipeline refuses).
    let s = FlowMatchConfig::default();
    assert!(!s.use_dynamic_shifting && s.shift == 1.0 && s.shift_terminal.is_none());
}
