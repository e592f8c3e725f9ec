//! The InstantID family's settings (`INSTANTID_*`), with the replaced service's names and
//! defaults for its switches; every one is a flag too.

use std::path::{Path, PathBuf};

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args};
use ltx_gpu::DeviceSpec;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct InstantIdConfig {
    /// Device for the InstantID family: cpu, cuda, cuda:N or auto. On the same device as
    /// LTX-Video the two share one worker (jobs in order, one residency manager); on another
    /// device they run concurrently.
    #[arg(
        long = "instantid-device",
        env = "INSTANTID_DEVICE",
        default_value = "auto"
    )]
    pub instantid_device: DeviceSpec,

    /// The SDXL model: a diffusers folder (model_index.json; SDXL base, RealVisXL and other
    /// fine-tunes). Unset: the built-in demo family (tiny random SDXL, IdentityNet and
    /// Resampler: its portraits are noise).
    #[arg(long = "instantid-model", env = "INSTANTID_MODEL")]
    pub instantid_model: Option<PathBuf>,

    /// InstantX's IdentityNet folder (`checkpoints/ControlNetModel`: config.json + weights).
    #[arg(long = "instantid-controlnet", env = "INSTANTID_CONTROLNET")]
    pub instantid_controlnet: Option<PathBuf>,

    /// InstantX's `ip-adapter.bin` (or its .safetensors conversion): the face Resampler and
    /// the decoupled cross-attention weights.
    #[arg(long = "instantid-ip-adapter", env = "INSTANTID_IP_ADAPTER")]
    pub instantid_ip_adapter: Option<PathBuf>,

    /// The face model folder (antelopev2: scrfd_10g_bnkps.onnx, glintr100.onnx, …). Unset with
    /// the demo family: the demo's own tiny face graphs.
    #[arg(long = "instantid-face-models", env = "INSTANTID_FACE_MODELS")]
    pub instantid_face_models: Option<PathBuf>,

    /// Where the face networks run (ONNX Runtime): cpu, cuda or cuda:N (CUDA needs
    /// LTX_ONNXRUNTIME pointing at a CUDA build; otherwise the CPU is used and the reason
    /// reported in /v1/system).
    #[arg(
        long = "instantid-face-device",
        env = "INSTANTID_FACE_DEVICE",
        default_value = "cpu"
    )]
    pub instantid_face_device: String,

    /// Face detection size (the square the photo is letterboxed into), as insightface's det_size.
    #[arg(
        long = "instantid-face-det-size",
        env = "INSTANTID_FACE_DET_SIZE",
        default_value_t = 640
    )]
    pub instantid_face_det_size: u32,

    /// Face detector score threshold.
    #[arg(
        long = "instantid-face-det-thresh",
        env = "INSTANTID_FACE_DET_THRESH",
        default_value_t = 0.5
    )]
    pub instantid_face_det_thresh: f32,

    /// ONNX Runtime intra-op threads for face analysis (default: half the cores, at most 4).
    #[arg(long = "instantid-face-threads", env = "INSTANTID_FACE_THREADS")]
    pub instantid_face_threads: Option<usize>,

    /// Model CPU offload for InstantID (the replaced service's switch): text encoders, then
    /// IdentityNet + UNet, then the VAE on the GPU while they run. A no-op on the CPU device.
    #[arg(long = "instantid-enable-cpu-offload", env = "INSTANTID_ENABLE_CPU_OFFLOAD", default_value_t = true, action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub instantid_enable_cpu_offload: bool,

    /// Sequential CPU offload for InstantID: the UNet's and IdentityNet's blocks streamed from
    /// pinned host memory; wins over INSTANTID_ENABLE_CPU_OFFLOAD. A no-op on the CPU device.
    #[arg(long = "instantid-enable-sequential-cpu-offload", env = "INSTANTID_ENABLE_SEQUENTIAL_CPU_OFFLOAD", default_value_t = false, action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub instantid_enable_sequential_cpu_offload: bool,

    /// Sequential offload: blocks copied ahead of the one computing.
    #[arg(
        long = "instantid-offload-prefetch",
        env = "INSTANTID_OFFLOAD_PREFETCH",
        default_value_t = 2
    )]
    pub instantid_offload_prefetch: usize,

    /// Decode the portrait in tiles (the residency manager also turns it on for a job whose
    /// decode would not fit the budget).
    #[arg(long = "instantid-enable-vae-tiling", env = "INSTANTID_ENABLE_VAE_TILING", default_value_t = false, action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub instantid_enable_vae_tiling: bool,

    /// InstantID's attention backend: sdpa, sliced or math. Unset: see
    /// INSTANTID_ENABLE_ATTENTION_SLICING.
    #[arg(long = "instantid-attention", env = "INSTANTID_ATTENTION")]
    pub instantid_attention: Option<String>,

    /// `true` selects the sliced backend when INSTANTID_ATTENTION is unset.
    #[arg(long = "instantid-enable-attention-slicing", env = "INSTANTID_ENABLE_ATTENTION_SLICING", default_value_t = false, action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub instantid_enable_attention_slicing: bool,

    /// GPU memory InstantID's jobs may count on (the other family's weights on the device
    /// included): `auto`, a fraction (`0.8`) or a size (`12GiB`).
    #[arg(
        long = "instantid-vram-budget",
        env = "INSTANTID_VRAM_BUDGET",
        default_value = "auto"
    )]
    pub instantid_vram_budget: String,

    /// Largest portrait width and height in pixels (the LTX_MAX_* limits are the videos').
    #[arg(
        long = "instantid-max-side",
        env = "INSTANTID_MAX_SIDE",
        default_value_t = 1536
    )]
    pub instantid_max_side: i64,

    /// Largest portrait width × height: 1536×1024 by default (SDXL's 1024² and its
    /// other-aspect sizes fit).
    #[arg(
        long = "instantid-max-pixels",
        env = "INSTANTID_MAX_PIXELS",
        default_value_t = 1536 * 1024
    )]
    pub instantid_max_pixels: i64,
}

/// A path setting that must exist: `--flag (ENV) path: problem`.
fn missing(flag: &str, env: &str, path: &Path, what: &str) -> String {
    format!("--{flag} ({env}) {}: {what}", path.display())
}

impl InstantIdConfig {
    /// Rejects settings that cannot work together, naming both.
    pub fn check(&self) -> Result<(), String> {
        if let Err(e) = self.attention_backend() {
            return Err(format!("--instantid-attention (INSTANTID_ATTENTION): {e}"));
        }
        if let Err(e) = self
            .instantid_vram_budget
            .parse::<ltx_pipelines::BudgetSpec>()
        {
            return Err(format!(
                "--instantid-vram-budget (INSTANTID_VRAM_BUDGET): {e}"
            ));
        }
        if let Err(e) = self.face_device() {
            return Err(format!(
                "--instantid-face-device (INSTANTID_FACE_DEVICE): {e}"
            ));
        }
        if !(32..=4096).contains(&self.instantid_face_det_size) {
            return Err(format!(
                "--instantid-face-det-size (INSTANTID_FACE_DET_SIZE) must be in [32, 4096], got {}",
                self.instantid_face_det_size
            ));
        }
        let t = self.instantid_face_det_thresh;
        if !(t > 0.0 && t <= 1.0) {
            return Err(format!(
                "--instantid-face-det-thresh (INSTANTID_FACE_DET_THRESH) must be in (0, 1], got {t}"
            ));
        }
        if self.instantid_face_threads == Some(0) {
            return Err(
                "--instantid-face-threads (INSTANTID_FACE_THREADS) must be at least 1".into(),
            );
        }
        if self.instantid_max_side < 8 {
            return Err(format!(
                "--instantid-max-side (INSTANTID_MAX_SIDE) must be at least 8, got {}",
                self.instantid_max_side
            ));
        }
        if self.instantid_max_pixels > self.instantid_max_side * self.instantid_max_side {
            return Err(format!(
                "--instantid-max-pixels ({}) exceeds --instantid-max-side² ({}): lower one of them",
                self.instantid_max_pixels,
                self.instantid_max_side * self.instantid_max_side
            ));
        }
        self.check_paths()
    }

    /// The request limits for portraits: the server's, with InstantID's own side and pixel
    /// limits.
    pub fn limits(&self, server: &crate::config::Limits) -> crate::config::Limits {
        crate::config::Limits {
            max_side: self.instantid_max_side,
            max_pixels: self.instantid_max_pixels,
            ..server.clone()
        }
    }

    fn check_paths(&self) -> Result<(), String> {
        let parts = [
            (
                "instantid-controlnet",
                "INSTANTID_CONTROLNET",
                &self.instantid_controlnet,
            ),
            (
                "instantid-ip-adapter",
                "INSTANTID_IP_ADAPTER",
                &self.instantid_ip_adapter,
            ),
        ];
        match &self.instantid_model {
            None => {
                if let Some((flag, env, _)) = parts.iter().find(|(_, _, p)| p.is_some()) {
                    return Err(format!(
                        "--{flag} ({env}) is set without --instantid-model (INSTANTID_MODEL): \
                         the demo family has its own; set INSTANTID_MODEL to the SDXL model \
                         it belongs with"
                    ));
                }
            }
            Some(model) => {
                let (flag, env) = ("instantid-model", "INSTANTID_MODEL");
                if model.is_dir() && !model.join("model_index.json").is_file() {
                    return Err(missing(flag, env, model, "no model_index.json there"));
                }
                if model.is_file() {
                    return Err(missing(
                        flag,
                        env,
                        model,
                        "a single-file checkpoint: the InstantID loader takes an SDXL diffusers \
                         folder (model_index.json, unet/, vae/, text_encoder/, …); point \
                         INSTANTID_MODEL at one",
                    ));
                }
                if !model.exists() {
                    return Err(missing(flag, env, model, "does not exist"));
                }
                let needed = parts.iter().map(|(f, e, p)| (*f, *e, *p)).chain([(
                    "instantid-face-models",
                    "INSTANTID_FACE_MODELS",
                    &self.instantid_face_models,
                )]);
                for (f, e, p) in needed {
                    if p.is_none() {
                        return Err(format!(
                            "--instantid-model (INSTANTID_MODEL) is set, so --{f} ({e}) must be \
                             too: a real InstantID model needs the IdentityNet, the IP-Adapter \
                             and the face models"
                        ));
                    }
                }
            }
        }
        if let Some(cn) = &self.instantid_controlnet {
            if !cn.join("config.json").is_file() {
                return Err(missing(
                    "instantid-controlnet",
                    "INSTANTID_CONTROLNET",
                    cn,
                    "no config.json there (expected InstantX's ControlNetModel folder)",
                ));
            }
        }
        if let Some(ip) = &self.instantid_ip_adapter {
            if !ip.is_file() {
                return Err(missing(
                    "instantid-ip-adapter",
                    "INSTANTID_IP_ADAPTER",
                    ip,
                    "not a file (expected ip-adapter.bin)",
                ));
            }
        }
        if let Some(dir) = &self.instantid_face_models {
            ltx_face::discover(dir)
                .map_err(|e| format!("--instantid-face-models (INSTANTID_FACE_MODELS): {e}"))?;
        }
        Ok(())
    }

    /// The memory mode the offload switches ask for.
    pub fn offload(&self) -> ltx_pipelines::OffloadMode {
        ltx_pipelines::OffloadMode::from_switches(
            self.instantid_enable_cpu_offload,
            self.instantid_enable_sequential_cpu_offload,
        )
    }

    pub fn memory(&self) -> ltx_pipelines::MemoryOptions {
        ltx_pipelines::MemoryOptions {
            mode: self.offload(),
            prefetch: self.instantid_offload_prefetch,
        }
    }

    /// The attention backend the settings select.
    pub fn attention_backend(&self) -> Result<ltx_models::attention::AttentionBackend, String> {
        ltx_models::attention::AttentionBackend::from_settings(
            self.instantid_attention.as_deref(),
            self.instantid_enable_attention_slicing,
        )
    }

    /// Where the face networks run.
    pub fn face_device(&self) -> Result<ltx_face::FaceDevice, String> {
        self.instantid_face_device
            .parse()
            .map_err(|e: ltx_face::FaceError| e.to_string())
    }

    /// The face analysis options the settings give.
    pub fn face_options(&self) -> Result<ltx_face::AnalysisOptions, String> {
        Ok(ltx_face::AnalysisOptions {
            det_size: self.instantid_face_det_size,
            det_thresh: self.instantid_face_det_thresh,
            session: ltx_face::SessionOptions {
                device: self.face_device()?,
                threads: self
                    .instantid_face_threads
                    .unwrap_or_else(ltx_face::runtime::default_threads),
            },
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct P {
        #[command(flatten)]
        c: InstantIdConfig,
    }

    fn parse(args: &[&str]) -> InstantIdConfig {
        let mut all = vec!["serve"];
        all.extend_from_slice(args);
        P::try_parse_from(all).unwrap().c
    }

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ltx-iid-config-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn defaults_are_the_replaced_services() {
        let c = parse(&[]);
        assert_eq!(c.offload(), ltx_pipelines::OffloadMode::Model);
        assert_eq!(c.instantid_offload_prefetch, 2);
        assert!(!c.instantid_enable_vae_tiling);
        assert_eq!(c.instantid_device, DeviceSpec::Auto);
        assert_eq!(c.face_device().unwrap(), ltx_face::FaceDevice::Cpu);
        assert_eq!(c.instantid_vram_budget, "auto");
        c.check().unwrap();
        let seq = parse(&["--instantid-enable-sequential-cpu-offload", "true"]);
        assert_eq!(seq.offload(), ltx_pipelines::OffloadMode::Sequential);
        let none = parse(&["--instantid-enable-cpu-offload", "false"]);
        assert_eq!(none.offload(), ltx_pipelines::OffloadMode::None);
    }

    #[test]
    fn bad_values_name_their_setting() {
        for (args, want) in [
            (
                &["--instantid-attention", "fast"][..],
                "INSTANTID_ATTENTION",
            ),
            (
                &["--instantid-vram-budget", "lots"],
                "INSTANTID_VRAM_BUDGET",
            ),
            (&["--instantid-face-device", "gpu"], "INSTANTID_FACE_DEVICE"),
            (
                &["--instantid-face-det-size", "8"],
                "INSTANTID_FACE_DET_SIZE",
            ),
            (
                &["--instantid-face-det-thresh", "0"],
                "INSTANTID_FACE_DET_THRESH",
            ),
            (&["--instantid-face-threads", "0"], "INSTANTID_FACE_THREADS"),
        ] {
            let err = parse(args).check().unwrap_err();
            assert!(err.contains(want), "{args:?}: {err}");
        }
        let err = P::try_parse_from(["serve", "--instantid-device", "gpu"])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("cpu, cuda, cuda:N"), "{err}");
    }

    #[test]
    fn a_real_model_needs_its_other_parts_and_they_must_exist() {
        let dir = tempdir("parts");
        let sdxl = dir.join("sdxl");
        std::fs::create_dir_all(&sdxl).unwrap();
        let s = sdxl.to_str().unwrap();
        // A folder without model_index.json.
        let err = parse(&["--instantid-model", s]).check().unwrap_err();
        assert!(
            err.contains("INSTANTID_MODEL") && err.contains("model_index.json"),
            "{err}"
        );
        std::fs::write(sdxl.join("model_index.json"), "{}").unwrap();
        // No IdentityNet, IP-Adapter or face models: each named with the model.
        let err = parse(&["--instantid-model", s]).check().unwrap_err();
        assert!(
            err.contains("INSTANTID_MODEL") && err.contains("INSTANTID_CONTROLNET"),
            "{err}"
        );
        let cn = dir.join("ControlNetModel");
        std::fs::create_dir_all(&cn).unwrap();
        let c = cn.to_str().unwrap();
        let err = parse(&["--instantid-model", s, "--instantid-controlnet", c])
            .check()
            .unwrap_err();
        assert!(err.contains("INSTANTID_IP_ADAPTER"), "{err}");
        let ip = dir.join("ip-adapter.bin");
        let i = ip.to_str().unwrap();
        let faces = dir.join("antelopev2");
        std::fs::create_dir_all(&faces).unwrap();
        let f = faces.to_str().unwrap();
        let all = [
            "--instantid-model",
            s,
            "--instantid-controlnet",
            c,
            "--instantid-ip-adapter",
            i,
            "--instantid-face-models",
            f,
        ];
        // The IdentityNet folder without its config, then a missing adapter file, then face
        // models without graphs: each refused with its setting.
        let err = parse(&all).check().unwrap_err();
        assert!(
            err.contains("INSTANTID_CONTROLNET") && err.contains("config.json"),
            "{err}"
        );
        std::fs::write(cn.join("config.json"), "{}").unwrap();
        let err = parse(&all).check().unwrap_err();
        assert!(
            err.contains("INSTANTID_IP_ADAPTER") && err.contains("not a file"),
            "{err}"
        );
        std::fs::write(&ip, b"weights").unwrap();
        let err = parse(&all).check().unwrap_err();
        assert!(
            err.contains("INSTANTID_FACE_MODELS") && err.contains("no detector"),
            "{err}"
        );
        // A model that does not exist, and a file that is not a checkpoint.
        let gone = dir.join("nowhere");
        let err = parse(&["--instantid-model", gone.to_str().unwrap()])
            .check()
            .unwrap_err();
        assert!(err.contains("does not exist"), "{err}");
        let err = parse(&["--instantid-model", i]).check().unwrap_err();
        assert!(
            err.contains("single-file") && err.contains("INSTANTID_MODEL"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_demo_family_refuses_parts_of_a_real_one() {
        let dir = tempdir("demo");
        let err = parse(&["--instantid-controlnet", dir.to_str().unwrap()])
            .check()
            .unwrap_err();
        assert!(
            err.contains("INSTANTID_CONTROLNET") && err.contains("INSTANTID_MODEL"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
