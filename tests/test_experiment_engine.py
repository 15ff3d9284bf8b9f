"""The experiments' one engine: every run of sweep/compare is a trial of an Optuna study (enqueued), in
the experiment's storage; resume, retry of failed and killed runs, refusal of runs of other options, and
workers sharing one storage. The training itself is replaced by a fake here (the real runs are in test_sweep,
test_compare and test_tune)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest

from loraplus.config import TrainConfig
from loraplus.experiments import runner
from loraplus.experiments.runner import RunSpec, run_all


def specs_for(out: Path, lrs=(1e-3, 2e-3, 4e-3), study="sweep", max_steps=4) -> list[RunSpec]:
    return [RunSpec(TrainConfig(output_dir=str(out / "cells" / f"lr{lr:g}"), learning_rate=lr, max_steps=max_steps),
                    {"lr": lr}, study=study) for lr in lrs]  # fmt: skip


class FakeRuns:
    """Stands in for ``runner._run_one``: records each call; runs whose lr is in ``fail`` fail. Each run takes
    ``seconds``, so that two runs of ``jobs=2`` overlap."""

    def __init__(self, fail=(), seconds=0.2):
        self.calls, self.fail, self.seconds = [], set(fail), seconds

    def __call__(self, spec, threads, rerun):
        lr = spec.labels["lr"]
        self.calls.append((lr, rerun))
        time.sleep(self.seconds)
        if lr in self.fail:
            return {**spec.labels, "status": "failed: RuntimeError: out of memory (simulated)"}
        return {**spec.labels, "status": "done", "validation_accuracy": 1 - lr, "test_accuracy": 0.5, "steps": 4,
                "seconds": 0.1, "curve": [{"step": 4, "eval_accuracy": 1 - lr}], "record": {}}  # fmt: skip


def trials(out: Path, study="sweep") -> list:
    """The study's trials of runs (not a pruned one, which found no run left in the queue)."""
    study = optuna.load_study(study_name=study, storage=f"sqlite:///{out / 'study.db'}")
    return [t for t in study.get_trials() if t.state.name != "PRUNED"]


def test_runs_are_trials_of_a_grid_study_reused_on_a_rerun_and_failed_ones_retried(tmp_path, monkeypatch):
    fake = FakeRuns(fail={2e-3})
    monkeypatch.setattr(runner, "_run_one", fake)
    specs = specs_for(tmp_path)
    rows = run_all(specs, storage=None, folder=tmp_path, metric="accuracy", jobs=2, progress=False)
    assert [r["status"][:6] for r in rows] == ["done", "failed", "done"]
    assert rows[1]["status"] == "failed: RuntimeError: out of memory (simulated)"
    assert sorted(lr for lr, _ in fake.calls) == [1e-3, 2e-3, 4e-3]
    recorded = trials(tmp_path)
    assert sorted(t.user_attrs["run"] for t in recorded) == ["cells/lr0.001", "cells/lr0.002", "cells/lr0.004"]
    assert sorted(t.state.name for t in recorded) == ["COMPLETE", "COMPLETE", "FAIL"]
    assert all(t.params == {} for t in recorded)  # runs handed out by Optuna's trial queue, not sampled
    assert {t.value for t in recorded if t.state.name == "COMPLETE"} == {1 - 1e-3, 1 - 4e-3}

    fake.calls.clear()
    fake.fail.clear()
    rows = run_all(specs, storage=None, folder=tmp_path, metric="accuracy", jobs=2, progress=False)
    assert fake.calls == [(2e-3, False)]  # only the failed run again; the finished ones come from the study
    assert [r["status"] for r in rows] == ["done"] * 3 and rows[1]["validation_accuracy"] == pytest.approx(1 - 2e-3)
    assert len(trials(tmp_path)) == 4


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("shared", [False, True])
def test_a_run_left_running_by_a_killed_process_is_failed_and_run_again(tmp_path, monkeypatch, shared):
    """Without a storage given this process holds the folder's lock, so a running trial is a dead one; with a
    shared storage, one whose worker (host:pid) is a dead process of this machine."""
    fake = FakeRuns()
    monkeypatch.setattr(runner, "_run_one", fake)
    specs = specs_for(tmp_path, lrs=(1e-3,))
    storage = f"sqlite:///{tmp_path / 'study.db'}" if shared else None
    run_all(specs, storage=storage, folder=tmp_path, metric="accuracy", progress=False)
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{tmp_path / 'study.db'}")
    killed = study.ask()  # what a process killed in the middle of a run leaves: a RUNNING trial of a newer run
    killed.set_user_attr("run", "cells/lr0.001")
    killed.set_user_attr("worker", f"{socket.gethostname()}:{dead_pid()}")
    fake.calls.clear()
    rows = run_all(specs, storage=storage, folder=tmp_path, metric="accuracy", progress=False)
    assert fake.calls == [(1e-3, False)] and rows[0]["status"] == "done"
    assert [t.state.name for t in trials(tmp_path)] == ["COMPLETE", "FAIL", "COMPLETE"]


def test_a_finished_trial_of_other_options_is_refused_then_rerun_with_overwrite(tmp_path, monkeypatch):
    fake = FakeRuns()
    monkeypatch.setattr(runner, "_run_one", fake)
    run_all(specs_for(tmp_path), storage=None, folder=tmp_path, metric="accuracy", progress=False)
    longer = specs_for(tmp_path, max_steps=6)
    with pytest.raises(ValueError, match=r"3 run folder\(s\) hold runs of other options or data, e.g. '.*lr0\.001' "
                                         r"\(max_steps: 4 -> 6\); pass --overwrite"):  # fmt: skip
        run_all(longer, storage=None, folder=tmp_path, metric="accuracy", progress=False)
    fake.calls.clear()  # two at a time in a continued study: each run once (a grid sampler ran one twice here)
    rows = run_all(longer, storage=None, folder=tmp_path, metric="accuracy", progress=False, overwrite=True, jobs=2)
    assert sorted(fake.calls) == [(1e-3, True), (2e-3, True), (4e-3, True)]
    assert all(r["status"] == "done" for r in rows)
    fake.calls.clear()  # the newest trials are of the new options: nothing to do
    run_all(longer, storage=None, folder=tmp_path, metric="accuracy", progress=False)
    assert fake.calls == []


def test_a_lower_is_better_metric_is_minimised_and_a_diverged_run_gets_the_worst_value(tmp_path, monkeypatch):
    def run(spec, threads, rerun):
        loss = float("nan") if spec.labels["lr"] == 4e-3 else spec.labels["lr"] * 100
        return {**spec.labels, "status": "done", "validation_loss": loss, "curve": [], "record": {}}

    monkeypatch.setattr(runner, "_run_one", run)
    run_all(specs_for(tmp_path), storage=None, folder=tmp_path, metric="loss", progress=False)
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert study.direction.name == "MINIMIZE" and study.best_trial.user_attrs["run"] == "cells/lr0.001"
    assert sorted(t.value for t in study.trials) == [pytest.approx(0.1), pytest.approx(0.2), float("inf")]


WORKER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_experiment_engine import specs_for
    from loraplus.experiments import runner

    out, log = Path(sys.argv[1]), Path(sys.argv[2])

    def run(spec, threads, rerun):  # a run of 1.5 s, logged by the worker that ran it
        with log.open("a") as f:
            f.write(json.dumps(spec.labels["lr"]) + "\\n")
        time.sleep(1.5)
        return {{**spec.labels, "status": "done", "validation_accuracy": 0.5, "curve": [], "record": {{}}}}

    runner._run_one = run
    rows = runner.run_all(specs_for(out, lrs=[1e-3 * k for k in range(1, 7)]), storage=sys.argv[3], folder=out,
                          metric="accuracy", jobs=1, progress=False)
    print(json.dumps([r["status"] for r in rows]))
""")


def test_two_workers_on_one_shared_storage_split_the_grid_without_running_a_run_twice(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(Path(__file__).parent)))
    storage = f"journal:{tmp_path / 'shared.log'}"
    procs = []
    for name in ("machine-a", "machine-b"):  # two experiment folders, as on two machines, one storage
        procs.append(subprocess.Popen([sys.executable, str(script), str(tmp_path / name), str(tmp_path / f"{name}.log"),
                                       storage], stdout=subprocess.PIPE, text=True))  # fmt: skip
        time.sleep(0.3)
    outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    ran = [json.loads(line) for name in ("machine-a", "machine-b") for line in (tmp_path / f"{name}.log").read_text().split()]
    assert sorted(ran) == pytest.approx([1e-3 * k for k in range(1, 7)])  # every run once, by one worker
    assert all((tmp_path / f"{name}.log").read_text() for name in ("machine-a", "machine-b"))  # both worked
    last = json.loads(outputs[1].strip().splitlines()[-1])
    assert all(s == "done" or s.startswith("running in another worker") for s in last)


def test_a_storage_that_cannot_be_opened_is_refused_before_any_run(tmp_path, monkeypatch):
    fake = FakeRuns()
    monkeypatch.setattr(runner, "_run_one", fake)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ValueError, match=r"the Optuna storage 'sqlite:///.*a-file/runs\.db' cannot be opened"):
        run_all(specs_for(tmp_path), storage=f"sqlite:///{tmp_path}/a-file/runs.db", folder=tmp_path,
                metric="accuracy", progress=False)  # fmt: skip
    assert fake.calls == []


INTERRUPTED = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_experiment_engine import specs_for
    from loraplus.experiments import runner

    def run(spec, threads, rerun):
        print("started", spec.labels["lr"], flush=True)
        time.sleep(3)
        return {{**spec.labels, "status": "done", "validation_accuracy": 0.5, "curve": [], "record": {{}}}}

    runner._run_one = run
    Path(sys.argv[1]).mkdir()  # the experiment folder (made by the command)
    runner.run_all(specs_for(Path(sys.argv[1]), lrs=[1e-3 * k for k in range(1, 6)]), storage=None,
                   folder=Path(sys.argv[1]), metric="accuracy", jobs=1, progress=False)
""")


def test_ctrl_c_stops_an_experiment_after_the_run_it_interrupts(tmp_path):
    import signal

    script = tmp_path / "sweep.py"
    script.write_text(INTERRUPTED.format(tests=str(Path(__file__).parent)))
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "x")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    assert proc.stdout.readline().startswith("started")
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode != 0 and "KeyboardInterrupt" in output
    assert time.monotonic() - start < 8  # not the 4 remaining runs of 3 s each
    assert output.count("started") == 0  # no further run started (the first line was read above)


def test_a_run_another_live_worker_runs_is_left_to_it_and_is_no_failure(tmp_path, monkeypatch):
    fake = FakeRuns()
    monkeypatch.setattr(runner, "_run_one", fake)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    specs = specs_for(tmp_path, lrs=(1e-3, 2e-3))
    run_all(specs[:1], storage=storage, folder=tmp_path, metric="accuracy", progress=False)  # makes the study
    running = optuna.load_study(study_name="sweep", storage=storage).ask()
    running.set_user_attr("run", "cells/lr0.002")
    running.set_user_attr("worker", runner.WORKER)  # alive: this process
    fake.calls.clear()
    rows = run_all(specs, storage=storage, folder=tmp_path, metric="accuracy", progress=False)
    assert fake.calls == [] and rows[0]["status"] == "done"
    assert rows[1]["status"].startswith("running in another worker (trial 1 of study 'sweep'")


def test_a_refused_storage_leaves_no_experiment_folder(tmp_path):
    from loraplus.experiments.sweep import SweepConfig, run_sweep

    for url, message in ((f"journal:", r"a journal storage needs a file path, e.g. journal:/shared/runs.log, got 'journal:'"),
                         ("foo://x", r"the Optuna storage 'foo://x' cannot be opened \(NoSuchModuleError")):  # fmt: skip
        cfg = SweepConfig(output_dir=str(tmp_path / "sweep"), max_steps=2, storage=url, lr_a_points=1, lr_a_min=1e-3,
                          lr_a_max=1e-3, lr_b_points=1, lr_b_min=1e-3, lr_b_max=1e-3)  # fmt: skip
        with pytest.raises(ValueError, match=message):
            run_sweep(cfg, progress=False)
        assert not (tmp_path / "sweep").exists()
