"""``--threads``: a number is used as given; ``auto`` takes the CPUs other processes leave idle."""

from __future__ import annotations

import json
import os

import pytest
import torch

from loraplus import threads
from loraplus.config import TrainConfig
from loraplus.runfolder import identity_of
from loraplus.train import run_train


@pytest.fixture
def torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("idle, processes, expected", [
    (2.0, 1, 2), (1.8, 1, 2), (1.74, 1, 1), (1.02, 1, 1), (0.97, 1, 1), (0.0, 1, 1), (3.9, 2, 2), (1.9, 2, 1),
])  # fmt: skip
def test_auto_threads_rounds_idle_cpus_down_unless_nearly_whole(idle, processes, expected):
    assert threads.auto_threads(idle, processes) == expected


def test_idle_meter_subtracts_this_process_from_the_machine(monkeypatch):
    """Over 2 s the machine was busy 3.0 CPU-s, 1.0 of them this process: others kept 1 CPU busy, so of 4 CPUs
    (affinity) 3 are idle."""
    clock = {"machine": 100.0, "own": 10.0, "wall": 50.0}
    monkeypatch.setattr(threads, "_machine_cpu_seconds", lambda: (clock["machine"], 4))
    monkeypatch.setattr(threads.time, "process_time", lambda: clock["own"])
    monkeypatch.setattr(threads.time, "perf_counter", lambda: clock["wall"])
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    meter = threads.IdleMeter()
    clock.update(machine=103.0, own=11.0, wall=52.0)
    assert meter.idle() == pytest.approx(3.0)
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert meter.idle() == pytest.approx(2.0)  # never more than this process may use


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads /proc/stat")
def test_idle_meter_reads_this_machine():
    idle = threads.IdleMeter().idle(min_window_s=0.05)
    assert 0.0 <= idle <= len(os.sched_getaffinity(0))


def test_apply_threads_number_env_and_auto(monkeypatch, torch_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.apply_threads(1, None, "cpu") == {"threads": 1, "threads_from": "option"}
    assert torch.get_num_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    torch.set_num_threads(3)
    assert threads.apply_threads("auto", None, "cpu") == {"threads": 3, "threads_from": "OMP_NUM_THREADS"}
    monkeypatch.delenv("OMP_NUM_THREADS")

    class Idle:
        def idle(self):
            return 0.9

    assert threads.apply_threads("auto", Idle(), "cpu") == {"threads": 1, "threads_from": "auto: 0.90 CPUs idle"}
    assert torch.get_num_threads() == 1


def test_threads_option_is_recorded_and_not_part_of_the_run_identity(tiny_bert_dir, tiny_csv, tmp_path, torch_threads):
    options = dict(model=str(tiny_bert_dir), dataset=str(tiny_csv), output_dir=str(tmp_path / "run"), max_steps=2,
                   batch_size=4, max_length=32, eval_steps=2, save_checkpoints=False)
    run_train(TrainConfig(**options, threads=1))
    hardware = json.loads((tmp_path / "run" / "config.json").read_text())["hardware"]
    assert (hardware["threads"], hardware["threads_from"]) == (1, "option")
    assert TrainConfig(**options, threads="2").threads == 2 and TrainConfig(**options, threads=" AUTO ").threads == "auto"
    one, two = (identity_of(TrainConfig(**options, threads=n).to_dict()) for n in (1, 2))
    assert one == two  # a finished run is the same run at any thread count (sweeps reuse it)
