//! FlowMatch Euler schedules against diffusers 0.42.1, for both LTX scheduler configs, several
//! step counts and sequence lengths (refs/scheduler.json).

mod common;

use ltx_models::scheduler::{FlowMatchConfig, FlowMatchSchedule};

#[test]
fn sigmas_and_timesteps_match_diffusers() {
    let refs = common::json("scheduler.json");
    let mut checked = 0;
    for (name, entry) in refs["configs"].as_object().unwrap() {
        let config: FlowMatchConfig = serde_json::from_value(entry["config"].clone()).unwrap();
        for case in entry["cases"].as_array().unwrap() {
            let steps = case["num_inference_steps"].as_u64().unwrap() as usize;
            let seq = case["seq_len"].as_u64().unwrap() as usize;
            let mu = case["mu"].as_f64().unwrap();
            assert!((config.mu(seq) - mu).abs() <= 1e-12, "{name} mu({seq})");
            let got = FlowMatchSchedule::ltx(&config, steps, seq);
            if case["has_nan"].as_bool().unwrap() {
                let err = got
                    .expect_err("diffusers gives NaN here; we must refuse")
                    .to_string();
                assert!(err.contains("use at least 2 steps"), "{err}");
                continue;
            }
            let got = got.unwrap();
            let bits = |key: &str| -> Vec<u32> {
                case[key]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as u32)
                    .collect()
            };
            let want_sigmas: Vec<f32> = bits("sigmas_f32_bits")
                .into_iter()
                .map(f32::from_bits)
                .collect();
            let want_t: Vec<f32> = bits("timesteps_f32_bits")
                .into_iter()
                .map(f32::from_bits)
                .collect();
            // float32 throughout, as numpy computes it: allow one ulp of rounding difference.
            for (g, w) in got
                .sigmas
                .iter()
                .zip(&want_sigmas)
                .chain(got.timesteps.iter().zip(&want_t))
            {
                assert!(
                    (g - w).abs() <= f32::EPSILON * w.abs().max(1.0) * 1.0001,
                    "{name} N={steps} seq={seq}: {g} vs {w}"
                );
            }
            assert_eq!(got.sigmas.len(), want_sigmas.len());
            assert_eq!(got.timesteps.len(), want_t.len());
            checked += 1;
        }
    }
    assert!(checked >= 40, "only {checked} cases checked");
}

#[test]
fn zero_steps_is_an_error() {
    let err = FlowMatchSchedule::ltx(&FlowMatchConfig::default(), 0, 1024).unwrap_err();
    assert!(err.to_string().contains("at least 1"), "{err}");
}
