#!/usr/bin/env bash
# The causal-LM experiments behind README "Does LoRA+ help? Measured here" (smollm2-135m, the paper's
# GPT-2/Llama role): SMS spam as an instruction task, "Answer: ham|spam", loss on the answer only.
# Each command resumes: finished runs are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
LP=".venv/bin/loraplus"
COMMON="--task causal-lm --model smollm2-135m --dataset sms-spam --max-length 64 --max-steps 40 --batch-size 8
        --eval-batch-size 16 --max-eval-samples 200 --eval-subset 0 --eval-steps 10 --logging-steps 10"
$LP sweep $COMMON --output-dir experiments/sweep-smollm2-sms --metric macro_f1 --jobs 2 \
    --lr-a-min 1e-4 --lr-a-max 1.6e-3 --lr-a-points 3 --lr-b-min 1e-4 --lr-b-max 6.4e-3 --lr-b-points 4 --seeds 0
$LP compare $COMMON --output-dir experiments/compare-smollm2-sms --metric macro_f1 --jobs 2 \
    --methods lora,loraplus,lorafa,riemannian --lrs 1e-4,4e-4,1.6e-3 --seeds 0,1,2 --loraplus-lr-ratio 16
