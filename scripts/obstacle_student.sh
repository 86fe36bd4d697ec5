#!/usr/bin/env bash
# How engines/obstacle-student* was made: the few-call student of engines/obstacle-policy, in two
# rounds (the second on the first student's own closed-loop observations as well, DAgger-style:
# a student trained only where the teacher goes drifts past the goal and has no data to come back).
# Seeds 100-107 make the data; the closed-loop table evaluates on seeds 0-2.
# About 90 min on the 2-core CPU while other jobs ran (round 1: 43 min, round 2: 28 min, rollouts). Usage: scripts/obstacle_student.sh [RUN_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-runs/obstacle-student}
PY=${PY:-.venv/bin/python}
X="$PY -m ddpm_export.cli.main"
export OMP_NUM_THREADS=1
mkdir -p "$R"
COMMON="--teacher engines/obstacle-policy.pt --teacher-steps 16 --student-steps 1,2,4 --default-steps 4 \
  --steps 1250 --batch-size 64 --ckpt-every 50"
# round 1: the teacher's own observation histories (DDIM-10, 4 x 200 episodes: 4012 histories)
$X rollout --policy engines/obstacle-policy.onnx --method ddim --steps 10 --seeds 100,101,102,103 \
  --record-observations "$R/obs-teacher.npz" --no-progress
$X distill $COMMON --observations "$R/obs-teacher.npz" --trajectories 4096 --out "$R/round1"
$X export --checkpoint "$R/round1/model.pt" --out "$R/round1.onnx"
# round 2: + where the round-1 student goes (4 calls and 1 call, 2 x 200 episodes each)
$X rollout --policy "$R/round1.onnx" --steps 4 --seeds 104,105 --record-observations "$R/obs-s4.npz" --no-progress
$X rollout --policy "$R/round1.onnx" --steps 1 --seeds 106,107 --record-observations "$R/obs-s1.npz" --no-progress
$PY - "$R" <<'PYEOF'
import sys
import numpy as np
from runtime.io import save_npz
r = sys.argv[1]
parts = [np.load(f"{r}/{n}.npz") for n in ("obs-teacher", "obs-s4", "obs-s1")]
save_npz(f"{r}/obs-round2.npz", **{k: np.concatenate([p[k] for p in parts]) for k in parts[0].files})
PYEOF
$X distill $COMMON --observations "$R/obs-round2.npz" --trajectories 8192 --out "$R/round2"
cp "$R/round2/model.pt" engines/obstacle-student.pt
$X export --checkpoint engines/obstacle-student.pt --out engines/obstacle-student.onnx --force
