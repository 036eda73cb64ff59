#!/usr/bin/env bash
# Second command of the README: the whole test suite (unit, integration and
# end-to-end tests with the real binary), in release mode so the real-data tests
# are quick. Installs what is missing first, like setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
gnno_ensure_torch
cargo test --release --workspace --locked "$@"
