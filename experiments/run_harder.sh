#!/usr/bin/env bash
# The harder-task experiments behind README "Harder tasks" (minilm-l6 and mpnet-base on multiemo, vitaminc and
# rotten-tomatoes). Each command resumes: finished runs are kept, so rerunning only runs what is missing.
# Sized for 2 CPU cores: short max lengths, 1,000 validation/test rows (--max-eval-samples), one thread per run
# so that two runs share the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
LP="${LP:-.venv/bin/loraplus}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
EVAL="--max-eval-samples 1000 --eval-steps 100 --logging-steps 50 --batch-size 16"

# Learning curves at lr_A 1e-3, one seed, validation every 100 steps; multiemo: LoRA and LoRA+ (λ 16).
curve_multiemo() {
    $LP compare --model minilm-l6 --dataset multiemo --max-length 64 --max-steps 800 $EVAL \
        --methods lora,loraplus --lrs 1e-3 --seeds 0 --loraplus-lr-ratio 16 --output-dir experiments/curve-multiemo
}
# vitaminc as a user would try it after the default failed (majority class after 250 steps): every linear layer
# adapted, rank 16, more steps; LoRA only (an all-linear step costs about twice the default's).
curve_vitaminc() {
    $LP compare --model minilm-l6 --dataset vitaminc --max-length 96 --max-steps 600 $EVAL \
        --target-modules all-linear --r 16 --methods lora --lrs 1e-3 --seeds 0 \
        --output-dir experiments/curve-vitaminc
}

if [ "$#" -eq 0 ]; then set -- curve_multiemo curve_vitaminc; fi
for step in "$@"; do "$step"; done
