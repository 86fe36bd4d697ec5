#!/bin/bash
# The shipped few-step student: distil engines/digits.pt, export it (float32 and FP16) and
# score it at 1, 2, 4 and 8 calls on the frontier's terms (450 samples, seeds 0,1,2).
# Every step resumes: run the script again after an interruption and it continues.
# The shipped student is STEPS=850 (nothing depends on the total, so a run of 850 steps
# is the 3000-step run that was ended after 850).
# On the shared 2-core machine: ~8 min of teacher trajectories, then 2-6 s per student step
# (see docs/distillation.md for the measured figures).
set -e
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
RUN=${RUN:-runs/digits-distilled}
OPTS="--teacher engines/digits.pt --out $RUN --teacher-steps 8 --trajectories 4096 --steps ${STEPS:-3000}
      --batch-size 64 --lr 0.0002 --ema-decay 0.995 --sample-every 250 --ckpt-every 50"
if [ ! -f "$RUN/model.pt" ]; then
  [ -f "$RUN/last.pt" ] && R=--resume || R=
  ddpm-export distill $OPTS $R
fi
cp "$RUN/model.pt" engines/digits-distilled.pt
ddpm-export export --checkpoint engines/digits-distilled.pt --out engines/digits-distilled.onnx
ddpm-export export --checkpoint engines/digits-distilled.pt --out engines/digits-distilled-fp16.onnx --fp16
J=examples/distilled.json
[ -f "$J" ] && R=--resume || R=
ddpm-export steps-table --engine engines/digits-distilled.onnx --samples 450 --seeds 0,1,2 \
    --methods consistency --steps 1,2,4,8 --json $J $R --no-progress
PYTHONPATH=. python scripts/distill_compare.py $J examples/frontier.json
