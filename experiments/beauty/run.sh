#!/usr/bin/env bash
# Runs every arm of the Beauty comparison in turn and records wall time and machine.
# Usage: experiments/beauty/run.sh [arm ...]   (default: all arms)
set -euo pipefail
cd "$(dirname "$0")"
. ../../scripts/env.sh
bin="$CARGO_TARGET_DIR/release/gnno"
arms=("$@"); [ ${#arms[@]} -gt 0 ] || arms=(uniform gnno gnno-tau01)
for arm in "${arms[@]}"; do
  start=$(date +%s)
  "$bin" --config "$arm.toml" run --quiet > "$arm.out" 2> "$arm.log"
  end=$(date +%s)
  {
    echo "{\"arm\": \"$arm\", \"wall_s\": $((end - start)), \"machine\": \"$(nproc) cores, $(uname -m), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)\","
    echo " \"evaluate\": $("$bin" --config "$arm.toml" report evaluate --json),"
    echo " \"train\": $("$bin" --config "$arm.toml" report train --json),"
    echo " \"audit\": $("$bin" --config "$arm.toml" audit negatives --json)}"
  } > "$arm.result.json"
done
