// tch's own rpath does not reach our binaries: add libtorch's folder as RUNPATH (not RPATH, so
// LD_LIBRARY_PATH can point a binary at another installation of the same libtorch, e.g. a GPU
// machine's PyTorch). With `cuda`, force-link libtorch_cuda, or the linker drops it as unused and
// the CUDA backend silently disappears.
//
// csrc/dist.cpp, the binding to c10d (src/dist.rs), is compiled against libtorch's headers and
// the gloo headers that scripts/setup-libtorch.sh puts beside them; with `cuda`, also its NCCL
// branch, against the CUDA and NCCL headers of scripts/setup-cuda-headers.sh.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=REASONRL_GLOO_INCLUDE");
    println!("cargo:rerun-if-env-changed=REASONRL_CUDA_INCLUDE");
    println!("cargo:rerun-if-changed=csrc/dist.cpp");
    let libtorch = PathBuf::from(std::env::var("LIBTORCH").expect("LIBTORCH is set by .cargo/config.toml"));
    println!("cargo:rustc-link-arg=-Wl,--enable-new-dtags");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", libtorch.join("lib").display());

    let gloo = std::env::var_os("REASONRL_GLOO_INCLUDE")
        .map(PathBuf::from)
        .unwrap_or_else(|| libtorch.join("../gloo/include"));
    if !gloo.join("gloo/context.h").exists() {
        panic!("gloo headers not found in {} (run scripts/setup-libtorch.sh)", gloo.display());
    }
    let cuda = std::env::var_os("CARGO_FEATURE_CUDA").is_some();
    let mut shim = cc::Build::new();
    shim.cpp(true)
        .file("csrc/dist.cpp")
        .include(libtorch.join("include"))
        .include(libtorch.join("include/torch/csrc/api/include"))
        .include(&gloo)
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .define("USE_C10D_GLOO", None)
        .define("GLOG_USE_GLOG_EXPORT", None)
        .warnings(false);
    if cuda {
        let headers = std::env::var_os("REASONRL_CUDA_INCLUDE")
            .map(PathBuf::from)
            .unwrap_or_else(|| libtorch.join("../cuda/include"));
        if !headers.join("nccl.h").exists() || !headers.join("nv/target").exists() {
            panic!("CUDA and NCCL headers not found in {} (run scripts/setup-cuda-headers.sh)", headers.display());
        }
        shim.include(headers).define("USE_C10D_NCCL", None).define("USE_CUDA", None).define("REASONRL_NCCL", None);
    }
    shim.compile("reasonrl_dist");
    println!("cargo:rustc-link-search=native={}", libtorch.join("lib").display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");

    if cuda {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-lc10_cuda");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
