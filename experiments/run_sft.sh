#!/usr/bin/env bash
# Instruction tuning in miniature (the paper's Llama-7b / Flan-v2 -> MMLU role): smollm2-135m on the built-in
# natural-instructions subset, LoRA vs LoRA+ (lambda 4, the paper's 2^1-2^2 advice for Llama), each lr tuned on
# seed 0 over 1e-4 and 4e-4 (one seed: the 2-core budget of one session); the sft defaults otherwise (40 steps of 4
# at 384 tokens), evaluation on 24 validation/test examples every 10 steps, 8 generations per split. Then MMLU
# (cloze, 100 seeded questions) before training and for each method's seed-0 run at its tuned lr.
# Resumable: finished runs are kept. About 50 minutes for the first block, 35 for the seeds, 20 for the lambdas (2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
LP=".venv/bin/loraplus"
OUT=experiments/compare-sft-ni
$LP compare --task sft --output-dir $OUT --eval-steps 10 --max-eval-samples 24 --eval-subset 0 --eval-generate 8 --metric loss --methods lora,loraplus \
    --lrs 1e-4,4e-4 --seeds 0 --tune-seed 0 --loraplus-lr-ratio 4 --jobs 2
mkdir -p $OUT/mmlu
[ -f $OUT/mmlu/base.json ] || $LP evaluate --benchmark mmlu --base-model smollm2-135m --limit 100 --output $OUT/mmlu/base.json
for method in lora loraplus; do
    lr=$(.venv/bin/python -c "import json; print(json.load(open('$OUT/summary.json'))['methods']['$method']['lr'])")
    run=$(ls -d $OUT/runs/$method/lr*_seed0 | while read d; do
        .venv/bin/python -c "import json,sys; c=json.load(open('$d/config.json'))['config']; sys.exit(0 if abs(c['learning_rate']-$lr)<1e-12 else 1)" && echo $d; done)
    [ -f $OUT/mmlu/$method.json ] || $LP evaluate --benchmark mmlu --adapter $run --limit 100 --output $OUT/mmlu/$method.json
done

# Seeds 1 and 2 at the tuned lr (4e-4 for both methods), each seed with its own data split; then lambda 2 and 16 at
# lr_A 4e-4 on seed 0 (one run each). Each run's metrics.json is copied beside the result JSONs (runs/ is not kept).
SEEDS=experiments/compare-sft-ni-seeds
$LP compare --task sft --output-dir $SEEDS --eval-steps 10 --max-eval-samples 24 --eval-subset 0 --eval-generate 8 --metric loss --methods lora,loraplus \
    --lrs 4e-4 --seeds 1,2 --tune-seed 1 --loraplus-lr-ratio 4 --jobs 2
mkdir -p $SEEDS/mmlu
for method in lora loraplus; do for seed in 1 2; do
    run=$SEEDS/runs/$method/lr0.0004_seed$seed
    cp $run/metrics.json $SEEDS/results/${method}_seed$seed.metrics.json
    [ -f $SEEDS/mmlu/${method}_seed$seed.json ] || $LP evaluate --benchmark mmlu --adapter $run --limit 100 --output $SEEDS/mmlu/${method}_seed$seed.json
done; done
for lam in 2 16; do
    $LP compare --task sft --output-dir experiments/compare-sft-ni-lambda$lam --eval-steps 10 --max-eval-samples 24 --eval-subset 0 --eval-generate 8 \
        --metric loss --methods loraplus --lrs 4e-4 --seeds 0 --tune-seed 0 --loraplus-lr-ratio $lam --jobs 2
    cp experiments/compare-sft-ni-lambda$lam/runs/loraplus/lr0.0004_seed0/metrics.json \
        experiments/compare-sft-ni-lambda$lam/results/loraplus_seed0.metrics.json
done
# LoRA at lr 1.6e-3 (LoRA+ lambda 4's lr_B), seed 0: does the larger lr alone close the gap? (about 20 minutes)
$LP compare --task sft --output-dir experiments/compare-sft-ni-lora-lr1.6e-3 --eval-steps 10 --max-eval-samples 24 --eval-subset 0 --eval-generate 8 \
    --metric loss --methods lora --lrs 1.6e-3 --seeds 0 --tune-seed 0 --loraplus-lr-ratio 4 --jobs 2
cp experiments/compare-sft-ni-lora-lr1.6e-3/runs/lora/lr0.0016_seed0/metrics.json \
    experiments/compare-sft-ni-lora-lr1.6e-3/results/lora_seed0.metrics.json
.venv/bin/python experiments/report_sft.py
