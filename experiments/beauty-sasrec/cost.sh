#!/usr/bin/env bash
# The per-epoch cost of GNNO's sampled-softmax arm against full softmax as the
# pipeline trains them (the arms' configs: one thread, dropout 0.6), each alone on
# the machine: `gnno stage train` for EPOCHS epochs (default 8) of the 9-hard arm
# with its hard negatives from the first epoch, of full softmax, and of the
# 9-hard arm again (the two bracket full softmax, so a drift in the machine's speed
# shows). Prints each run's training seconds per epoch, the shares, and the
# negatives stage's draw per epoch, twice: over these EPOCHS (the curriculum's
# ramp, hardness 0 to pace × (EPOCHS - 1)) and with the hardness at the arm's cap
# from the second epoch on (pace 1), where the arm's schedule spends most of its
# hard epochs (168 of 181 for the curriculum of warm-up 19, pace 0.04, cap 0.5);
# and, where the arm's runs have finished here, over whole runs: the stage draws all
# the schedule's hard epochs before training, early stopping ends a run sooner, so
# the ramp's draw is spread over the epochs the runs trained (warm-up included).
# Work folders go to a temporary directory.
# Usage: experiments/beauty-sasrec/cost.sh [EPOCHS [SAMPLED_ARM FULL_ARM]]
#   (default arms: ssm-gnno-g32-tau001-s7 and full-softmax-s7, the original block;
#    ssm-gnno-g32-tau001-freerec-s7 and full-softmax-freerec-s7 for FreeRec's;
#    GNNO_BIN=/path/to/gnno times that binary, as run.sh)
set -euo pipefail
cd "$(dirname "$0")"
. ../../scripts/env.sh
bin="${GNNO_BIN:-$CARGO_TARGET_DIR/release/gnno}"
[ -x "$bin" ] || (cd ../.. && cargo build --release --workspace --locked)
epochs=${1:-8}
sampled_arm=${2:-ssm-gnno-g32-tau001-s7}
full_arm=${3:-full-softmax-s7}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
data=$(cd ../../../shared/data/s3rec && pwd)
conf() { # arm, name
  sed -e "s#^workdir = .*#workdir = \"$tmp/$2\"#" \
      -e "s#^inputs = .*#inputs = [\"$data/Beauty.txt\"]#" \
      -e 's/^warmup = .*/warmup = 0/' -e "s/^epochs = .*/epochs = $epochs/" \
      "$1.toml" > "$tmp/$2.toml"
  "$bin" -c "$tmp/$2.toml" run --to negatives --quiet > /dev/null
}
conf "$sampled_arm" sampled
conf "$full_arm" full
mean() { # name → training seconds per epoch
  "$bin" -c "$tmp/$1.toml" report train --json | python3 -c '
import json, sys
e = json.load(sys.stdin)["report"]["epochs"]
print(round(sum(x["train_seconds"] for x in e) / len(e), 3))'
}
runs=()
for name in sampled full sampled; do
  "$bin" -c "$tmp/$name.toml" stage train --force --quiet
  runs+=("$name $(mean "$name")")
  echo "${runs[-1]} s per epoch"
done
per_epoch_draw() { # name → the negatives stage's draw and write per epoch
  "$bin" -c "$tmp/$1.toml" report negatives --json | python3 -c "
import json, sys
print(round(json.load(sys.stdin)['timings_s']['draw_and_write'] / $epochs, 3))" || echo "?"
}
ramp=$(per_epoch_draw sampled)
# The draw at the cap: the sampled arm's shards drawn again with pace 1, in its
# workdir once its training is timed (ingest and graph are reused, not redone).
sed -e 's/^pace = .*/pace = 1.0/' "$tmp/sampled.toml" > "$tmp/capped.toml"
"$bin" -c "$tmp/capped.toml" stage negatives --quiet > /dev/null
python3 - "$ramp" "$(per_epoch_draw capped)" "${runs[@]}" "$sampled_arm" "$epochs" <<'EOF'
import glob, json, re, sys
s1, f, s2 = (float(r.split()[1]) for r in sys.argv[3:6])
print(f"sampled / full softmax: {s1 / f:.3f}, {s2 / f:.3f}")
epochs = int(sys.argv[7])
for what, draw in (("over the ramp", sys.argv[1]), (f"at the cap ({epochs - 1} epochs of {epochs})", sys.argv[2])):
    if draw != "?":
        d = float(draw)
        print(f"negatives draw {what} {d:.3f} s per epoch; with it: {(s1 + d) / f:.3f}, {(s2 + d) / f:.3f}")
# Over whole runs: the stage draws every hard epoch of the arm's schedule before
# training starts, and early stopping ends a run sooner; the draw spread over the
# epochs the arm's finished runs (<arm>.result.json, <arm>-s*.result.json) trained.
arm = sys.argv[6]
toml = open(f"{arm}.toml").read()
get = lambda k: int(re.search(rf"^{k} = (\d+)", toml, re.M).group(1))
hard = get("epochs") - get("warmup")  # every epoch from warm-up on (gnno_negatives::hardness)
trained = [len(json.load(open(p))["train"]["report"]["epochs"])
           for p in sorted(glob.glob(f"{arm}.result.json") + glob.glob(f"{arm}-s*.result.json"))]
if trained and sys.argv[1] != "?":
    x = sum(hard / n for n in trained) / len(trained)
    d = float(sys.argv[1]) * x
    print(f"over whole runs: {hard} hard epochs drawn, {min(trained)}-{max(trained)} trained "
          f"({len(trained)} runs), the ramp's draw x {x:.2f} per epoch trained; "
          f"with it: {(s1 + d) / f:.3f}, {(s2 + d) / f:.3f}")
EOF
