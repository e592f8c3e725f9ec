//! The LTX VAE against diffusers, one tiny random model per layout (0.9.0, 0.9.1, 0.9.5):
//! posterior mean/log-variance, a seeded posterior sample, and decoding (with the timestep
//! and the decoder's noise injection where the layout has them), each draw from a CPU
//! generator of its own seeded as the fixture's global generator was.

mod common;

use ltx_gpu::rng::Generator;
use ltx_models::config::read_config;
use ltx_models::ltx::{LtxVae, LtxVaeConfig};
use ltx_models::weights::WeightStore;
use tch::{Device, Kind, Tensor};

fn seeded(seed: &serde_json::Value) -> Generator {
    Generator::new(Device::Cpu, seed.as_u64().unwrap()).unwrap()
}

fn check(variant: &str) {
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
        let mut rng = seeded(&meta["posterior_sample_seed"]);
        compare("posterior_sample", &post.sample(&mut rng).unwrap());

        if meta["timestep_conditioning"].as_bool().unwrap() {
            let mut noise = seeded(&meta["decode_global_seed"]);
            let out = vae
                .decode(
                    &r["decode_latents"],
                    Some(&r["decode_temb"]),
                    Some(&mut noise),
                )
                .unwrap();
            compare("decoded_temb", &out);
            let err = vae
                .decode(&r["decode_latents"], None, Some(&mut noise))
                .unwrap_err()
                .to_string();
            assert!(err.contains("needs a timestep"), "{err}");
            if vae.config().injects_noise() {
                let err = vae
                    .decode(&r["decode_latents"], Some(&r["decode_temb"]), None)
                    .unwrap_err()
                    .to_string();
                assert!(err.contains("needs a generator"), "{err}");
            }
        } else {
            assert!(!vae.config().injects_noise());
            compare(
                "decoded",
                &vae.decode(&r["decode_latents"], None, None).unwrap(),
            );
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
