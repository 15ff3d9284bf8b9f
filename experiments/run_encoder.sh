#!/usr/bin/env bash
# The encoder experiments behind README "Does LoRA+ help? Measured here" (minilm-l6, the paper's RoBERTa role).
# Each command resumes: finished runs are kept, so rerunning after an interruption only runs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
LP=".venv/bin/loraplus"
# Hard variant: BBC News cut to 32 tokens, 60 steps of 16 (about 0.56 epoch), so LoRA has work to do.
COMMON="--model minilm-l6 --dataset bbc-news --max-length 32 --max-steps 60 --batch-size 16 --logging-steps 10 --eval-subset 0"
$LP sweep $COMMON --output-dir experiments/sweep-bbc32 --eval-steps 60 \
    --lr-a-min 1e-4 --lr-a-max 2.7e-3 --lr-a-points 4 --lr-b-min 1e-4 --lr-b-max 2.43e-2 --lr-b-points 6 --seeds 0
$LP compare $COMMON --output-dir experiments/compare-bbc32 --eval-steps 10 \
    --lrs 3e-4,9e-4,2.7e-3,8.1e-3,2.43e-2 --seeds 0,1,2 --loraplus-lr-ratio 16
