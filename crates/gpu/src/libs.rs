//! Which shared libraries this process actually loaded, from `/proc/self/maps`: several copies
//! of a CUDA library can be on a machine (a toolkit's, the driver's, torch's wheels'), and the
//! dynamic loader's choice decides what runs.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// Every file mapped into this process whose name looks like a shared library, in map order,
/// without repeats. Empty where `/proc` is unavailable.
pub fn loaded() -> Vec<PathBuf> {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = Vec::new();
    for line in maps.lines() {
        // address perms offset dev inode [path]
        let Some(path) = line.split_whitespace().nth(5) else {
            continue;
        };
        let p = Path::new(path);
        let is_lib = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.contains(".so"));
        if is_lib && !out.iter().any(|o| o == p) {
            out.push(p.to_path_buf());
        }
    }
    out
}

/// The loaded file whose name is `stem` or `stem.<version…>` (`libcuda.so` matches
/// `libcuda.so.1` and `libcuda.so.580.65.06`, not `libcudart.so.13`).
pub fn find(loaded: &[PathBuf], stem: &str) -> Option<PathBuf> {
    loaded
        .iter()
        .find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n == stem || n.strip_prefix(stem).is_some_and(|v| v.starts_with('.'))
            })
        })
        .cloned()
}

/// The libraries that matter for CUDA, as loaded now (None: not loaded).
#[derive(Debug, Clone, Serialize)]
pub struct LibraryReport {
    pub libcuda: Option<String>,
    pub libnvrtc: Option<String>,
    pub libcudart: Option<String>,
    pub libtorch_cpu: Option<String>,
    pub libtorch_cuda: Option<String>,
    pub libc10: Option<String>,
    pub libc10_cuda: Option<String>,
}

pub fn report() -> LibraryReport {
    let all = loaded();
    let f = |stem: &str| find(&all, stem).map(|p| p.display().to_string());
    LibraryReport {
        libcuda: f("libcuda.so"),
        libnvrtc: f("libnvrtc.so"),
        libcudart: f("libcudart.so"),
        libtorch_cpu: f("libtorch_cpu.so"),
        libtorch_cuda: f("libtorch_cuda.so"),
        libc10: f("libc10.so"),
        libc10_cuda: f("libc10_cuda.so"),
    }
}

/// Refuses to load `libtorch_cuda` (at `cuda_lib`) next to a `libtorch_cpu`/`libc10` from
/// another folder: two torch builds in one process fail later in confusing ways (or not at
/// all, computing with mismatched code). `loaded` is what the process has mapped now.
pub fn same_torch(loaded: &[PathBuf], cuda_lib: &Path) -> Result<(), String> {
    let dir = |p: &Path| {
        let p = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        p.parent().map(Path::to_path_buf)
    };
    let want = dir(cuda_lib);
    for stem in ["libtorch_cpu.so", "libc10.so"] {
        let Some(have) = find(loaded, stem) else {
            continue;
        };
        if dir(&have) != want {
            let folder = cuda_lib.parent().unwrap_or(Path::new("."));
            return Err(format!(
                "{} would join {stem} from {}: two torch installs in one process. Put {} \
                 first on LD_LIBRARY_PATH (the GPU bundle's run.sh does) so every torch \
                 library comes from the install that has CUDA",
                cuda_lib.display(),
                have.display(),
                folder.display()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_library_by_stem_and_version_only() {
        let all: Vec<PathBuf> = [
            "/usr/lib/x86_64-linux-gnu/libcudart.so.13",
            "/usr/lib/x86_64-linux-gnu/libcuda.so.580.65.06",
            "/opt/t/lib/libnvrtc-builtins.so.13.0",
            "/opt/t/lib/libnvrtc.so.13",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(
            find(&all, "libcuda.so"),
            Some(PathBuf::from(
                "/usr/lib/x86_64-linux-gnu/libcuda.so.580.65.06"
            ))
        );
        assert_eq!(
            find(&all, "libnvrtc.so"),
            Some(PathBuf::from("/opt/t/lib/libnvrtc.so.13"))
        );
        assert_eq!(find(&all, "libtorch_cuda.so"), None);
    }

    #[test]
    fn this_process_maps_libtorch_cpu() {
        let all = loaded();
        assert!(find(&all, "libtorch_cpu.so").is_some(), "{all:?}");
    }

    #[test]
    fn refuses_libtorch_cuda_from_another_folder_than_libtorch_cpu() {
        let root = std::env::temp_dir().join(format!("ltx-two-torch-{}", std::process::id()));
        let (a, b) = (root.join("a/lib"), root.join("b/lib"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let loaded = vec![a.join("libtorch_cpu.so"), a.join("libc10.so")];
        let e = same_torch(&loaded, &b.join("libtorch_cuda.so")).unwrap_err();
        assert!(
            e.contains("two torch installs") && e.contains("LD_LIBRARY_PATH"),
            "{e}"
        );
        assert_eq!(same_torch(&loaded, &a.join("libtorch_cuda.so")), Ok(()));
        std::fs::remove_dir_all(root).unwrap();
    }
}
