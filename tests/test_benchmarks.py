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
IN_PROCESS = ["optimizer_step", "group_build", "train_step", "monitor_overhead"]  # tiny models built in code
SUBPROCESS = ["time_to_accuracy", "throughput", "peak_memory"]  # worker processes, bbc-news


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


def test_interleaved_rotates_order_and_pairs_repeats():
    calls = []
    variants = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    samples = interleaved(variants, repeats=3, warmup=0)
    assert calls == list("abcbcacab")
    assert all(len(s) == 3 for s in samples.values())
    fake = {"a": [{"wall_s": 2.0, "cpu_s": 1.0}] * 3, "b": [{"wall_s": 1.0, "cpu_s": 1.0}] * 3}
    assert paired_ratio(fake, "a", "b")["wall"] == 2.0 and paired_ratio(fake, "a", "b")["cpu"] == 1.0
