"""One measurement in a fresh process (its own peak RSS): ``python -m benchmarks.worker TASK ARGS_JSON OUT_JSON``.

Tasks: ``train_run`` (figures 4, 5, 7: a loraplus or bare fine-tuning run; for figure 5 two of them take turns, one
optimizer step each) and ``step_memory`` (figure 7: one training configuration of figure 3, a warm-up step and
``steps`` more).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def train_run(args: dict) -> dict:
    import datasets  # noqa: F401  - both sides import the same libraries before the clock starts
    import peft  # noqa: F401
    import sklearn.metrics  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from benchmarks import bare_trainer
    from benchmarks.common import LockStep, bbc_splits, clocks, rss_mib
    from benchmarks.fig_train_runs import accuracy_probe, bench_callback
    from loraplus.config import TrainConfig
    from loraplus.train import run_train

    baseline = rss_mib()[0]
    limits, workdir = dict(args["limits"]), Path(args["workdir"])
    lock = args.get("lockstep")  # {"own", "peer", "first"}: alternate optimizer steps with a peer worker
    turn = LockStep(lock["own"], lock["peer"], first=lock["first"]) if lock else None
    test = bbc_splits()["test"]  # also warms the file cache for both sides
    if limits.get("max_eval_samples"):
        test = test.select(range(min(limits["max_eval_samples"], len(test))))
    if args["kind"] == "loraplus":
        cfg = TrainConfig(model=args["model"], output_dir=str(workdir / "run"), overwrite=True, **limits)
        probe = accuracy_probe(args["model"], test, cfg.max_length) if args["probe_every"] else None
        t0 = clocks()
        timer = bench_callback(t0, probe, args["probe_every"], args.get("target"), turn=turn)
        metrics = run_train(cfg, callbacks=[timer])
        result = {"test_accuracy": metrics["test"]["accuracy"], "wall_time_s": metrics["wall_time_s"],
                  "train_samples": _train_size(workdir / "run")}  # fmt: skip
    else:
        t0 = clocks()
        timer = bench_callback(t0, turn=turn)
        result = bare_trainer.run(args["model"], str(workdir / "run"), callbacks=[timer], **limits)
    end = clocks()  # t0 -> the run's end (final evaluations and artifacts included)
    result["run_s"] = {"wall_s": end[0] - t0[0], "cpu_s": end[1] - t0[1]}
    return {**result, "timer": timer.report(), "trajectory": timer.trajectory, "crossed": timer.crossed,
            "baseline_rss_mib": baseline, "peak_rss_mib": rss_mib()[1]}  # fmt: skip


def _train_size(run_dir: Path) -> int:
    """Training examples of a finished loraplus run (from its config.json)."""
    return int(json.loads((run_dir / "config.json").read_text())["data"]["sizes"]["train"])


def step_memory(args: dict) -> dict:
    import peft  # noqa: F401  - every library the configurations use, imported before the baseline
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import loraplus.tasks.causal_lm  # noqa: F401
    import loraplus.models  # noqa: F401
    from benchmarks.common import rss_mib
    from benchmarks.fig_train_step import setup, train_step

    baseline = rss_mib()[0]
    pairs, batch = setup(args["kind"], [args["variant"]])
    model, opt = pairs[args["variant"]]
    loaded = rss_mib()[0]
    for _ in range(1 + args["steps"]):
        train_step(model, opt, batch)
    return {"baseline_rss_mib": baseline, "loaded_rss_mib": loaded, "peak_rss_mib": rss_mib()[1]}


def main() -> None:
    task, args, out = sys.argv[1], json.loads(sys.argv[2]), Path(sys.argv[3])
    result = {"train_run": train_run, "step_memory": step_memory}[task](args)
    from loraplus.io import atomic_write_json

    atomic_write_json(out, result)


if __name__ == "__main__":
    main()
