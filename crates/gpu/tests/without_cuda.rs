//! What a machine without a GPU must see: zero devices, a clear reason when CUDA is asked for,
//! and every kernel still compiling (NVRTC needs no GPU). On a machine with an NVIDIA driver
//! these tests say so and skip: the GPU suite (tests/gpu.rs at the root) covers that case.

use std::io::Write;

use ltx_gpu::cuda::{self, CudaUnavailable};
use ltx_gpu::kernels::{self, KernelSource, CI_ARCHS};
use ltx_gpu::{DeviceSpec, GpuError};

fn has_driver() -> bool {
    let present = ltx_gpu::cuda::driver_present();
    if present {
        let _ = writeln!(
            std::io::stderr(),
            "skipped: an NVIDIA driver is present (CPU-only expectation)"
        );
    }
    present
}

#[test]
fn shim_reports_zero_devices() {
    if has_driver() {
        return;
    }
    assert_eq!(cuda::visible_device_count(), 0);
}

#[test]
fn asking_for_cuda_names_what_is_missing() {
    if has_driver() {
        return;
    }
    for spec in ["cuda", "cuda:1"] {
        let err = spec.parse::<DeviceSpec>().unwrap().resolve().unwrap_err();
        assert!(
            matches!(err, GpuError::CudaUnavailable(CudaUnavailable::NoDriver)),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("libcuda") && msg.contains("no NVIDIA driver"),
            "{msg}"
        );
    }
}

#[test]
fn auto_falls_back_to_cpu_and_keeps_the_reason() {
    if has_driver() {
        return;
    }
    match DeviceSpec::Auto.resolve().unwrap() {
        ltx_gpu::device::ResolvedDevice::Cpu { cuda_unavailable } => {
            assert_eq!(cuda_unavailable, Some(CudaUnavailable::NoDriver))
        }
        other => panic!("expected the CPU, got {other:?}"),
    }
}

#[test]
fn nvrtc_is_found() {
    let status = kernels::nvrtc_status();
    assert!(
        status.available,
        "NVRTC missing: {:?} (run scripts/setup.sh)",
        status.reason
    );
    assert!(
        status
            .version
            .as_deref()
            .is_some_and(|v| v.starts_with("13.")),
        "{status:?}"
    );
}

/// CI's guard against broken kernels: a syntax error in any kernels/*.cu fails here.
#[test]
fn every_kernel_compiles_for_every_ci_arch() {
    assert!(!kernels::KERNELS.is_empty());
    for k in kernels::KERNELS {
        for arch in CI_ARCHS {
            let ptx = kernels::compile(k, arch).unwrap_or_else(|e| panic!("{e}"));
            let target = format!(".target sm_{}", &arch["compute_".len()..]);
            assert!(
                ptx.contains(&target),
                "{} for {arch}: no `{target}` in the PTX",
                k.name
            );
            assert!(
                ptx.contains(".entry"),
                "{} for {arch}: no kernel entry point",
                k.name
            );
        }
    }
}

#[test]
fn a_broken_kernel_reports_its_name_and_the_compiler_log() {
    let broken = KernelSource {
        name: "broken_for_test",
        source: "extern \"C\" __global__ void f(float *x) { x[0] = undeclared_name; }",
        precompiled: &[],
    };
    let err = kernels::compile(&broken, "compute_90").unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("kernel broken_for_test failed to compile for compute_90"),
        "{msg}"
    );
    assert!(
        msg.contains("undeclared_name"),
        "the log should quote the error: {msg}"
    );
}

#[test]
fn the_attention_kernel_has_its_four_entries_on_tensor_cores() {
    let k = kernels::source("sliced_attention").expect("kernels/sliced_attention.cu");
    for arch in CI_ARCHS {
        let ptx = kernels::compile(k, arch).unwrap_or_else(|e| panic!("{e}"));
        for entry in [
            "sliced_attention_bf16_d64",
            "sliced_attention_bf16_d128",
            "sliced_attention_f16_d64",
            "sliced_attention_f16_d128",
        ] {
            assert!(
                ptx.contains(&format!(".entry {entry}")),
                "{arch}: no {entry}"
            );
        }
        assert!(
            ptx.contains("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"),
            "{arch}"
        );
        assert!(
            ptx.contains("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32"),
            "{arch}"
        );
    }
}
