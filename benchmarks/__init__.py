"""``python -m benchmarks``: every performance figure of loraplus as a ratio against its peers, measured in one run.

Figures (``--only NAME``), each a ratio of two measurements taken side by side in the same run:

1. ``optimizer_step``    LoRA+ optimizer step vs PEFT's LoRA+ optimizer and plain ``torch.optim.AdamW``  (fig_optimizer)
2. ``group_build``       LoRA+ group building vs PEFT's, 7B Llama on the meta device                   (fig_groups)
3. ``train_step``        forward+backward+step: LoRA+ vs plain PEFT LoRA + AdamW vs full fine-tuning   (fig_train_step)
4. ``time_to_accuracy``  ``loraplus train`` defaults vs a bare Trainer + PEFT + LoRA+ script (bare_trainer)  (fig_train_runs)
5. ``throughput``        training samples/s of the same two runs                                      (fig_train_runs)
6. ``monitor_overhead``  the feature-learning monitor at its default interval                        (fig_monitor)
7. ``peak_memory``       peak RSS of each training configuration, one subprocess each                  (fig_memory)

Timing protocol (``common.interleaved``): variants run in blocks, A/B/C then B/C/A ..., so load drift on a shared
machine hits all alike; a figure's ratio is the median over repeats of the per-repeat (paired) ratio, in wall-clock
time; the same in process CPU time is reported beside it. Results go to ``benchmarks/results.json`` (atomic write).
"""
