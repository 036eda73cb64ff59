#!/usr/bin/env bash
# Second command of the README: the whole test suite (unit, integration and
# end-to-end tests with the real binary), in release mode so the real-data tests
# are quick. Installs what is missing first, like setup.sh. Ends with one summary
# line over every test binary.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
gnno_ensure_torch
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --release --workspace --locked "$@" 2>&1 | tee "$log" || status=$?
passed=$(grep -Eo '^test result: [A-Za-z]+\. [0-9]+ passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s += $1} END {print s + 0}')
failed=$(grep -Eo '; [0-9]+ failed' "$log" | grep -Eo '[0-9]+' | awk '{s += $1} END {print s + 0}')
echo
echo "tests: $passed passed, $failed failed"
exit "$status"
