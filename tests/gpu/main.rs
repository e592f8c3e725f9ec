//! GPU suite: needs an NVIDIA GPU and a torch 2.11 CUDA install (see README "GPU usage").
//! On a machine without one every test prints `skipped: no CUDA device (…)` and passes; where
//! CUDA is required (`LTX_REQUIRE_CUDA=1`, or `nvidia-smi -L` lists a GPU) a test that cannot
//! open the device fails instead. The runner runs each test in its own process.
//! The tests share one device and change process-wide allocator settings, so they take a lock.

use std::io::Write;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use ltx_gpu::cuda::{self, CudaDevice};
use ltx_gpu::kernels::tile_accumulate::{self, Canvas, Placement, Tile};
use ltx_gpu::kernels::KernelRegistry;
use tch::{Device, Kind, Tensor};

mod instantid;

static GPU: Mutex<()> = Mutex::new(());
const MIB: i64 = 1 << 20;

fn device() -> Option<CudaDevice> {
    cuda::open_for_suite(0).unwrap_or_else(|e| panic!("{e}"))
}

fn lock() -> std::sync::MutexGuard<'static, ()> {
    GPU.lock().unwrap_or_else(|p| p.into_inner())
}

fn fresh_seed() -> i64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as i64;
    let _ = writeln!(std::io::stderr(), "seed {nanos}");
    nanos
}

fn sync(d: &CudaDevice) {
    tch::Cuda::synchronize(d.index() as i64);
}

#[test]
fn libtorch_cuda_loads_and_torch_computes_on_the_device() {
    let Some(d) = device() else { return };
    let _g = lock();
    assert!(tch::Cuda::is_available());
    assert!(tch::Cuda::device_count() >= 1);
    let rt = cuda::runtime().unwrap();
    let _ = writeln!(
        std::io::stderr(),
        "libtorch_cuda from {:?}, {} device(s)",
        rt.libtorch_cuda,
        rt.device_count
    );
    let x = Tensor::arange(1000, (Kind::Float, Device::Cuda(d.index())));
    assert_eq!(x.sum(Kind::Double).double_value(&[]), 499_500.0);
}

#[test]
fn tile_accumulate_kernel_matches_the_tch_reference() {
    let Some(d) = device() else { return };
    let _g = lock();
    tch::manual_seed(fresh_seed());
    let registry = KernelRegistry::new(d.clone()).unwrap();
    let gpu = Device::Cuda(d.index());
    let dims = [3i64, 9, 67, 93]; // odd sizes: partial blocks and clipped tiles
    let placements = [
        Placement {
            f0: 0,
            y0: 0,
            x0: 0,
        },
        Placement {
            f0: 2,
            y0: 30,
            x0: 50,
        },
        Placement {
            f0: -3,
            y0: -10,
            x0: -7,
        },
        Placement {
            f0: 5,
            y0: 60,
            x0: 90,
        },
    ];
    let mut out_cpu = Tensor::randn(dims, (Kind::Float, Device::Cpu));
    let mut wsum_cpu = Tensor::rand(&dims[1..], (Kind::Float, Device::Cpu));
    let mut out_gpu = out_cpu.to(gpu);
    let mut wsum_gpu = wsum_cpu.to(gpu);
    // Run on a pool stream, not the default one: the kernel must follow torch's current stream.
    let stream = d.stream_from_pool(false).unwrap();
    let guard = d.use_stream(stream).unwrap();
    for at in placements {
        let data = Tensor::randn([3, 6, 41, 57], (Kind::Float, Device::Cpu));
        let w: Vec<Tensor> = [6, 41, 57]
            .iter()
            .map(|&n| Tensor::rand([n], (Kind::Float, Device::Cpu)))
            .collect();
        let tile = Tile {
            data: &data,
            wt: &w[0],
            wy: &w[1],
            wx: &w[2],
        };
        tile_accumulate::reference(
            &mut Canvas {
                out: &mut out_cpu,
                wsum: &mut wsum_cpu,
            },
            &tile,
            at,
        )
        .unwrap();
        let (dg, wg): (Tensor, Vec<Tensor>) = (data.to(gpu), w.iter().map(|t| t.to(gpu)).collect());
        let tile = Tile {
            data: &dg,
            wt: &wg[0],
            wy: &wg[1],
            wx: &wg[2],
        };
        tile_accumulate::accumulate(
            Some(&registry),
            &mut Canvas {
                out: &mut out_gpu,
                wsum: &mut wsum_gpu,
            },
            &tile,
            at,
        )
        .unwrap();
    }
    drop(guard);
    sync(&d);
    // fp32 both sides; the kernel may fuse multiply-add (one rounding instead of two).
    let err_out = (out_gpu.to(Device::Cpu) - &out_cpu)
        .abs()
        .max()
        .double_value(&[]);
    let err_w = (wsum_gpu.to(Device::Cpu) - &wsum_cpu)
        .abs()
        .max()
        .double_value(&[]);
    assert!(
        err_out <= 1e-5 && err_w <= 1e-5,
        "max abs error out {err_out}, wsum {err_w}"
    );
    assert!(!bool::try_from(out_gpu.isnan().any()).unwrap());
}

#[test]
fn allocator_stats_follow_an_allocation_and_empty_cache_returns_it() {
    let Some(d) = device() else { return };
    let _g = lock();
    let gpu = Device::Cuda(d.index());
    sync(&d);
    d.empty_cache().unwrap();
    d.reset_peak_stats().unwrap();
    let before = d.memory_stats().unwrap();
    let t = Tensor::zeros([256 * MIB / 4], (Kind::Float, gpu));
    sync(&d);
    let during = d.memory_stats().unwrap();
    assert!(
        during.allocated_bytes >= before.allocated_bytes + 256 * MIB as u64,
        "{before:?} -> {during:?}"
    );
    assert!(during.reserved_bytes >= during.allocated_bytes);
    drop(t);
    let after = d.memory_stats().unwrap();
    assert_eq!(after.allocated_bytes, before.allocated_bytes);
    assert!(after.peak_allocated_bytes >= before.allocated_bytes + 256 * MIB as u64);
    d.empty_cache().unwrap();
    let emptied = d.memory_stats().unwrap();
    assert!(
        emptied.reserved_bytes + 256 * MIB as u64 <= during.reserved_bytes,
        "{during:?} -> {emptied:?}"
    );
}

#[test]
fn stream_guard_switches_and_restores_torchs_current_stream_and_events_order_streams() {
    let Some(d) = device() else { return };
    let _g = lock();
    let gpu = Device::Cuda(d.index());
    let original = d.current_stream().unwrap();
    let producer = d.stream_from_pool(false).unwrap();
    let consumer = d.stream_from_pool(true).unwrap();
    assert!(producer != original);

    let a = Tensor::randn([2048, 2048], (Kind::Float, gpu));
    sync(&d);
    let (y, event) = {
        let _on = d.use_stream(producer).unwrap();
        assert!(d.current_stream().unwrap() == producer);
        // Enough work that an unordered reader would see y before it is written.
        let mut y = a.shallow_clone();
        for _ in 0..20 {
            y = y.matmul(&a) / 2048f64.sqrt();
        }
        let ev = producer.as_cudarc(&d).record_event(None).unwrap();
        (y, ev)
    };
    assert!(
        d.current_stream().unwrap() == original,
        "guard did not restore the stream"
    );
    let copy = {
        let _on = d.use_stream(consumer).unwrap();
        consumer.as_cudarc(&d).wait(&event).unwrap();
        y.copy()
    };
    sync(&d);
    let diff = (copy - &y).abs().max().double_value(&[]);
    assert_eq!(diff, 0.0);
}

#[test]
fn pinned_buffers_are_page_locked_exactly_sized_and_copy_asynchronously() {
    let Some(d) = device() else { return };
    let _g = lock();
    let gpu = Device::Cuda(d.index());
    let n = 3 * MIB as usize + 17; // not a power of two
    let host = ltx_gpu::pinned::empty(n).unwrap();
    assert_eq!(host.size(), [n as i64]);
    assert!(
        ltx_gpu::pinned::is_pinned(&host),
        "cudaHostAlloc memory must read as pinned"
    );
    let pageable = Tensor::zeros([16], (Kind::Uint8, Device::Cpu));
    assert!(!ltx_gpu::pinned::is_pinned(&pageable));
    let src = Tensor::randint(256, [n as i64], (Kind::Uint8, Device::Cpu));
    let mut h = host.shallow_clone();
    h.copy_(&src);
    let dst = Tensor::empty([n as i64], (Kind::Uint8, gpu));
    ltx_gpu::copy_into(&dst, &host, true).unwrap();
    sync(&d);
    assert!(dst.to(Device::Cpu).equal(&src));
}

#[test]
fn memory_fraction_caps_torchs_allocator() {
    let Some(d) = device() else { return };
    let _g = lock();
    let gpu = Device::Cuda(d.index());
    let (_, total) = d.mem_info().unwrap();
    d.empty_cache().unwrap();
    let cap = 1024.0 * MIB as f64;
    d.set_memory_fraction(cap / total as f64).unwrap();
    let too_big = Tensor::f_zeros([2 * 1024 * MIB / 4], (Kind::Float, gpu));
    let fits = Tensor::f_zeros([128 * MIB / 4], (Kind::Float, gpu));
    d.set_memory_fraction(1.0).unwrap();
    let err = too_big
        .expect_err("2 GiB must not fit under a 1 GiB cap")
        .to_string();
    assert!(err.to_lowercase().contains("out of memory"), "{err}");
    assert!(fits.is_ok(), "128 MiB must fit under a 1 GiB cap");
    assert!(d.set_memory_fraction(1.5).is_err());
}

#[test]
fn an_external_cudarc_stream_becomes_torchs_current_stream() {
    let Some(d) = device() else { return };
    let _g = lock();
    let gpu = Device::Cuda(d.index());
    let ours = d.context().new_stream().unwrap();
    // SAFETY: `ours` is a live stream of the device's primary context and outlives the handle.
    let wrapped = unsafe { d.wrap_external_stream(ours.cu_stream()) }.unwrap();
    assert_eq!(wrapped.raw(), ours.cu_stream());
    let sum = {
        let _on = d.use_stream(wrapped).unwrap();
        assert_eq!(d.current_stream().unwrap().raw(), ours.cu_stream());
        Tensor::ones([1 << 20], (Kind::Float, gpu)).sum(Kind::Double)
    };
    ours.synchronize().unwrap();
    assert_eq!(sum.double_value(&[]), (1 << 20) as f64);
}

/// A small LTX transformer with random bf16 weights on the host, its parameter handles, and
/// one forward's inputs on `dev`.
fn small_transformer(
    dev: Device,
) -> (
    ltx_models::ltx::LtxTransformer,
    Vec<(String, Tensor)>,
    impl Fn(&ltx_models::ltx::LtxTransformer) -> Tensor,
) {
    use ltx_models::ltx::{LtxTransformer, LtxTransformerConfig, TransformerInput};
    let cfg = LtxTransformerConfig {
        in_channels: 32,
        out_channels: 32,
        num_attention_heads: 4,
        attention_head_dim: 64,
        cross_attention_dim: 256,
        num_layers: 6,
        caption_channels: 128,
        ..LtxTransformerConfig::default()
    };
    tch::manual_seed(fresh_seed());
    let store = ltx_models::weights::WeightStore::random(Kind::BFloat16, Device::Cpu);
    let model = LtxTransformer::new(&store.root(), cfg).unwrap();
    let named = store.take_params();
    let (b, f, h, w) = (2, 3, 4, 6);
    let x = Tensor::randn([b, f * h * w, 32], (Kind::BFloat16, dev));
    let text = Tensor::randn([b, 16, 128], (Kind::BFloat16, dev));
    // Keys masked out in the second sample: a mask of ones would not test masking at all.
    let mask = Tensor::ones([b, 16], (Kind::BFloat16, dev));
    let _ = mask.get(1).narrow(0, 11, 5).fill_(0.0);
    let t = Tensor::from_slice(&[700f32, 300.]).to_device(dev);
    let run = move |m: &LtxTransformer| {
        tch::no_grad(|| {
            m.forward(&TransformerInput {
                hidden_states: &x,
                encoder_hidden_states: &text,
                timestep: &t,
                encoder_attention_mask: Some(&mask),
                num_frames: f,
                height: h,
                width: w,
                rope_interpolation_scale: [0.32, 32.0, 32.0],
                video_coords: None,
            })
            .unwrap()
        })
    };
    (model, named, run)
}

#[test]
fn streamed_and_model_offloaded_forwards_equal_the_resident_forward_on_the_gpu() {
    use ltx_offload::weights::{ltx_transformer_unit, CHUNK_BYTES};
    use ltx_offload::{OffloadedWeights, Streamer};
    let Some(d) = device() else { return };
    let _g = lock();
    let dev = Device::Cuda(d.index());
    let (mut model, named, run) = small_transformer(dev);
    let mut w = OffloadedWeights::new(named, ltx_transformer_unit, dev, CHUNK_BYTES).unwrap();
    // Asked of the memory itself (torch's is_pinned), not of a flag.
    assert!(
        w.pinned(),
        "CUDA offload keeps its master copies page-locked"
    );
    assert!(ltx_gpu::pinned::is_pinned(&w.unit_host(0).unwrap()));
    w.onload().unwrap();
    let want = run(&model);
    sync(&d);
    w.offload().unwrap();
    for k in [0, 1, 2, 5] {
        let s = std::sync::Arc::new(Streamer::new(w, k, dev).unwrap());
        model.set_block_hooks(Some(s.clone()));
        // Twice: the second forward starts from the prefetches the first one queued.
        for pass in 0..2 {
            let got = run(&model);
            sync(&d);
            let diff = (&got - &want).abs().max().double_value(&[]);
            assert!(
                got.equal(&want),
                "prefetch {k}, pass {pass}: max diff {diff}"
            );
        }
        model.set_block_hooks(None);
        w = std::sync::Arc::into_inner(s)
            .unwrap()
            .into_weights()
            .unwrap();
    }
}

#[test]
fn the_ring_queues_copies_without_blocking_the_host() {
    use ltx_models::hooks::BlockHooks;
    use ltx_offload::weights::{ltx_transformer_unit, CHUNK_BYTES};
    use ltx_offload::{OffloadedWeights, Streamer};
    let Some(d) = device() else { return };
    let _g = lock();
    let dev = Device::Cuda(d.index());
    // 16 units of 64 MiB: 1 GiB per pass, long enough to see whether the host waits.
    let named: Vec<(String, Tensor)> = (0..16)
        .map(|i| {
            (
                format!("transformer_blocks.{i}.w"),
                Tensor::zeros([64 * MIB / 4], (Kind::Float, Device::Cpu)),
            )
        })
        .collect();
    let w = OffloadedWeights::new(named, ltx_transformer_unit, dev, CHUNK_BYTES).unwrap();
    let s = Streamer::new(w, 2, dev).unwrap();
    sync(&d);
    let t0 = std::time::Instant::now();
    for u in 0..16 {
        s.before(u).unwrap();
        s.after(u).unwrap();
    }
    let queued = t0.elapsed();
    sync(&d);
    let done = t0.elapsed();
    let _ = writeln!(
        std::io::stderr(),
        "1 GiB through the ring: queued in {queued:?}, done in {done:?} ({:.1} GB/s)",
        1.073_741_824 / done.as_secs_f64()
    );
    // The host only queues: it returns well before the copies finish.
    assert!(
        queued * 2 < done,
        "the host waited for the copies: queued {queued:?}, done {done:?}"
    );
}

#[test]
fn sliced_attention_kernel_matches_float64_attention() {
    use ltx_gpu::kernels::attention::sliced_attention;
    let Some(d) = device() else { return };
    let _g = lock();
    let dev = Device::Cuda(d.index());
    let registry = KernelRegistry::new(d.clone()).unwrap();
    tch::manual_seed(fresh_seed());
    // Odd lengths (not multiples of the 64-query / 64-key tiles), both head dims, both
    // dtypes, with and without a key mask, q/k/v as [B, S, H, D] views like the models make.
    for (kind, tol) in [(Kind::BFloat16, 1e-2), (Kind::Half, 5e-3)] {
        for hd in [64, 128] {
            for (sq, sk) in [(77, 45), (130, 130), (1, 200), (200, 1)] {
                for masked in [false, true] {
                    let (b, h) = (2, 3);
                    let q = Tensor::randn([b, sq, h, hd], (kind, dev)).transpose(1, 2);
                    let k = Tensor::randn([b, sk, h, hd], (kind, dev)).transpose(1, 2);
                    let v = Tensor::randn([b, sk, h, hd], (kind, dev)).transpose(1, 2);
                    let mask = masked.then(|| {
                        let keep = Tensor::rand([b, 1, 1, sk], (Kind::Float, dev)).gt(0.3);
                        let _ = keep.narrow(3, 0, 1).fill_(1); // at least one key per row
                        (keep.to_kind(kind) - 1.0) * 10000.0
                    });
                    if let Some(m) = &mask {
                        // A boolean mask means keep/drop (SDPA), not 0/1 to add: refused.
                        assert!(!ltx_gpu::kernels::attention::supports(
                            &q,
                            &k,
                            &v,
                            Some(&m.lt(0.0))
                        ));
                    }
                    // Poison what the allocator will hand out for the output.
                    drop(Tensor::full([b, sq, h, hd], f64::NAN, (kind, dev)));
                    let got = sliced_attention(&registry, &q, &k, &v, mask.as_ref(), None)
                        .unwrap()
                        .to_kind(Kind::Double);
                    let (q64, k64, v64) = (
                        q.to_kind(Kind::Double),
                        k.to_kind(Kind::Double),
                        v.to_kind(Kind::Double),
                    );
                    let mut s = q64.matmul(&k64.transpose(-2, -1)) / (hd as f64).sqrt();
                    if let Some(m) = &mask {
                        s += m.to_kind(Kind::Double);
                    }
                    let want = s.softmax(-1, Kind::Double).matmul(&v64);
                    assert_eq!(
                        got.isnan().sum(Kind::Int64).int64_value(&[]),
                        0,
                        "NaN in the output"
                    );
                    let rel = (&got - &want).abs().max().double_value(&[])
                        / want.abs().max().double_value(&[]);
                    let _ = writeln!(
                        std::io::stderr(),
                        "{kind:?} d{hd} sq{sq} sk{sk} masked {masked}: rel err {rel:.2e}"
                    );
                    assert!(
                        rel <= tol,
                        "{kind:?} d{hd} sq{sq} sk{sk} masked {masked}: {rel}"
                    );
                }
            }
        }
    }
}

#[test]
fn the_sliced_backend_runs_the_transformer_like_sdpa() {
    use ltx_models::attention::{set_backend, AttentionBackend};
    let Some(d) = device() else { return };
    let _g = lock();
    let dev = Device::Cuda(d.index());
    let (model, named, run) = small_transformer(dev);
    for (_, t) in &named {
        let mut t = t.shallow_clone();
        let on = t.to_device(dev);
        t.set_data(&on);
    }
    set_backend(AttentionBackend::Sdpa);
    let want = run(&model).to_kind(Kind::Double);
    set_backend(AttentionBackend::Sliced);
    let launched = ltx_gpu::kernels::attention::launches();
    let got = run(&model).to_kind(Kind::Double);
    let launches = ltx_gpu::kernels::attention::launches() - launched;
    set_backend(AttentionBackend::Sdpa);
    // 6 blocks × (self + cross attention): every one must have gone through the kernel.
    assert_eq!(
        launches, 12,
        "the sliced backend fell back instead of running the kernel"
    );
    let rel = (&got - &want).abs().max().double_value(&[]) / want.abs().max().double_value(&[]);
    let _ = writeln!(
        std::io::stderr(),
        "transformer, sliced vs sdpa: rel err {rel:.2e}"
    );
    assert!(rel < 2e-2, "{rel}");
}

#[test]
fn tiled_decoding_with_the_kernel_equals_the_tch_accumulation_on_the_gpu() {
    use ltx_models::ltx::LtxVae;
    use ltx_pipelines::tiled_decode::{decode_tiled, TileConfig, TilingMode};
    let Some(d) = device() else { return };
    let _g = lock();
    let dev = Device::Cuda(d.index());
    let registry = KernelRegistry::new(d.clone()).unwrap();
    // The demo model's VAE shape (16 latent channels, no noise injection).
    let cfg = ltx_pipelines::demo::RandomShapes::demo().vae;
    tch::manual_seed(fresh_seed());
    let store = ltx_models::weights::WeightStore::random(Kind::Float, dev);
    let vae = LtxVae::new(&store.root(), cfg).unwrap();
    // 17 frames of 128×192: tiles of 64 px every 32 px, 16/8 frames.
    let z = Tensor::randn([1, 16, 3, 4, 6], (Kind::Float, dev));
    let t = Tensor::from_slice(&[0.05f32]).to_device(dev);
    let tiles = TileConfig {
        mode: TilingMode::Weighted,
        tile_sample_height: 64,
        tile_sample_width: 64,
        stride_sample_height: 32,
        stride_sample_width: 32,
        ..TileConfig::default()
    };
    let (with_kernel, with_tch, untiled) = tch::no_grad(|| {
        (
            decode_tiled(&vae, &z, Some(&t), None, &tiles, Some(&registry)).unwrap(),
            decode_tiled(&vae, &z, Some(&t), None, &tiles, None).unwrap(),
            vae.decode(&z, Some(&t), None).unwrap(),
        )
    });
    sync(&d);
    assert_eq!(with_kernel.size(), untiled.size());
    let diff = (&with_kernel - &with_tch).abs().max().double_value(&[]);
    let mse = (&with_kernel - &untiled)
        .square()
        .mean(Kind::Float)
        .double_value(&[]);
    let _ = writeln!(
        std::io::stderr(),
        "tiled decode: kernel vs tch accumulation max diff {diff:.2e}; PSNR vs untiled {:.2} dB",
        10.0 * (4.0 / mse).log10()
    );
    let rel = diff / with_tch.abs().max().double_value(&[]);
    assert!(rel <= 1e-5, "relative {rel} (max abs {diff})");

    // The fused last pass: the kernel's bytes equal the tch ops' bytes.
    let out = Tensor::randn([3, 9, 40, 50], (Kind::Float, dev)) * 1.5;
    let wsum = Tensor::rand([9, 40, 50], (Kind::Float, dev)) + 0.5;
    let _ = out.narrow(3, 0, 1).fill_(f64::NAN);
    drop(Tensor::full([9, 40, 50, 3], 77, (Kind::Uint8, dev))); // poison the output block
    let fused = tile_accumulate::finalize_u8(Some(&registry), &out, &wsum, 0.5, 0.5).unwrap();
    let reference = tile_accumulate::finalize_reference(&out, &wsum, 0.5, 0.5).unwrap();
    sync(&d);
    assert_eq!(fused.size(), [9, 40, 50, 3]);
    let differ = fused
        .ne_tensor(&reference)
        .sum(Kind::Int64)
        .int64_value(&[]);
    assert_eq!(
        differ, 0,
        "{differ} bytes differ between the kernel and the tch ops"
    );
}
