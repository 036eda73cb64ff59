#!/usr/bin/env bash
# Second command of the README: the whole test suite (unit, integration and
# end-to-end tests with the real binary), in release mode so the real-data tests
# are quick. Installs what is missing first, like setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
if [ ! -x "$VIRTUAL_ENV/bin/python" ] || ! "$VIRTUAL_ENV/bin/python" -c "import torch" 2>/dev/null; then
  python3 -m venv "$VIRTUAL_ENV"
  "$VIRTUAL_ENV/bin/pip" install --quiet --disable-pip-version-check "torch==$TORCH_VERSION"
fi
cargo test --release --workspace --locked "$@"
