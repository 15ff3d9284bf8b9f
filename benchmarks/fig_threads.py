"""Figure 11: torch threads. ``loraplus train`` at its default thread count (``--threads auto``) against the best of
``--threads 1`` and ``--threads 2``, on the machine as it is and with one other busy process (a Python loop spinning
one core for the whole condition).

Each run is a child process ``python -m loraplus train`` (minilm-l6 on bbc-news, ``steps`` steps of 16 at
``max_length`` tokens, no checkpoints, one evaluation at the end on 16 examples) with ``OMP_NUM_THREADS`` and
``MKL_NUM_THREADS`` removed from its environment, so the default is the one a user gets. Time: the run's training
loop (``metrics.json`` ``train.runtime_s``, the Trainer's ``train_runtime``: wall seconds of its steps; start-up and
the final evaluation are out). Per condition the three variants run ``repeats`` times in shuffled orders; the ratio of
a repeat is the default's time / the faster of 1 and 2 threads in the same repeat; reported: the median with its
bootstrap 95 % interval, target <= 1.05. Wall clock only: two threads spend CPU seconds in parallel, so CPU time
would count a faster run as a slower one.
"""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys

from benchmarks.common import ROOT, Context, child_env, median_interval, row

NAME = "threads"
TITLE = "11 threads"
VARIANTS = ("auto", "1", "2")


def config(quick: bool) -> dict:
    if quick:
        return {"model": "tiny-bert-folder", "steps": 2, "max_length": 16, "repeats": 1, "max_train_samples": 64}
    return {"model": "minilm-l6", "steps": 12, "max_length": 64, "repeats": 3, "max_train_samples": 400}


def run(ctx: Context, cfg: dict) -> dict:
    from benchmarks.fig_train_runs import model_path

    model = model_path(ctx, cfg["model"])
    rows, data = [], {}
    for condition in ("quiet", "one busy process"):
        spinner = _spin() if condition != "quiet" else None
        try:
            times, chosen = _condition(ctx, cfg, model, condition)
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()
        ratios = [t["auto"] / min(t["1"], t["2"]) for t in times]
        median, ci = statistics.median(ratios), median_interval(ratios)
        best = {v: statistics.median(t[v] for t in times) for v in VARIANTS}
        rows.append(row(
            f"{condition}: default (auto) / best of 1 and 2 threads", wall=median, target=("<=", 1.05),
            spread={"wall": ci},
            value=f"median train loop: auto {best['auto']:.1f} s (chose {sorted(set(chosen))}), 1 thread "
                  f"{best['1']:.1f} s, 2 threads {best['2']:.1f} s",
            note=f"wall clock; 95 % interval {ci[0]:.3f}..{ci[1]:.3f}; {len(times)} repeats",
        ))  # fmt: skip
        data[condition] = {"train_loop_s": times, "auto_chose": chosen, "ratios": ratios}
    return {"rows": rows, "data": data}


def _condition(ctx: Context, cfg: dict, model: str, condition: str) -> tuple[list[dict], list[int]]:
    """``repeats`` x the three variants in shuffled orders: ``([{variant: train-loop seconds}, ...], [threads auto
    chose, ...])``."""
    rng, times, chosen = random.Random(0), [], []
    for rep in range(cfg["repeats"]):
        order = list(VARIANTS)
        rng.shuffle(order)
        times.append({})
        for variant in order:
            folder = ctx.workdir / "threads" / f"{condition.replace(' ', '-')}-{rep}-{variant}"
            metrics, hardware = _train(cfg, model, variant, folder)
            times[-1][variant] = metrics["train"]["runtime_s"]
            if variant == "auto":
                chosen.append(hardware["threads"])
            ctx.log(f"[threads] {condition}, repeat {rep + 1}: --threads {variant} -> {hardware['threads']} threads, "
                    f"{metrics['train']['runtime_s']:.1f} s")  # fmt: skip
    return times, chosen


def _train(cfg: dict, model: str, variant: str, folder) -> tuple[dict, dict]:
    """One ``python -m loraplus train`` child; its ``metrics.json`` and ``config.json``'s ``hardware``."""
    env = child_env(ROOT / "src", drop=("OMP_NUM_THREADS", "MKL_NUM_THREADS"))
    cmd = [sys.executable, "-m", "loraplus", "train", "--model", model, "--output-dir", str(folder), "--overwrite",
           "--max-steps", str(cfg["steps"]), "--max-length", str(cfg["max_length"]), "--batch-size", "16",
           "--max-train-samples", str(cfg["max_train_samples"]), "--max-eval-samples", "16",
           "--eval-steps", str(10 * cfg["steps"]), "--no-save-checkpoints"]  # fmt: skip
    if variant != "auto":
        cmd += ["--threads", variant]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    metrics = json.loads((folder / "metrics.json").read_text())
    return metrics, json.loads((folder / "config.json").read_text())["hardware"]


def _spin() -> subprocess.Popen:
    """A process that keeps one core busy until killed."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])
