// The same link settings for the root package (gnno and its tests and benches):
// link arguments do not pass from a dependency to the binaries that use it.
include!("crates/gnno-train/build.rs");
