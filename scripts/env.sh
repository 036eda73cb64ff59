# Sourced by the other scripts: one place that says where the toolchain pieces live.
# GNNO_HOME holds the Python venv with PyTorch (for libtorch) and the shared cargo
# target directory, so local runs and CI reuse one build.
GNNO_HOME="${GNNO_HOME:-$HOME/.cache/gnno}"
export GNNO_HOME
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$GNNO_HOME/target}"
export VIRTUAL_ENV="$GNNO_HOME/venv"
export PATH="$VIRTUAL_ENV/bin:$HOME/.cargo/bin:$PATH"
# torch-sys finds libtorch inside the venv's PyTorch; the binaries carry an rpath to it.
export LIBTORCH_USE_PYTORCH=1
TORCH_VERSION="2.11.0"
