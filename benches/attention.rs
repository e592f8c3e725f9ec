//! Attention microbenchmarks (GPU) at LTX shapes, three ways in the same run: our sliced
//! tensor-core kernel (`kernel/`), torch's `scaled_dot_product_attention` with its fastest
//! backend (`tch_reference/`), and the diffusers-style sliced attention of
//! `enable_attention_slicing()` (`diffusers_sliced/`: per slice of heads, `baddbmm` → softmax →
//! `bmm`, slice size = heads / 2 as diffusers' "auto"). Throughput is FLOPs (4·B·H·Sq·Sk·D per
//! call), printed by the bundle's runner as TFLOP/s. Before the timed runs each method's peak
//! extra memory is measured once and printed as `memory <id>: N MiB`. Without a CUDA device
//! the bench prints `skipped: no CUDA device (…)`.

mod common;

use std::time::Duration;

use common::{mib, peak_above_start, timed};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ltx_gpu::kernels::attention::sliced_attention;
use ltx_gpu::kernels::KernelRegistry;
use tch::{Device, Kind, Tensor};

struct Case {
    name: &'static str,
    b: i64,
    h: i64,
    sq: i64,
    sk: i64,
    d: i64,
    masked: bool,
}

const CASES: [Case; 3] = [
    // LTX-2B self-attention at 768×512×121 (6144 tokens), batch 2 (CFG).
    Case {
        name: "self_2b",
        b: 2,
        h: 32,
        sq: 6144,
        sk: 6144,
        d: 64,
        masked: false,
    },
    // Head dim 128 (the 13B model's).
    Case {
        name: "self_d128",
        b: 2,
        h: 32,
        sq: 6144,
        sk: 6144,
        d: 128,
        masked: false,
    },
    // Cross-attention to 128 text tokens with the padding mask.
    Case {
        name: "cross_2b",
        b: 2,
        h: 32,
        sq: 6144,
        sk: 128,
        d: 64,
        masked: true,
    },
];

/// diffusers' `AttnProcessor` with attention slicing.
fn diffusers_sliced(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    slice: i64,
) -> Tensor {
    let (b, h, sq, d) = (q.size()[0], q.size()[1], q.size()[2], q.size()[3]);
    let sk = k.size()[2];
    let scale = 1.0 / (d as f64).sqrt();
    let q = q.reshape([b * h, sq, d]);
    let k = k.reshape([b * h, sk, d]);
    let v = v.reshape([b * h, sk, d]);
    let mask = mask.map(|m| m.expand([b, h, 1, sk], false).reshape([b * h, 1, sk]));
    let out = Tensor::empty([b * h, sq, d], (q.kind(), q.device()));
    let mut start = 0;
    while start < b * h {
        let n = slice.min(b * h - start);
        let (qs, ks, vs) = (
            q.narrow(0, start, n),
            k.narrow(0, start, n),
            v.narrow(0, start, n),
        );
        let base = match &mask {
            Some(m) => m.narrow(0, start, n).expand([n, sq, sk], false),
            None => Tensor::empty([n, sq, sk], (q.kind(), q.device())),
        };
        let beta = if mask.is_some() { 1.0 } else { 0.0 };
        let scores = base.baddbmm(&qs, &ks.transpose(1, 2), beta, scale);
        let probs = scores.softmax(-1, scores.kind());
        let mut dst = out.narrow(0, start, n);
        dst.copy_(&probs.bmm(&vs));
        start += n;
    }
    out.reshape([b, h, sq, d])
}

/// Peak extra memory of one call, less its output.
fn peak_extra(d: &ltx_gpu::cuda::CudaDevice, f: impl FnOnce() -> Tensor) -> f64 {
    let (out, peak) = peak_above_start(d, f);
    let out_bytes = out.numel() as u64 * out.kind().elt_size_in_bytes() as u64;
    mib(peak.saturating_sub(out_bytes))
}

fn attention_bench(c: &mut Criterion) {
    let Some(d) = common::gpu_or_skip() else {
        return;
    };
    let registry = KernelRegistry::new(d.clone())
        .unwrap_or_else(|e| panic!("attention bench: kernel registry: {e}"));
    let dev_name = common::id_name(&d);
    let gpu = Device::Cuda(d.index());
    let index = d.index() as i64;
    for case in &CASES {
        let Case {
            b,
            h,
            sq,
            sk,
            d: hd,
            masked,
            ..
        } = *case;
        tch::manual_seed(1);
        // The layout the models produce: [B, S, H, D] viewed as [B, H, S, D].
        let q = Tensor::randn([b, sq, h, hd], (Kind::BFloat16, gpu)).transpose(1, 2);
        let k = Tensor::randn([b, sk, h, hd], (Kind::BFloat16, gpu)).transpose(1, 2);
        let v = Tensor::randn([b, sk, h, hd], (Kind::BFloat16, gpu)).transpose(1, 2);
        let mask = masked.then(|| {
            let keep = Tensor::ones([b, 1, 1, sk], (Kind::BFloat16, gpu));
            let _ = keep.narrow(3, sk / 2, sk - sk / 2).fill_(0.0);
            (keep - 1.0) * 10000.0
        });
        let group_name = format!("attention/{dev_name}");
        let shape = format!("{}_b{b}h{h}s{sq}k{sk}d{hd}", case.name);
        let sdpa = || {
            Tensor::scaled_dot_product_attention(&q, &k, &v, mask.as_ref(), 0.0, false, None, false)
        };
        let ours = || sliced_attention(&registry, &q, &k, &v, mask.as_ref(), None).unwrap();
        let theirs = || diffusers_sliced(&q, &k, &v, mask.as_ref(), (h / 2).max(1));
        for (method, mib) in [
            ("kernel", peak_extra(&d, ours)),
            ("tch_reference", peak_extra(&d, sdpa)),
            ("diffusers_sliced", peak_extra(&d, theirs)),
        ] {
            println!("memory {group_name}/{method}/{shape}: {mib:.1} MiB");
        }
        let mut group = c.benchmark_group(&group_name);
        group.throughput(Throughput::Elements((4 * b * h * sq * sk * hd) as u64));
        group.measurement_time(Duration::from_secs(3));
        group.sample_size(10);
        group.bench_function(format!("kernel/{shape}"), |bch| {
            bch.iter_custom(|iters| timed(index, iters, || drop(ours())))
        });
        group.bench_function(format!("tch_reference/{shape}"), |bch| {
            bch.iter_custom(|iters| timed(index, iters, || drop(sdpa())))
        });
        group.bench_function(format!("diffusers_sliced/{shape}"), |bch| {
            bch.iter_custom(|iters| timed(index, iters, || drop(theirs())))
        });
        group.finish();
    }
}

criterion_group!(benches, attention_bench);
criterion_main!(benches);
