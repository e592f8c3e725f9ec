//! Prints the PTX NVRTC makes for one kernel and architecture (no GPU needed), e.g. to feed
//! `ptxas -v` for the register/spill report in kernels/NOTES.md:
//!
//! `cargo run -p ltx-gpu --example kernel_ptx -- sliced_attention compute_90 > a.ptx`

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(name), Some(arch)) = (args.next(), args.next()) else {
        eprintln!("usage: kernel_ptx KERNEL ARCH (e.g. sliced_attention compute_90)");
        let names: Vec<&str> = ltx_gpu::kernels::KERNELS.iter().map(|k| k.name).collect();
        eprintln!("kernels: {}", names.join(", "));
        std::process::exit(2);
    };
    let Some(k) = ltx_gpu::kernels::source(&name) else {
        eprintln!("no kernel {name:?}");
        std::process::exit(2);
    };
    match ltx_gpu::kernels::compile(k, &arch) {
        Ok(ptx) => print!("{ptx}"),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
