#!/usr/bin/env bash
# The CUDA check for sessions lent a GPU machine (see the device tool). It needs the
# gnno binary and the bench binary (built here, x86-64), Beauty.txt, and a python3
# with torch 2.11 (+cu130) there:
#   1. the bundled sample trained and evaluated with device = "cuda", then on CPU:
#      both reports and the speed ratio; the CUDA run repeated to see whether it is
#      bit-for-bit reproducible;
#   2. the objectives bench on CUDA: each objective's seconds per epoch for SASRec on
#      Beauty next to the same model and loss in PyTorch eager on the same GPU
#      (benches/torch_objectives.py with DEVICE=cuda), and the random-groups bench;
#   3. a few real epochs of SASRec on Beauty per objective through the pipeline.
# Usage: scripts/gpu_check.sh [DIR], where DIR (default .gpu) is what
# scripts/gpu_pack.sh fills; see scripts/gpu_setup.sh.
set -euo pipefail
. "$(dirname "$0")/gpu_setup.sh" "${1:-}"
cd "$root/scripts"
# A machine kept warm between calls keeps ignored folders: start from nothing.
rm -rf ../work/gpu-check-* ../work/gpu-beauty-*

echo "== 1. sample, CUDA and CPU"
for dev in cuda cpu cuda2; do
  d=${dev%2}
  sed "s/^device = .*/device = \"$d\"/; s#gpu-check\"#gpu-check-$dev\"#" gpu_check.toml > "gpu_check_$dev.toml"
  start=$(date +%s.%N)
  "$bin" --config "gpu_check_$dev.toml" run --quiet
  end=$(date +%s.%N)
  echo "$dev: wall $(awk "BEGIN {print $end - $start}") s"
  "$bin" --config "gpu_check_$dev.toml" report train --json > "$out/train_$dev.json"
  "$bin" --config "gpu_check_$dev.toml" report evaluate --json > "$out/evaluate_$dev.json"
done
python3 - "$out" <<'PY'
import json, sys
d = sys.argv[1]
t = {k: json.load(open(f"{d}/train_{k}.json"))["report"] for k in ("cuda", "cpu", "cuda2")}
e = {k: json.load(open(f"{d}/evaluate_{k}.json"))["report"] for k in ("cuda", "cpu", "cuda2")}
print("device:", t["cuda"]["device"], "/", t["cpu"]["device"])
for k in ("cuda", "cpu", "cuda2"):
    m = e[k]["test_full"]
    print(f"{k}: {t[k]['mean_instances_per_second']:.0f} instances/s, best epoch {t[k]['best_epoch']}, test HR@10 {m['HR@10']:.6f} NDCG@10 {m['NDCG@10']:.6f}")
print(f"speed ratio cuda/cpu: {t['cuda']['mean_instances_per_second'] / t['cpu']['mean_instances_per_second']:.1f}x")
print("cuda run repeated gives the same test metrics:", e["cuda"]["test_full"] == e["cuda2"]["test_full"])
PY
for dev in cuda cuda2; do echo "$dev best.ot sha256 $(sha256sum ../work/gpu-check-$dev/train/run-*/best.ot | cut -c1-16)"; done

echo "== 2. objectives bench on CUDA (seconds per epoch; ratio = PyTorch eager / gnno)"
GNNO_BENCH_DEVICE=cuda RAYON_NUM_THREADS=8 /tmp/stages objectives groups 2>&1 | tee "$out/bench_cuda.txt"

echo "== 3. Beauty through the pipeline on CUDA, a few epochs per objective"
for loss in full-softmax sampled-softmax gbce bpr; do
  sed "s/^loss = .*/loss = \"$loss\"/; s#gpu-beauty\"#gpu-beauty-$loss\"#" gpu_beauty.toml > "gpu_check_beauty_$loss.toml"
  "$bin" --config "gpu_check_beauty_$loss.toml" run --quiet
  "$bin" --config "gpu_check_beauty_$loss.toml" report train --json > "$out/beauty_train_$loss.json"
  python3 -c "import json,sys; t=json.load(open(sys.argv[1]))['report']; print(sys.argv[2], 'train s/epoch', round(t['mean_train_seconds_per_epoch'], 2), 'positions/s', round(t['mean_instances_per_second']), 'dev', t['early_stop_metric'], round(t['best_dev_metric'], 4))" "$out/beauty_train_$loss.json" "$loss"
done
