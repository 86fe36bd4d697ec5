#!/bin/bash
# The README's frontier: every method at 5-100 engine calls, seeds 0,1,2, 128 samples per run,
# plus the DDPM-1000 reference row, in priority order. Each call resumes the same JSON, so the
# script can be stopped at any point and run again; the last call samples nothing new and only
# writes the plot and prints the table. Hours of CPU on a shared 2-core machine.
set -e
cd "$(dirname "$0")/.."
J=${J:-examples/frontier.json}
C="--engine engines/digits.onnx --samples 128 --seeds 0,1,2 --json $J --no-progress"
ddpm-export steps-table $C --methods dpmsolver++,unipc --steps 10,20 --reference-samples engines/digits_samples.npz
ddpm-export steps-table $C --resume --methods sde-dpmsolver++,ddim --steps 10,20
ddpm-export steps-table $C --resume --methods dpmsolver++,unipc,sde-dpmsolver++,ddim --steps 5,15
ddpm-export steps-table $C --resume --methods ddpm --steps 10,20
ddpm-export steps-table $C --resume --methods dpmsolver++,unipc,sde-dpmsolver++,ddim --steps 50
ddpm-export steps-table $C --resume --methods ddpm --steps 5,15,50
ddpm-export steps-table $C --resume --methods dpmsolver++,unipc,sde-dpmsolver++,ddim,ddpm --steps 100
ddpm-export steps-table $C --resume --methods unipc --steps 10 --plot examples/frontier.png
