"""Run many short trainings for the experiments: one subprocess per run, a few at a time, resumable.

Every run goes through the run API's one function, ``loraplus.train.run_train``: the run's ``TrainConfig`` is
written to ``<run>/run.yaml`` (which ``loraplus train --config`` also accepts) and a child process
(``python -m loraplus.experiments.runner RUN_YAML ERROR_JSON``) rebuilds the same config and calls
``run_train``. A child that fails writes its exception's type and message to ``ERROR_JSON``; the row's status
then carries that message, not only an exit code. Processes of their own keep runs isolated (a crash or a
memory leak ends one run) and let ``jobs`` of them run in parallel.

Each run is a run folder that records what it is (``runfolder``). A finished run (``metrics.json``) whose
options and data are those of its spec is done and is never run again, so a killed sweep or comparison resumes
where it stopped and no finished run is lost; a run folder holding another run (other options, steps, dataset or
data file) is refused before anything runs, naming what differs, unless the experiment's ``overwrite`` is set
(those runs are then run again). Runs that were cut short are started over. With ``jobs`` runs at once each
gets ``cpu_count // jobs`` threads, so the machine's cores stay busy without oversubscription.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..config import TrainConfig
from ..configfile import read_config_file
from ..io import atomic_write_json, atomic_write_text
from ..runfolder import differences, folder_lock, identity_of, read_identity
from ..tasks import get_task
from ..train import run_train

__all__ = ["RunSpec", "experiment_folder", "read_run_config", "run_all", "run_config", "run_isolated", "stale_runs",
           "write_run_config"]


@contextlib.contextmanager
def experiment_folder(options, metric: str):
    """The locked folder of a sweep, comparison or tuning (``options.output_dir``), after checking that every run
    will report ``metric``.

    Raises:
        runfolder.FolderLocked: another process runs this experiment (names its pid).
        ValueError: the task's runs cannot report ``metric`` (``Task.check_metric``).
        PermissionError: the folder cannot be created or written.
    """
    with folder_lock(options.output_dir, "experiment folder") as out:
        get_task(options.task).check_metric(run_config(options), metric)
        yield out


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


def write_run_config(cfg: TrainConfig, path: Path, drop: tuple[str, ...] = (), **overrides) -> None:
    """``cfg`` (with ``overrides``, without the options in ``drop``) as a YAML file of options (tuples as lists)
    that ``read_run_config`` and ``loraplus train --config`` read back into the same ``TrainConfig``."""
    import yaml

    options = {k: (list(v) if isinstance(v, tuple) else v) for k, v in {**cfg.to_dict(), **overrides}.items()
               if k not in drop}  # fmt: skip
    atomic_write_text(path, yaml.safe_dump(options, sort_keys=False))


def read_run_config(path: Path) -> TrainConfig:
    """The ``TrainConfig`` of a file written by ``write_run_config``."""
    return TrainConfig(**read_config_file(path, TrainConfig))


def run_isolated(cfg: TrainConfig, log: Path, *, threads: int, overwrite: bool = False) -> str | None:
    """``run_train(cfg)`` in a child process with ``threads`` threads, output to ``log``; ``None`` on success,
    else the child's error as one line (``"ValueError: ..."``, or the exit code when it died without one).
    ``overwrite``: the child starts the run folder over (its ``overwrite`` option)."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_run_config(cfg, out / "run.yaml", **({"overwrite": True} if overwrite else {}))
    error_file = out.parent / f"{out.name}.error.json"
    error_file.unlink(missing_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    command = [sys.executable, "-m", "loraplus.experiments.runner", str(out / "run.yaml"), str(error_file)]
    with open(log, "w") as f:
        proc = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=env)
    if proc.returncode == 0:
        return None
    if error_file.is_file():
        error = json.loads(error_file.read_text())
        return f"{error['type']}: {error['message']}"
    return f"exit {proc.returncode} without an error message"


def stale_runs(specs: list[RunSpec]) -> dict[str, list[str]]:
    """``{run folder: what differs}`` for every spec whose folder holds a run of other options or data.

    Raises:
        ValueError: a run folder's record is malformed (names the file).
    """
    stale = {}
    for spec in specs:
        out = Path(spec.config.output_dir)
        recorded = read_identity(out) if out.is_dir() else None
        if recorded is not None:
            changed = differences(recorded, identity_of(spec.config.to_dict()))
            if changed:
                stale[str(out)] = changed
    return stale


def _run_one(spec: RunSpec, threads: int, rerun: bool) -> dict:
    out = Path(spec.config.output_dir)
    if rerun or not (out / "metrics.json").exists():
        start = time.perf_counter()
        # unfinished runs, and (with the experiment's overwrite) runs of other options: start them over
        error = run_isolated(spec.config, out.parent / f"{out.name}.log", threads=threads, overwrite=True)
        if error is not None:
            return {**spec.labels, "status": f"failed: {error} (see {out.name}.log)",
                    "seconds": time.perf_counter() - start}  # fmt: skip
    return {**spec.labels, "status": "done", **_read_result(out)}


def _read_result(out: Path) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    history = json.loads((out / "log_history.json").read_text())
    row = {f"{split}_{k}": v for split in ("validation", "test") for k, v in metrics.get(split, {}).items()}
    row["train_loss"] = metrics["train"]["loss"]
    row["steps"] = metrics["train"]["steps"]
    row["seconds"] = metrics["wall_time_s"]
    row["curve"] = evaluation_curve(history)
    return row


CURVE_KEYS = ("eval_accuracy", "eval_loss", "eval_macro_f1", "eval_perplexity", "loss")


def evaluation_curve(history: list[dict]) -> list[dict]:
    """The training loss and validation metrics of a run's ``log_history``, one entry per logged point: rows with
    none of ``CURVE_KEYS`` (test evaluations, the run summary) are left out, and a repeated point (the same step
    and metrics, e.g. an older run's final evaluation) is kept once."""
    curve, seen = [], set()
    for record in history:
        point = {k: record[k] for k in ("step", *CURVE_KEYS) if k in record}
        key = (point.get("step"), tuple(sorted(point)))
        if len(point) > 1 and key not in seen:
            seen.add(key)
            curve.append(point)
    return curve


def run_all(specs: list[RunSpec], *, jobs: int = 2, progress: bool = True, overwrite: bool = False) -> list[dict]:
    """Run every spec (``jobs`` at a time) and return one row per spec, in order.

    A run folder holding a run of other options or data is refused (before any run starts), or with
    ``overwrite`` run again; a finished run of the spec's own options is reused.

    A row holds the spec's labels, ``status`` ("done" or "failed ..."), and for done runs ``validation_*`` and
    ``test_*`` metrics, ``train_loss``, ``steps``, ``seconds`` and the evaluation ``curve``.

    Raises:
        ValueError: ``jobs`` < 1, two specs share a run folder, or a folder holds another run (without
            ``overwrite``; the message names the folder and the differing options).
    """
    from tqdm.auto import tqdm

    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    folders = [str(Path(spec.config.output_dir)) for spec in specs]
    if len(set(folders)) != len(folders):
        raise ValueError("two runs share one output folder")
    stale = stale_runs(specs)
    if stale and not overwrite:
        folder, changed = next(iter(stale.items()))
        raise ValueError(f"{len(stale)} run folder(s) hold runs of other options or data, e.g. {folder!r} "
                         f"({'; '.join(changed)}); pass --overwrite to run them again, or choose another "
                         "--output-dir")  # fmt: skip
    threads = max(1, (os.cpu_count() or 1) // jobs)
    done = sum((Path(f) / "metrics.json").exists() and f not in stale for f in folders)
    bar = tqdm(total=len(specs), initial=0, desc=f"runs ({done} already done)", disable=not progress)
    rows: list[dict] = [{}] * len(specs)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(_run_one, spec, threads, str(Path(spec.config.output_dir)) in stale): i
                   for i, spec in enumerate(specs)}  # fmt: skip
        for future in futures:
            rows[futures[future]] = future.result()
            bar.update(1)
    bar.close()
    return rows


def _child(config_file: str, error_file: str) -> int:
    """The child of ``run_isolated``: rebuild the config, ``run_train`` it, write any error to ``error_file``."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    try:
        run_train(read_run_config(Path(config_file)))
    except BaseException as err:  # every failure goes back to the parent as a message, then the traceback
        atomic_write_json(error_file, {"type": type(err).__name__, "message": " ".join(str(err).split())})
        raise
    return 0


if __name__ == "__main__":
    sys.exit(_child(*sys.argv[1:3]))
