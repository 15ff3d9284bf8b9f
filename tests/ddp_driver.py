"""Driver for tests/test_distributed.py: one ``run_train`` on every rank, then a report per rank.

Run it under ``torchrun --nproc_per_node 2 tests/ddp_driver.py SPEC.json`` (two ranks, DDP over gloo) or as plain
``python tests/ddp_driver.py SPEC.json`` (one process). ``SPEC.json`` holds ``{"config": {TrainConfig options},
"report_dir": folder}``. Each rank checks, inside the run, that the optimizer the Trainer actually steps (Accelerate's
wrapper around the LoRA+ optimizer) still has the LoRA+ groups: every ``lora_A`` parameter at lr_A, every
``lora_B`` parameter at λ·lr_A (checked by parameter name). It then writes ``report_dir/rank<R>.json``:

- ``world_size``, ``rank``;
- ``groups``: ``{group name: {"lr": base lr, "params": [parameter names]}}`` as seen when training begins;
- ``batches``: the training batches this rank fed to the model, each a list of examples, each the tuple of its
  non-padding token ids (data order under DDP vs one process);
- ``weights``: every trainable parameter after training, ``{name: flat list of floats}``;
- ``losses``: the per-step training losses logged by the Trainer (``logging_steps`` = 1 in the test).

Not a test module (no ``test_`` prefix): pytest does not collect it.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

from transformers import TrainerCallback

from loraplus.config import TrainConfig
from loraplus.train import run_train


class Recorder(TrainerCallback):
    """Checks the LoRA+ groups of the live optimizer and records batches, weights and losses."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.report: dict = {"batches": []}

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        names = {id(p): n for n, p in model.named_parameters()}
        groups = {
            g["name"]: {"lr": g.get("initial_lr", g["lr"]), "params": [names[id(p)] for p in g["params"]]}
            for g in optimizer.param_groups  # Accelerate's AcceleratedOptimizer forwards param_groups
        }
        lr_a, ratio = self.cfg.learning_rate, self.cfg.loraplus_lr_ratio
        assert math.isclose(groups["lora_A"]["lr"], lr_a), groups["lora_A"]["lr"]
        assert math.isclose(groups["lora_B"]["lr"], ratio * lr_a), groups["lora_B"]["lr"]
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        for name in trainable:
            expected = "lora_A" if ".lora_A." in name else "lora_B" if ".lora_B." in name else None
            if expected:
                assert name in groups[expected]["params"], (name, expected)
        assert sorted(n for g in groups.values() for n in g["params"]) == sorted(trainable)
        self.report["groups"] = groups
        model.register_forward_pre_hook(self._record_batch, with_kwargs=True)

    def _record_batch(self, module, args, kwargs):
        if module.training:
            ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
            self.report["batches"].append([row[m.bool()].tolist() for row, m in zip(ids, mask)])

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.report["weights"] = {
            n: p.detach().flatten().tolist() for n, p in model.named_parameters() if p.requires_grad
        }
        self.report["losses"] = [row["loss"] for row in state.log_history if "loss" in row]


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    cfg = TrainConfig(**spec["config"])
    recorder = Recorder(cfg)
    run_train(cfg, callbacks=[recorder])
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    report = {"rank": rank, "world_size": world, **recorder.report}
    Path(spec["report_dir"], f"rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
