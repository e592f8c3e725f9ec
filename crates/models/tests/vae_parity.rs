//! The LTX VAE against diffusers, one tiny random model per layout (0.9.0, 0.9.1, 0.9.5):
//! posterior mean/log-variance, a seeded posterior sample, and decoding (with the timestep
//! and the decoder's global-RNG noise injection where the layout has them).

mod common;

use ltx_models::config::read_config;
use ltx_models::ltx::{LtxVae, LtxVaeConfig};
use ltx_models::weights::WeightStore;
use tch::{Device, Kind, Tensor};

/// The posterior sample and the decoder's noise come from torch's global generator, which
/// tests running in parallel threads would otherwise share.
static GLOBAL_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn check(variant: &str) {
    let _rng = GLOBAL_RNG.lock().unwrap_or_else(|p| p.into_inner());
    let r = common::refs(&format!("vae_{variant}.safetensors"));
    let meta = common::json(&format!("vae_{variant}.json"));
    let dir = common::model_dir(variant).join("vae");
    let cfg: LtxVaeConfig = read_config(&dir.join("config.json")).unwrap();
    assert_eq!(
        cfg.spatial_ratio(),
        meta["spatial_compression_ratio"].as_i64().unwrap()
    );
    assert_eq!(
        cfg.temporal_ratio(),
        meta["temporal_compression_ratio"].as_i64().unwrap()
    );
    let store = WeightStore::from_component_dir(&dir, Kind::Float, Device::Cpu).unwrap();
    let vae = LtxVae::new(&store.root(), cfg).unwrap();
    store.finish().unwrap();

    let compare = |name: &str, got: &Tensor| {
        let err = common::max_abs_diff(got, &r[name]);
        let magnitude = r[name].abs().max().double_value(&[]);
        eprintln!("vae {variant} {name}: max abs error {err:.2e}, magnitude {magnitude:.3}");
        assert!(
            err <= 1e-4,
            "vae {variant} {name}: max abs error {err} (magnitude {magnitude})"
        );
    };
    tch::no_grad(|| {
        let post = vae.encode(&r["image"]).unwrap();
        compare("posterior_mean", &post.mean);
        compare("posterior_logvar", &post.logvar);
        tch::manual_seed(meta["posterior_sample_seed"].as_i64().unwrap());
        compare("posterior_sample", &post.sample().unwrap());

        if meta["timestep_conditioning"].as_bool().unwrap() {
            tch::manual_seed(meta["decode_global_seed"].as_i64().unwrap());
            let out = vae
                .decode(&r["decode_latents"], Some(&r["decode_temb"]))
                .unwrap();
            compare("decoded_temb", &out);
            let err = vae
                .decode(&r["decode_latents"], None)
                .unwrap_err()
                .to_string();
            assert!(err.contains("needs a timestep"), "{err}");
        } else {
            compare("decoded", &vae.decode(&r["decode_latents"], None).unwrap());
        }
    });
}

#[test]
fn vae_0_9_0_matches_diffusers() {
    check("0.9.0");
}

#[test]
fn vae_0_9_1_matches_diffusers() {
    check("0.9.1");
}

#[test]
fn vae_0_9_5_matches_diffusers() {
    check("0.9.5");
}
