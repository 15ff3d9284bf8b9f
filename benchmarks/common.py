"""Shared pieces of the benchmarks: the run context, interleaved timing, result rows, models and batches, workers."""

from __future__ import annotations

import functools
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]  # the repository root
BBC_LABELS = 5


@dataclass
class Context:
    """What every figure gets: ``quick`` (seconds-long smoke sizes), a scratch folder and a memo shared by figures
    that reuse one expensive measurement (the two training runs of figures 4, 5 and 7)."""

    quick: bool = False
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="loraplus-bench-")))
    memo: dict = field(default_factory=dict)
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- timing


def clocks() -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds)."""
    return time.perf_counter(), time.process_time()


def interleaved(variants: dict[str, Callable[[], None]], *, repeats: int, warmup: int = 1) -> dict[str, list[dict]]:
    """Time each variant ``repeats`` times, in a new order every repeat: a seeded shuffle (seed 0), not a rotation.

    A rotation (A B C, B C A, C A B) keeps each variant's predecessor fixed (A always runs after C), so a variant
    that leaves the caches or the allocator cold (full fine-tuning of a second model copy) slows the same
    neighbour every time (figure 3: the LoRA+ step always ran right after full fine-tuning). Shuffled orders give
    every variant every predecessor.

    Each callable is one block (it may loop over several steps itself). ``gc`` is collected before and disabled during
    each block. Returns ``{name: [{"wall_s", "cpu_s"}, ...]}`` (one entry per repeat, aligned across variants).
    """
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    names, rng = list(variants), random.Random(0)
    samples: dict[str, list[dict]] = {n: [] for n in names}
    for _ in range(repeats):
        order = names[:]
        rng.shuffle(order)
        for name in order:
            gc.collect()
            gc.disable()
            try:
                w0, c0 = clocks()
                variants[name]()
                w1, c1 = clocks()
            finally:
                gc.enable()
            samples[name].append({"wall_s": w1 - w0, "cpu_s": c1 - c0})
    return samples


def paired_ratio(samples: dict[str, list[dict]], num: str, den: str) -> dict:
    """Median over repeats of ``num``'s time / ``den``'s time in the same repeat, for wall and CPU clocks, with the
    range (``{clock}_range``) and the bootstrap 95 % interval of the median (``{clock}_ci95``)."""
    out = {}
    for clock in ("wall", "cpu"):
        ratios = [a[f"{clock}_s"] / b[f"{clock}_s"] for a, b in zip(samples[num], samples[den]) if b[f"{clock}_s"] > 0]
        out[clock] = statistics.median(ratios) if ratios else float("nan")
        out[f"{clock}_range"] = [min(ratios), max(ratios)] if ratios else None
        out[f"{clock}_ci95"] = median_interval(ratios) if ratios else None
    return out


def median_interval(values: list[float], resamples: int = 2000, seed: int = 0) -> list[float]:
    """Percentile bootstrap 95 % interval of the median of ``values`` (seeded: the same values give the same
    interval). With few values it is coarse: it can only end at values of the sample."""
    import random

    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return [medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]]


def medians(samples: dict[str, list[dict]], per: int = 1) -> dict[str, dict]:
    """``{name: {"wall_s", "cpu_s"}}``: the median block time divided by ``per`` (steps per block)."""
    return {
        n: {k: statistics.median(s[k] for s in rows) / per for k in ("wall_s", "cpu_s")} for n, rows in samples.items()
    }


# ---------------------------------------------------------------- result rows


def row(name: str, *, wall: float | None = None, cpu: float | None = None, ratio: float | None = None,
        target: tuple[str, float] | None = None, spread: dict | None = None, note: str = "", value: str = "") -> dict:
    """One line of the table: a time ratio in both clocks (``wall``, ``cpu``) or another ``ratio`` (memory).

    ``target`` is ``("<=", 1.01)``, ``(">=", 1.0)`` or None (reported only); ``decide`` picks the clock that sets
    ``ratio`` and ``passed``."""
    rec = {
        "name": name, "ratio": ratio, "ratio_wall": wall, "ratio_cpu": cpu, "spread": spread,
        "target": None if target is None else f"{target[0]} {target[1]:g}", "passed": None, "value": value, "note": note,
    }  # fmt: skip
    return decide(rec, "cpu")


def decide(rec: dict, clock: str) -> dict:
    """Set ``rec["ratio"]`` from ``clock`` ("cpu" or "wall"; a time row) and ``rec["passed"]`` from the target."""
    if rec.get("ratio_wall") is not None or rec.get("ratio_cpu") is not None:
        other = "wall" if clock == "cpu" else "cpu"
        rec["clock"] = clock if rec.get(f"ratio_{clock}") is not None else other
        rec["ratio"] = rec[f"ratio_{rec['clock']}"]
    r, target = rec.get("ratio"), rec.get("target")
    if target is None or r is None or r != r:  # no target, no value, NaN
        rec["passed"] = None
    else:
        op, bound = target.split()
        rec["passed"] = r <= float(bound) if op == "<=" else r >= float(bound)
    return rec


def skipped_row(name: str, reason: str) -> dict:
    return {**row(name, note=reason), "skipped": True}


def ratio_row(name: str, pr: dict, target: tuple[str, float] | None, *, note: str = "", value: str = "") -> dict:
    """A row from ``paired_ratio``'s result; ``spread`` holds the per-repeat range, the note the cpu ratio's 95 %
    interval."""
    spread = {"wall": pr["wall_range"], "cpu": pr["cpu_range"]}
    ci = pr.get("cpu_ci95")
    if ci:
        note = "; ".join(x for x in (f"95 % interval {ci[0]:.3f}..{ci[1]:.3f}", note) if x)
    return row(name, wall=pr["wall"], cpu=pr["cpu"], target=target, spread=spread, note=note, value=value)


# ---------------------------------------------------------------- models and batches


def tiny_bert(num_labels: int = BBC_LABELS):
    """A 2-layer BERT classifier (hidden 32, vocab 1000) with random weights, built in code (quick mode)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=num_labels)  # fmt: skip
    return BertForSequenceClassification(config)


def tiny_llama():
    """A 2-layer Llama causal LM (hidden 64, vocab 1000) with random weights, built in code (quick mode)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)  # fmt: skip
    model = LlamaForCausalLM(config)
    model.config.use_cache = False
    return model


def load_minilm():
    """``(tokenizer, model)``: the built-in minilm-l6 as a 5-class (BBC News) sequence classifier, float32."""
    from loraplus.models import load_sequence_classifier, resolve_model

    return load_sequence_classifier(resolve_model("minilm-l6"), [f"c{i}" for i in range(BBC_LABELS)])


def smollm2_path() -> tuple[str | None, str]:
    """(folder of the built-in smollm2-135m, "") or (None, why it is unavailable)."""
    try:
        from loraplus.tasks.causal_lm import resolve_smollm2
    except ImportError as err:
        return None, f"loraplus.tasks.causal_lm.resolve_smollm2 unavailable ({err})"
    try:
        return resolve_smollm2(), ""
    except (ImportError, ValueError, OSError) as err:
        return None, f"smollm2-135m unavailable: {type(err).__name__}: {err}"


def random_batch(n: int, seq: int, vocab: int, *, causal: bool, seed: int = 0) -> dict:
    """Random token ids (quick mode): ``input_ids``, ``attention_mask``, ``labels`` (class ids or the ids)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (n, seq), generator=g)
    labels = ids.clone() if causal else torch.randint(0, BBC_LABELS, (n,), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


@functools.cache
def bbc_splits():
    """The seed-0 train/validation/test split of the built-in bbc-news (the one ``loraplus train`` uses)."""
    from loraplus.data import load_classification_data

    return load_classification_data("bbc-news", seed=0).splits


def bbc_batch(tokenizer, n: int, seq: int, *, causal: bool, offset: int = 0) -> dict:
    """``n`` BBC News training texts (seed-0 split) padded/truncated to ``seq`` tokens; real labels, or for a causal
    LM the ids themselves with padding at -100."""
    rows = bbc_splits()["train"].select(range(offset, offset + n))
    enc = tokenizer(list(rows["text"]), truncation=True, max_length=seq, padding="max_length", return_tensors="pt")
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if causal:
        batch["labels"] = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    else:
        import torch

        batch["labels"] = torch.tensor(list(rows["label"]))
    return batch


# ---------------------------------------------------------------- subprocess workers


def child_env(first_on_path: Path = ROOT, drop: tuple[str, ...] = ()) -> dict:
    """The environment of a measured child process: this one's, with ``first_on_path`` first on ``PYTHONPATH``, the
    Hugging Face Hub offline, no tokenizer threads, and the variables in ``drop`` removed."""
    env = {k: v for k, v in os.environ.items() if k not in drop}
    path = os.pathsep.join(p for p in (str(first_on_path), env.get("PYTHONPATH", "")) if p)
    return {**env, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_worker(task: str, args: dict, ctx: Context, *, timeout: float | None = None) -> dict:
    """Run ``benchmarks.worker`` ``task`` in a fresh Python process (own memory peak); return its JSON result.

    The worker's stdout/stderr go to a log file in ``ctx.workdir``; a failure raises ``RuntimeError`` with its tail.
    """
    return run_workers([(task, args)], ctx, timeout=timeout)[0]


def run_workers(jobs: list[tuple[str, dict]], ctx: Context, *, timeout: float | None = None) -> list[dict]:
    """Run several ``(task, args)`` workers at the same time (each its own process); their results in order.

    Concurrent workers are for measurements that coordinate among themselves (``LockStep``); each waits for its turn,
    so they do not compete for the CPU. A failure of any raises ``RuntimeError`` with its log's tail.
    """
    env = child_env()
    started = []
    for task, args in jobs:
        tag = f"{task}-{len(list(ctx.workdir.glob('*.log')))}"
        out, log = ctx.workdir / f"{tag}.json", ctx.workdir / f"{tag}.log"
        cmd = [sys.executable, "-m", "benchmarks.worker", task, json.dumps(args), str(out)]
        with log.open("w") as f:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
        started.append((task, args, proc, out, log))
    try:
        for _, _, proc, _, _ in started:
            proc.wait(timeout=timeout)
    finally:
        for _, _, proc, _, _ in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for task, args, proc, out, log in started:
        if proc.returncode != 0 or not out.exists():
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"worker {task} {args} failed (exit {proc.returncode}); log {log}:\n{tail}")
    return [json.loads(out.read_text()) for *_, out, _ in started]


class LockStep:
    """Take turns with a peer process, one optimizer step each, through two FIFOs (``os.mkfifo``).

    ``own`` is read (the turn arrives), ``peer`` is written (the turn leaves). ``first`` starts; the other waits in
    ``begin``. After each step ``handover`` writes a turn token and waits for one back; after the last step it writes
    ``D`` instead, so the peer stops waiting. A peer silent for ``timeout`` seconds (it died) is no longer waited for.
    Both FIFOs are opened read-write, so opening never blocks.
    """

    def __init__(self, own: str, peer: str, *, first: bool, timeout: float = 900.0):
        self.own, self.peer = os.open(own, os.O_RDWR), os.open(peer, os.O_RDWR)
        self.first, self.timeout = first, timeout
        self.alone = False  # the peer has finished (or died): run on without waiting
        self.finished = False

    def begin(self) -> None:
        if not self.first:
            self._wait()

    def handover(self, last: bool) -> None:
        if last:
            self.finish()
        else:
            os.write(self.peer, b"T")
            self._wait()

    def finish(self) -> None:
        if not self.finished:
            os.write(self.peer, b"D")
            self.finished = True

    def _wait(self) -> None:
        import select

        if self.alone:
            return
        ready, _, _ = select.select([self.own], [], [], self.timeout)
        if not ready or os.read(self.own, 1) == b"D":
            self.alone = True


def rss_mib() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MiB.

    Peak: ``VmHWM`` of ``/proc/self/status`` (this process image's high-water mark). Not ``ru_maxrss``: Linux keeps
    that across ``exec``, so a worker started by a parent holding 4.4 GiB reported 4.4 GiB whatever it used.
    ``ru_maxrss`` (KiB) only where ``/proc`` is missing."""
    import resource

    status = {}
    try:
        with open("/proc/self/status") as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
        with open("/proc/self/statm") as f:
            current = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        current = float("nan")
    if "VmHWM" in status:
        peak = int(status["VmHWM"].split()[0]) / 1024  # "  2036 kB"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return current, peak
