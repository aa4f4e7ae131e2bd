#!/usr/bin/env bash
# Installs llmft, then runs the test suite. Extra arguments go to pytest, e.g.
#   scripts/test.sh -m "not e2e"     # the fast tier only (seconds, no Ray)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
exec "${PYTHON:-python3}" -m pytest "$@"
