#!/bin/bash
# The frontier of docs/results.md: every method at 5-100 engine calls plus DDPM over all 1000 steps,
# seeds 0,1,2, 450 samples per run (the size of the held-out real set), in priority order.
# Each call resumes the same JSON, so the script can be stopped at any point and run again;
# the last call samples nothing new and only writes the plot and prints the table.
# About an hour of a 2-core CPU (1.4 ms per sample per engine call with ONNX Runtime).
set -e
cd "$(dirname "$0")/.."
J=${J:-examples/frontier.json}
C="--engine engines/digits.onnx --samples 450 --seeds 0,1,2 --json $J --no-progress"
ALL=dpmsolver++,unipc,sde-dpmsolver++,ddim,ddpm
[ -f "$J" ] && R=--resume || R=
ddpm-export steps-table $C $R --methods $ALL --steps 10,20
ddpm-export steps-table $C --resume --methods $ALL --steps 5,15
ddpm-export steps-table $C --resume --methods $ALL --steps 50
ddpm-export steps-table $C --resume --methods $ALL --steps 100
ddpm-export steps-table $C --resume --methods ddpm --steps 5 --full-ddpm
ddpm-export steps-table $C --resume --methods unipc --steps 10 --plot "${J%.json}.png"
