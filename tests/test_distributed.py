"""Data parallelism through the HF Trainer/Accelerate (no distributed code of ours) and the DeepSpeed guard.

The two-rank test runs the real ``loraplus train`` under ``torchrun --nproc_per_node 2`` (DDP over gloo on CPU)
through ``tests/ddp_driver.py``, and the same command in one process with twice the batch, on the tiny setting
(2-layer BERT, hidden 32, no dropout anywhere; 96 training rows; 6 steps). Measured on this machine (2 CPU cores,
torch 2.13, transformers 5.24, accelerate 1.15): both runs see the same examples in the same order (rank 0 gets
the first half of each one-process batch, rank 1 the second half); after 6 steps the trainable weights differ by
at most 1.0e-7 (relative 6e-7) and the logged losses by 1.1e-7 relative. That is float32 rounding: DDP averages
two half-batch gradients, one process takes one mean over the whole batch, and each half is padded to its own
length. The tolerance, 1e-5, leaves a 100x margin and is 1000x below what a real fault gives: before
``trainer.model_accepts_loss_kwargs = False`` in ``build_trainer``, transformers 5 doubled the loss and the
gradients under DDP and the weights differed by 1.3e-2. The LoRA B factors (initialised at 0) reach 0.07 in these
6 steps, so the tolerance is far below the change it compares. Runtime: about 35 s on 2 shared cores (two ranks
~25 s, the one-process run ~8 s), up to 60 s when the cores are busy.

The DeepSpeed tests need no DeepSpeed install: DeepSpeed does not run on CPU (Accelerate enables it only for GPU
and other accelerator backends), so the guard is tested on config dicts and on a stand-in for the trainer state
at the attribute paths transformers 5 reads.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from loraplus.distributed import check_deepspeed_config, deepspeed_configs

TESTS = Path(__file__).parent
LR, RATIO, STEPS = 2e-3, 16.0, 6
TOLERANCE = 1e-5  # measured 1.0e-7 (weights, absolute) and 1.1e-7 (losses, relative); see the module docstring


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def bert_without_dropout(tiny_bert_dir, tmp_path):
    """``tiny_bert_dir`` with every dropout at 0: two ranks cannot draw the masks one process draws."""
    folder = tmp_path / "bert-no-dropout"
    folder.mkdir()
    for f in tiny_bert_dir.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def train_argv(model, data, out, batch_size: int) -> list[str]:
    options = dict(
        model=model, dataset=data, output_dir=out, batch_size=batch_size, learning_rate=LR, loraplus_lr_ratio=RATIO,
        max_steps=STEPS, eval_steps=STEPS, logging_steps=1, eval_batch_size=6, max_length=16, lora_dropout=0,
        target_modules="query,value", seed=0,
    )  # fmt: skip
    return [arg for k, v in options.items() for arg in ("--" + k.replace("_", "-"), str(v))]


def run_two_ranks(report_dir, argv) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2 tests/ddp_driver.py REPORT_DIR ...`` (as ``python -m torch.distributed.run``)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(TESTS / "ddp_driver.py"), str(report_dir), *argv]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def group_lrs(rows: list[str]) -> dict[str, float]:
    """``{group: lr}`` from the ``parameter_groups`` table in a run's config.json."""
    return {row.split()[0]: float(row.split()[3]) for row in rows[1:]}


def test_two_ranks_keep_loraplus_groups_and_match_one_process(bert_without_dropout, tiny_csv, tmp_path):
    from ddp_driver import main as driver_main

    ddp_dir, one_dir = tmp_path / "reports-ddp", tmp_path / "reports-one"
    ddp_dir.mkdir(), one_dir.mkdir()
    model, data = bert_without_dropout, tiny_csv
    proc = run_two_ranks(ddp_dir, train_argv(model, data, tmp_path / "run-ddp", batch_size=4))  # 2 ranks x 4
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert driver_main(str(one_dir), train_argv(model, data, tmp_path / "run-one", batch_size=8)) == 0  # 1 x 8

    ranks = [json.loads((ddp_dir / f"rank{r}.json").read_text()) for r in (0, 1)]
    one = json.loads((one_dir / "rank0.json").read_text())
    # Two real DDP ranks; only rank 0 wrote the run folder; the result was printed once (by rank 0).
    assert [(r["rank"], r["world_size"], r["distributed_type"]) for r in ranks] == [(0, 2, "MULTI_CPU"),
                                                                                     (1, 2, "MULTI_CPU")]
    assert [r["wrote_artifacts"] for r in ranks] == [True, False]
    assert proc.stdout.count("test accuracy") == 1, "every rank printed the result: print only where RANK is 0"
    # The LoRA+ groups survive the wrapping: checked inside each rank by the driver, and here by name and lr.
    assert ranks[0]["groups"] == ranks[1]["groups"] == one["groups"]
    assert one["groups"]["lora_B"]["lr"] == pytest.approx(RATIO * one["groups"]["lora_A"]["lr"])
    lrs = group_lrs(json.loads((tmp_path / "run-ddp" / "config.json").read_text())["parameter_groups"])
    assert lrs["lora_A"] == LR and lrs["lora_B"] == pytest.approx(RATIO * LR)
    # Data order: DDP step k = rank 0's batch + rank 1's batch = the one-process batch k, example for example.
    assert len(one["batches"]) == len(ranks[0]["batches"]) == STEPS
    for k in range(STEPS):
        assert ranks[0]["batches"][k] + ranks[1]["batches"][k] == one["batches"][k], f"step {k}"
    # DDP keeps the ranks identical; the two-rank run matches the one-process run within float32 rounding.
    assert ranks[0]["weights"] == ranks[1]["weights"]
    diff = max(np.abs(np.subtract(ranks[0]["weights"][n], w)).max() for n, w in one["weights"].items())
    assert diff < TOLERANCE, f"max |w_ddp - w_one| = {diff:.3g}"
    moved = max(np.abs(w).max() for n, w in one["weights"].items() if ".lora_B." in n)
    assert moved > 1000 * TOLERANCE  # B starts at 0: the tolerance is far below what training changed
    np.testing.assert_allclose(ranks[0]["losses"], one["losses"], rtol=TOLERANCE)
    # Evaluation: 12 test rows = 2 ranks x eval batch 6, so no rank pads its shard with repeated rows (which the
    # Trainer's per-batch eval loss would count: 1.7e-4 apart with an eval batch of 16). Accuracy is exact either way.
    ddp, single = [json.loads((tmp_path / run / "metrics.json").read_text())["test"] for run in ("run-ddp", "run-one")]
    assert ddp["accuracy"] == single["accuracy"]
    assert ddp["loss"] == pytest.approx(single["loss"], rel=TOLERANCE)


# ---------------------------------------------------------------- DeepSpeed guard (no DeepSpeed install needed)

ZERO2 = {"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": "auto", "gradient_clipping": "auto"}
ADAMW_BLOCK = {"type": "AdamW", "params": {"lr": "auto", "weight_decay": "auto"}}


def fake_trainer(plugin_config=None, args_config=None):
    """The attributes transformers 5 keeps a DeepSpeed config at, and nothing else."""
    plugin = None
    if plugin_config is not None:
        plugin = SimpleNamespace(hf_ds_config=SimpleNamespace(config=plugin_config), deepspeed_config=plugin_config)
    args = SimpleNamespace(hf_deepspeed_config=SimpleNamespace(config=args_config) if args_config is not None else None)
    return SimpleNamespace(accelerator=SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin)), args=args)


def test_deepspeed_optimizer_block_is_refused():
    with pytest.raises(ValueError, match="sets an 'optimizer' block \\(type 'AdamW'\\), which would replace the LoRA"):
        check_deepspeed_config({**ZERO2, "optimizer": ADAMW_BLOCK})
    with pytest.raises(ValueError, match="'optimizer' block"):  # transformers tests the key, not its value
        check_deepspeed_config({**ZERO2, "optimizer": None})


@pytest.mark.parametrize("kind", ["WarmupLR", "WarmupDecayLR", "OneCycle"])
def test_deepspeed_scheduler_with_one_lr_for_all_groups_is_refused(kind):
    with pytest.raises(ValueError, match=f"'scheduler' block of type '{kind}'.*undoes lr_B"):
        check_deepspeed_config({**ZERO2, "scheduler": {"type": kind, "params": {"warmup_max_lr": "auto"}}})


def test_deepspeed_config_without_optimizer_passes():
    check_deepspeed_config(ZERO2)
    check_deepspeed_config({**ZERO2, "scheduler": {"type": "WarmupCosineLR", "params": {}}})


def test_deepspeed_configs_reads_where_transformers_keeps_them():
    with_optimizer = {**ZERO2, "optimizer": ADAMW_BLOCK}
    assert deepspeed_configs(fake_trainer()) == []
    assert deepspeed_configs(fake_trainer(plugin_config=with_optimizer)) == [with_optimizer]  # one dict, not two
    assert deepspeed_configs(fake_trainer(plugin_config=ZERO2, args_config=with_optimizer)) == [ZERO2, with_optimizer]


def test_loraplus_trainer_refuses_deepspeed_optimizer_block_on_construction(monkeypatch):
    import transformers

    from loraplus.hf import LoraPlusTrainer

    def stand_in_init(self, *args, **kwargs):  # what Trainer.__init__ leaves behind under DeepSpeed
        self.__dict__.update(vars(fake_trainer(plugin_config={**ZERO2, "optimizer": ADAMW_BLOCK})))

    monkeypatch.setattr(transformers.Trainer, "__init__", stand_in_init)
    with pytest.raises(ValueError, match="would replace the LoRA\\+ optimizer; remove it"):
        LoraPlusTrainer()


def test_transformers_skips_create_optimizer_when_deepspeed_has_an_optimizer_block(monkeypatch):
    """The guard's premise, pinned to the installed transformers: with an "optimizer" block the Trainer hands
    DeepSpeed a placeholder and never calls ``create_optimizer`` (where the LoRA+ groups are built)."""
    import accelerate.utils
    import accelerate.utils.deepspeed as accelerate_ds
    import torch
    from transformers.integrations.deepspeed import deepspeed_optim_sched

    for name in ("DummyOptim", "DummyScheduler"):  # exported by accelerate.utils only when deepspeed is installed
        monkeypatch.setattr(accelerate.utils, name, getattr(accelerate_ds, name), raising=False)
    called = []
    trainer = SimpleNamespace(create_optimizer=lambda: called.append("create_optimizer"))
    params = [torch.nn.Parameter(torch.zeros(2))]
    ds_config = SimpleNamespace(config={**ZERO2, "optimizer": ADAMW_BLOCK}, is_offload=lambda: False)
    optimizer, _ = deepspeed_optim_sched(trainer, ds_config, None, 10, params)
    assert isinstance(optimizer, accelerate_ds.DummyOptim) and called == []
    plain = SimpleNamespace(config=dict(ZERO2), is_offload=lambda: False)
    deepspeed_optim_sched(trainer, plain, None, 10, params)  # without the block, the Trainer's own optimizer
    assert called == ["create_optimizer"]
