//! Sliced (flash-style) attention on tensor cores (`kernels/sliced_attention.cu`, parameters in
//! `kernels/abi.h`): extra memory linear in the sequence length — the Sq×Sk scores never exist.
//! bf16 or fp16, head dims 64 and 128, an optional additive key mask, any `[B, H, S, D]` strides
//! with D contiguous (so `[B, S, H, D]` views are read in place).

use std::sync::atomic::{AtomicU64, Ordering};

use cudarc::driver::{LaunchConfig, PushKernelArg};
use tch::{Device, Kind, Tensor};

use crate::kernels::KernelRegistry;
use crate::{ffi, GpuError};

pub const KERNEL: &str = "sliced_attention";
const QUERIES_PER_BLOCK: i64 = 64;
const THREADS: u32 = 128;

static LAUNCHES: AtomicU64 = AtomicU64::new(0);

/// How many times this process has queued the kernel (so a test can tell that a backend
/// really ran it, rather than falling back to another path).
pub fn launches() -> u64 {
    LAUNCHES.load(Ordering::Relaxed)
}

fn bad<T>(m: String) -> Result<T, GpuError> {
    Err(GpuError::InvalidArgument(format!("sliced attention: {m}")))
}

/// Whether the kernel handles these inputs (else use another backend): CUDA, bf16/fp16, head
/// dim 64 or 128, D contiguous, and a mask (if any) that is additive (a float tensor, not
/// SDPA's boolean keep-mask) and only depends on batch and key.
pub fn supports(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> bool {
    check(q, k, v, mask).is_ok()
}

struct Checked {
    kind: Kind,
    b: i64,
    h: i64,
    sq: i64,
    sk: i64,
    d: i64,
}

fn check(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Checked, GpuError> {
    let dev = q.device();
    if !matches!(dev, Device::Cuda(_)) {
        return bad(format!("needs CUDA tensors, q is on {dev:?}"));
    }
    let kind = q.kind();
    if !matches!(kind, Kind::BFloat16 | Kind::Half) {
        return bad(format!("needs bf16 or fp16, got {kind:?}"));
    }
    let (qs, ks, vs) = (q.size(), k.size(), v.size());
    if qs.len() != 4 || ks.len() != 4 || vs.len() != 4 {
        return bad(format!("q {qs:?}, k {ks:?}, v {vs:?} must be [B, H, S, D]"));
    }
    let (b, h, sq, d) = (qs[0], qs[1], qs[2], qs[3]);
    let sk = ks[2];
    if ks != [b, h, sk, d] || vs != [b, h, sk, d] {
        return bad(format!("q {qs:?}, k {ks:?}, v {vs:?} do not match"));
    }
    if d != 64 && d != 128 {
        return bad(format!("head dim {d}: the kernel has 64 and 128"));
    }
    for (name, t) in [("q", q), ("k", k), ("v", v)] {
        if t.kind() != kind || t.device() != dev {
            return bad(format!("{name} is {:?} on {:?}", t.kind(), t.device()));
        }
        let st = t.stride();
        if st[3] != 1
            || st[..3].iter().any(|s| s % 2 != 0)
            || !(t.data_ptr() as usize).is_multiple_of(4)
        {
            return bad(format!(
                "{name} strides {st:?}: D must be contiguous and rows 4-byte aligned"
            ));
        }
    }
    if let Some(m) = mask {
        let ms = m.size();
        let key_only =
            ms.len() == 4 && (ms[0] == b || ms[0] == 1) && ms[1] == 1 && ms[2] == 1 && ms[3] == sk;
        if !key_only {
            return bad(format!(
                "mask {ms:?}: only a key mask [B, 1, 1, {sk}] is supported"
            ));
        }
        if m.device() != dev {
            return bad(format!("mask is on {:?}", m.device()));
        }
        if !m.is_floating_point() {
            return bad(format!(
                "a {:?} mask: the kernel takes an additive float mask (a boolean mask means \
                 keep/drop to SDPA, not 0/1 to add)",
                m.kind()
            ));
        }
    }
    Ok(Checked {
        kind,
        b,
        h,
        sq,
        sk,
        d,
    })
}

/// `softmax(q·kᵀ·scale + mask)·v` as `[B, H, Sq, D]` (a view of a `[B, Sq, H, D]` tensor),
/// queued on torch's current stream. `scale` defaults to `1/√D`.
pub fn sliced_attention(
    registry: &KernelRegistry,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: Option<f64>,
) -> Result<Tensor, GpuError> {
    let c = check(q, k, v, mask)?;
    if Device::Cuda(registry.device().index()) != q.device() {
        return bad("the registry belongs to another device".into());
    }
    let out = Tensor::f_empty([c.b, c.sq, c.h, c.d], (c.kind, q.device()))?;
    if c.b * c.h * c.sq == 0 {
        return Ok(out.f_permute([0, 2, 1, 3])?);
    }
    // The key mask as float32 [B, Sk] (broadcast over a batch of 1).
    let mask32 = match mask {
        Some(m) => Some(
            m.f_to_kind(Kind::Float)?
                .f_expand([c.b, 1, 1, c.sk], false)?
                .f_reshape([c.b, c.sk])?
                .f_contiguous()?,
        ),
        None => None,
    };
    let (qs, ks, vs, os) = (q.stride(), k.stride(), v.stride(), out.stride());
    let params = ffi::ltx_attention_params {
        q: q.data_ptr() as *const _,
        k: k.data_ptr() as *const _,
        v: v.data_ptr() as *const _,
        out: out.data_ptr(),
        mask: mask32
            .as_ref()
            .map_or(std::ptr::null(), |m| m.data_ptr() as *const f32),
        heads: c.h,
        sq: c.sq,
        sk: c.sk,
        q_stride_b: qs[0],
        q_stride_h: qs[1],
        q_stride_s: qs[2],
        k_stride_b: ks[0],
        k_stride_h: ks[1],
        k_stride_s: ks[2],
        v_stride_b: vs[0],
        v_stride_h: vs[1],
        v_stride_s: vs[2],
        // out is [B, Sq, H, D]: its (b, h, s) strides.
        out_stride_b: os[0],
        out_stride_h: os[2],
        out_stride_s: os[1],
        mask_stride_b: c.sk,
        scale: scale.unwrap_or(1.0 / (c.d as f64).sqrt()) as f32,
    };
    let func = format!(
        "sliced_attention_{}_d{}",
        if c.kind == Kind::BFloat16 {
            "bf16"
        } else {
            "f16"
        },
        c.d
    );
    let function = registry.function(KERNEL, &func)?;
    let blocks_q = u32::try_from((c.sq + QUERIES_PER_BLOCK - 1) / QUERIES_PER_BLOCK)
        .map_err(|_| GpuError::InvalidArgument("too many queries for one launch".into()))?;
    let blocks_bh = u32::try_from(c.b * c.h)
        .ok()
        .filter(|n| *n <= 65_535)
        .ok_or_else(|| GpuError::InvalidArgument("batch × heads over 65535".into()))?;
    let device = registry.device();
    let stream = device.current_stream()?.as_cudarc(device);
    let cfg = LaunchConfig {
        grid_dim: (blocks_q, blocks_bh, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: q/k/v/out are live CUDA tensors of the checked shapes and dtype on this device,
    // D contiguous, strides in elements as the kernel expects; mask32 (if any) is a live
    // contiguous float32 [B, Sk] tensor kept alive until after the launch is queued and then
    // freed stream-ordered by torch's allocator; the launch is on torch's current stream.
    unsafe { stream.launch_builder(&function).arg(&params).launch(cfg) }?;
    LAUNCHES.fetch_add(1, Ordering::Relaxed);
    drop(mask32);
    Ok(out.f_permute([0, 2, 1, 3])?)
}

/// The memory-linear CPU (or any-device) fallback with the same result: queries in chunks of
/// `chunk`, each `softmax(q_c·kᵀ·scale + mask)·v` — extra memory `chunk × Sk` per (B, H)
/// instead of `Sq × Sk`. A boolean mask is read as SDPA reads it: `true` keeps a key,
/// `false` adds −∞.
pub fn chunked_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: Option<f64>,
    chunk: i64,
) -> Result<Tensor, GpuError> {
    let sq = q.size()[2];
    let d = q.size()[3];
    let scale = scale.unwrap_or(1.0 / (d as f64).sqrt());
    // float32 like SDPA's math path accumulates; back to the input dtype at the end.
    let kt = k.f_to_kind(Kind::Float)?.f_transpose(-2, -1)?;
    let additive = match mask {
        Some(m) if m.kind() == Kind::Bool => Some(
            Tensor::f_zeros(m.size(), (Kind::Float, m.device()))?
                .f_masked_fill(&m.f_logical_not()?, f64::NEG_INFINITY)?,
        ),
        Some(m) => Some(m.shallow_clone()),
        None => None,
    };
    let mask = additive.as_ref();
    let v32 = v.f_to_kind(Kind::Float)?;
    let mut parts = Vec::new();
    let mut start = 0;
    while start < sq {
        let n = chunk.max(1).min(sq - start);
        let qc = q.f_narrow(2, start, n)?.f_to_kind(Kind::Float)?;
        let mut s = qc.f_matmul(&kt)? * scale;
        if let Some(m) = mask {
            // A mask with a query axis is cut like the queries; a key mask broadcasts.
            let mm = if m.dim() == 4 && m.size()[2] == sq && sq > 1 {
                m.f_narrow(2, start, n)?
            } else {
                m.shallow_clone()
            };
            s += mm.f_to_kind(Kind::Float)?;
        }
        let p = s.f_softmax(-1, Kind::Float)?;
        parts.push(p.f_matmul(&v32)?.f_to_kind(q.kind())?);
        start += n;
    }
    Ok(Tensor::f_cat(&parts, 2)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition in float64.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, scale: f64) -> Tensor {
        let (q, k, v) = (
            q.to_kind(Kind::Double),
            k.to_kind(Kind::Double),
            v.to_kind(Kind::Double),
        );
        let mut s = q.matmul(&k.transpose(-2, -1)) * scale;
        if let Some(m) = mask {
            s += m.to_kind(Kind::Double);
        }
        s.softmax(-1, Kind::Double).matmul(&v)
    }

    #[test]
    fn chunked_attention_matches_the_definition_for_any_chunk() {
        tch::manual_seed(3);
        let (b, h, sq, sk, d) = (2, 3, 37, 29, 16);
        let q = Tensor::randn([b, sq, h, d], (Kind::Float, Device::Cpu)).transpose(1, 2);
        let k = Tensor::randn([b, h, sk, d], (Kind::Float, Device::Cpu));
        let v = Tensor::randn([b, h, sk, d], (Kind::Float, Device::Cpu));
        let keep = Tensor::rand([b, 1, 1, sk], (Kind::Float, Device::Cpu)).gt(0.3);
        let mask = (keep.to_kind(Kind::Float) - 1.0) * 10000.0;
        let want = reference(&q, &k, &v, Some(&mask), 0.25);
        for chunk in [1, 5, 16, 37, 100] {
            let got = chunked_attention(&q, &k, &v, Some(&mask), Some(0.25), chunk).unwrap();
            let err = (got.to_kind(Kind::Double) - &want)
                .abs()
                .max()
                .double_value(&[]);
            assert!(err < 1e-5, "chunk {chunk}: {err}");
        }
        let got = chunked_attention(&q, &k, &v, None, None, 8).unwrap();
        let want = reference(&q, &k, &v, None, 0.25);
        assert!(
            (got.to_kind(Kind::Double) - want)
                .abs()
                .max()
                .double_value(&[])
                < 1e-5
        );
    }

    #[test]
    fn the_kernel_refuses_what_it_does_not_handle() {
        let t = |shape: &[i64], kind| Tensor::zeros(shape, (kind, Device::Cpu));
        let q = t(&[1, 2, 8, 64], Kind::BFloat16);
        assert!(!supports(&q, &q, &q, None), "CPU tensors");
        let e = check(&q, &q, &q, None).err().unwrap().to_string();
        assert!(e.contains("CUDA"), "{e}");
    }

    #[test]
    fn a_boolean_mask_keeps_and_drops_keys_like_sdpa() {
        tch::manual_seed(4);
        let (b, h, sq, sk, d) = (2, 2, 9, 13, 8);
        let q = Tensor::randn([b, h, sq, d], (Kind::Float, Device::Cpu));
        let k = Tensor::randn([b, h, sk, d], (Kind::Float, Device::Cpu));
        let v = Tensor::randn([b, h, sk, d], (Kind::Float, Device::Cpu));
        let keep = Tensor::rand([b, 1, 1, sk], (Kind::Float, Device::Cpu)).gt(0.4);
        let _ = keep.narrow(3, 0, 1).fill_(1);
        let want =
            Tensor::scaled_dot_product_attention(&q, &k, &v, Some(&keep), 0.0, false, None, false);
        for chunk in [2, 9] {
            let got = chunked_attention(&q, &k, &v, Some(&keep), None, chunk).unwrap();
            let err = (&got - &want).abs().max().double_value(&[]);
            assert!(err < 1e-5, "chunk {chunk}: {err}");
        }
    }
}
