//! The original single-file layout (`model.diffusion_model.*` + `vae.*`), written from the
//! 0.9.0 fixture model by tools/ltx-fixtures/make_single_file.py and proven there with
//! diffusers' own converters: loaded through our key mapping, it must give the same outputs
//! as the diffusers folder.

mod common;

use std::collections::HashMap;

use ltx_models::config::read_config;
use ltx_models::ltx::single_file::{self, VaeLayout};
use ltx_models::ltx::{LtxTransformer, LtxTransformerConfig, LtxVae};
use tch::{Device, Kind};

fn file() -> std::path::PathBuf {
    common::fixtures().join("single_file/ltx-0.9.0-single.safetensors")
}

#[test]
fn single_file_transformer_matches_the_folder_reference() {
    // The tiny model's head size is not one of the released ones, so give its config.
    let cfg: LtxTransformerConfig =
        read_config(&common::model_dir("0.9.0").join("transformer/config.json")).unwrap();
    let (store, cfg) =
        single_file::open_transformer(&file(), Kind::Float, Device::Cpu, Some(cfg)).unwrap();
    let model = LtxTransformer::new(&store.root(), cfg).unwrap();
    store.finish().unwrap();
    let (out, want) = common::transformer_on_refs(&model);
    assert!(common::max_abs_diff(&out, &want) <= 1e-4);
}

#[test]
fn single_file_vae_is_detected_as_0_9_0_and_matches_the_folder_reference() {
    let r = common::refs("vae_0.9.0.safetensors");
    let cfg = read_config(&common::model_dir("0.9.0").join("vae/config.json")).unwrap();
    let (store, cfg, layout) =
        single_file::open_vae(&file(), Kind::Float, Device::Cpu, Some(cfg)).unwrap();
    assert_eq!(layout, VaeLayout::V090);
    let vae = LtxVae::new(&store.root(), cfg).unwrap();
    store.finish().unwrap();
    tch::no_grad(|| {
        let post = vae.encode(&r["image"]).unwrap();
        assert!(common::max_abs_diff(&post.mean, &r["posterior_mean"]) <= 1e-4);
        let out = vae.decode(&r["decode_latents"], None, None).unwrap();
        assert!(common::max_abs_diff(&out, &r["decoded"]) <= 1e-4);
    });
}

#[test]
fn released_configs_are_read_off_the_weights() {
    let shapes = |d: i64, blocks: i64| -> HashMap<String, Vec<i64>> {
        let mut m: HashMap<String, Vec<i64>> = HashMap::new();
        m.insert(
            "model.diffusion_model.patchify_proj.weight".into(),
            vec![d, 128],
        );
        m.insert(
            "model.diffusion_model.caption_projection.linear_1.weight".into(),
            vec![d, 4096],
        );
        for i in 0..blocks {
            m.insert(
                format!("model.diffusion_model.transformer_blocks.{i}.scale_shift_table"),
                vec![6, d],
            );
        }
        m
    };
    let two_b = single_file::transformer_config(&shapes(2048, 28)).unwrap();
    assert_eq!(
        (
            two_b.num_attention_heads,
            two_b.attention_head_dim,
            two_b.num_layers
        ),
        (32, 64, 28)
    );
    let thirteen_b = single_file::transformer_config(&shapes(4096, 48)).unwrap();
    assert_eq!(
        (
            thirteen_b.num_attention_heads,
            thirteen_b.attention_head_dim,
            thirteen_b.num_layers
        ),
        (32, 128, 48)
    );
    assert_eq!(thirteen_b.caption_channels, 4096);

    let mut vae: HashMap<String, Vec<i64>> = HashMap::new();
    vae.insert(
        "vae.encoder.conv_out.conv.weight".into(),
        vec![129, 2048, 3, 3, 3],
    );
    assert_eq!(
        single_file::detect_vae_layout(&vae).unwrap(),
        VaeLayout::V095
    );
    let c = single_file::released_vae_config(VaeLayout::V095);
    assert_eq!((c.spatial_ratio(), c.temporal_ratio()), (32, 8));
    vae.insert(
        "vae.encoder.conv_out.conv.weight".into(),
        vec![129, 512, 3, 3, 3],
    );
    vae.insert(
        "vae.decoder.last_time_embedder.timestep_embedder.linear_1.weight".into(),
        vec![2048, 256],
    );
    assert_eq!(
        single_file::detect_vae_layout(&vae).unwrap(),
        VaeLayout::V091
    );
    assert_eq!(
        single_file::released_vae_config(VaeLayout::V091).decoder_layers_per_block,
        vec![5, 6, 7, 8]
    );
    for layout in [VaeLayout::V090, VaeLayout::V091, VaeLayout::V095] {
        single_file::released_vae_config(layout).validate().unwrap();
    }
}
