"""Smoke tests of ``python -m benchmarks``: every figure runs in its quick mode and reports well-formed rows.

No timing assertions: the figures' numbers are only meaningful at full size (see benchmarks/results.json).
"""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import run as bench  # noqa: E402
from benchmarks.common import Context, interleaved, paired_ratio  # noqa: E402

ROW_KEYS = {"name", "ratio", "ratio_cpu", "target", "passed", "note"}
IN_PROCESS = ["optimizer_step", "group_build", "train_step", "monitor_overhead", "mmlu_speed",
              "tune_overhead", "sft_throughput"]  # tiny models built in code (tune_overhead: a tiny BERT folder,
              # bbc-news; sft_throughput: a tiny chat Llama folder, made-up instruction rows)
SUBPROCESS = ["time_to_accuracy", "throughput", "peak_memory", "whole_run", "threads"]  # worker processes, bbc-news


@pytest.fixture
def one_thread(monkeypatch):
    """One torch thread here and in workers (as the benchmark runs); restored afterwards."""
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def check_figure(result: dict) -> None:
    assert result["rows"], "a figure reports at least one row"
    for r in result["rows"]:
        assert ROW_KEYS <= set(r), r
        if r.get("skipped"):
            assert r["note"], "a skipped row says why"
            continue
        assert r["ratio"] is not None and r["ratio"] > 0, r
        assert r["passed"] in (True, False, None)
        assert (r["target"] is None) == (r["passed"] is None), r
    json.dumps(result)  # stored as JSON


@pytest.mark.parametrize("name", IN_PROCESS)
def test_quick_figure_in_process(name, tmp_path, one_thread):
    _, config, run = bench.figures()[name]
    check_figure(run(Context(quick=True, workdir=tmp_path), config(True)))


@pytest.mark.realdata
def test_quick_figures_with_worker_processes(tmp_path, one_thread):
    ctx = Context(quick=True, workdir=tmp_path)  # one context: the two training runs are shared by 4, 5 and 7
    for name in SUBPROCESS:
        _, config, run = bench.figures()[name]
        result = run(ctx, config(True))
        check_figure(result)
    runs = next(v for k, v in ctx.memo.items() if k[0] == "train_runs")
    for who in ("bare", "loraplus"):
        assert {"test_accuracy", "timer", "peak_rss_mib", "baseline_rss_mib", "train_samples"} <= set(runs[who])
        assert runs[who]["timer"]["train"]["wall_s"] > 0
    assert runs["loraplus"]["trajectory"], "the accuracy probe ran"


def test_main_writes_json_and_resume_skips(tmp_path, one_thread, capsys):
    out = tmp_path / "results.json"
    bench.main(["--quick", "--only", "group_build", "--out", str(out)])
    first = json.loads(out.read_text())
    assert {"cpu", "logical_cpus", "torch_threads", "versions", "load_avg_1m"} <= set(first["machine"])
    fig = first["figures"]["group_build"]
    assert {"title", "config", "config_hash", "rows", "elapsed_s", "finished_at"} <= set(fig)
    assert "group building" in capsys.readouterr().out  # the table
    bench.main(["--quick", "--only", "group_build", "--out", str(out), "--resume"])
    assert json.loads(out.read_text())["figures"]["group_build"]["finished_at"] == fig["finished_at"]
    assert not list(tmp_path.glob(".results.json.*"))  # atomic write leaves no temporary file


def test_interleaved_shuffles_order_and_pairs_repeats(monkeypatch):
    import benchmarks.common

    monkeypatch.setattr(benchmarks.common.gc, "collect", lambda: 0)  # a full collection per block is slow in a big test process
    calls = []
    variants = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    samples = interleaved(variants, repeats=12, warmup=0)
    blocks = ["".join(calls[i : i + 3]) for i in range(0, len(calls), 3)]
    assert all(sorted(b) == list("abc") for b in blocks)  # every variant once per repeat
    predecessors = {(x, y) for x, y in zip(calls, calls[1:]) if x != y}
    assert predecessors == {(x, y) for x in "abc" for y in "abc" if x != y}  # no fixed neighbour
    again = []
    interleaved({n: (lambda n=n: again.append(n)) for n in "abc"}, repeats=12, warmup=0)
    assert again == calls  # seeded: the same order every run
    assert all(len(s) == 12 for s in samples.values())
    fake = {"a": [{"wall_s": 2.0, "cpu_s": 1.0}] * 3, "b": [{"wall_s": 1.0, "cpu_s": 1.0}] * 3}
    assert paired_ratio(fake, "a", "b")["wall"] == 2.0 and paired_ratio(fake, "a", "b")["cpu"] == 1.0


def test_lockstep_alternates_steps_and_releases_the_peer(tmp_path):
    import os
    import threading

    from benchmarks.common import LockStep

    fifos = {who: tmp_path / f"{who}.fifo" for who in "ab"}
    for path in fifos.values():
        os.mkfifo(path)
    order = []

    def worker(who: str, steps: int):
        turn = LockStep(str(fifos[who]), str(fifos["b" if who == "a" else "a"]), first=who == "a", timeout=30)
        turn.begin()
        for i in range(steps):
            order.append(f"{who}{i}")
            turn.handover(last=i == steps - 1)
        turn.finish()

    threads = [threading.Thread(target=worker, args=("a", 3)), threading.Thread(target=worker, args=("b", 4))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert order == ["a0", "b0", "a1", "b1", "a2", "b2", "b3"]  # b runs on alone after a's last step


def test_lockstep_stops_waiting_for_a_silent_peer(tmp_path):
    import os

    from benchmarks.common import LockStep

    for name in ("own", "peer"):
        os.mkfifo(tmp_path / name)
    turn = LockStep(str(tmp_path / "own"), str(tmp_path / "peer"), first=False, timeout=0.2)
    turn.begin()  # nobody hands the turn over: gives up after the timeout
    assert turn.alone
    turn.handover(last=False)  # no more waiting


def test_throughput_lockstep_pairs_steps_after_the_first():
    from benchmarks.fig_train_runs import throughput_lockstep

    def run(times):
        return {"timer": {"intervals": [[t, t] for t in times]}}

    pair = {"bare": run([9.0, 2.0, 3.0, 2.0]), "loraplus": run([1.0, 1.0, 3.0, 4.0])}
    rows, data = throughput_lockstep([pair])
    assert data["steps"] == 3 and data["ratios"]["cpu"] == [2.0, 1.0, 0.5]
    assert rows[0]["ratio"] == 1.0 and rows[0]["target"] == ">= 1" and rows[0]["passed"] is True
    assert rows[1]["ratio"] == 7.0 / 8.0  # total bare / total loraplus over steps 2..4
    low, high = data["median_ci95"]["cpu"]
    assert 0.5 <= low <= 1.0 <= high <= 2.0  # a bootstrap median is one of the values' medians


def test_median_interval_narrows_with_more_values():
    from benchmarks.common import median_interval

    few = [0.9, 1.1, 0.95, 1.05, 1.0]
    wide, narrow = median_interval(few), median_interval(few * 20)
    assert wide[0] <= 1.0 <= wide[1] and narrow[0] <= 1.0 <= narrow[1]
    assert narrow[1] - narrow[0] < wide[1] - wide[0]
    assert median_interval([2.0] * 7) == [2.0, 2.0]


def test_profile_phases_from_collapsed_stacks():
    from benchmarks.profile_train import summarize

    loop = "train (transformers/trainer.py:1);_inner_training_loop (transformers/trainer.py:2)"
    raw = "\n".join([
        f"{loop};training_step (t.py:3);backward (torch/_tensor.py:4);forward (x.py:5) 7",
        f"{loop};training_step (t.py:3);forward (bert.py:6) 5",
        f"{loop};__next__ (torch/utils/data/dataloader.py:7) 2",
        f"{loop};_evaluate (transformers/trainer.py:11);forward (bert.py:6) 3",
        f"{loop};on_pre_optimizer_step (loraplus/safety.py:8) 1",
        "main (worker.py:9);load (models.py:10) 50",  # outside the training loop: not counted
    ])  # fmt: skip
    assert summarize(raw) == {"backward": 7, "forward": 5, "data: fetch + collate": 2, "loraplus NaN guard": 1,
                            "evaluation (not timed)": 3}


def test_worker_peak_rss_is_its_own_not_the_parents(tmp_path):
    """A worker spawned by a process holding ~600 MiB reports its own peak (ru_maxrss would report the parent's)."""
    import subprocess

    big = bytearray(600 * 2**20)
    big[:: 4096] = b"\x01" * len(range(0, len(big), 4096))  # touch every page
    code = ("import resource; from benchmarks.common import rss_mib; peak = rss_mib()[1]; "
            "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0]; "
            "print(peak, int(hwm) / 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    del big
    peak, own_hwm, inherited = map(float, out.split())
    assert inherited >= 600  # what ru_maxrss says: the parent's 600 MiB
    assert peak <= own_hwm <= peak + 1  # the child's own high-water mark (read just after, so >= by a few KiB)
    assert peak <= inherited - 500, out


@pytest.mark.parametrize("argv, message", [
    (["--threads", "-3"], "--threads must be >= 0 (0: torch's default), got -3"),
    (["--out", "/nonexistent-loraplus-dir/x.json"], "--out: folder '/nonexistent-loraplus-dir' does not exist"),
])  # fmt: skip
def test_bad_options_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.parse(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not Path("/nonexistent-loraplus-dir").exists()


def test_quick_run_refuses_a_file_of_full_figures(tmp_path, one_thread):  # one_thread: main sets OMP_NUM_THREADS
    out = tmp_path / "results.json"
    out.write_text(json.dumps({"figures": {"group_build": {"quick": False, "rows": []}}}))
    before = out.read_text()
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--quick", "--only", "group_build", "--out", str(out)])
    assert "holds full-size figures (group_build)" in str(exit_info.value.code)
    assert out.read_text() == before  # nothing of the full run is lost
