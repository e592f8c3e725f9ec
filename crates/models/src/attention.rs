//! The one attention function every model calls, with a process-wide choice of backend:
//!
//! - `sdpa` (default): torch's `scaled_dot_product_attention` (its fastest backend);
//! - `sliced`: memory linear in the sequence length — on CUDA the tensor-core kernel
//!   (`kernels/sliced_attention.cu`, bf16/fp16, head dims 64/128, key masks), elsewhere or for
//!   other inputs queries in chunks with tch ops;
//! - `math`: the plain definition (the whole score matrix), the reference.
//!
//! `LTX_ATTENTION=sdpa|sliced|math` selects it; the original service's attention-slicing switch
//! (`LTX_ENABLE_ATTENTION_SLICING=true`) maps to `sliced`.

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

static BACKEND: AtomicU8 = AtomicU8::new(0);

/// Sets the backend for every attention call in this process.
pub fn set_backend(b: AttentionBackend) {
    BACKEND.store(b as u8, Ordering::Relaxed);
}

pub fn backend() -> AttentionBackend {
    match BACKEND.load(Ordering::Relaxed) {
        1 => AttentionBackend::Sliced,
        2 => AttentionBackend::Math,
        _ => AttentionBackend::Sdpa,
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

    static BACKEND_LOCK: Mutex<()> = Mutex::new(());

    #[test]
    fn every_backend_gives_sdpas_result_on_the_cpu() {
        let _g = BACKEND_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        tch::manual_seed(5);
        let q = Tensor::randn([2, 4, 33, 16], (Kind::Float, Device::Cpu));
        let k = Tensor::randn([2, 4, 12, 16], (Kind::Float, Device::Cpu));
        let v = Tensor::randn([2, 4, 12, 16], (Kind::Float, Device::Cpu));
        let mask = (Tensor::rand([2, 1, 1, 12], (Kind::Float, Device::Cpu))
            .gt(0.5)
            .to_kind(Kind::Float)
            - 1.0)
            * 10000.0;
        set_backend(AttentionBackend::Sdpa);
        let want = attention(&q, &k, &v, Some(&mask), None).unwrap();
        for b in [AttentionBackend::Sliced, AttentionBackend::Math] {
            set_backend(b);
            let got = attention(&q, &k, &v, Some(&mask), None).unwrap();
            let err = (&got - &want).abs().max().double_value(&[]);
            assert!(err < 1e-5, "{b}: {err}");
        }
        set_backend(AttentionBackend::Sdpa);
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
