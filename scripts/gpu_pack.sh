#!/usr/bin/env bash
# Packs what scripts/gpu_check.sh needs on a GPU machine into .gpu/ (ignored): the
# release gnno binary and the bench binary, stripped and gzipped, Beauty.txt, and
# the folder the bench was built in (its paths to benches/ and ../shared are baked in).
# Then, with the device tool: command `scripts/gpu_check.sh .gpu`, carry [".gpu"].
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
gnno_ensure_torch
cargo build --release --workspace --locked
bench=$(cargo bench --locked --bench stages --no-run 2>&1 | sed -n 's/.*Executable benches\/stages.rs (\(.*\))/\1/p')
mkdir -p .gpu
strip -o .gpu/gnno "$CARGO_TARGET_DIR/release/gnno" && gzip -f .gpu/gnno
strip -o .gpu/stages "$bench" && gzip -f .gpu/stages
cp -f ../shared/data/s3rec/Beauty.txt .gpu/
pwd -P > .gpu/built_in
du -sh .gpu
