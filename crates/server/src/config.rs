use std::net::IpAddr;

use clap::Args;
use ltx_gpu::DeviceSpec;
use serde::{Deserialize, Serialize};

/// `ltx-i2v serve` settings: every field is a flag and an environment variable.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct ServeConfig {
    /// Address to listen on (0.0.0.0 to accept connections from other machines).
    #[arg(long, env = "LTX_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// TCP port to listen on.
    #[arg(long, env = "LTX_PORT", default_value_t = 8000)]
    pub port: u16,

    /// Device for the LTX-Video family: cpu, cuda, cuda:N or auto.
    #[arg(long = "ltx-device", env = "LTX_DEVICE", default_value = "auto")]
    pub ltx_device: DeviceSpec,
}
