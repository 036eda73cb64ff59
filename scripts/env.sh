# Sourced by the other scripts: one place that says where the toolchain pieces live.
# GNNO_HOME holds the Python environment with PyTorch (for libtorch) and the shared
# cargo target directory, so local runs and CI reuse one build.
GNNO_HOME="${GNNO_HOME:-$HOME/.cache/gnno}"
export GNNO_HOME
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$GNNO_HOME/target}"
export PATH="$HOME/.cargo/bin:$PATH"
# torch-sys asks Python where libtorch is; the binaries carry an rpath to it.
export LIBTORCH_USE_PYTORCH=1
TORCH_VERSION="2.11.0"
if [ -x "$GNNO_HOME/venv/bin/python" ]; then
  export VIRTUAL_ENV="$GNNO_HOME/venv"
  export PATH="$VIRTUAL_ENV/bin:$PATH"
elif [ -d "$GNNO_HOME/pylib" ]; then
  export PYTHONPATH="$GNNO_HOME/pylib${PYTHONPATH:+:$PYTHONPATH}"
fi

# Install torch==$TORCH_VERSION unless it is there: into a venv, or, where Python
# lacks the venv module, into $GNNO_HOME/pylib with pip --target.
gnno_ensure_torch() {
  local py=python3
  [ -n "${VIRTUAL_ENV:-}" ] && py="$VIRTUAL_ENV/bin/python"
  if "$py" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
    return 0
  fi
  echo "==> installing torch==$TORCH_VERSION (about 4.6 GB) for libtorch"
  mkdir -p "$GNNO_HOME"
  if [ -z "${VIRTUAL_ENV:-}" ] && python3 -m venv "$GNNO_HOME/venv" 2>/dev/null; then
    export VIRTUAL_ENV="$GNNO_HOME/venv"
    export PATH="$VIRTUAL_ENV/bin:$PATH"
  fi
  if [ -n "${VIRTUAL_ENV:-}" ]; then
    "$VIRTUAL_ENV/bin/python" -m pip install --quiet --disable-pip-version-check "torch==$TORCH_VERSION"
  else
    python3 -m pip install --quiet --disable-pip-version-check --target "$GNNO_HOME/pylib" "torch==$TORCH_VERSION"
    export PYTHONPATH="$GNNO_HOME/pylib${PYTHONPATH:+:$PYTHONPATH}"
  fi
}
