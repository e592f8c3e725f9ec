//! The one attention function every model calls, with a choice of backend per thread:
//!
//! - `sdpa` (default): torch's `scaled_dot_product_attention` (its fastest backend);
//! - `sliced`: memory linear in the sequence length — on CUDA the tensor-core kernel
//!   (`kernels/sliced_attention.cu`, bf16/fp16, head dims 64/128, key masks), elsewhere or for
//!   other inputs queries in chunks with tch ops;
//! - `math`: the plain definition (the whole score matrix), the reference.
//!
//! `LTX_ATTENTION=sdpa|sliced|math` selects it; the original service's attention-slicing switch
//! (`LTX_ENABLE_ATTENTION_SLICING=true`) maps to `sliced`.
//!
//! The backend is the calling thread's: [`set_backend`] or a [`scoped`] guard choose it for
//! one thread (a pipeline runs its generations under its own, so two model families on two
//! worker threads, or one after the other on one, each keep theirs); a thread that never
//! chose one uses the process-wide default of [`set_default`].

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use ltx_gpu::kernels::attention as kernel;
use ltx_gpu::kernels::KernelRegistry;
use tch::{Device, Tensor};

use crate::{ModelError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionBackend {
    Sdpa,
    Sliced,
    Math,
}

impl AttentionBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sdpa => "sdpa",
            Self::Sliced => "sliced",
            Self::Math => "math",
        }
    }

    /// `LTX_ATTENTION` if set, else `sliced` when `slicing` (the original switch), else sdpa.
    pub fn from_settings(
        attention: Option<&str>,
        slicing: bool,
    ) -> std::result::Result<Self, String> {
        match attention {
            Some(a) if !a.trim().is_empty() => a.parse(),
            _ if slicing => Ok(Self::Sliced),
            _ => Ok(Self::Sdpa),
        }
    }
}

impl std::fmt::Display for AttentionBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for AttentionBackend {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "sdpa" => Ok(Self::Sdpa),
            "sliced" => Ok(Self::Sliced),
            "math" => Ok(Self::Math),
            other => Err(format!(
                "attention backend {other:?}: expected sdpa, sliced or math"
            )),
        }
    }
}

/// The backend of threads that never chose one.
static DEFAULT: AtomicU8 = AtomicU8::new(AttentionBackend::Sdpa as u8);

thread_local! {
    /// This thread's choice, if it made one.
    static CURRENT: Cell<Option<AttentionBackend>> = const { Cell::new(None) };
}

impl AttentionBackend {
    fn from_u8(n: u8) -> Self {
        match n {
            1 => Self::Sliced,
            2 => Self::Math,
            _ => Self::Sdpa,
        }
    }
}

/// Sets the process-wide default: the backend of every thread that has not chosen its own
/// (`sdpa` until set).
pub fn set_default(b: AttentionBackend) {
    DEFAULT.store(b as u8, Ordering::Relaxed);
}

/// The process-wide default of [`set_default`].
pub fn default_backend() -> AttentionBackend {
    AttentionBackend::from_u8(DEFAULT.load(Ordering::Relaxed))
}

/// Sets the backend of this thread's attention calls (other threads keep theirs).
pub fn set_backend(b: AttentionBackend) {
    CURRENT.with(|c| c.set(Some(b)));
}

/// The backend this thread's attention calls use: its own choice, else the default.
pub fn backend() -> AttentionBackend {
    CURRENT.with(Cell::get).unwrap_or_else(default_backend)
}

/// Makes `b` this thread's backend until the guard drops, which restores the thread's previous
/// choice (or none, then the default again), however the scope ends.
#[must_use = "the backend reverts when the guard is dropped"]
pub fn scoped(b: AttentionBackend) -> Guard {
    let previous = CURRENT.with(|c| c.replace(Some(b)));
    Guard {
        previous,
        _not_send: std::marker::PhantomData,
    }
}

/// Restores this thread's previous backend on drop (see [`scoped`]); it stays on the thread
/// that made it.
pub struct Guard {
    previous: Option<AttentionBackend>,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.previous));
    }
}

/// The kernel registry of each CUDA device, made on first use.
fn registry(index: usize) -> Result<Arc<KernelRegistry>> {
    static REGISTRIES: Mutex<Option<HashMap<usize, Arc<KernelRegistry>>>> = Mutex::new(None);
    let mut guard = REGISTRIES.lock().unwrap_or_else(|p| p.into_inner());
    let map = guard.get_or_insert_with(HashMap::new);
    if let Some(r) = map.get(&index) {
        return Ok(r.clone());
    }
    let gpu = |e: ltx_gpu::GpuError| ModelError::Memory(format!("sliced attention: {e}"));
    let dev = ltx_gpu::cuda::open(index).map_err(|e| gpu(e.into()))?;
    let r = Arc::new(KernelRegistry::new(dev).map_err(gpu)?);
    map.insert(index, r.clone());
    Ok(r)
}

/// Queries per chunk of the tch `sliced` path: about 16 Mi float32 scores at a time.
fn chunk_for(q: &Tensor, k: &Tensor) -> i64 {
    let (b, h, sq) = (q.size()[0], q.size()[1], q.size()[2]);
    let sk = k.size()[2].max(1);
    ((1i64 << 24) / (b * h * sk).max(1)).clamp(16, sq.max(16))
}

/// `softmax(q·kᵀ·scale + mask)·v` for `q` `[B, H, Sq, D]`, `k`/`v` `[B, H, Sk, D]`, an optional
/// additive `mask` broadcastable to `[B, H, Sq, Sk]`; `scale` defaults to `1/√D`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: Option<f64>,
) -> Result<Tensor> {
    match backend() {
        AttentionBackend::Sdpa => Ok(Tensor::f_scaled_dot_product_attention(
            q, k, v, mask, 0.0, false, scale, false,
        )?),
        AttentionBackend::Math => math(q, k, v, mask, scale),
        AttentionBackend::Sliced => {
            if let Device::Cuda(i) = q.device() {
                if kernel::supports(q, k, v, mask) {
                    let r = registry(i)?;
                    return kernel::sliced_attention(&r, q, k, v, mask, scale).map_err(gpu_error);
                }
            }
            kernel::chunked_attention(q, k, v, mask, scale, chunk_for(q, k)).map_err(gpu_error)
        }
    }
}

/// torch errors stay torch errors; the rest name the attention backend.
fn gpu_error(e: ltx_gpu::GpuError) -> ModelError {
    match e {
        ltx_gpu::GpuError::Torch(t) => ModelError::Torch(t),
        other => ModelError::Memory(format!("attention: {other}")),
    }
}

/// The definition with the whole score matrix, in float32: the chunked path with one chunk.
fn math(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: Option<f64>,
) -> Result<Tensor> {
    kernel::chunked_attention(q, k, v, mask, scale, q.size()[2].max(1)).map_err(gpu_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn every_backend_gives_sdpas_result_on_the_cpu() {
        let mut g = ltx_gpu::rng::Generator::new(Device::Cpu, 5).unwrap();
        let mut randn = |s: &[i64]| g.randn(s, Kind::Float).unwrap();
        let (q, k, v) = (
            randn(&[2, 4, 33, 16]),
            randn(&[2, 4, 12, 16]),
            randn(&[2, 4, 12, 16]),
        );
        let mask = (randn(&[2, 1, 1, 12]).gt(0.0).to_kind(Kind::Float) - 1.0) * 10000.0;
        let want = {
            let _s = scoped(AttentionBackend::Sdpa);
            attention(&q, &k, &v, Some(&mask), None).unwrap()
        };
        for b in [AttentionBackend::Sliced, AttentionBackend::Math] {
            let _s = scoped(b);
            let got = attention(&q, &k, &v, Some(&mask), None).unwrap();
            let err = (&got - &want).abs().max().double_value(&[]);
            assert!(err < 1e-5, "{b}: {err}");
        }
    }

    #[test]
    fn the_backend_is_the_threads_and_guards_restore_it() {
        use AttentionBackend::*;
        // The process default stays as it is: other tests run meanwhile on threads that never
        // chose a backend.
        let default = default_backend();
        assert_eq!(backend(), default, "a thread that never chose one");
        {
            let _outer = scoped(Math);
            assert_eq!(backend(), Math);
            {
                let _inner = scoped(Sdpa);
                assert_eq!(backend(), Sdpa);
                // Another thread sees the default, and its choice stays its own.
                std::thread::spawn(move || {
                    assert_eq!(backend(), default);
                    set_backend(Math);
                    assert_eq!(backend(), Math);
                })
                .join()
                .unwrap();
                assert_eq!(backend(), Sdpa);
            }
            assert_eq!(backend(), Math);
        }
        assert_eq!(backend(), default, "back to no choice: the default");
        set_backend(Math);
        let r = std::panic::catch_unwind(|| {
            let _g = scoped(Sdpa);
            panic!("a failing generation");
        });
        assert!(r.is_err());
        assert_eq!(backend(), Math, "restored when the scope unwinds");
    }

    #[test]
    fn settings_map_like_the_original_switch() {
        use AttentionBackend::*;
        assert_eq!(AttentionBackend::from_settings(None, false), Ok(Sdpa));
        assert_eq!(AttentionBackend::from_settings(None, true), Ok(Sliced));
        assert_eq!(
            AttentionBackend::from_settings(Some("math"), true),
            Ok(Math)
        );
        assert_eq!(AttentionBackend::from_settings(Some(""), true), Ok(Sliced));
        assert!(AttentionBackend::from_settings(Some("flash"), false).is_err());
    }
}
