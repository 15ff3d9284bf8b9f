"""Run many short trainings for the experiments: one subprocess per run, a few at a time, resumable.

Every run goes through the run API's one function, ``loraplus.train.run_train``: the run's ``TrainConfig`` is
written to ``<run>/run.yaml`` (which ``loraplus train --config`` also accepts) and a child process
(``python -m loraplus.experiments.runner RUN_YAML ERROR_JSON``) rebuilds the same config and calls
``run_train``. A child that fails writes its exception's type and message to ``ERROR_JSON``; the row's status
then carries that message, not only an exit code. Processes of their own keep runs isolated (a crash or a
memory leak ends one run) and let ``jobs`` of them run in parallel.

The runs of an experiment are trials of Optuna studies (``run_all``: one study per ``RunSpec.study``, e.g. one
per method of a comparison), the runs still to do placed in Optuna's trial queue and recorded in the
experiment's storage (``study.db``, or a shared storage URL so that workers on several machines split one
experiment): the runner, the records and the resume mechanism of ``sweep``, ``compare`` and ``tune`` are one.
Each run is also a run folder that records what it is (``runfolder``). A run whose study holds a finished trial
of its options and data, or whose folder holds a finished run of them (``metrics.json``), is done and never run
again, so a killed sweep or comparison resumes where it stopped and no finished run is lost; a run folder or
trial holding another run (other options, steps, dataset or data file) is refused before anything runs, naming
what differs, unless the experiment's ``overwrite`` is set (those runs are then run again). Runs that failed
or were cut short are started over. With ``jobs`` runs at once each gets ``cpu_count // jobs`` threads, so the
machine's cores stay busy without oversubscription.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import socket
import subprocess
import sys
import threading
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
from .studies import open_storage, open_study, storage_url

__all__ = ["RunFailed", "RunSpec", "experiment_folder", "read_run_config", "run_all", "run_config", "run_isolated", "stale_runs",
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
    """One run: a validated ``TrainConfig`` (its ``output_dir`` is the run folder), a row of labels, and the
    Optuna study the run is a trial of."""

    config: TrainConfig
    labels: dict
    study: str = "runs"


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
    resolved = json.loads((out / "config.json").read_text())
    row["record"] = {k: resolved[k] for k in ("config", "versions", "parameter_groups") if k in resolved}
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


def run_all(specs: list[RunSpec], *, storage: str | None, folder: str | Path, metric: str, jobs: int = 2,
            progress: bool = True, overwrite: bool = False) -> list[dict]:
    """Run every spec as a trial of its Optuna study (``spec.study``; the runs still to do are enqueued as its
    trials), ``jobs`` at a time, and return one row per spec, in order.

    ``storage``: an Optuna storage URL, or ``None`` for ``folder/study.db`` (this process, holding ``folder``'s
    lock, is then the only worker: a trial left running by a killed process is marked failed and run again).
    With a storage given, other workers may share the studies: a run another worker is running is left to it
    (its row says so) and Optuna's trial queue hands each waiting run to one worker.

    A run whose study holds a finished trial of the spec's own options and data is reused, as is a finished run
    folder; failed and interrupted runs are run again. A run folder or finished trial of other options or data
    is refused (before any run starts), or with ``overwrite`` run again. A row holds the spec's labels,
    ``status`` ("done", "failed: ..." or "running in another worker ..."), and for done runs ``validation_*``
    and ``test_*`` metrics, ``train_loss``, ``steps``, ``seconds``, the evaluation ``curve`` and the run's
    ``record`` (its resolved config, package versions and parameter groups).

    Raises:
        ValueError: ``jobs`` < 1, two specs share a run folder, a folder or trial holds another run (without
            ``overwrite``; the message names the folder and the differing options), or the storage cannot be
            opened.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    folders = [str(Path(spec.config.output_dir)) for spec in specs]
    if len(set(folders)) != len(folders):
        raise ValueError("two runs share one output folder")
    runs = _Runs(specs, storage_url(folder, storage), shared=storage is not None, metric=metric)
    stale = {**runs.stale_trials(), **stale_runs(specs)}
    if stale and not overwrite:
        where, changed = next(iter(stale.items()))
        raise ValueError(f"{len(stale)} run folder(s) hold runs of other options or data, e.g. {where!r} "
                         f"({'; '.join(changed)}); pass --overwrite to run them again, or choose another "
                         "--output-dir")  # fmt: skip
    runs.run(stale, jobs=jobs, progress=progress)
    return runs.rows()


class _Runs:
    """The specs of one ``run_all`` as trials of their Optuna studies (one per ``RunSpec.study``)."""

    def __init__(self, specs: list[RunSpec], url: str, *, shared: bool, metric: str):
        self.specs, self.url, self.shared, self.metric = specs, url, shared, metric
        self.storage = open_storage(url, heartbeat=False)  # ask-and-tell: this module knows its own workers
        self.identities = [identity_of(spec.config.to_dict()) for spec in specs]
        self.lower = metric in ("loss", "perplexity")
        self.studies = {spec.study: None for spec in specs}
        for name in self.studies:  # no sampler of use: every run comes from the trial queue
            self.studies[name] = open_study(self.storage, url, name, sampler=None,
                                            direction="minimize" if self.lower else "maximize")  # fmt: skip
        self.index = {(spec.study, _run_name(spec)): i for i, spec in enumerate(specs)}
        self._read_trials()

    def _read_trials(self) -> None:
        """``self.latest[i]``: the newest trial of spec ``i`` (``None`` if its study has none)."""
        self.latest = [None] * len(self.specs)
        for name, study in self.studies.items():
            for trial in study.get_trials(deepcopy=False, states=_states(*KEPT)):  # not the runs skipped as another's
                i = self.index.get((name, trial.user_attrs.get("run")))
                if i is not None and (self.latest[i] is None or trial.number > self.latest[i].number):
                    self.latest[i] = trial

    def _finished(self, i: int) -> bool:
        trial = self.latest[i]
        return trial is not None and trial.state.name == "COMPLETE" and "row" in trial.user_attrs

    def stale_trials(self) -> dict[str, list[str]]:
        """``{run folder: what differs}`` for every spec whose newest finished trial ran other options or data."""
        stale = {}
        for i, spec in enumerate(self.specs):
            if self._finished(i):
                changed = differences(self.latest[i].user_attrs.get("identity", {}), self.identities[i])
                if changed:
                    stale[str(Path(spec.config.output_dir))] = changed
        return stale

    def _todo(self, stale: dict) -> list[int]:
        """Specs to run: not finished with their own options, and not running in another worker."""
        todo = []
        for i, spec in enumerate(self.specs):
            trial, folder = self.latest[i], str(Path(spec.config.output_dir))
            if trial is not None and trial.state.name == "RUNNING":
                if self.shared and _alive_or_elsewhere(trial.user_attrs.get("worker")):
                    continue  # another worker's, running (or on another machine: it may be)
                self.studies[spec.study].tell(trial.number, state=_states("FAIL")[0])  # killed: its run starts over
            if not self._finished(i) or folder in stale:
                todo.append(i)
        return todo

    def run(self, stale: dict, *, jobs: int, progress: bool) -> None:
        """Each study's runs still to do as trials in Optuna's queue (``enqueue_trial``), taken one at a time
        with Optuna's ask-and-tell interface by ``jobs`` threads per study (the storage hands each waiting trial to
        one process; a lock here to one thread, which SQLite alone does not ensure), ``jobs`` child processes at a
        time in all. Ctrl-C stops every study after the runs it interrupts (their trials fail; a rerun runs them
        again)."""
        from tqdm.auto import tqdm

        todo = self._todo(stale)
        bar = tqdm(total=len(todo), desc=f"runs ({len(self.specs) - len(todo)} already done)", disable=not progress)
        slots, threads = threading.Semaphore(jobs), max(1, (os.cpu_count() or 1) // jobs)
        work = {name: [i for i in todo if self.specs[i].study == name] for name in self.studies}
        self.stopping, asking = threading.Event(), threading.Lock()

        def worker(name: str) -> None:
            study = self.studies[name]
            objective = self._objective(name, {_run_name(self.specs[i]) for i in work[name]}, stale, slots, threads, bar)
            while not self.stopping.is_set():
                with asking:
                    if not study.get_trials(deepcopy=False, states=_states("WAITING")):
                        return  # every queued run was handed out
                    trial = study.ask()
                _tell(study, trial, objective)

        pool = ThreadPoolExecutor(max_workers=jobs * max(1, len(work)))
        try:
            futures = []
            for name, ids in work.items():
                for i in ids:  # the run and its options travel with the queued trial
                    self.studies[name].enqueue_trial({}, user_attrs={"run": _run_name(self.specs[i]),
                                                                     "identity": self.identities[i]})  # fmt: skip
                futures += [pool.submit(worker, name) for _ in range(min(jobs, len(ids)))]
            for future in futures:
                future.result()
        except KeyboardInterrupt:  # the children got the signal too; start no further run
            self.stopping.set()
            raise
        finally:
            pool.shutdown(wait=True)
            bar.close()
        self._read_trials()

    def _objective(self, study: str, todo: set[str], stale: dict, slots, threads: int, bar):
        def objective(trial) -> float:
            import optuna

            name = trial.user_attrs.get("run")
            if name is None or self.stopping.is_set():  # another worker took the last queued run, or Ctrl-C
                raise optuna.TrialPruned("no queued run left")
            i = self.index.get((study, name))
            if i is None or name not in todo or self._taken(i, trial.number):
                # queued by another worker or an interrupted run of this experiment, for a run done or running
                raise optuna.TrialPruned(f"{name} is done, or run by another trial")
            spec = self.specs[i]
            trial.set_user_attr("identity", self.identities[i])
            trial.set_user_attr("worker", WORKER)
            try:
                with slots:
                    row = _run_one(spec, threads, str(Path(spec.config.output_dir)) in stale)
            except Exception as err:  # in this process (the child's errors are in the row already)
                row = {**spec.labels, "status": f"failed: {type(err).__name__}: {' '.join(str(err).split())}"}
            finally:
                bar.update(1)
            trial.set_user_attr("row", row)
            if row["status"] != "done":
                raise RunFailed(row["status"])
            value = row.get(f"validation_{self.metric}")
            if not isinstance(value, (int, float)) or not math.isfinite(value):  # diverged: the worst value
                return math.inf if self.lower else -math.inf
            return float(value)

        return objective

    def _taken(self, i: int, number: int) -> bool:
        """Whether a trial newer than the one spec ``i``'s run had when it was queued runs it (an older trial than
        ``number``: of two trials that took one run at once, the newer gives way) or finished it with these
        options: a run queued twice, by two workers of a shared storage or by an interrupted earlier attempt,
        runs once."""
        spec, seen = self.specs[i], -1 if self.latest[i] is None else self.latest[i].number
        for other in self.studies[spec.study].get_trials(deepcopy=False, states=_states(*KEPT)):
            if other.number <= seen or other.number == number or other.user_attrs.get("run") != _run_name(spec):
                continue
            if other.state.name == "RUNNING" and other.number < number:
                return True
            if other.state.name == "COMPLETE" and not differences(other.user_attrs.get("identity", {}), self.identities[i]):
                return True
        return False

    def rows(self) -> list[dict]:
        """One row per spec from its newest trial (see ``run_all``)."""
        rows = []
        for i, spec in enumerate(self.specs):
            trial = self.latest[i]
            if trial is not None and "row" in trial.user_attrs and trial.state.name in ("COMPLETE", "FAIL"):
                rows.append({**trial.user_attrs["row"], **spec.labels})
            elif trial is not None and trial.state.name == "RUNNING":
                rows.append({**spec.labels, "status": f"running in another worker (trial {trial.number} of study "
                                                      f"{spec.study!r} in {self.url})"})  # fmt: skip
            else:
                rows.append({**spec.labels, "status": "failed: the run did not finish (interrupted)"})
        return rows


WORKER = f"{socket.gethostname()}:{os.getpid()}"  # who runs a trial, so that a killed worker's trial is found


def _alive_or_elsewhere(worker: str | None) -> bool:
    """Whether the trial's worker (``host:pid``) is a live process of this machine, or on another machine."""
    host, _, pid = (worker or ":").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _tell(study, trial, objective) -> None:
    """Run ``objective(trial)`` and tell the study how it ended: its value, pruned, or failed."""
    import optuna
    from optuna.trial import TrialState

    try:
        value = objective(trial)
    except optuna.TrialPruned:
        study.tell(trial, state=TrialState.PRUNED)
    except BaseException as err:  # the run's error is in its row; on Ctrl-C the trial is not left running
        study.tell(trial, state=TrialState.FAIL)
        if not isinstance(err, Exception):
            raise
    else:
        study.tell(trial, value)


KEPT = ("RUNNING", "COMPLETE", "FAIL")  # trial states of runs; PRUNED: a queued run skipped as another trial's


def _states(*names: str) -> tuple:
    """Optuna's trial states by name, looked up when used so that importing the runner does not import Optuna."""
    from optuna.trial import TrialState

    return tuple(TrialState[name] for name in names)


class RunFailed(RuntimeError):
    """A run of an experiment ended with an error (its row's status); the trial is recorded as failed."""






def _run_name(spec: RunSpec) -> str:
    """The run's name in its study: its folder and the folder above (``cells/lrA…``, ``lora/lr…_seed0``)."""
    out = Path(spec.config.output_dir)
    return f"{out.parent.name}/{out.name}"


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
