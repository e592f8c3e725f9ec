//! Random number generators of one job's own, through the shim: an `at::Generator` per job
//! instead of torch's process-wide default generator, so two jobs running at once on two
//! threads draw exactly what each would draw alone.
//!
//! A CPU [`Generator`] seeded with `s` draws bit for bit what `tch::manual_seed(s)` followed
//! by the same `Tensor::randn` calls draws from torch's default CPU generator — which is what
//! diffusers' `torch.Generator("cpu").manual_seed(s)` draws, so every CPU parity fixture
//! holds. A CUDA one draws what that device's default generator draws after the same seed.

use std::ffi::c_void;
use std::ptr::NonNull;

use tch::{Device, Kind, Tensor};

use crate::{cuda, ffi, GpuError};

/// A seeded `at::Generator` on one device; dropped, it is freed. Draws take `&mut self`: one
/// generator serves one job at a time.
pub struct Generator {
    handle: NonNull<c_void>,
    device: Device,
    seed: u64,
}

// SAFETY: the handle is an at::Generator (a reference-counted GeneratorImpl) that only this
// value reaches; ATen generators may be used from any thread, one at a time, which `&mut self`
// on every draw guarantees.
unsafe impl Send for Generator {}

impl Generator {
    /// A generator on `device` (the CPU or `cuda:N`) seeded with `seed`. CUDA ones need a
    /// usable CUDA (libtorch_cuda is loaded first, as [`crate::manual_seed`] did); without it
    /// the error says what is missing.
    pub fn new(device: Device, seed: u64) -> Result<Self, GpuError> {
        let index = match device {
            Device::Cpu => -1,
            Device::Cuda(i) => {
                // ATen's CUDA hooks must not be asked before libtorch_cuda is loaded: the
                // first answer sticks for the whole process.
                cuda::runtime()?;
                i32::try_from(i).map_err(|_| {
                    GpuError::InvalidArgument(format!("CUDA device index {i} is too large"))
                })?
            }
            other => {
                return Err(GpuError::InvalidArgument(format!(
                    "random generators exist for the CPU and CUDA devices, not {other:?}"
                )))
            }
        };
        let mut out: *mut c_void = std::ptr::null_mut();
        // SAFETY: `out` is a valid out-pointer; the shim catches every C++ exception.
        ffi::call(|e, n| unsafe { ffi::ltx_generator_new(index, seed, &mut out, e, n) })
            .map_err(GpuError::Cuda)?;
        let handle = NonNull::new(out)
            .ok_or_else(|| GpuError::Cuda("the shim returned no generator".into()))?;
        Ok(Self {
            handle,
            device,
            seed,
        })
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// The seed it was made with.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// `torch.randn(shape, generator=self, dtype=kind, device=self.device)`: standard normal
    /// numbers of a floating `kind`, on this generator's device.
    pub fn randn(&mut self, shape: &[i64], kind: Kind) -> Result<Tensor, GpuError> {
        let dtype = scalar_type(kind)?;
        if let Some(d) = shape.iter().find(|&&d| d < 0) {
            return Err(GpuError::InvalidArgument(format!(
                "randn: negative dimension {d} in shape {shape:?}"
            )));
        }
        let mut out: *mut c_void = std::ptr::null_mut();
        let gen = self.handle.as_ptr();
        // SAFETY: `gen` is our live generator, used by this call alone (`&mut self`); `shape`
        // outlives the call; `out` is a valid out-pointer; the shim catches every C++
        // exception.
        ffi::call(|e, n| unsafe {
            ffi::ltx_generator_randn(gen, shape.as_ptr(), shape.len(), dtype, &mut out, e, n)
        })
        .map_err(GpuError::Cuda)?;
        // SAFETY: on success the shim hands out a new heap at::Tensor*, tch's tensor handle;
        // the Tensor owns and deletes it.
        Ok(unsafe { Tensor::from_ptr(out.cast()) })
    }

    /// [`Generator::randn`], then moved to `device` (diffusers' `randn_tensor` with a CPU
    /// generator for a GPU model draws on the CPU and moves the numbers).
    pub fn randn_to(
        &mut self,
        shape: &[i64],
        kind: Kind,
        device: Device,
    ) -> Result<Tensor, GpuError> {
        Ok(self.randn(shape, kind)?.f_to_device(device)?)
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        // SAFETY: the handle came from ltx_generator_new and is freed exactly once, here.
        unsafe { ffi::ltx_generator_free(self.handle.as_ptr()) }
    }
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("device", &self.device)
            .field("seed", &self.seed)
            .finish()
    }
}

/// The generators `torch.manual_seed(seed)` seeds, one per device, each made on first use:
/// one job's draws, where some are drawn on the CPU and some on the model's device (the LTX
/// 0.9.1 decoder's noise), each continuing its own device's sequence as torch's default
/// generators would.
#[derive(Debug)]
pub struct Generators {
    seed: u64,
    cpu: Generator,
    others: Vec<Generator>,
}

impl Generators {
    /// Makes the CPU generator now (it cannot fail for want of a device); the others wait for
    /// [`Generators::on`].
    pub fn new(seed: u64) -> Result<Self, GpuError> {
        Ok(Self {
            seed,
            cpu: Generator::new(Device::Cpu, seed)?,
            others: Vec::new(),
        })
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The CPU generator.
    pub fn cpu(&mut self) -> &mut Generator {
        &mut self.cpu
    }

    /// The generator of `device`, made (seeded with the same seed) on first use.
    pub fn on(&mut self, device: Device) -> Result<&mut Generator, GpuError> {
        if device == Device::Cpu {
            return Ok(&mut self.cpu);
        }
        let at = match self.others.iter().position(|g| g.device == device) {
            Some(i) => i,
            None => {
                self.others.push(Generator::new(device, self.seed)?);
                self.others.len() - 1
            }
        };
        Ok(&mut self.others[at])
    }
}

/// c10's `ScalarType` number of a floating kind (the only kinds normal draws exist for).
fn scalar_type(kind: Kind) -> Result<i32, GpuError> {
    Ok(match kind {
        Kind::Half => 5,
        Kind::Float => 6,
        Kind::Double => 7,
        Kind::BFloat16 => 15,
        other => {
            return Err(GpuError::InvalidArgument(format!(
                "randn draws floating numbers (half, float, double, bfloat16), not {other:?}"
            )))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_numbers_and_kinds_are_honoured() {
        let mut a = Generator::new(Device::Cpu, 42).unwrap();
        let mut b = Generator::new(Device::Cpu, 42).unwrap();
        for kind in [Kind::Float, Kind::Double, Kind::Half, Kind::BFloat16] {
            let (x, y) = (
                a.randn(&[3, 17], kind).unwrap(),
                b.randn(&[3, 17], kind).unwrap(),
            );
            assert_eq!(x.kind(), kind);
            assert_eq!(x.size(), vec![3, 17]);
            assert_eq!(x.device(), Device::Cpu);
            assert!(x.equal(&y), "{kind:?}");
        }
        let mut c = Generator::new(Device::Cpu, 43).unwrap();
        let mut d = Generator::new(Device::Cpu, 42).unwrap();
        assert!(!c
            .randn(&[64], Kind::Float)
            .unwrap()
            .equal(&d.randn(&[64], Kind::Float).unwrap()));
    }

    #[test]
    fn bad_requests_are_errors_naming_the_value() {
        let mut g = Generator::new(Device::Cpu, 1).unwrap();
        let e = g.randn(&[2], Kind::Int64).unwrap_err().to_string();
        assert!(e.contains("Int64"), "{e}");
        let e = g.randn(&[2, -3], Kind::Float).unwrap_err().to_string();
        assert!(e.contains("-3"), "{e}");
        let e = Generator::new(Device::Mps, 1).unwrap_err().to_string();
        assert!(e.contains("Mps"), "{e}");
        assert_eq!(g.randn(&[], Kind::Float).unwrap().dim(), 0);
    }

    #[test]
    fn without_cuda_a_cuda_generator_says_why() {
        if cuda::runtime().is_ok() {
            return; // a GPU host: tests/gpu covers CUDA generators
        }
        let e = Generator::new(Device::Cuda(0), 1).unwrap_err().to_string();
        assert!(
            e.contains("NVIDIA driver") || e.contains("libtorch_cuda"),
            "{e}"
        );
        let mut gens = Generators::new(1).unwrap();
        assert!(gens.on(Device::Cuda(0)).is_err());
        assert_eq!(gens.on(Device::Cpu).unwrap().device(), Device::Cpu);
    }
}
