//! Shared by the build scripts of every package that links libtorch.
//!
//! `cargo:rustc-link-arg` from torch-sys does not reach the binaries of dependent packages,
//! so each package that builds binaries, tests or benches calls [`emit_libtorch_rpath`]
//! to embed a RUNPATH to the libtorch it was built against. `LD_LIBRARY_PATH` still wins,
//! which is how the GPU bundle points the same binaries at a host's full torch install.

use std::path::PathBuf;

/// The libtorch folder this build uses: `$LIBTORCH` (set by `.cargo/config.toml` to the
/// cache that `scripts/setup.sh` fills, unless the user set it).
pub fn libtorch_dir() -> Result<PathBuf, String> {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let dir = std::env::var_os("LIBTORCH").map(PathBuf::from).ok_or(
        "LIBTORCH is not set: run scripts/setup.sh, or set LIBTORCH to a libtorch 2.11.0 folder",
    )?;
    if !dir.join("lib").is_dir() {
        return Err(format!(
            "LIBTORCH={} has no lib/ folder: run scripts/setup.sh",
            dir.display()
        ));
    }
    Ok(dir)
}

/// Embeds a RUNPATH to `$LIBTORCH/lib` in this package's binaries, tests and benches.
pub fn emit_libtorch_rpath() -> Result<PathBuf, String> {
    let dir = libtorch_dir()?;
    let lib = dir.join("lib");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    Ok(dir)
}
