fn main() {
    if let Err(e) = build_support::emit_libtorch_rpath() {
        panic!("{e}");
    }
}
