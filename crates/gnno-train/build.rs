// Bakes the libtorch library directory into every binary of this crate as an rpath,
// so nobody has to set LD_LIBRARY_PATH; and, where that libtorch has CUDA, links
// libtorch_cuda for good: nothing references it by symbol, so the linker's default
// --as-needed drops it, and without it loaded libtorch sees no GPU (`device =
// "auto"` then trains on the CPU of a GPU machine). (The root build.rs includes this
// file.)
fn main() {
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        if std::path::Path::new(&dir).join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        }
    }
}
