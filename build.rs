// tch's own rpath does not reach our binaries: add libtorch's folder as RUNPATH (not RPATH, so
// LD_LIBRARY_PATH can point a binary at another installation of the same libtorch, e.g. a GPU
// machine's PyTorch). With `cuda`, force-link libtorch_cuda, or the linker drops it as unused and
// the CUDA backend silently disappears.
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(libtorch) = std::env::var("LIBTORCH") {
        println!("cargo:rustc-link-arg=-Wl,--enable-new-dtags");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{libtorch}/lib");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
