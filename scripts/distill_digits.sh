#!/bin/bash
# The shipped few-step student: distil engines/digits.pt, export it (float32 and FP16) and
# score it at 1, 2, 4 and 8 calls on the frontier's terms (450 samples, seeds 0,1,2).
# HELDOUT=1 also runs the held-out table in both feature spaces.
# Every step resumes: run the script again after an interruption and it continues.
# The shipped student is this script as it stands: 16384 teacher trajectories, 4000 steps, and
# distill's own timestep lists (no search). On the 2-core machine: 15 min of teacher
# trajectories, then about 1 student step/s on one thread, 66 min (docs/distillation.md).
set -e
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
RUN=${RUN:-runs/digits-distilled}
OPTS="--teacher engines/digits.pt --out $RUN --teacher-steps 8 --trajectories 16384 --steps ${STEPS:-4000}
      --batch-size 64 --lr 0.0002 --ema-decay 0.995 --sample-every 500 --ckpt-every 50"
if [ ! -f "$RUN/model.pt" ]; then
  [ -f "$RUN/last.pt" ] && R=--resume || R=
  ddpm-export distill $OPTS $R
fi
cp "$RUN/model.pt" engines/digits-distilled.pt
ddpm-export export --checkpoint engines/digits-distilled.pt --out engines/digits-distilled.onnx --force
ddpm-export export --checkpoint engines/digits-distilled.pt --out engines/digits-distilled-fp16.onnx --fp16 --force
J=examples/distilled.json
[ -f "$J" ] && R=--resume || R=
ddpm-export steps-table --engine engines/digits-distilled.onnx --samples 450 --seeds 0,1,2 \
    --methods consistency --steps 4,1,2,8 --json $J $R --no-progress
PYTHONPATH=. python scripts/distill_compare.py $J examples/frontier.json
# The held-out check in both feature spaces (docs/distillation.md). DDPM-1000 at seeds 7 and 8 costs
# 35-50 minutes a seed here; every set is cached in runs/heldout-samples, so a rerun only scores.
if [ -n "${HELDOUT:-}" ]; then
  PYTHONPATH=. python scripts/digits_heldout_table.py --seeds 0,7,8,9 --samples 450 \
      --run student-1=engines/digits-distilled.onnx:consistency:1 \
      --run student-2=engines/digits-distilled.onnx:consistency:2 \
      --run student-4=engines/digits-distilled.onnx:consistency:4 \
      --run student-4-searched=engines/digits-distilled.onnx:consistency:999/375/250/125 \
      --run student-8=engines/digits-distilled.onnx:consistency:8 \
      --run unipc-10=engines/digits.onnx:unipc:10 \
      --run ddpm-1000=npz:engines/digits_samples.npz --run ddpm-1000=engines/digits.onnx:ddpm:1000@7/8 \
      --reference ddpm-1000 --reference unipc-10 --json examples/distilled-heldout-16k.json
fi
