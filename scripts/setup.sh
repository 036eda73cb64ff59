#!/usr/bin/env bash
# First command of the README: install what gnno needs (PyTorch for libtorch, in a
# private venv), build the release binary, and run the default pipeline on the
# bundled sample data. Safe to rerun: every step skips what is already done.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

if ! command -v cargo >/dev/null; then
  echo "error: cargo not found; install Rust with rustup (https://rustup.rs)" >&2
  exit 1
fi
gnno_ensure_torch
echo "==> building gnno (release; the first build takes about 15 minutes on 2 cores)"
cargo build --release --workspace --locked
mkdir -p bin
ln -sf "$CARGO_TARGET_DIR/release/gnno" bin/gnno
echo "==> running the default pipeline (pipeline.toml) on data/sample.tsv"
bin/gnno run "$@"
