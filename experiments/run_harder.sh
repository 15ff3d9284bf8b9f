#!/usr/bin/env bash
# The harder-task experiments behind README "Harder tasks" (minilm-l6 and mpnet-base on multiemo, vitaminc and
# rotten-tomatoes). Each command resumes: finished runs are kept, so rerunning only runs what is missing.
# Sized for 2 CPU cores: short max lengths, 1,000 validation/test rows (--max-eval-samples), one thread per run
# so that two runs share the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
LP="${LP:-.venv/bin/loraplus}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
EVAL="--max-eval-samples 1000 --eval-subset 0 --eval-steps 100 --logging-steps 50 --batch-size 16"

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

# The primary harder task (multiemo: vitaminc stays at the majority class, see its curve), minilm-l6: lr_A x lr_B
# with the head's lr held at 1e-3 in every cell (--loraplus-lr-other), so a large lr_A no longer helps the head;
# 250 steps, validation on 1,000 rows at the end.
sweep_multiemo() {
    $LP sweep --model minilm-l6 --dataset multiemo --max-length 64 --max-steps 250 --batch-size 16 \
        --max-eval-samples 1000 --eval-subset 0 --eval-steps 250 --logging-steps 50 --loraplus-lr-other 1e-3 \
        --lr-a-min 3e-4 --lr-a-max 3e-3 --lr-a-points 3 --lr-b-min 3e-4 --lr-b-max 3e-2 --lr-b-points 5 \
        --seeds 0 --output-dir experiments/sweep-multiemo
}

# The same sweep on the wider encoder, mpnet-base (hidden 768, 12 layers): a step costs about 8 times minilm-l6's
# (about 25 CPU-minutes a run on one core), so the grid is 3 x 3 cells taken from minilm-l6's (lr_A 3e-4..3e-3,
# lr_B 9.5e-4..9.5e-3: ratios 0.32..32, LoRA at two lrs), same steps, data, head lr and validation rows.
sweep_multiemo_mpnet() {
    $LP sweep --model mpnet-base --dataset multiemo --max-length 64 --max-steps 250 --batch-size 16 \
        --max-eval-samples 1000 --eval-subset 0 --eval-steps 250 --logging-steps 50 --loraplus-lr-other 1e-3 \
        --lr-a-min 3e-4 --lr-a-max 3e-3 --lr-a-points 3 --lr-b-min 9.486832980505141e-4 \
        --lr-b-max 9.486832980505141e-3 --lr-b-points 3 --seeds 0 --output-dir experiments/sweep-multiemo-mpnet
}

# The tuned comparison on multiemo, minilm-l6: LoRA and LoRA+ (λ 16), each lr_A tuned on a factor-2 grid that
# spans LoRA's optimum (the sweep: 9.5e-4 good, 3e-3 fails at ratio 1) and LoRA+'s (lr_B = 16 lr_A <= 3e-3), the
# head's lr held at 1e-3 for both, then 3 seeds at each method's lr; validation every 50 steps (steps-to-target).
compare_multiemo() {
    $LP compare --model minilm-l6 --dataset multiemo --max-length 64 --max-steps 250 --batch-size 16 \
        --max-eval-samples 1000 --eval-subset 0 --eval-steps 50 --logging-steps 50 --loraplus-lr-other 1e-3 \
        --methods lora,loraplus --lrs 1.25e-4,2.5e-4,5e-4,1e-3,2e-3 --seeds 0,1,2 --loraplus-lr-ratio 16 \
        --output-dir experiments/compare-multiemo
}

# The untuned user's view: LoRA and LoRA+ (λ 16) at each learning rate the anchors' examples use (5e-5, 1e-4,
# 2e-4), 3 seeds each, defaults otherwise (the head at lr_A), 250 steps, validation at 125 and 250 (the final
# metric is the point; evaluations of 1,000 rows cost about as much as the training); one comparison folder per
# lr, so that each lr is run at every seed (a comparison with one lr has nothing to tune). UNTUNED_LRS picks a
# subset of the learning rates.
untuned_multiemo() {
    for lr in ${UNTUNED_LRS:-5e-5 1e-4 2e-4}; do
        $LP compare --model minilm-l6 --dataset multiemo --max-length 64 --max-steps 250 --batch-size 16 \
            --max-eval-samples 1000 --eval-subset 0 --eval-steps 125 --logging-steps 50 --methods lora,loraplus --lrs "$lr" \
            --seeds 0,1,2 --loraplus-lr-ratio 16 --output-dir "experiments/untuned-multiemo-lr$lr"
    done
}

# A second harder task on minilm-l6: rotten-tomatoes (SST-2-like snippets) at 48 tokens, the same tuned
# comparison as multiemo with a coarser grid (head at 1e-3, factor-4 lr grid, 3 seeds, validation every 125);
# 8e-3 was added after LoRA's best came out at 2e-3, the grid's top.
compare_rotten() {
    $LP compare --model minilm-l6 --dataset rotten-tomatoes --max-length 48 --max-steps 250 --batch-size 16 \
        --max-eval-samples 1000 --eval-subset 0 --eval-steps 125 --logging-steps 50 --loraplus-lr-other 1e-3 \
        --methods lora,loraplus --lrs 1.25e-4,5e-4,2e-3,8e-3 --seeds 0,1,2 --loraplus-lr-ratio 16 \
        --output-dir experiments/compare-rotten
}

if [ "$#" -eq 0 ]; then set -- curve_multiemo curve_vitaminc sweep_multiemo sweep_multiemo_mpnet compare_multiemo untuned_multiemo compare_rotten; fi
for step in "$@"; do "$step"; done
