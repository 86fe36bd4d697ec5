#!/usr/bin/env bash
# The speed table of docs/policies.md ("Speed"): seconds per action chunk at batch 1, LeRobot's eager
# select_action vs the runtime on ONNX Runtime float32 and FP16, DDPM-100 and DDIM-10, one thread,
# for (1) the shipped obstacle policy (its LeRobot folder rebuilt from engines/obstacle-policy.pt by
# LeRobot itself) and (2) a PushT-shaped image policy (one 96x96 camera, crop 84, a 2-d state,
# ResNet-18, down_dims (64, 128, 256), random weights) made by LeRobot, imported and exported.
# Needs the LeRobot venv (make setup-lerobot, or DDPM_LEROBOT_PYTHON).
# Usage: scripts/policy_bench_table.sh [OUT_DIR]   (JSON + printed tables in OUT_DIR, default reports/policy-bench)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-reports/policy-bench}
mkdir -p "$OUT"
PY=${PY:-.venv/bin/python}
LR=${DDPM_LEROBOT_PYTHON:-.venv-lerobot/bin/python}
export DDPM_LEROBOT_PYTHON=$LR OMP_NUM_THREADS=1
$PY -m ddpm_export.cli.main bench --policy engines/obstacle-policy.onnx --threads 1 --chunks 5 \
    --json-out "$OUT/obstacle.json" | tee "$OUT/obstacle.txt"
HOME="$OUT" "$LR" scripts/lerobot_policy_reference.py make --kind image --size pusht --seed 0 --out "$OUT/pusht_lerobot"
$PY -m ddpm_export.cli.main import --format lerobot "$OUT/pusht_lerobot" --out "$OUT/pusht.pt" --force
$PY -m ddpm_export.cli.main export --checkpoint "$OUT/pusht.pt" --out "$OUT/pusht.onnx" --force
$PY -m ddpm_export.cli.main export --checkpoint "$OUT/pusht.pt" --out "$OUT/pusht-fp16.onnx" --fp16 --force
$PY -m ddpm_export.cli.main bench --policy "$OUT/pusht.onnx" --lerobot-folder "$OUT/pusht_lerobot" --threads 1 \
    --chunks 5 --json-out "$OUT/pusht.json" | tee "$OUT/pusht.txt"
