#!/usr/bin/env bash
# The closed-loop table of docs/policies.md: the shipped obstacle policy under every sampler,
# 200 episodes per seed, seeds 0-2 (the seed sets the initial states and the policy's noise).
# Usage: scripts/policy_rollout_table.sh [OUT_DIR]   (JSON per sampler in OUT_DIR, default reports/rollout)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-reports/rollout}
mkdir -p "$OUT"
PY=${PY:-.venv/bin/python}
ENGINE=engines/obstacle-policy.onnx
$PY -m ddpm_export.cli.main rollout --expert --seeds 0,1,2 --episodes 200 --json "$OUT/expert.json" --no-progress
for spec in "ddpm 100" "ddim 10" "unipc 10" "dpmsolver++ 10"; do
    set -- $spec
    $PY -m ddpm_export.cli.main rollout --policy "$ENGINE" --method "$1" --steps "$2" --seeds 0,1,2 \
        --episodes 200 --json "$OUT/$1-$2.json" --no-progress
done
# the markdown table of docs/policies.md from the JSON files
$PY - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print("| sampler | engine calls per chunk | success | collisions | mode balance | s per chunk (batch 200) |")
print("|---|---|---|---|---|---|")
for name, label in (("expert", "scripted expert"), ("ddpm-100", "DDPM-100 (as trained)"), ("ddim-10", "DDIM-10"),
                    ("unipc-10", "UniPC-10"), ("dpmsolver++-10", "DPM-Solver++-10")):
    p = out / f"{name}.json"
    if not p.is_file():
        continue
    d = json.loads(p.read_text())
    f = lambda k: f"{d[k]:.3f} ({d[k + '_std']:.3f})"
    print(f"| {label} | {d['engine_calls_per_chunk']} | {f('success_rate')} | {f('collision_rate')} | "
          f"{f('mode_balance')} | {d['wall_s_per_chunk']:.2f} |")
PYEOF
