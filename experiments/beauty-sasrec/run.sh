#!/usr/bin/env bash
# Runs arms of the SASRec objectives comparison on Beauty in turn; each arm's
# <arm>.result.json holds its evaluate and train reports and wall time. A killed run
# resumes from its last epoch checkpoint when started again (the pipeline's resume;
# its wall time is then that of the invocation that finished it). An arm whose
# evaluate stage is up to date and whose result file holds the reports of the train
# and evaluate outputs now in its workdir (the same fingerprints) is skipped, its
# result kept (a rerun would only overwrite its wall time with a no-op's).
# Usage: experiments/beauty-sasrec/run.sh [arm ... | all]   (each arm is a <arm>.toml here;
#   default: the headline arms of docs/RESULTS.md, seeds 42, 7 and 123: full softmax with
#   the original and FreeRec's block, sampled softmax with uniform and with GNNO τ = 0.01
#   negatives; "goal": the goal's three arms with FreeRec's block, seeds 42, 7 and 123:
#   full softmax, sampled softmax with uniform negatives and history, and with 9
#   distinct GNNO τ = 0.01 hard negatives as an exact stratum and history; "k384": full
#   softmax and that GNNO arm with 384 random negatives per draw, seeds 42, 7, 123, 1, 2, 3
#   and 4 (the closest comparison, one machine); "k320": the same GNNO arm with 320, the
#   same seven seeds (full softmax's are k384's); "tenseeds": seeds 5, 6 and 8 of full
#   softmax and of both GNNO arms, for a ten-seed comparison; "all": every arm)
# Then:  python3 experiments/beauty-sasrec/summarize.py   (the tables of docs/RESULTS.md),
#   and for "k384" the paired comparison (k320's: the same with k320):
#   python3 experiments/beauty-sasrec/summarize.py --paired \
#     'ssm-gnno-i32-k384-tau001-dist-strat-hist-freerec(-s\d+)?' 'full-softmax-freerec(-fiveseeds|-sevenseeds|-tenseeds)?(-s\d+)?'
# GNNO_BIN=/path/to/gnno runs the arms with that binary instead of the workspace's release
# build (a copy, so a rebuild while arms run does not change their binary).
set -euo pipefail
cd "$(dirname "$0")"
. ../../scripts/env.sh
bin="${GNNO_BIN:-$CARGO_TARGET_DIR/release/gnno}"
[ -x "$bin" ] || (cd ../.. && cargo build --release --workspace --locked)
arms=("$@")
if [ ${#arms[@]} -eq 0 ]; then
  arms=()
  for a in full-softmax full-softmax-freerec ssm-uniform-g32 ssm-gnno-g32-tau001; do
    arms+=("$a" "$a-s7" "$a-s123")
  done
elif [ "${arms[*]}" = goal ]; then
  arms=()
  for a in full-softmax-freerec-xeon ssm-uniform-i32-hist-freerec ssm-gnno-i32-tau001-dist-strat-hist-freerec; do
    arms+=("$a" "$a-s7" "$a-s123")
  done
elif [ "${arms[*]}" = k384 ]; then
  arms=(full-softmax-freerec full-softmax-freerec-s7 full-softmax-freerec-s123
        full-softmax-freerec-fiveseeds-s1 full-softmax-freerec-fiveseeds-s2
        full-softmax-freerec-sevenseeds-s3 full-softmax-freerec-sevenseeds-s4)
  for s in "" -s7 -s123 -s1 -s2 -s3 -s4; do
    arms+=("ssm-gnno-i32-k384-tau001-dist-strat-hist-freerec$s")
  done
elif [ "${arms[*]}" = k320 ]; then
  arms=()
  for s in "" -s7 -s123 -s1 -s2 -s3 -s4; do
    arms+=("ssm-gnno-i32-k320-tau001-dist-strat-hist-freerec$s")
  done
elif [ "${arms[*]}" = tenseeds ]; then
  arms=()
  for s in 5 6 8; do
    arms+=("full-softmax-freerec-tenseeds-s$s"
           "ssm-gnno-i32-k320-tau001-dist-strat-hist-freerec-s$s"
           "ssm-gnno-i32-k384-tau001-dist-strat-hist-freerec-s$s")
  done
elif [ "${arms[*]}" = all ]; then
  arms=(); for f in *.toml; do arms+=("${f%.toml}"); done
fi
for arm in "${arms[@]}"; do
  if [ -f "$arm.result.json" ] && "$bin" --config "$arm.toml" status --json | python3 -c '
import json, subprocess, sys
state = {s["stage"]: s["status"]["state"] for s in json.load(sys.stdin)}
kept = json.load(open(sys.argv[1] + ".result.json"))
now = lambda stage: json.loads(subprocess.run([sys.argv[2], "--config", sys.argv[1] + ".toml", "report", stage, "--json"], capture_output=True, check=True, text=True).stdout)
same = state.get("evaluate") == "up-to-date" and all(kept[s]["fingerprint"] == now(s)["fingerprint"] for s in ("train", "evaluate"))
sys.exit(0 if same else 1)' "$arm" "$bin"; then
    echo "$arm: up to date, $arm.result.json kept"
    continue
  fi
  start=$(date +%s)
  "$bin" --config "$arm.toml" run --quiet > "$arm.out" 2> "$arm.log"
  end=$(date +%s)
  {
    echo "{\"arm\": \"$arm\", \"wall_s\": $((end - start)), \"machine\": \"$(nproc) cores, $(uname -m), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)\","
    echo " \"evaluate\": $("$bin" --config "$arm.toml" report evaluate --json),"
    echo " \"train\": $("$bin" --config "$arm.toml" report train --json)}"
  } > "$arm.result.json.tmp"
  mv "$arm.result.json.tmp" "$arm.result.json"
done
