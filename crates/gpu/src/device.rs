//! Device strings as users write them: `cpu`, `cuda`, `cuda:N`, `auto`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::cuda::{self, CudaUnavailable};
use crate::GpuError;

/// A device as configured, before it is checked against the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
    /// The first CUDA device when CUDA is usable, else the CPU.
    Auto,
}

impl FromStr for DeviceSpec {
    type Err = GpuError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || GpuError::InvalidDevice {
            input: s.to_string(),
        };
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Self::Cpu),
            "auto" => Ok(Self::Auto),
            "cuda" => Ok(Self::Cuda(0)),
            other => {
                let index = other.strip_prefix("cuda:").ok_or_else(invalid)?;
                if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(invalid());
                }
                index.parse().map(Self::Cuda).map_err(|_| invalid())
            }
        }
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = GpuError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        d.to_string()
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
            Self::Auto => f.write_str("auto"),
        }
    }
}

/// A device checked against this machine.
#[derive(Debug, Clone)]
pub enum ResolvedDevice {
    Cpu {
        /// Why `auto` fell back to the CPU, when it did.
        cuda_unavailable: Option<CudaUnavailable>,
    },
    Cuda(cuda::CudaDevice),
}

impl ResolvedDevice {
    pub fn tch_device(&self) -> tch::Device {
        match self {
            Self::Cpu { .. } => tch::Device::Cpu,
            Self::Cuda(d) => tch::Device::Cuda(d.index()),
        }
    }
}

impl DeviceSpec {
    /// Checks the device against the machine. `cuda`/`cuda:N` fail with the reason CUDA is
    /// not usable; `auto` falls back to the CPU and keeps the reason.
    pub fn resolve(self) -> Result<ResolvedDevice, GpuError> {
        match self {
            Self::Cpu => Ok(ResolvedDevice::Cpu {
                cuda_unavailable: None,
            }),
            Self::Cuda(i) => Ok(ResolvedDevice::Cuda(cuda::open(i)?)),
            Self::Auto => match cuda::open(0) {
                Ok(d) => Ok(ResolvedDevice::Cuda(d)),
                Err(e) => Ok(ResolvedDevice::Cpu {
                    cuda_unavailable: Some(e),
                }),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("auto".parse::<DeviceSpec>().unwrap(), DeviceSpec::Auto);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        assert_eq!(
            " CUDA:1 ".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::Cuda(1)
        );
    }

    #[test]
    fn rejects_anything_else_with_the_accepted_forms() {
        for bad in [
            "", "gpu", "cuda:", "cuda:-1", "cuda:x", "cuda:1:2", "cuda0", "mps", "cuda:+1",
        ] {
            let err = bad.parse::<DeviceSpec>().unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
            assert!(err.contains("cpu, cuda, cuda:N"), "{err}");
        }
    }

    #[test]
    fn display_round_trips() {
        for d in [DeviceSpec::Cpu, DeviceSpec::Cuda(2), DeviceSpec::Auto] {
            assert_eq!(d.to_string().parse::<DeviceSpec>().unwrap(), d);
            let json = serde_json::to_string(&d).unwrap();
            assert_eq!(serde_json::from_str::<DeviceSpec>(&json).unwrap(), d);
        }
    }
}
