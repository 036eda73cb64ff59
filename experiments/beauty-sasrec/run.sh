#!/usr/bin/env bash
# Runs arms of the SASRec objectives comparison on Beauty in turn; each arm's
# <arm>.result.json holds its evaluate and train reports and wall time. A killed run
# resumes from its last epoch checkpoint when started again (the pipeline's resume).
# Usage: experiments/beauty-sasrec/run.sh [arm ...]   (default: the three main arms, seed 42; each arm is a <arm>.toml here)
# Then:  python3 experiments/beauty-sasrec/summarize.py   (the tables of docs/RESULTS.md)
set -euo pipefail
cd "$(dirname "$0")"
. ../../scripts/env.sh
bin="$CARGO_TARGET_DIR/release/gnno"
[ -x "$bin" ] || (cd ../.. && cargo build --release --workspace --locked)
arms=("$@"); [ ${#arms[@]} -gt 0 ] || arms=(full-softmax ssm-uniform-g32 ssm-gnno-g32)
for arm in "${arms[@]}"; do
  start=$(date +%s)
  "$bin" --config "$arm.toml" run --quiet > "$arm.out" 2> "$arm.log"
  end=$(date +%s)
  {
    echo "{\"arm\": \"$arm\", \"wall_s\": $((end - start)), \"machine\": \"$(nproc) cores, $(uname -m), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)\","
    echo " \"evaluate\": $("$bin" --config "$arm.toml" report evaluate --json),"
    echo " \"train\": $("$bin" --config "$arm.toml" report train --json)}"
  } > "$arm.result.json"
done
