//! Shared by the GPU benchmarks: device-synchronised timing and peak-memory measurement.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use ltx_gpu::cuda::{self, CudaDevice};

/// CUDA device 0, or None after printing `skipped: no CUDA device (reason)`; panics (the
/// bench fails) where CUDA is required ([`cuda::cuda_required`]).
pub fn gpu_or_skip() -> Option<CudaDevice> {
    cuda::open_for_suite(0).unwrap_or_else(|e| panic!("{e}"))
}

/// The device's name as it goes into benchmark ids.
pub fn id_name(d: &CudaDevice) -> String {
    d.name().unwrap_or_else(|_| "cuda".into()).replace(' ', "_")
}

/// Runs `f` `iters` times; the device is synchronised before the clock starts and stops.
pub fn timed(device: i64, iters: u64, mut f: impl FnMut()) -> Duration {
    tch::Cuda::synchronize(device);
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    tch::Cuda::synchronize(device);
    start.elapsed()
}

/// Runs `f` once and returns its value with the peak bytes torch's allocator held above what
/// was allocated before it started.
pub fn peak_above_start<T>(d: &CudaDevice, f: impl FnOnce() -> T) -> (T, u64) {
    tch::Cuda::synchronize(d.index() as i64);
    let before = d.memory_stats().map(|m| m.allocated_bytes).unwrap_or(0);
    let _ = d.reset_peak_stats();
    let out = f();
    tch::Cuda::synchronize(d.index() as i64);
    let peak = d
        .memory_stats()
        .map(|m| m.peak_allocated_bytes)
        .unwrap_or(0);
    (out, peak.saturating_sub(before))
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}
