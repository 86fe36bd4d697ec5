#!/usr/bin/env bash
# One command on a CUDA machine (under 8 minutes on an H100): writes a JSON report. Exit 0: every
# section ran and passed; 1: a section failed (an error, or TensorRT numbers outside their
# gates); 2: nothing failed but the time budget ran out before every step ran (the report's
# "incomplete" list says which); 124: killed at the hard stop (the report keeps finished rows).
# A section that cannot run here says "skipped: ...". Every TensorRT plan is loaded in a fresh
# Python process, the way python -m runtime.sample and the Jetson app load it.
#   bash scripts/gpu_check.sh [REPORT.json] [--checkpoint engines/cifar10.pt] [--budget S]
# Report path default: $OUT/gpu_check.json when $OUT is set (device machines), else ./gpu_check.json.
# Needs a Python with a CUDA build of torch, onnx and onnxruntime (CPU is enough). Without
# TensorRT it measures PyTorch (precision of FP16 with FP32 islands vs naive .half(), eager /
# CUDA graph / torch.compile speed), the ONNX exports on CPU ONNX Runtime and the runtime's host
# cost, and exits 2 (incomplete: the TensorRT section did not run); a TensorRT that is installed
# but fails to import exits 1. The TensorRT section needs tensorrt, polygraphy and onnx.
set -euo pipefail
cd "$(dirname "$0")/.."
REPORT="${OUT:-.}/gpu_check.json"
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then  # a first argument that is not an option
  REPORT="$1"
  shift
fi
# The first Python whose torch sees a GPU: $PYTHON, then .venv (often a CPU torch), then python3.
PY=""
for cand in ${PYTHON:-} .venv/bin/python python3; do
  if [ -x "$(command -v "$cand" 2>/dev/null)" ] &&
     "$cand" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    PY="$cand"; break
  fi
done
if [ -z "$PY" ]; then
  echo "gpu_check: no Python with a CUDA-enabled torch and a visible GPU (set PYTHON=...)" >&2
  mkdir -p "$(dirname "$REPORT")"
  printf '{"error": "no Python with CUDA torch and a visible GPU"}\n' > "$REPORT"
  exit 1
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
echo "gpu_check: $PY ($("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda)'))"
mkdir -p "$(dirname "$REPORT")"
# 470 s hard stop; the script itself plans for 420 s and writes the report after every row.
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" timeout -k 10 470 "$PY" scripts/gpu_check.py --out "$REPORT" --budget 420 "$@"
