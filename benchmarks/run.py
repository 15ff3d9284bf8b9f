"""Run the benchmark figures, print the table and write ``benchmarks/results.json`` (atomic write).

    python -m benchmarks                    # every figure, full sizes (tens of minutes on 2 shared cores)
    python -m benchmarks --quick            # seconds-long smoke sizes, written to benchmarks/results-quick.json
    python -m benchmarks --only optimizer_step --only group_build
    python -m benchmarks --resume           # skip figures whose results on disk have an identical configuration

Threads: one torch thread per process by default. On a shared machine torch's intra-op threads wait for each other at
every operator, so with 2 threads under a load of ~8 a minilm-l6 step took 3.3x longer than with 1 and small operators
(an optimizer step over 26 tensors) ~80x longer: multi-thread timings there measure the scheduler, not the code.
``--threads 0`` keeps torch's default (one per core) for an idle machine.

A figure's configuration (its sizes, quick or not, the library versions, the machine, and a hash of the loraplus and
benchmark sources) is hashed; ``--resume`` reuses a stored figure only when that hash matches.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HERE = Path(__file__).resolve().parent


def figures() -> dict:
    """``{name: (title, config(quick) -> dict, run(ctx, cfg) -> dict)}`` in the order of the figures."""
    from benchmarks import (fig_groups, fig_memory, fig_mmlu, fig_monitor, fig_optimizer, fig_sft, fig_threads,
                            fig_train_runs, fig_train_step, fig_tune)

    tr = fig_train_runs
    return {
        fig_optimizer.NAME: (fig_optimizer.TITLE, fig_optimizer.config, fig_optimizer.run),
        fig_groups.NAME: (fig_groups.TITLE, fig_groups.config, fig_groups.run),
        fig_train_step.NAME: (fig_train_step.TITLE, fig_train_step.config, fig_train_step.run),
        tr.NAME_TTA: (tr.TITLE_TTA, tr.config, tr.run_tta),
        tr.NAME_TPUT: (tr.TITLE_TPUT, tr.config, tr.run_throughput),
        fig_monitor.NAME: (fig_monitor.TITLE, fig_monitor.config, fig_monitor.run),
        fig_memory.NAME: (fig_memory.TITLE, fig_memory.config, fig_memory.run),
        fig_mmlu.NAME: (fig_mmlu.TITLE, fig_mmlu.config, fig_mmlu.run),
        fig_tune.NAME: (fig_tune.TITLE, fig_tune.config, fig_tune.run),
        fig_sft.NAME: (fig_sft.TITLE, fig_sft.config, fig_sft.run),
        fig_threads.NAME: (fig_threads.TITLE, fig_threads.config, fig_threads.run),
        tr.NAME_WHOLE: (tr.TITLE_WHOLE, tr.config, tr.run_whole),
    }


def machine() -> dict:
    """CPU model, cores, torch threads, library versions, load average, git commit."""
    import torch
    from importlib.metadata import PackageNotFoundError, version

    cpu = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")  # fmt: skip
    versions = {}
    for name in ("torch", "transformers", "peft", "accelerate", "datasets", "loraplus"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "cpu": cpu, "logical_cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(), "python": platform.python_version(), "versions": versions,
        "load_avg_1m": os.getloadavg()[0], "git": _git(),
    }  # fmt: skip


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _git() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True).stdout
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=HERE, capture_output=True, text=True).stdout
    except OSError:
        return "unknown"
    return head.strip() + ("+dirty-src" if dirty.strip() else "")


def source_hash() -> str:
    """sha256 of the loraplus package sources and the benchmark sources (a code change invalidates --resume)."""
    import loraplus

    h = hashlib.sha256()
    for folder in (Path(loraplus.__file__).parent, HERE):
        for path in sorted(folder.rglob("*.py")):
            h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()[:16]


def config_hash(cfg: dict, quick: bool, mach: dict, src: str) -> str:
    key = {"config": cfg, "quick": quick, "src": src,
           "machine": {k: mach[k] for k in ("cpu", "usable_cpus", "torch_threads", "versions")}}  # fmt: skip
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def status(r: dict) -> str:
    if r.get("skipped"):
        return "skip"
    if r.get("error"):
        return "ERROR"
    return {True: "PASS", False: "FAIL", None: "report"}[r["passed"]]


def table(results: dict, names: list[str]) -> str:
    m = results["machine"]
    v = m["versions"]
    lines = [f"machine: {m['cpu']}, {m['usable_cpus']}/{m['logical_cpus']} CPUs usable, torch {v['torch']} "
             f"({m['torch_threads']} threads), transformers {v['transformers']}, peft {v['peft']}, "
             f"load avg {m['load_avg_1m']:.1f}, git {m['git']}"]  # fmt: skip
    lines.append(f"ratio = {results.get('clock', 'cpu')}-time ratio (status from it); cpu = this process's CPU seconds, "
                 "wall = elapsed; each a median of paired ratios over interleaved repeats (so it can differ from the "
                 "ratio of the medians in the detail)")  # fmt: skip
    if any(results["figures"].get(n, {}).get("quick") for n in names):
        lines.append("QUICK MODE: tiny models and smoke sizes check that every figure runs; their ratios and PASS/FAIL "
                     "say nothing about performance")  # fmt: skip
    head = f"{'figure':<20} {'measurement':<60} {'ratio':>7} {'cpu':>7} {'wall':>7} {'target':>8} {'status':>6}  detail"
    lines += [head, "-" * len(head)]
    for name in names:
        fig = results["figures"].get(name)
        if fig is None:
            continue
        for r in fig["rows"]:
            ratio, cpu, wall = (_num(r.get(k)) for k in ("ratio", "ratio_cpu", "ratio_wall"))
            detail = "; ".join(x for x in (r.get("value", ""), r.get("note", "")) if x)
            lines.append(f"{fig['title']:<20} {r['name'][:60]:<60} {ratio:>7} {cpu:>7} {wall:>7} {r['target'] or '-':>8} "
                         f"{status(r):>6}  {detail}")  # fmt: skip
    return "\n".join(lines)


def _num(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def parse(argv=None) -> argparse.Namespace:
    names = list(figures())
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke sizes (results-quick.json)")
    parser.add_argument("--only", action="append", choices=names, metavar="NAME", help=f"run only NAME: {', '.join(names)}")
    parser.add_argument("--resume", action="store_true", help="reuse stored figures whose configuration is identical")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default benchmarks/results.json)")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="the ratio that sets pass/fail (default cpu: single-threaded CPU time ignores waiting for a "
                             "core on a shared machine; wall on an idle one)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (worker logs, run folders)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads in every process (default 1; 0: torch's default, one per core)")
    options = parser.parse_args(argv)
    if options.threads < 0:
        parser.error(f"--threads must be >= 0 (0: torch's default), got {options.threads}")
    if options.out is not None and not options.out.parent.is_dir():
        parser.error(f"--out: folder {str(options.out.parent)!r} does not exist")
    return options


def stored_results(out: Path, quick: bool) -> dict:
    """The results already in ``out`` (figures not rerun are kept), or ``{}``.

    Raises:
        ValueError: ``out`` holds figures of the other size (quick smoke vs full): one file describes one kind.
    """
    try:
        results = json.loads(out.read_text())
    except (OSError, ValueError):
        return {}
    other = sorted(n for n, fig in results.get("figures", {}).items() if bool(fig.get("quick")) != quick)
    if other:
        kind = "full-size" if quick else "--quick"
        raise ValueError(f"{out} holds {kind} figures ({', '.join(other)}); write this run elsewhere with --out")
    return results


def main(argv=None) -> dict:
    options = parse(argv)
    if options.threads:  # before torch starts, here and in the worker processes
        os.environ["OMP_NUM_THREADS"] = str(options.threads)
    import torch

    if options.threads:
        torch.set_num_threads(options.threads)
    from benchmarks.common import Context, decide, row
    from loraplus.io import atomic_write_json

    out = options.out or HERE / ("results-quick.json" if options.quick else "results.json")
    names = options.only or list(figures())
    try:
        results = stored_results(out, options.quick)
    except ValueError as err:
        sys.exit(f"python -m benchmarks: error: {err}")
    results.setdefault("figures", {})
    results["machine"], results["clock"], src = machine(), options.clock, source_hash()
    ctx = Context(quick=options.quick)
    for name in names:
        title, config, run = figures()[name]
        cfg = config(options.quick)
        key = config_hash(cfg, options.quick, results["machine"], src)
        stored = results["figures"].get(name)
        if options.resume and stored and stored.get("config_hash") == key and not stored.get("error"):
            ctx.log(f"[{name}] identical configuration on disk: skipped (--resume)")
            continue
        ctx.log(f"[{name}] running ({'quick' if options.quick else 'full'})")
        start, load = time.perf_counter(), os.getloadavg()[0]
        try:
            fig = run(ctx, cfg)
        except Exception as err:  # one figure failing must not lose the others
            traceback.print_exc()
            failed = {**row("figure failed", note=f"{type(err).__name__}: {err}"[:300]), "error": True}
            fig = {"rows": [failed], "error": True}
        fig.update(title=title, config=cfg, config_hash=key, quick=options.quick, elapsed_s=time.perf_counter() - start,
                   load_avg_1m=[load, os.getloadavg()[0]], finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
                   git=results["machine"]["git"])  # fmt: skip
        for r in fig["rows"]:
            decide(r, options.clock)
        results["figures"][name] = fig
        atomic_write_json(out, results)
        ctx.log(table(results, [name]))
    for fig in results["figures"].values():  # stored figures too (--resume): one clock for the whole table
        for r in fig["rows"]:
            decide(r, options.clock)
    atomic_write_json(out, results)
    print(table(results, names))
    print(f"wrote {out}")
    if options.keep or any(results["figures"][n].get("error") for n in names if n in results["figures"]):
        print(f"scratch folder (worker logs): {ctx.workdir}")
    else:
        shutil.rmtree(ctx.workdir, ignore_errors=True)
    return results


if __name__ == "__main__":
    main()
