"""Where a training step's time goes, for ``loraplus train`` and the bare script: py-spy samples one short run of each
and this sorts the samples of the training loop into phases (figure 5's profile).

    .venv/bin/pip install py-spy      # not a dependency of loraplus
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.profile_train [--steps 20] [--rate 50] [--out DIR]

Each run is figure 5's worker (minilm-l6, bbc-news, batch 16 x 128, its usual settings, ``max_steps = steps``),
sampled with ``py-spy record --format raw`` (collapsed stacks, idle samples dropped). A sample counts when its stack
holds the Trainer's ``_inner_training_loop``; its phase is the first rule of ``PHASES`` that matches any of its
frames (so a forward inside evaluation counts as evaluation). Prints each phase's share of the timed samples
(evaluation and checkpoints excluded, as from figure 5's step times; their share of the whole loop is listed below)
and writes the raw stacks and ``profile.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from benchmarks.common import ROOT

# (phase, substring of a frame "function (file:line)"); the first rule that matches any frame of a stack decides.
PHASES = [
    ("evaluation (not timed)", "evaluate ("),
    ("checkpoint (not timed)", "_save_checkpoint"),
    ("data: fetch + collate", "torch/utils/data/"),
    ("data: fetch + collate", "data_collator.py"),
    ("loraplus NaN guard", "loraplus/safety.py"),
    ("grad clipping", "clip_grad_norm"),
    ("optimizer + scheduler step", "torch/optim/"),
    ("backward", "backward ("),
    ("forward", "forward ("),
    ("callbacks + logging", "trainer_callback.py"),
    ("callbacks + logging", "_maybe_log_save_evaluate"),
]
LOOP = "_inner_training_loop"


def phase_of(stack: list[str]) -> str:
    for phase, needle in PHASES:
        if any(needle in frame for frame in stack):
            return phase
    return "other trainer code"


def summarize(raw: str) -> dict[str, int]:
    """``{phase: samples}`` over the training loop's samples of a py-spy raw (collapsed-stack) file."""
    counts: Counter = Counter()
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        if n.isdigit() and any(LOOP in f for f in frames):
            counts[phase_of(frames)] += int(n)
    return dict(counts)


def py_spy() -> str | None:
    """The py-spy executable beside this Python (a venv's bin/, where ``pip install py-spy`` puts it), else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.is_file() else shutil.which("py-spy")


def record(kind: str, steps: int, rate: int, out: Path, model: str) -> dict[str, int]:
    args = {"model": model, "limits": {"max_steps": steps, "max_eval_samples": 64}, "probe_every": 0, "kind": kind,
            "workdir": str(out / kind)}  # fmt: skip
    raw = out / f"{kind}.raw.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [py_spy() or "py-spy", "record", "--format", "raw", "--rate", str(rate), "--output", str(raw),
           "--", sys.executable, "-m", "benchmarks.worker", "train_run", json.dumps(args), str(out / f"{kind}.json")]  # fmt: skip
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return summarize(raw.read_text())


NOT_TIMED = ("evaluation (not timed)", "checkpoint (not timed)")


def table(profiles: dict[str, dict[str, int]]) -> str:
    """Shares of the timed training-loop samples per phase; evaluation and checkpoints (outside figure 5's step
    times) as shares of all training-loop samples, below."""
    phases = list(dict.fromkeys([p for p, _ in PHASES] + ["other trainer code"]))
    timed = [p for p in phases if p not in NOT_TIMED]
    lines = [f"{'share of timed samples':<28}" + "".join(f"{k:>12}" for k in profiles)]
    for group, total in ((timed, lambda c: sum(n for p, n in c.items() if p not in NOT_TIMED)),
                         (NOT_TIMED, lambda c: sum(c.values()))):  # fmt: skip
        if group is NOT_TIMED:
            lines.append(f"{'share of all loop samples':<28}")
        for phase in group:
            if any(phase in c for c in profiles.values()):
                cells = [100 * c.get(phase, 0) / max(1, total(c)) for c in profiles.values()]
                lines.append(f"{phase:<28}" + "".join(f"{x:>11.1f}%" for x in cells))
    lines.append(f"{'samples in the loop':<28}" + "".join(f"{sum(c.values()):>12}" for c in profiles.values()))
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_train", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per run (default 20)")
    parser.add_argument("--rate", type=int, default=50, help="py-spy samples per second (default 50)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the raw stacks (default: a temporary one)")
    options = parser.parse_args(argv)
    for name in ("steps", "rate"):
        if getattr(options, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(options, name)}")
    if py_spy() is None:
        parser.error(f"py-spy is not installed beside {sys.executable} or on PATH: {sys.executable} -m pip install py-spy")
    from loraplus.models import resolve_model

    out = options.out or Path(tempfile.mkdtemp(prefix="loraplus-profile-"))
    out.mkdir(parents=True, exist_ok=True)
    profiles = {kind: record(kind, options.steps, options.rate, out, resolve_model("minilm-l6"))
                for kind in ("bare", "loraplus")}  # fmt: skip
    (out / "profile.json").write_text(json.dumps(profiles, indent=2))
    print(table(profiles))
    print(f"raw stacks and profile.json in {out}")


if __name__ == "__main__":
    main()
