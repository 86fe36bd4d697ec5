#!/usr/bin/env bash
# The closed-loop table of docs/policies.md: the shipped obstacle policy (engines/obstacle-policy.onnx)
# under every sampler and its distilled student (engines/obstacle-student.onnx) at 1, 2 and 4 calls,
# 200 episodes per seed, seeds 0-2 (the seed sets the initial states and the policy's noise), then
# latency per chunk at batch 1 measured side by side in one run, and the plot success-vs-calls.png.
# Rollouts whose JSON is already in OUT_DIR are not rerun (delete it to rerun a row).
# Usage: scripts/policy_rollout_table.sh [OUT_DIR]   (default reports/rollout)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-reports/rollout}
PY=${PY:-.venv/bin/python}
$PY -m ddpm_export.tasks.table "$OUT" --rollouts
