"""Run many short ``loraplus train`` jobs: one subprocess per run, a few at a time, resumable.

Each run is a run folder; a run whose ``metrics.json`` exists is done and is never run again, so a killed
sweep or comparison resumes where it stopped and no finished run is lost. Runs that were cut short are started
over (``--overwrite``). With ``jobs`` runs at once each gets ``cpu_count // jobs`` threads, so the machine's
cores stay busy without oversubscription.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..config import TrainConfig
from ..io import atomic_write_text

__all__ = ["RunSpec", "run_all", "run_config"]


def run_config(options, **overrides) -> TrainConfig:
    """The ``TrainConfig`` part of a sweep/compare config (``options``), with ``overrides``; one run of many
    never overwrites or resumes and saves no checkpoints (a finished run is kept, an unfinished one restarts)."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    base = {k: v for k, v in options.to_dict().items() if k in fields}
    base.update(overwrite=False, resume=False, save_checkpoints=False, **overrides)
    return TrainConfig(**base)


@dataclass(frozen=True)
class RunSpec:
    """One run: a validated ``TrainConfig`` (its ``output_dir`` is the run folder) and a row of labels."""

    config: TrainConfig
    labels: dict


def _command(spec: RunSpec) -> list[str]:
    import yaml

    out = Path(spec.config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    options = {k: (list(v) if isinstance(v, tuple) else v) for k, v in spec.config.to_dict().items()}
    options["overwrite"] = True  # only unfinished runs reach here
    atomic_write_text(out / "run.yaml", yaml.safe_dump(options, sort_keys=False))
    return [sys.executable, "-m", "loraplus", "train", "--config", str(out / "run.yaml")]


def _run_one(spec: RunSpec, threads: int) -> dict:
    out = Path(spec.config.output_dir)
    if not (out / "metrics.json").exists():
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
        start = time.perf_counter()
        command = _command(spec)
        with open(out.parent / f"{out.name}.log", "w") as log:
            proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        if proc.returncode != 0:
            return {**spec.labels, "status": f"failed (exit {proc.returncode}, see {out.name}.log)",
                    "seconds": time.perf_counter() - start}  # fmt: skip
    return {**spec.labels, "status": "done", **_read_result(out)}


def _read_result(out: Path) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    history = json.loads((out / "log_history.json").read_text())
    row = {f"{split}_{k}": v for split in ("validation", "test") for k, v in metrics.get(split, {}).items()}
    row["train_loss"] = metrics["train"]["loss"]
    row["steps"] = metrics["train"]["steps"]
    row["seconds"] = metrics["wall_time_s"]
    row["curve"] = [
        {k: r[k] for k in ("step", "eval_accuracy", "eval_loss", "eval_macro_f1", "eval_perplexity", "loss") if k in r}
        for r in history
    ]
    return row


def run_all(specs: list[RunSpec], *, jobs: int = 2, progress: bool = True) -> list[dict]:
    """Run every spec (``jobs`` at a time) and return one row per spec, in order.

    A row holds the spec's labels, ``status`` ("done" or "failed ..."), and for done runs ``validation_*`` and
    ``test_*`` metrics, ``train_loss``, ``steps``, ``seconds`` and the evaluation ``curve``.

    Raises:
        ValueError: ``jobs`` < 1, or two specs share a run folder.
    """
    from tqdm.auto import tqdm

    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    folders = [spec.config.output_dir for spec in specs]
    if len(set(folders)) != len(folders):
        raise ValueError("two runs share one output folder")
    threads = max(1, (os.cpu_count() or 1) // jobs)
    done = sum((Path(f) / "metrics.json").exists() for f in folders)
    bar = tqdm(total=len(specs), initial=0, desc=f"runs ({done} already done)", disable=not progress)
    rows: list[dict] = [{}] * len(specs)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(_run_one, spec, threads): i for i, spec in enumerate(specs)}
        for future in futures:
            rows[futures[future]] = future.result()
            bar.update(1)
    bar.close()
    return rows
