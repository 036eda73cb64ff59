#!/usr/bin/env bash
# How hard GNNO's negatives are for a trained SASRec, under the settings the method
# allows (τ, the hardness cap), without training on them: for each variant the
# negatives stage draws 61 epochs of shards, then `gnno audit negatives --model`
# scores epoch 60's batches (hardness at its cap) with the trained models of the
# full-softmax and ssm-uniform-g32 arms (seed 42; run them first).
# Usage: experiments/beauty-sasrec/hardness/run.sh   (prints a markdown table)
set -euo pipefail
cd "$(dirname "$0")"
. ../../../scripts/env.sh
bin="$CARGO_TARGET_DIR/release/gnno"
[ -x "$bin" ] || (cd ../../.. && cargo build --release --workspace --locked)
# name sampler τ max-hardness
variants=(
  "uniform uniform 1.0 0.5"
  "gnno-tau1 gnno 1.0 0.5"
  "gnno-tau01 gnno 0.1 0.5"
  "gnno-tau001 gnno 0.01 0.5"
  "gnno-tau1-cap1 gnno 1.0 1.0"
  "gnno-tau01-cap1 gnno 0.1 1.0"
)
models=(full-softmax ssm-uniform-g32)
echo "| shards | sampler | τ | hardness cap | J>0 share | J p99 | = test item | above target, ${models[0]} model: random / hard | ${models[1]} model: random / hard |"
echo "|---|---|---|---|---|---|---|---|---|"
for v in "${variants[@]}"; do
  read -r name sampler tau cap <<< "$v"
  # The arm's config with this sampler, τ and cap, its own workdir, 61 epochs.
  sed -e "s|^workdir = .*|workdir = \"work/$name\"|" \
      -e "s|^sampler = .*|sampler = \"$sampler\"|" \
      -e "s|^temperature = .*|temperature = $tau|" \
      -e "s|^max-hardness = .*|max-hardness = $cap|" \
      -e "s|^epochs = .*|epochs = 61|" \
      -e "s|\"../../../shared|\"../../../../shared|" \
      ../ssm-gnno-g32.toml > "$name.toml"
  "$bin" --config "$name.toml" run --to negatives --quiet > /dev/null
  row="| $name | $sampler | $tau | $cap"
  first=1
  for m in "${models[@]}"; do
    a=$("$bin" --config "$name.toml" audit negatives --epoch 60 --json --model "../work/$m/current")
    if [ $first = 1 ]; then
      row="$row | $(python3 cells.py shards <<< "$a")"
      first=0
    fi
    row="$row | $(python3 cells.py model <<< "$a")"
  done
  echo "$row |"
done
