//! The residency manager's arithmetic: a VRAM budget, an estimate of a job's peak device memory
//! in each mode, and the choice of the mode to run it in. Also the out-of-memory ladder.
//!
//! **Peak estimate.** A generation's peak is the largest over its stages of (weights on the
//! device during that stage + that stage's activations):
//!
//! - weights per mode — `none`: all components; `model`: the stage's component alone;
//!   `sequential`: the streamed component's remainder + (k+1) of its largest unit, other
//!   components as in `model`;
//! - transformer activations (one denoising step, SDPA attention, so memory linear in tokens):
//!   `B·S·D·e · 14` — the residual stream, q/k/v, the attention output, the 4·D feed-forward
//!   hidden state before and after GELU (2·4), with B the batch (2 with CFG), S latent tokens,
//!   D the hidden size and e bytes per element — plus the step's latents in float32;
//! - text encoder: `B·L·d_model·e · 8` (same structure at sequence length L);
//! - VAE decode of `P = F·H·W` output pixels: the decoder's last stage runs at `H/p × W/p`
//!   (p the VAE's patch size) with its last channel count C, four tensors alive around a
//!   residual block: `4 · C·P/p² · e`; then four video-sized float32 tensors (`4 · 3P · 4`: the
//!   last convolution's output — 3·p² channels at the last stage — its un-patchified copy, and
//!   the two temporaries of the conversion to bytes), and the uint8 frames (`3P`). Tiled, the
//!   same working set for one tile, plus the float32 canvas, weight sum and output over the
//!   whole video (`7·P·4`);
//! - latent upsample (multi-scale flow): `4 · M·F·(2h)·(2w)·e`, four tensors of the
//!   upsampler's mid channels M at the doubled latent size (the pixel-shuffle input at the low
//!   size is as large) — with the upsampler's weights alone in `model`/`sequential`.
//!
//! SDXL (InstantID) has its own shapes and the same structure: [`SdxlShape`] documents its
//! terms (the IdentityNet's residuals and the UNet's skips held through a step, the widest
//! resnet or transformer stage, CLIP text, the VAE's full-resolution last stage).
//!
//! The factors are from the structure of the computation; `ltx-i2v bench offload` prints the
//! transformer estimate beside the measured peak so they can be checked on a GPU, and the
//! server's host-memory test checks the whole estimate against the peak resident memory of
//! CPU jobs (`tests/http_host_memory.rs`).
//!
//! **Host memory.** [`estimate_host_peak`] applies the same per-stage formulas to the host:
//! on the CPU device every weight is resident and every stage's activations are host memory
//! (the `none` estimate), and loading holds the largest component twice for a moment (its
//! file or random draw, and the tensors made from it); on a GPU the host holds the pinned
//! master copies in `model`/`sequential`, the largest component while it loads, and the uint8
//! video copied back for encoding. [`BudgetSpec::host_bytes`] resolves `LTX_HOST_BUDGET`.

use serde::Serialize;

use crate::OffloadMode;

mod sdxl;
pub use sdxl::SdxlShape;

/// Bytes a stage needs on the device besides weights.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Workload {
    pub text_activations: u64,
    pub transformer_activations: u64,
    pub decode_activations: u64,
    /// The multi-scale flow's latent upsample (0 for other flows).
    pub upsample_activations: u64,
}

/// Weight bytes of each component and of their streaming parts.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ComponentSizes {
    pub text_encoder: u64,
    pub transformer: u64,
    pub vae: u64,
    /// The latent upsampler, when one is attached (model-offloaded in `model` and
    /// `sequential`, resident with the rest in `none`).
    pub upsampler: u64,
    /// Sequential mode: the transformer's always-resident remainder and largest unit.
    pub transformer_remainder: u64,
    pub transformer_max_unit: u64,
    pub text_remainder: u64,
    pub text_max_unit: u64,
}

/// Shapes behind [`Workload`].
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Batch through the transformer (2 with classifier-free guidance).
    pub batch: u64,
    /// Latent tokens (latent frames × rows × columns).
    pub tokens: u64,
    pub hidden: u64,
    pub text_len: u64,
    pub text_hidden: u64,
    /// Output frames, height, width.
    pub frames: u64,
    pub height: u64,
    pub width: u64,
    /// Channels of the decoder's last stage (before its output is un-patchified).
    pub decoder_channels: u64,
    /// The VAE's spatial patch size: the decoder's last stage runs at height/p × width/p.
    pub decoder_patch: u64,
    /// Tiled decoding: a tile's `[frames, height, width]` in samples (None: untiled).
    pub decode_tile: Option<[u64; 3]>,
    /// Bytes per element of weights and activations (2 for bf16).
    pub elem: u64,
}

impl Workload {
    pub fn of(s: &Shape) -> Self {
        let tr = s.batch * s.tokens * s.hidden * s.elem * 14 + s.tokens * s.hidden * 4;
        let text = s.batch * s.text_len * s.text_hidden * s.elem * 8;
        let pixels = s.frames * s.height * s.width;
        let p2 = (s.decoder_patch * s.decoder_patch).max(1);
        let tile = s
            .decode_tile
            .map(|[f, h, w]| f.min(s.frames) * h.min(s.height) * w.min(s.width));
        let decode = decode_peak(pixels, tile, |px| 4 * s.decoder_channels * px / p2 * s.elem);
        Self {
            text_activations: text,
            transformer_activations: tr,
            decode_activations: decode,
            upsample_activations: 0,
        }
    }
}

/// The decode's peak for `pixels` output pixels (all frames): the decoder's last stage
/// (`last_stage(px)` bytes for `px` pixels) and the four image-sized float32 tensors after it
/// (`4 · 3px · 4`), with the uint8 output (`3·pixels`); tiled (`tile_pixels`), one tile's
/// working set plus the float32 canvas (3 channels), its weight sum and the output over the
/// whole image (`7 · pixels · 4`).
pub(crate) fn decode_peak(
    pixels: u64,
    tile_pixels: Option<u64>,
    last_stage: impl Fn(u64) -> u64,
) -> u64 {
    let working_set = |px: u64| last_stage(px) + 4 * 3 * px * 4;
    match tile_pixels {
        None => working_set(pixels) + 3 * pixels,
        Some(tile) => working_set(tile) + (3 + 1 + 3) * pixels * 4,
    }
}

/// Peak device bytes of a generation in `mode` with prefetch `k`.
pub fn estimate_peak(w: &Workload, c: &ComponentSizes, mode: OffloadMode, k: usize) -> u64 {
    let slots = k as u64 + 1;
    let (text_w, tr_w, vae_w, up_w) = match mode {
        OffloadMode::None => {
            let all = c.text_encoder + c.transformer + c.vae + c.upsampler;
            (all, all, all, all)
        }
        OffloadMode::Model => (c.text_encoder, c.transformer, c.vae, c.upsampler),
        OffloadMode::Sequential => (
            c.text_remainder + slots * c.text_max_unit,
            c.transformer_remainder + slots * c.transformer_max_unit,
            c.vae,
            c.upsampler,
        ),
    };
    let upsample = if w.upsample_activations > 0 {
        up_w + w.upsample_activations
    } else {
        0
    };
    (text_w + w.text_activations)
        .max(tr_w + w.transformer_activations)
        .max(vae_w + w.decode_activations)
        .max(upsample)
}

impl ComponentSizes {
    /// Every component's weights.
    pub fn total(&self) -> u64 {
        self.text_encoder + self.transformer + self.vae + self.upsampler
    }

    /// The largest component's weights.
    pub fn largest(&self) -> u64 {
        self.text_encoder
            .max(self.transformer)
            .max(self.vae)
            .max(self.upsampler)
    }
}

/// Where the model runs, as the host sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostPlacement {
    /// The CPU device: weights and activations are host memory.
    Cpu,
    /// A GPU in this offload mode: the host holds the master copies (`model`, `sequential`).
    Cuda(OffloadMode),
}

/// Peak host bytes of a generation (beyond the process's own baseline), by the formulas of
/// [`estimate_peak`]: see the module documentation. `video_bytes` is the uint8 video the
/// encoder reads on the host (`F·H·W·3`).
pub fn estimate_host_peak(
    w: &Workload,
    c: &ComponentSizes,
    placement: HostPlacement,
    video_bytes: u64,
) -> u64 {
    match placement {
        HostPlacement::Cpu => {
            (c.total() + c.largest()).max(estimate_peak(w, c, OffloadMode::None, 0))
        }
        HostPlacement::Cuda(mode) => {
            let pinned = if mode == OffloadMode::None {
                0
            } else {
                c.total()
            };
            (pinned + c.largest()).max(pinned + video_bytes)
        }
    }
}

/// Score-matrix bytes of one attention call that materialises them (the `math` backend):
/// `batch·heads·Sq·Sk` float32 scores and as many probabilities.
pub fn attention_scores_bytes(batch: u64, heads: u64, queries: u64, keys: u64) -> u64 {
    2 * batch * heads * queries * keys * 4
}

/// The modes from the most to the least device memory, with sequential's prefetch depths.
pub fn ladder(prefetch: usize) -> Vec<(OffloadMode, usize)> {
    let mut l = vec![
        (OffloadMode::None, prefetch),
        (OffloadMode::Model, prefetch),
    ];
    let mut k = prefetch;
    loop {
        l.push((OffloadMode::Sequential, k));
        if k == 0 {
            break;
        }
        k /= 2;
    }
    l
}

/// The next more frugal rung after `(mode, k)`, if any (the out-of-memory ladder).
pub fn more_frugal(mode: OffloadMode, k: usize) -> Option<(OffloadMode, usize)> {
    match mode {
        OffloadMode::None => Some((OffloadMode::Model, k)),
        OffloadMode::Model => Some((OffloadMode::Sequential, k)),
        OffloadMode::Sequential if k > 0 => Some((OffloadMode::Sequential, k / 2)),
        OffloadMode::Sequential => None,
    }
}

/// Why [`run_with_ladder`] gave up.
#[derive(Debug)]
pub enum LadderError<E> {
    /// An error that is not an out-of-memory: returned as it is.
    Other(E),
    /// Out of memory in the most frugal rung, or again after the one retry.
    OutOfMemory {
        mode: OffloadMode,
        prefetch: usize,
        retried: bool,
        error: E,
    },
}

/// Runs `attempt(mode, prefetch, is_retry)` in `start`; after an out-of-memory error (as
/// `is_oom` tells) it retries once in the next more frugal rung — `attempt` is expected to
/// re-place the model for it when `is_retry`. Returns the value and, when it retried, a note
/// saying what it did.
pub fn run_with_ladder<T, E: std::fmt::Display>(
    start: (OffloadMode, usize),
    mut attempt: impl FnMut(OffloadMode, usize, bool) -> Result<T, E>,
    is_oom: impl Fn(&E) -> bool,
) -> Result<(T, Option<String>), LadderError<E>> {
    let (mode, k) = start;
    let error = match attempt(mode, k, false) {
        Ok(v) => return Ok((v, None)),
        Err(e) if is_oom(&e) => e,
        Err(e) => return Err(LadderError::Other(e)),
    };
    let Some((m2, k2)) = more_frugal(mode, k) else {
        return Err(LadderError::OutOfMemory {
            mode,
            prefetch: k,
            retried: false,
            error,
        });
    };
    let note = format!(
        "out of memory in {mode} (prefetch {k}): retried in {m2} (prefetch {k2}) [{error}]"
    );
    tracing::warn!("{note}");
    match attempt(m2, k2, true) {
        Ok(v) => Ok((v, Some(note))),
        Err(e) if is_oom(&e) => Err(LadderError::OutOfMemory {
            mode: m2,
            prefetch: k2,
            retried: true,
            error: e,
        }),
        Err(e) => Err(LadderError::Other(e)),
    }
}

/// What the residency manager decided for a job.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub mode: OffloadMode,
    pub prefetch: usize,
    pub estimate_bytes: u64,
    pub budget_bytes: u64,
    /// Why it differs from the configured mode, when it does.
    pub reason: Option<String>,
}

/// The configured `(mode, k)` if its estimate fits `budget`, else the first more frugal rung
/// that fits, else the most frugal one (which may still fail; the ladder then reports it).
pub fn choose(
    w: &Workload,
    c: &ComponentSizes,
    configured: (OffloadMode, usize),
    budget: u64,
) -> Decision {
    let fits = |(m, k): (OffloadMode, usize)| estimate_peak(w, c, m, k) <= budget;
    let rungs = ladder(configured.1);
    let start = rungs.iter().position(|r| *r == configured).unwrap_or(0);
    let pick = rungs[start..]
        .iter()
        .copied()
        .find(|r| fits(*r))
        .unwrap_or(*rungs.last().unwrap_or(&configured));
    let estimate = estimate_peak(w, c, pick.0, pick.1);
    let reason = (pick != configured).then(|| {
        format!(
            "{} (prefetch {}) needs about {:.2} GB, over the {:.2} GB budget: using {} (prefetch {}, about {:.2} GB)",
            configured.0,
            configured.1,
            estimate_peak(w, c, configured.0, configured.1) as f64 / 1e9,
            budget as f64 / 1e9,
            pick.0,
            pick.1,
            estimate as f64 / 1e9
        )
    });
    Decision {
        mode: pick.0,
        prefetch: pick.1,
        estimate_bytes: estimate,
        budget_bytes: budget,
        reason,
    }
}

/// A VRAM budget: bytes, or a fraction of the device's total, or `auto` (free memory as the
/// driver reports it, plus what torch's allocator already holds, minus a margin).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BudgetSpec {
    Auto,
    Bytes(u64),
    Fraction(f64),
}

/// What `auto` leaves unused: the CUDA context, cuBLAS workspaces, fragmentation.
pub const AUTO_MARGIN: u64 = 1 << 30;

/// The host budget's `auto`: this share of the memory available at start-up (the rest stays
/// with the page cache and the machine's other processes).
pub const HOST_AUTO_SHARE: f64 = 0.5;

impl BudgetSpec {
    /// `free`, `total`: the driver's figures; `reserved`: torch's caching allocator's.
    pub fn bytes(&self, free: u64, total: u64, reserved: u64) -> u64 {
        match *self {
            Self::Auto => (free + reserved).saturating_sub(AUTO_MARGIN),
            Self::Bytes(b) => b,
            Self::Fraction(f) => (total as f64 * f) as u64,
        }
    }

    /// The host budget, a bound on the process's resident memory: `available` and `total` are
    /// the kernel's `MemAvailable` and `MemTotal` at start-up, `resident` the process's own
    /// resident memory then. `auto`: what it holds plus [`HOST_AUTO_SHARE`] of `available`.
    pub fn host_bytes(&self, available: u64, total: u64, resident: u64) -> u64 {
        match *self {
            Self::Auto => resident + (available as f64 * HOST_AUTO_SHARE) as u64,
            Self::Bytes(b) => b,
            Self::Fraction(f) => (total as f64 * f) as u64,
        }
    }
}

impl std::str::FromStr for BudgetSpec {
    type Err = String;

    /// `auto`, a fraction in (0, 1] (`0.9`), or bytes with an optional unit (`12GiB`,
    /// `8000MB`, `1073741824`).
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("auto") {
            return Ok(Self::Auto);
        }
        let bad =
            || format!("budget {s:?}: expected auto, a fraction in (0, 1] or a size like 12GiB");
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: f64 = num.parse().map_err(|_| bad())?;
        let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" if num.contains('.') => {
                return if n > 0.0 && n <= 1.0 {
                    Ok(Self::Fraction(n))
                } else {
                    Err(bad())
                }
            }
            "" | "b" => 1.0,
            "kb" => 1e3,
            "mb" => 1e6,
            "gb" => 1e9,
            "kib" => 1024.0,
            "mib" => 1024.0 * 1024.0,
            "gib" => 1024.0 * 1024.0 * 1024.0,
            _ => return Err(bad()),
        };
        if !(n.is_finite() && n > 0.0) {
            return Err(bad());
        }
        Ok(Self::Bytes((n * mult) as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes() -> ComponentSizes {
        // LTX-2B-like: T5-XXL 9.5 GB, transformer 3.8 GB (28 blocks), VAE 0.8 GB, bf16.
        ComponentSizes {
            text_encoder: 9_500_000_000,
            transformer: 3_800_000_000,
            vae: 800_000_000,
            upsampler: 0,
            transformer_remainder: 100_000_000,
            transformer_max_unit: 132_000_000,
            text_remainder: 260_000_000,
            text_max_unit: 385_000_000,
        }
    }

    fn shape() -> Shape {
        Shape {
            batch: 2,
            tokens: 6144,
            hidden: 2048,
            text_len: 128,
            text_hidden: 4096,
            frames: 121,
            height: 512,
            width: 768,
            decoder_channels: 128,
            decoder_patch: 4,
            decode_tile: None,
            elem: 2,
        }
    }

    #[test]
    fn tiling_shrinks_the_decode_estimate() {
        let untiled = Workload::of(&shape()).decode_activations;
        let tiled = Workload::of(&Shape {
            decode_tile: Some([16, 512, 512]),
            ..shape()
        })
        .decode_activations;
        assert!(tiled * 2 < untiled, "{tiled} vs {untiled}");
        // Untiled: the last stage (128 channels at a quarter of the size, bf16), four
        // video-sized float32 tensors, the uint8 frames.
        let px = 121 * 512 * 768;
        assert_eq!(untiled, 4 * 128 * px / 16 * 2 + 48 * px + 3 * px);
    }

    #[test]
    fn host_memory_counts_what_lives_on_the_host() {
        let w = Workload::of(&Shape { elem: 4, ..shape() });
        let c = sizes();
        // The CPU device: every weight and the largest stage, as the resident estimate, once
        // the decode outgrows loading's extra copy of the largest component.
        let big = Workload {
            decode_activations: 20_000_000_000,
            ..w
        };
        assert_eq!(
            estimate_host_peak(&big, &c, HostPlacement::Cpu, 0),
            estimate_peak(&big, &c, OffloadMode::None, 0)
        );
        assert_eq!(
            estimate_host_peak(&w, &c, HostPlacement::Cpu, 0),
            c.total() + c.text_encoder
        );
        // Tiny activations: loading (the largest component held twice) is the peak.
        let idle = Workload::default();
        assert_eq!(
            estimate_host_peak(&idle, &c, HostPlacement::Cpu, 0),
            c.total() + c.text_encoder
        );
        // A GPU: the pinned copies in the offload modes, nothing of them when resident.
        let video = 3 * 121 * 512 * 768;
        let model = estimate_host_peak(&w, &c, HostPlacement::Cuda(OffloadMode::Model), video);
        assert_eq!(model, c.total() + c.text_encoder.max(video));
        let none = estimate_host_peak(&w, &c, HostPlacement::Cuda(OffloadMode::None), video);
        assert_eq!(none, c.text_encoder.max(video));
        assert_eq!(
            attention_scores_bytes(2, 4, 100, 100),
            2 * 2 * 4 * 100 * 100 * 4
        );
    }

    #[test]
    fn modes_order_by_peak() {
        let w = Workload::of(&shape());
        let c = sizes();
        let none = estimate_peak(&w, &c, OffloadMode::None, 2);
        let model = estimate_peak(&w, &c, OffloadMode::Model, 2);
        let seq2 = estimate_peak(&w, &c, OffloadMode::Sequential, 2);
        let seq0 = estimate_peak(&w, &c, OffloadMode::Sequential, 0);
        assert!(
            none > model && model >= seq2 && seq2 >= seq0,
            "{none} {model} {seq2} {seq0}"
        );
        // model: the largest of each component with its own stage.
        assert_eq!(
            model,
            (c.text_encoder + w.text_activations)
                .max(c.transformer + w.transformer_activations)
                .max(c.vae + w.decode_activations)
        );
        // With a small decode (tiled), the streamed modes are strictly smaller.
        let tiled = Workload {
            decode_activations: 100_000_000,
            ..w
        };
        let m = estimate_peak(&tiled, &c, OffloadMode::Model, 2);
        let s2 = estimate_peak(&tiled, &c, OffloadMode::Sequential, 2);
        let s0 = estimate_peak(&tiled, &c, OffloadMode::Sequential, 0);
        assert!(m > s2 && s2 > s0, "{m} {s2} {s0}");
        // model: the biggest component (T5) with its activations, or the decode.
        assert!(model >= c.text_encoder + w.text_activations);
        // The transformer step's activations: 14·B·S·D·e + float32 latents.
        assert_eq!(
            w.transformer_activations,
            14 * 2 * 6144 * 2048 * 2 + 6144 * 2048 * 4
        );
    }

    #[test]
    fn the_upsampler_counts_resident_and_alone_when_offloaded() {
        let w = Workload::of(&shape());
        let c = ComponentSizes {
            upsampler: 250_000_000,
            ..sizes()
        };
        // Without an upsample stage the upsampler is still resident in `none`.
        let none = estimate_peak(&w, &c, OffloadMode::None, 2);
        assert_eq!(
            none,
            estimate_peak(&w, &sizes(), OffloadMode::None, 2) + c.upsampler
        );
        // A huge upsample alone dominates, with the upsampler's weights alone when offloaded.
        let up = Workload {
            upsample_activations: 50_000_000_000,
            ..w
        };
        assert_eq!(
            estimate_peak(&up, &c, OffloadMode::Model, 2),
            c.upsampler + up.upsample_activations
        );
        assert_eq!(
            estimate_peak(&up, &c, OffloadMode::None, 2),
            c.text_encoder + c.transformer + c.vae + c.upsampler + up.upsample_activations
        );
    }

    #[test]
    fn choose_keeps_what_fits_and_steps_down_otherwise() {
        let w = Workload {
            decode_activations: 1 << 30,
            ..Workload::of(&shape())
        };
        let c = sizes();
        let big = choose(&w, &c, (OffloadMode::None, 2), 80_000_000_000);
        assert_eq!((big.mode, big.reason.is_none()), (OffloadMode::None, true));
        let model_peak = estimate_peak(&w, &c, OffloadMode::Model, 2);
        let d = choose(&w, &c, (OffloadMode::None, 2), model_peak);
        assert_eq!(d.mode, OffloadMode::Model);
        assert!(d.reason.unwrap().contains("over the"));
        let d = choose(&w, &c, (OffloadMode::None, 2), model_peak - 1);
        assert_eq!(d.mode, OffloadMode::Sequential);
        // Nothing fits: the most frugal rung, said so.
        let d = choose(&w, &c, (OffloadMode::Model, 2), 1);
        assert_eq!((d.mode, d.prefetch), (OffloadMode::Sequential, 0));
        // A configured frugal mode is never made less frugal.
        let d = choose(&w, &c, (OffloadMode::Sequential, 1), u64::MAX);
        assert_eq!((d.mode, d.prefetch), (OffloadMode::Sequential, 1));
    }

    #[test]
    fn the_ladder_goes_down_to_sequential_without_prefetch() {
        assert_eq!(
            more_frugal(OffloadMode::None, 2),
            Some((OffloadMode::Model, 2))
        );
        assert_eq!(
            more_frugal(OffloadMode::Model, 2),
            Some((OffloadMode::Sequential, 2))
        );
        assert_eq!(
            more_frugal(OffloadMode::Sequential, 2),
            Some((OffloadMode::Sequential, 1))
        );
        assert_eq!(more_frugal(OffloadMode::Sequential, 0), None);
        assert_eq!(
            ladder(4),
            vec![
                (OffloadMode::None, 4),
                (OffloadMode::Model, 4),
                (OffloadMode::Sequential, 4),
                (OffloadMode::Sequential, 2),
                (OffloadMode::Sequential, 1),
                (OffloadMode::Sequential, 0)
            ]
        );
    }

    #[test]
    fn the_ladder_retries_once_a_rung_down_and_only_for_out_of_memory() {
        let oom = |e: &String| e.contains("out of memory");
        // Fails in none, succeeds in model.
        let mut tried = Vec::new();
        let (v, note) = run_with_ladder(
            (OffloadMode::None, 2),
            |m, k, retry| {
                tried.push((m, k, retry));
                if m == OffloadMode::None {
                    Err("CUDA out of memory. Tried to allocate 2.00 GiB".to_string())
                } else {
                    Ok(7)
                }
            },
            oom,
        )
        .unwrap();
        assert_eq!(v, 7);
        assert_eq!(
            tried,
            vec![(OffloadMode::None, 2, false), (OffloadMode::Model, 2, true)]
        );
        assert!(note.unwrap().contains("retried in model"));
        // Out of memory twice: one retry only.
        let r = run_with_ladder::<(), _>(
            (OffloadMode::Model, 2),
            |_, _, _| Err("out of memory".to_string()),
            oom,
        );
        assert!(matches!(
            r,
            Err(LadderError::OutOfMemory {
                mode: OffloadMode::Sequential,
                prefetch: 2,
                retried: true,
                ..
            })
        ));
        // Nothing below sequential without prefetch.
        let r = run_with_ladder::<(), _>(
            (OffloadMode::Sequential, 0),
            |_, _, _| Err("out of memory".to_string()),
            oom,
        );
        assert!(matches!(
            r,
            Err(LadderError::OutOfMemory { retried: false, .. })
        ));
        // Other errors pass through untouched, without a retry.
        let mut calls = 0;
        let r = run_with_ladder::<(), _>(
            (OffloadMode::None, 2),
            |_, _, _| {
                calls += 1;
                Err("shape mismatch".to_string())
            },
            oom,
        );
        assert!(matches!(r, Err(LadderError::Other(e)) if e == "shape mismatch"));
        assert_eq!(calls, 1);
    }

    #[test]
    fn budgets_parse_and_resolve() {
        use BudgetSpec::*;
        assert_eq!("auto".parse(), Ok(Auto));
        assert_eq!("0.8".parse(), Ok(Fraction(0.8)));
        assert_eq!("12GiB".parse(), Ok(Bytes(12 << 30)));
        assert_eq!("8000 MB".parse(), Ok(Bytes(8_000_000_000)));
        assert_eq!("1073741824".parse(), Ok(Bytes(1 << 30)));
        for bad in ["", "1.5", "-3GB", "12 parsecs", "0.0"] {
            assert!(bad.parse::<BudgetSpec>().is_err(), "{bad}");
        }
        assert_eq!(Fraction(0.5).bytes(0, 16 << 30, 0), 8 << 30);
        assert_eq!(Auto.bytes(10 << 30, 16 << 30, 2 << 30), 11 << 30);
        assert_eq!(Auto.bytes(100, 16 << 30, 0), 0);
        // Host: what the process holds plus half of what is available; fractions of the total.
        assert_eq!(Auto.host_bytes(10 << 30, 24 << 30, 1 << 30), 6 << 30);
        assert_eq!(Fraction(0.25).host_bytes(10 << 30, 24 << 30, 0), 6 << 30);
        assert_eq!(Bytes(5).host_bytes(10 << 30, 24 << 30, 1 << 30), 5);
    }
}
