#!/usr/bin/env bash
# The CUDA check for sessions lent a GPU machine (see DEVELOPERS.md / the device tool).
# It needs the gnno binary (built here, x86-64) and a python3 with torch 2.11 (+cu130)
# there. It trains and evaluates on the sample with device = "cuda", then the same on
# CPU, and prints both reports and the speed ratio.
#   usage: scripts/gpu_check.sh [path/to/gnno[.gz]]     (default bin/gnno)
# The release binary is ~83 MB stripped, over the device tool's 64 MiB: carry it
# gzipped (~25 MB), e.g. `mkdir -p .gpu && strip -o .gpu/gnno bin/gnno && gzip -f .gpu/gnno`
# with `.gpu/` in .git/info/exclude and `carry: [".gpu"]`, then run
# `scripts/gpu_check.sh ../.gpu/gnno.gz`.
# On the device machine libtorch comes from its own PyTorch, so this script (not
# users) sets LD_LIBRARY_PATH to that torch's lib folder.
set -euo pipefail
cd "$(dirname "$0")"
bin="${1:-../bin/gnno}"
if [[ "$bin" == *.gz ]]; then
  gunzip -c "$bin" > /tmp/gnno && chmod +x /tmp/gnno && bin=/tmp/gnno
fi
torch_lib=$(python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")'
out="${OUT:-/tmp/gnno-gpu-check}"
mkdir -p "$out"
for dev in cuda cpu; do
  sed "s/^device = .*/device = \"$dev\"/; s#gpu-check\"#gpu-check-$dev\"#" gpu_check.toml > "gpu_check_$dev.toml"
  start=$(date +%s.%N)
  "$bin" --config "gpu_check_$dev.toml" run --quiet
  end=$(date +%s.%N)
  echo "$dev: wall $(echo "$end - $start" | bc) s"
  "$bin" --config "gpu_check_$dev.toml" report train --json > "$out/train_$dev.json"
  "$bin" --config "gpu_check_$dev.toml" report evaluate --json | tee "$out/evaluate_$dev.json"
done
python3 - "$out" <<'PY'
import json, sys
d = sys.argv[1]
t = {k: json.load(open(f"{d}/train_{k}.json"))["report"] for k in ("cuda", "cpu")}
e = {k: json.load(open(f"{d}/evaluate_{k}.json"))["report"] for k in ("cuda", "cpu")}
print("device:", t["cuda"]["device"])
for k in ("cuda", "cpu"):
    print(f"{k}: {t[k]['mean_instances_per_second']:.0f} instances/s, test HR@10 {e[k]['test_full']['HR@10']:.4f} NDCG@10 {e[k]['test_full']['NDCG@10']:.4f}")
print(f"speed ratio cuda/cpu: {t['cuda']['mean_instances_per_second'] / t['cpu']['mean_instances_per_second']:.1f}x")
PY
# Beauty, SASRec (sequence rows), on CUDA only: seconds per epoch of each objective.
for loss in full-softmax sampled-softmax; do
  sed "s/^loss = .*/loss = \"$loss\"/; s#gpu-beauty\"#gpu-beauty-$loss\"#" gpu_beauty.toml > "gpu_check_beauty_$loss.toml"
  "$bin" --config "gpu_check_beauty_$loss.toml" run --quiet
  "$bin" --config "gpu_check_beauty_$loss.toml" report train --json > "$out/beauty_train_$loss.json"
  python3 -c "import json,sys; t=json.load(open(sys.argv[1]))['report']; print(sys.argv[2], 'train s/epoch', round(t['mean_train_seconds_per_epoch'], 2), 'positions/s', round(t['mean_instances_per_second']), 'dev', t['early_stop_metric'], round(t['best_dev_metric'], 4))" "$out/beauty_train_$loss.json" "$loss"
done
