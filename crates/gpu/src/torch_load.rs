//! Reading `torch.save` files (the zip format) that hold dicts of tensors — IP-Adapter's
//! `ip-adapter.bin` is one — with libtorch's own unpickler through the shim, since tch has no
//! binding for nested dicts and no Rust pickle crate reads them with their storages.

use std::ffi::{c_char, c_void, CStr, CString};
use std::io::Read;
use std::path::Path;

use tch::Tensor;

use crate::{ffi, GpuError};

/// `sink` of `ltx_torch_load_tensors`: takes ownership of each tensor into the Vec in `ctx`.
unsafe extern "C" fn collect(ctx: *mut c_void, name: *const c_char, tensor: *mut c_void) -> i32 {
    // SAFETY: `ctx` is the `&mut Vec` passed below, alive and exclusively ours for the call;
    // `name` is a NUL-terminated string the shim keeps alive for the call; `tensor` is a new
    // heap at::Tensor* that we now own (tch's handle type).
    let out = unsafe { &mut *ctx.cast::<Vec<(String, Tensor)>>() };
    let name = unsafe { CStr::from_ptr(name) }
        .to_string_lossy()
        .into_owned();
    out.push((name, unsafe { Tensor::from_ptr(tensor.cast()) }));
    0
}

/// The tensors of a `torch.save` file whose object is a tree of string-keyed dicts, named by
/// their keys joined with `.` (`image_proj.latents`, `ip_adapter.1.to_k_ip.weight`), in the
/// dicts' order, on the CPU with their saved dtypes. A legacy (pre-zip) file, a pickled class
/// other than tensors and dicts, or a non-tensor leaf is an error saying so.
pub fn load_tensors(path: &Path) -> Result<Vec<(String, Tensor)>, GpuError> {
    let bad = |m: String| GpuError::InvalidArgument(format!("{}: {m}", path.display()));
    let mut head = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .map_err(|e| bad(format!("cannot read: {e}")))?;
    if &head[..2] != b"PK" {
        return Err(bad(if head[0] == 0x80 {
            "a legacy (pre-zip) torch.save file, which libtorch cannot read: save it again with \
             torch.save(obj, path) from torch 1.6 or later, or convert it to .safetensors"
                .into()
        } else {
            "not a torch.save file (no zip archive)".into()
        }));
    }
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| bad("a NUL byte in the path".into()))?;
    let mut out: Vec<(String, Tensor)> = Vec::new();
    let ctx = (&mut out as *mut Vec<(String, Tensor)>).cast::<c_void>();
    // SAFETY: `c_path` outlives the call; `collect` matches the sink signature and only
    // touches `out` through `ctx`; the shim catches every C++ exception.
    ffi::call(|e, n| unsafe {
        ffi::ltx_torch_load_tensors(c_path.as_ptr(), ctx, Some(collect), e, n)
    })
    .map_err(|m| {
        if m.contains("unknown type") || m.contains("Unknown type") {
            bad(format!(
                "the pickle holds classes other than tensors and dicts ({m})"
            ))
        } else {
            bad(m)
        }
    })?;
    Ok(out)
}
