"""Driver for tests/test_distributed.py: ``loraplus train`` on every rank, plus a report of what each rank saw.

    torchrun --nproc_per_node 2 tests/ddp_driver.py REPORT_DIR <loraplus train options>   # two ranks, DDP (gloo)
    python tests/ddp_driver.py REPORT_DIR <loraplus train options>                        # one process

It runs the real command (``loraplus.cli.main(["train", ...])``) with one extra Trainer callback slipped into
``run_train``. On every rank the callback checks, inside the run, that the optimizer the Trainer steps (Accelerate's
wrapper around the LoRA+ optimizer) still has the LoRA+ groups: every ``lora_A`` parameter at lr_A = learning_rate,
every ``lora_B`` parameter at loraplus_lr_ratio * lr_A, checked by parameter name. Each rank then writes
``REPORT_DIR/rank<R>.json``:

- ``rank``, ``world_size``, ``distributed_type`` (Accelerate's: ``MULTI_CPU`` is DDP over gloo), ``exit_code``;
- ``wrote_artifacts``: whether this rank wrote the run folder (``loraplus.train._write_artifacts`` was called);
- ``groups``: ``{group name: {"lr": base lr, "params": [parameter names]}}`` when training begins;
- ``batches``: the training batches this rank fed the model, each a list of examples, each the list of its
  non-padding token ids (the data order under DDP vs one process);
- ``weights``: every trainable parameter after training, ``{name: flat list of floats}``;
- ``losses``: the training losses the Trainer logged (every ``logging_steps`` steps).

Not a test module (no ``test_`` prefix): pytest does not collect it; the test imports ``main`` for its
one-process reference run.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from transformers import TrainerCallback


class Recorder(TrainerCallback):
    """Checks the LoRA+ groups of the live optimizer; records batches, weights and losses."""

    def __init__(self):
        self.report: dict = {"batches": []}

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        names = {id(p): n for n, p in model.named_parameters()}
        groups = {
            g["name"]: {"lr": g.get("initial_lr", g["lr"]), "params": [names[id(p)] for p in g["params"]]}
            for g in optimizer.param_groups  # AcceleratedOptimizer forwards param_groups to the LoRA+ optimizer
        }
        lr_a = args.learning_rate
        assert math.isclose(groups["lora_A"]["lr"], lr_a), (groups["lora_A"]["lr"], lr_a)
        assert math.isclose(groups["lora_B"]["lr"], args.loraplus_lr_ratio * lr_a), groups["lora_B"]["lr"]
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        for name in trainable:
            for factor in ("lora_A", "lora_B"):
                if f".{factor}." in name:
                    assert name in groups[factor]["params"], (name, factor)
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


def main(report_dir: str, train_argv: list[str]) -> int:
    """Run ``loraplus train <train_argv>`` with a ``Recorder``; write this rank's report; return the exit code."""
    from accelerate.state import PartialState

    import loraplus.train
    from loraplus.cli import main as cli_main

    recorder, wrote = Recorder(), []
    run_train, write_artifacts = loraplus.train.run_train, loraplus.train._write_artifacts

    def run_with_recorder(cfg, callbacks=()):
        return run_train(cfg, callbacks=[*callbacks, recorder])

    def write_and_note(*args, **kwargs):
        wrote.append(True)
        return write_artifacts(*args, **kwargs)

    loraplus.train.run_train, loraplus.train._write_artifacts = run_with_recorder, write_and_note
    try:
        code = cli_main(["train", *train_argv])
    finally:
        loraplus.train.run_train, loraplus.train._write_artifacts = run_train, write_artifacts
    state = PartialState()
    report = {
        "rank": state.process_index, "world_size": state.num_processes, "exit_code": code,
        "distributed_type": str(state.distributed_type).split(".")[-1], "wrote_artifacts": bool(wrote),
        **recorder.report,
    }  # fmt: skip
    Path(report_dir, f"rank{state.process_index}.json").write_text(json.dumps(report))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
