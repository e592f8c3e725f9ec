//! bindgen output for the shim (`crates/gpu/shim/ltx_shim.h`) and the kernel ABI
//! (`kernels/abi.h`), plus the error-buffer convention the shim uses.
#![allow(
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    dead_code
)]

include!(concat!(env!("OUT_DIR"), "/shim_bindings.rs"));
include!(concat!(env!("OUT_DIR"), "/abi_bindings.rs"));

// SAFETY: plain-old-data struct of pointers and integers, passed by value as a kernel parameter;
// its layout is the one the kernels see, since both come from kernels/abi.h.
unsafe impl cudarc::driver::DeviceRepr for ltx_tile_accumulate_params {}
// SAFETY: as above; plain pointers, integers and floats, laid out by bindgen from abi.h.
unsafe impl cudarc::driver::DeviceRepr for ltx_tile_finalize_params {}
// SAFETY: as above; plain pointers, integers and a float, laid out by bindgen from abi.h.
unsafe impl cudarc::driver::DeviceRepr for ltx_attention_params {}

const ERR_LEN: usize = 1024;

/// Calls a shim function that follows the `(…, char *err, size_t err_len) -> int` convention
/// and turns a non-zero return into the message the shim wrote.
pub(crate) fn call(f: impl FnOnce(*mut std::os::raw::c_char, usize) -> i32) -> Result<(), String> {
    let mut buf = [0 as std::os::raw::c_char; ERR_LEN];
    if f(buf.as_mut_ptr(), ERR_LEN) == 0 {
        return Ok(());
    }
    // SAFETY: the shim always NUL-terminates within ERR_LEN bytes.
    let msg = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Err(msg.to_string_lossy().into_owned())
}
