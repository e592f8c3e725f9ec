//! Kernel microbenchmarks (GPU). Each kernel runs side by side with its tch reference on the
//! same device in the same run; throughput is bytes moved per launch. Without a CUDA device
//! the bench prints `skipped: no CUDA device (…)`.

mod common;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ltx_gpu::kernels::tile_accumulate::{self, Canvas, Placement, Tile};
use ltx_gpu::kernels::KernelRegistry;
use tch::{Device, Kind, Tensor};

fn tile_accumulate_bench(c: &mut Criterion) {
    let Some(d) = common::gpu_or_skip() else {
        return;
    };
    let registry = KernelRegistry::new(d.clone())
        .unwrap_or_else(|e| panic!("tile_accumulate bench: kernel registry: {e}"));
    let name = common::id_name(&d);
    let gpu = Device::Cuda(d.index());
    // An LTX output canvas (768x512, 121 frames, RGB) and one 256x256 spatial tile of it.
    let (ch, frames, h, w, th, tw) = (3i64, 121i64, 512i64, 768i64, 256i64, 256i64);
    let mut out = Tensor::zeros([ch, frames, h, w], (Kind::Float, gpu));
    let mut wsum = Tensor::zeros([frames, h, w], (Kind::Float, gpu));
    let data = Tensor::randn([ch, frames, th, tw], (Kind::Float, gpu));
    let wt = Tensor::ones([frames], (Kind::Float, gpu));
    let wy = Tensor::rand([th], (Kind::Float, gpu));
    let wx = Tensor::rand([tw], (Kind::Float, gpu));
    let tile = Tile {
        data: &data,
        wt: &wt,
        wy: &wy,
        wx: &wx,
    };
    let at = Placement {
        f0: 0,
        y0: 128,
        x0: 256,
    };
    let pixels = frames * th * tw;
    // tile read + canvas read/write per channel, wsum read/write, per tile pixel.
    let bytes = (pixels * 4 * (3 * ch + 2)) as u64;

    let mut group = c.benchmark_group(format!("tile_accumulate/{name}"));
    group.throughput(Throughput::Bytes(bytes));
    group.measurement_time(Duration::from_secs(3));
    let shape = format!("{ch}x{frames}x{th}x{tw}");
    let index = d.index() as i64;
    group.bench_function(format!("kernel/{shape}"), |b| {
        b.iter_custom(|iters| {
            common::timed(index, iters, || {
                let mut canvas = Canvas {
                    out: &mut out,
                    wsum: &mut wsum,
                };
                tile_accumulate::accumulate(Some(&registry), &mut canvas, &tile, at)
                    .expect("the kernel launch")
            })
        })
    });
    group.bench_function(format!("tch_reference/{shape}"), |b| {
        b.iter_custom(|iters| {
            common::timed(index, iters, || {
                let mut canvas = Canvas {
                    out: &mut out,
                    wsum: &mut wsum,
                };
                tile_accumulate::reference(&mut canvas, &tile, at).expect("the tch reference")
            })
        })
    });
    group.finish();
}

criterion_group!(benches, tile_accumulate_bench);
criterion_main!(benches);
