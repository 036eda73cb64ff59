#!/usr/bin/env bash
# Runs arms of experiments/beauty-sasrec side by side on a GPU machine, each as
# run.sh runs it (device "auto" finds CUDA), with THREADS CPU threads each (run.threads
# is in no stage's key: the same artifacts whatever the count), for at most LIMIT
# seconds. Packs every finished arm's <arm>.result.json, and each arm's per-epoch
# history so far, into $OUT/arms.tar.gz.
#   usage: scripts/gpu_arms.sh LIMIT THREADS ARM...     (after scripts/gpu_pack.sh here)
set -euo pipefail
limit=$1 threads=$2
shift 2
. "$(dirname "$0")/gpu_setup.sh" ""
mkdir -p /tmp/tgt/release && cp "$bin" /tmp/tgt/release/gnno
export CARGO_TARGET_DIR=/tmp/tgt
cd "$root/experiments/beauty-sasrec"
rm -rf /tmp/arms
for arm in "$@"; do
  # Only this run's result counts (a tracked CPU result of the same arm would not).
  rm -f "$arm.result.json"
  sed -i "s/^threads = .*/threads = $threads/" "$arm.toml"
  timeout "$limit" ./run.sh "$arm" &
done
wait || true
mkdir -p /tmp/arms
for arm in "$@"; do
  [ -f "$arm.result.json" ] && cp "$arm.result.json" /tmp/arms/
  # history.json once published, the checkpoint's state (with the history) before.
  h=$(find work/"$arm"/train -name history.json 2>/dev/null | head -1 || true)
  [ -z "$h" ] && h=$(find work/"$arm"/train -name state.json 2>/dev/null | head -1 || true)
  [ -n "$h" ] && cp "$h" "/tmp/arms/$arm.history.json"
  tail -3 "$arm.log" 2>/dev/null || true
done
tar -C /tmp/arms -czf "$out/arms.tar.gz" .
ls -la /tmp/arms
