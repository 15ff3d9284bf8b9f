#!/usr/bin/env bash
# Instruction tuning in miniature (the paper's Llama-7b / Flan-v2 -> MMLU role): smollm2-135m on the built-in
# natural-instructions subset, LoRA vs LoRA+ (lambda 4, the paper's 2^1-2^2 advice for Llama), each lr tuned on
# seed 0 over 1e-4 and 4e-4 (one seed: the 2-core budget of one session); the sft defaults otherwise (40 steps of 4
# at 384 tokens), evaluation on 24 validation/test examples every 10 steps, 8 generations per split. Then MMLU
# (cloze, 100 seeded questions) before training and for each method's seed-0 run at its tuned lr.
# Resumable: finished runs are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
LP=".venv/bin/loraplus"
OUT=experiments/compare-sft-ni
$LP compare --task sft --output-dir $OUT --eval-steps 10 --max-eval-samples 24 --eval-generate 8 --metric loss --methods lora,loraplus \
    --lrs 1e-4,4e-4 --seeds 0 --tune-seed 0 --loraplus-lr-ratio 4 --jobs 2
mkdir -p $OUT/mmlu
[ -f $OUT/mmlu/base.json ] || $LP evaluate --benchmark mmlu --base-model smollm2-135m --limit 100 --output $OUT/mmlu/base.json
for method in lora loraplus; do
    lr=$(.venv/bin/python -c "import json; print(json.load(open('$OUT/summary.json'))['methods']['$method']['lr'])")
    run=$(ls -d $OUT/runs/$method/lr*_seed0 | while read d; do
        .venv/bin/python -c "import json,sys; c=json.load(open('$d/config.json'))['config']; sys.exit(0 if abs(c['learning_rate']-$lr)<1e-12 else 1)" && echo $d; done)
    [ -f $OUT/mmlu/$method.json ] || $LP evaluate --benchmark mmlu --adapter $run --limit 100 --output $OUT/mmlu/$method.json
done
