//! Component configs are serde structs mirroring diffusers' `config.json`; unknown fields are
//! ignored, so newer diffusers versions that add fields still load.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::{ModelError, Result};

/// Reads `dir/config.json` (or a scheduler's `dir/scheduler_config.json`) into `T`.
pub fn read_config<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| ModelError::Json {
        path: path.to_path_buf(),
        source,
    })
}
