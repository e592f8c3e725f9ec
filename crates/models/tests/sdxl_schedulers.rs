//! The SDXL schedulers against diffusers 0.42.1: schedules for 28 configurations × 8 step
//! counts and 38 sampling loops (fp32 and fp16) with a fake model
//! (tests/fixtures/sdxl/schedulers, made by tools/sdxl-fixtures/make_schedulers.py).
//!
//! Tolerances: the training schedule and integer timesteps must be exact; float timesteps,
//! sigmas and init_noise_sigma within 1e-6 relative (numpy's SIMD float32 `log` and float64
//! `power` differ from libm in the last bit where the Karras/exponential ramps and
//! `_sigma_to_t` use them). A float32 loop's final sample is within 1e-4 absolute on the CPU:
//! the step arithmetic is diffusers' op for op (measured: bit-exact, except where a Karras
//! Euler timestep differs in its last bit and the fake model's `sin(t/137)` carries it). The
//! generator state after a loop must be diffusers' exactly (the next 8 draws are equal), which
//! proves the number, order, shape and dtype of the scheduler's random draws.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use ltx_models::sdxl::schedulers::{parse_python_json, SdxlScheduler};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

/// The tests that seed libtorch's global generator take this lock (tests run in parallel).
static RNG: Mutex<()> = Mutex::new(());

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/sdxl/schedulers")
}

fn doc() -> Value {
    let text = std::fs::read_to_string(fixtures().join("schedulers.json")).unwrap();
    parse_python_json(&text).unwrap()
}

fn tensors() -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixtures().join("schedulers.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn rel(got: f64, want: f64) -> f64 {
    if got == want {
        0.0
    } else {
        (got - want).abs() / want.abs().max(1e-30)
    }
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

#[test]
fn schedules_match_diffusers() {
    let doc = doc();
    let refs = tensors();
    let (mut worst_t, mut worst_sigma, mut checked) = (0f64, 0f64, 0);
    for (name, entry) in doc["configs"].as_object().unwrap() {
        let mut s =
            SdxlScheduler::from_json(&entry["config"]).unwrap_or_else(|e| panic!("{name}: {e}"));
        let want_ac = &refs[entry["alphas_cumprod"].as_str().unwrap()];
        let got_ac = Tensor::from_slice(s.alphas_cumprod());
        assert_eq!(max_abs(&got_ac, want_ac), 0.0, "{name}: alphas_cumprod");
        for case in entry["schedules"].as_array().unwrap() {
            let steps = case["steps"].as_u64().unwrap() as usize;
            let ctx = format!("{name} N={steps}");
            let want_t = floats(&case["timesteps"]);
            if s.class_name() == "DDIMScheduler" && want_t.iter().any(|&t| t < 0.0) {
                // diffusers would index alphas_cumprod[-1] (t = 999) there; we refuse.
                let err = s.set_timesteps(steps).unwrap_err().to_string();
                assert!(err.contains("timestep -1"), "{ctx}: {err}");
                continue;
            }
            s.set_timesteps(steps).unwrap();
            let got_t = s.timesteps();
            assert_eq!(got_t.len(), want_t.len(), "{ctx}: timestep count");
            let int = case["timestep_dtype"] == "int64";
            assert_eq!(s.timestep_kind() == Kind::Int64, int, "{ctx}: dtype");
            for (g, w) in got_t.iter().zip(&want_t) {
                if int {
                    assert_eq!(g, w, "{ctx}: timesteps {got_t:?} vs {want_t:?}");
                } else {
                    worst_t = worst_t.max(rel(*g, *w));
                    assert!(rel(*g, *w) <= 1e-6, "{ctx}: timestep {g} vs {w}");
                }
            }
            match case["sigmas"].as_array() {
                None => assert!(s.sigmas().is_empty(), "{ctx}: DDIM has no sigmas"),
                Some(_) => {
                    let want = floats(&case["sigmas"]);
                    assert_eq!(s.sigmas().len(), want.len(), "{ctx}: sigma count");
                    for (g, w) in s.sigmas().iter().zip(&want) {
                        let e = rel(f64::from(*g), *w);
                        worst_sigma = worst_sigma.max(e);
                        assert!(e <= 1e-6, "{ctx}: sigma {g} vs {w}");
                    }
                }
            }
            let want_init = case["init_noise_sigma"].as_f64().unwrap();
            assert!(
                rel(s.init_noise_sigma(), want_init) <= 1e-6,
                "{ctx}: init_noise_sigma {} vs {want_init}",
                s.init_noise_sigma()
            );
            checked += 1;
        }
    }
    eprintln!(
        "{checked} schedules; worst relative error: timesteps {worst_t:e}, sigmas {worst_sigma:e}"
    );
    assert!(checked >= 200, "only {checked} schedules checked");
}

/// diffusers' fake-model loop of make_schedulers.py, here, with latents and model output in
/// `kind`: returns (initial, final, after).
fn run_loop(
    s: &mut SdxlScheduler,
    seed: i64,
    shape: &[i64],
    kind: Kind,
) -> (Tensor, Tensor, Tensor) {
    tch::manual_seed(seed);
    let mut noise = |shape: &[i64], kind: Kind| Ok(Tensor::f_randn(shape, (kind, Device::Cpu))?);
    let initial = noise(shape, kind)
        .unwrap()
        .f_mul_scalar(s.init_noise_sigma())
        .unwrap();
    let mut x = initial.shallow_clone();
    for (i, t) in s.timesteps().into_iter().enumerate() {
        let x_in = s.scale_model_input(&x, i).unwrap();
        let out = x_in
            .f_mul_scalar(0.3)
            .unwrap()
            .f_add_scalar((t / 137.0).sin())
            .unwrap();
        x = s.step(&out, i, &x, &mut noise).unwrap();
    }
    (initial, x, Tensor::randn([8], (Kind::Float, Device::Cpu)))
}

#[test]
fn sampling_loops_match_diffusers() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let doc = doc();
    let refs = tensors();
    let shape: Vec<i64> = floats(&doc["shape"]).iter().map(|&v| v as i64).collect();
    let (mut worst, mut worst_half, mut loops) = (0f64, 0f64, 0);
    for (name, entry) in doc["configs"].as_object().unwrap() {
        for l in entry["loops"].as_array().unwrap() {
            let lname = l["name"].as_str().unwrap();
            let mut s = SdxlScheduler::from_json(&entry["config"]).unwrap();
            s.set_eta(l["eta"].as_f64().unwrap()).unwrap();
            s.set_timesteps(l["steps"].as_u64().unwrap() as usize)
                .unwrap();
            let kind = match l["dtype"].as_str().unwrap() {
                "float16" => Kind::Half,
                _ => Kind::Float,
            };
            let seed = l["seed"].as_i64().unwrap();
            let (initial, last, after) = run_loop(&mut s, seed, &shape, kind);
            let r = |k: &str| &refs[&format!("loop/{lname}/{k}")];
            assert_eq!(
                max_abs(&initial, r("initial")),
                0.0,
                "{name}/{lname}: initial latents"
            );
            assert_eq!(last.kind(), r("final").kind(), "{name}/{lname}: dtype");
            let e = max_abs(&last, r("final"));
            eprintln!("{lname}: {e:e}");
            // fp16 loops: the same ops in the same dtypes give the same roundings; one fp16 ulp
            // (2^-10 relative) of slack.
            let scale = r("final")
                .to_kind(Kind::Double)
                .abs()
                .max()
                .double_value(&[])
                .max(1.0);
            let tol = if kind == Kind::Half {
                scale / 1024.0
            } else {
                1e-4
            };
            if kind == Kind::Float {
                worst = worst.max(e);
            } else {
                worst_half = worst_half.max(e);
            }
            assert!(e <= tol, "{name}/{lname}: final sample off by {e}");
            assert_eq!(
                max_abs(&after, r("after")),
                0.0,
                "{name}/{lname}: generator state"
            );
            loops += 1;
        }
    }
    eprintln!("{loops} sampling loops; worst final max |Δ|: fp32 {worst:e}, fp16 {worst_half:e}");
    assert!(loops >= 35, "only {loops} loops ran");
}

fn sdxl_base(class: &str) -> Value {
    json!({
        "_class_name": class,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "num_train_timesteps": 1000,
        "steps_offset": 1,
        "timestep_spacing": "leading",
    })
}

const CLASSES: [&str; 4] = [
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DDIMScheduler",
];

#[test]
fn unknown_class_lists_the_supported_ones() {
    let err = SdxlScheduler::from_json(&json!({"_class_name": "LMSDiscreteScheduler"}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("LMSDiscreteScheduler"), "{err}");
    for c in CLASSES {
        assert!(err.contains(c), "{err}");
    }
    let err = SdxlScheduler::from_json(&json!({"beta_start": 0.1}))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no _class_name") && err.contains("DDIMScheduler"),
        "{err}"
    );
}

#[test]
fn unknown_keys_are_ignored_and_missing_keys_take_diffusers_defaults() {
    for class in CLASSES {
        let mut config = sdxl_base(class);
        config["some_future_option"] = json!({"nested": [1, 2, 3]});
        config["use_karras_sigmas"] = Value::Null;
        let mut s = SdxlScheduler::from_json(&config).unwrap_or_else(|e| panic!("{class}: {e}"));
        assert_eq!(s.class_name(), class);
        s.set_timesteps(30).unwrap();
        // (N−1)·⌊1000/N⌋ + 1, DPMSolver with N + 1 points.
        let first = if class == "DPMSolverMultistepScheduler" {
            961.0
        } else {
            958.0
        };
        assert_eq!(s.timesteps()[0], first, "{class}");
    }
    // An empty Euler config is diffusers' default: linear betas, linspace spacing.
    let mut s =
        SdxlScheduler::from_json(&json!({"_class_name": "EulerDiscreteScheduler"})).unwrap();
    s.set_timesteps(2).unwrap();
    assert_eq!(s.timesteps(), vec![999.0, 0.0]);
    assert!((s.alphas_cumprod()[0] - 0.9999).abs() < 1e-7);
}

#[test]
fn python_json_constants_are_read() {
    let v =
        parse_python_json(r#"{"a": -Infinity, "b": [NaN, Infinity], "s": "x -Infinity \"NaN\""}"#)
            .unwrap();
    assert_eq!(v["a"], "-Infinity");
    assert_eq!(v["b"][1], "Infinity");
    assert_eq!(v["s"], "x -Infinity \"NaN\"");
    let mut config = sdxl_base("DPMSolverMultistepScheduler");
    config["lambda_min_clipped"] = json!("-Infinity");
    assert!(SdxlScheduler::from_json(&config).is_ok());
    config["lambda_min_clipped"] = json!("minus infinity");
    assert!(SdxlScheduler::from_json(&config).is_err());
}

#[test]
fn zero_steps_is_an_error() {
    for class in CLASSES {
        let mut s = SdxlScheduler::from_json(&sdxl_base(class)).unwrap();
        let err = s.set_timesteps(0).unwrap_err().to_string();
        assert!(err.contains("at least 1"), "{class}: {err}");
    }
}

#[test]
fn bad_configs_are_clear_errors() {
    let cases = [
        (
            "EulerDiscreteScheduler",
            json!({"beta_schedule": "cubic"}),
            "scaled_linear",
        ),
        (
            "EulerDiscreteScheduler",
            json!({"use_beta_sigmas": true}),
            "use_beta_sigmas",
        ),
        (
            "EulerDiscreteScheduler",
            json!({"use_karras_sigmas": true, "use_exponential_sigmas": true}),
            "more than one",
        ),
        (
            "EulerAncestralDiscreteScheduler",
            json!({"prediction_type": "sample"}),
            "epsilon",
        ),
        (
            "DPMSolverMultistepScheduler",
            json!({"algorithm_type": "dpmsolver"}),
            "deprecated",
        ),
        (
            "DPMSolverMultistepScheduler",
            json!({"solver_order": 4}),
            "solver_order 4",
        ),
        (
            "DPMSolverMultistepScheduler",
            json!({"thresholding": true}),
            "thresholding",
        ),
        (
            "DDIMScheduler",
            json!({"timestep_spacing": "uniform"}),
            "leading",
        ),
        (
            "DDIMScheduler",
            json!({"trained_betas": [0.1, 0.2]}),
            "trained_betas",
        ),
    ];
    for (class, over, needle) in cases {
        let mut config = sdxl_base(class);
        for (k, v) in over.as_object().unwrap() {
            config[k] = v.clone();
        }
        let err = SdxlScheduler::from_json(&config).unwrap_err().to_string();
        assert!(err.contains(needle), "{class} {over}: {err}");
    }
}

#[test]
fn bad_step_calls_are_clear_errors() {
    let x = Tensor::zeros([1, 4, 2, 2], (Kind::Float, Device::Cpu));
    let mut no_noise =
        |_: &[i64], _: Kind| -> ltx_models::Result<Tensor> { panic!("no draw expected") };
    for class in CLASSES {
        let mut s = SdxlScheduler::from_json(&sdxl_base(class)).unwrap();
        let err = s.step(&x, 0, &x, &mut no_noise).unwrap_err().to_string();
        assert!(err.contains("set_timesteps"), "{class}: {err}");
        s.set_timesteps(4).unwrap();
        let err = s.scale_model_input(&x, 4).unwrap_err().to_string();
        assert!(err.contains("past the end"), "{class}: {err}");
        let wrong = Tensor::zeros([1, 4, 2, 3], (Kind::Float, Device::Cpu));
        let err = s
            .step(&wrong, 0, &x, &mut no_noise)
            .unwrap_err()
            .to_string();
        assert!(err.contains("shape"), "{class}: {err}");
        assert!(s.set_eta(-1.0).is_err() && s.set_eta(f64::NAN).is_err());
    }
    let mut dpm = SdxlScheduler::from_json(&sdxl_base("DPMSolverMultistepScheduler")).unwrap();
    dpm.set_timesteps(4).unwrap();
    let _next = dpm.step(&x, 0, &x, &mut no_noise).unwrap();
    let err = dpm.step(&x, 2, &x, &mut no_noise).unwrap_err().to_string();
    assert!(err.contains("expected step 1"), "{err}");
    let mut ddim = SdxlScheduler::from_json(&sdxl_base("DDIMScheduler")).unwrap();
    let err = ddim.set_timesteps(1000).unwrap_err().to_string();
    assert!(err.contains("timestep 1000"), "{err}");
}

#[test]
fn timestep_tensors_have_diffusers_dtypes() {
    let mut euler = SdxlScheduler::from_json(&sdxl_base("EulerDiscreteScheduler")).unwrap();
    euler.set_timesteps(30).unwrap();
    let t = euler.timestep(0).unwrap();
    assert_eq!(
        (t.kind(), t.dim(), t.double_value(&[])),
        (Kind::Float, 0, 958.0)
    );
    let mut dpm = SdxlScheduler::from_json(&sdxl_base("DPMSolverMultistepScheduler")).unwrap();
    dpm.set_timesteps(25).unwrap();
    let t = dpm.timestep(24).unwrap();
    assert_eq!((t.kind(), t.int64_value(&[])), (Kind::Int64, 39));
    assert!(dpm.timestep(25).is_err());
}

#[test]
fn config_files_load_with_python_constants_and_io_errors_name_the_path() {
    let dir = std::env::temp_dir().join(format!("sdxl-sched-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("scheduler_config.json");
    let text = r#"{"_class_name": "DPMSolverMultistepScheduler", "beta_schedule": "scaled_linear",
        "beta_start": 0.00085, "beta_end": 0.012, "lambda_min_clipped": -Infinity,
        "use_karras_sigmas": true, "timestep_spacing": "leading", "steps_offset": 1}"#;
    std::fs::write(&path, text).unwrap();
    let mut s = SdxlScheduler::from_config_file(&path).unwrap();
    assert_eq!(s.class_name(), "DPMSolverMultistepScheduler");
    s.set_timesteps(25).unwrap();
    assert_eq!(s.timesteps().len(), 25);
    std::fs::write(&path, "{\"_class_name\": ").unwrap();
    let err = SdxlScheduler::from_config_file(&path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("invalid JSON") && err.contains("scheduler_config.json"),
        "{err}"
    );
    let missing = dir.join("absent.json");
    let err = SdxlScheduler::from_config_file(&missing)
        .unwrap_err()
        .to_string();
    assert!(err.contains("absent.json"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
