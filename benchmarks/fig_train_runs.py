"""Figures 4, 5 and 12: ``loraplus train`` with its defaults against the bare script (``bare_trainer.py``), one
fine-tuning run each, each in its own process (figure 4's peak RSS feeds figure 7; figure 12, whole runs side by
side, is ``run_whole``).

Both runs: minilm-l6 on bbc-news (seed-0 split), one epoch, batch 16, max_length 128. loraplus: ``run_train(TrainConfig(
output_dir=...))`` with every default (lr 1e-3, λ 16, dynamic padding, warm-up, validation + checkpoint every 25
steps); bare: lr 2e-4, pad-to-max. Before the clock starts each process imports torch/transformers/peft/datasets and
reads the data once (warm file cache on both sides); the clock (t0) starts when ``run_train`` / ``bare_trainer.run``
is called, so model loading, data loading, tokenization and training are inside it for both.

Figure 4, time to accuracy. X = the bare script's test accuracy after its epoch; T_bare = t0 -> end of its training
(its final test evaluation excluded). T_loraplus(X) = t0 -> the first optimizer step at which the test accuracy is
>= X, probed every ``probe_every`` steps (and at the end of training) by a callback whose own time is subtracted:
the probes are measurement, not training. Probing stops after the first hit. Time resolution: ``probe_every`` steps,
so T_loraplus is overestimated by up to that many steps. Ratio T_loraplus / T_bare, target <= 0.5; not reached -> inf.

Figure 5, throughput. A step's time = from the end of the previous step's logging/evaluation/checkpointing (or the
train start) to the end of the step: batch fetching and collation, forward, backward, clipping, optimizer and
scheduler steps are in; periodic evaluation, checkpoint saving and the probes are out. The ratio with the target
(>= 1.0) comes from ``lockstep_runs``: a bare and a loraplus worker started together take turns, one optimizer step
each, so step i of one and step i of the other run seconds apart under the same load; the figure is the median over
steps of bare's step time / loraplus' (= loraplus' samples/s over bare's, same batch size). Also reported: figure 4's
two full epochs, one after the other (load drift between them included), and the whole training loop (``train()``:
periodic evaluation and checkpoints in, probes out).
"""

from __future__ import annotations

import math
import statistics

from benchmarks.common import Context, median_interval, row, run_worker, run_workers

NAME_TTA, TITLE_TTA = "time_to_accuracy", "4 time to accuracy"
NAME_TPUT, TITLE_TPUT = "throughput", "5 throughput"
NAME_WHOLE, TITLE_WHOLE = "whole_run", "12 whole run"


def config(quick: bool) -> dict:
    if quick:
        return {"model": "tiny-bert-folder", "limits": {"max_train_samples": 32, "max_eval_samples": 16, "max_length": 32},
                "probe_every": 1, "lockstep": {"steps": 3, "pairs": 1}, "whole_pairs": 1}  # fmt: skip
    return {"model": "minilm-l6", "limits": {}, "probe_every": 10, "lockstep": {"steps": 30, "pairs": 2}, "whole_pairs": 3}


def model_path(ctx: Context, name: str) -> str:
    if name == "minilm-l6":
        from loraplus.models import resolve_model

        return resolve_model("minilm-l6")
    folder = ctx.workdir / "tiny-bert"
    if not folder.exists():
        save_tiny_bert(folder)
    return str(folder)


def save_tiny_bert(folder) -> None:
    """A 2-layer BERT (hidden 32) with random weights and a character-level WordPiece vocabulary, for quick runs."""
    import string

    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True)
    chars = string.ascii_lowercase + string.digits
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)  # fmt: skip
    BertModel(config).save_pretrained(folder, safe_serialization=True)


def train_runs(ctx: Context, cfg: dict) -> dict:
    """``{"bare": ..., "loraplus": ...}`` worker results, run once per context (figures 4, 5 and 7 share them)."""
    key = ("train_runs", repr(sorted(cfg.items())))
    if key not in ctx.memo:
        args = {"model": model_path(ctx, cfg["model"]), "limits": cfg["limits"], "probe_every": cfg["probe_every"]}
        ctx.log("[train runs] bare script (one epoch)")
        bare = run_worker("train_run", {**args, "kind": "bare", "workdir": str(ctx.workdir / "bare")}, ctx)
        ctx.log(f"[train runs] loraplus train (defaults), target accuracy {bare['test_accuracy']:.4f}")
        lp = run_worker("train_run", {**args, "kind": "loraplus", "target": bare["test_accuracy"],
                                      "workdir": str(ctx.workdir / "loraplus")}, ctx)  # fmt: skip
        ctx.memo[key] = {"bare": bare, "loraplus": lp}
    return ctx.memo[key]


def lockstep_runs(ctx: Context, cfg: dict) -> list[dict]:
    """Figure 5's measurement: ``pairs`` x (bare, loraplus) workers started together that take turns, one optimizer
    step each, for ``steps`` steps (who goes first alternates between pairs). Adjacent steps of the two see the same
    machine load, so their ratio is paired. Returns ``[{"bare": ..., "loraplus": ...}, ...]`` worker results.

    Both sides: their usual settings (as in figure 4) with ``max_steps = steps`` and at most 64 evaluation examples
    (evaluation is not timed); no accuracy probe.
    """
    import os

    lock = cfg["lockstep"]
    limits = {**cfg["limits"], "max_steps": lock["steps"], "max_eval_samples": min(64, cfg["limits"].get("max_eval_samples", 64))}
    pairs = []
    for p in range(lock["pairs"]):
        folder = ctx.workdir / f"lockstep-{p}"
        folder.mkdir(parents=True, exist_ok=True)
        fifos = {who: folder / f"{who}.fifo" for who in ("bare", "loraplus")}
        for path in fifos.values():
            if not path.exists():
                os.mkfifo(path)
        first = "bare" if p % 2 == 0 else "loraplus"
        ctx.log(f"[throughput] pair {p + 1}/{lock['pairs']}: bare and loraplus take turns for {lock['steps']} steps, "
                f"{first} first")  # fmt: skip
        jobs = [("train_run", {"model": model_path(ctx, cfg["model"]), "limits": limits, "probe_every": 0, "kind": who,
                               "workdir": str(folder / who), "lockstep": {"own": str(fifos[who]), "first": who == first,
                               "peer": str(fifos["loraplus" if who == "bare" else "bare"])}})
                for who in ("bare", "loraplus")]  # fmt: skip
        bare, lp = run_workers(jobs, ctx, timeout=7200)
        pairs.append({"bare": bare, "loraplus": lp})
    return pairs


def run_tta(ctx: Context, cfg: dict) -> dict:
    runs = train_runs(ctx, cfg)
    bare, lp = runs["bare"], runs["loraplus"]
    x, hit = bare["test_accuracy"], lp["crossed"]
    t_bare = bare["timer"]["train_end"]
    if hit is None:
        ratio = cpu = math.inf
        value = f"X = {x:.4f} (bare, {t_bare['wall_s']:.3g} s); loraplus never reached it (final {lp['test_accuracy']:.4f})"
    else:
        ratio, cpu = hit["wall_s"] / t_bare["wall_s"], hit["cpu_s"] / t_bare["cpu_s"]
        value = (f"X = {x:.4f}: bare {t_bare['wall_s']:.3g} s ({t_bare['cpu_s']:.3g} cpu-s), loraplus {hit['wall_s']:.3g} s "
                 f"({hit['cpu_s']:.3g} cpu-s) at step {hit['step']}, acc {hit['accuracy']:.4f}; final {lp['test_accuracy']:.4f}")  # fmt: skip
    whole = {k: (lp["run_s"][k] - lp["timer"]["excluded"][k]) / bare["run_s"][k] for k in ("wall_s", "cpu_s")}
    rows = [
        row("loraplus train defaults / bare script, time to X", wall=ratio, cpu=cpu, target=("<=", 0.5), value=value,
            note=f"probed every {cfg['probe_every']} steps, probe time excluded"),
        row("whole run (incl. final evals): loraplus / bare", wall=whole["wall_s"], cpu=whole["cpu_s"],
            value=f"{lp['run_s']['wall_s'] - lp['timer']['excluded']['wall_s']:.3g} s vs {bare['run_s']['wall_s']:.3g} s",
            note="loraplus' periodic validation + checkpoints included, probes excluded"),
    ]  # fmt: skip
    return {"rows": rows, "data": runs}


def run_throughput(ctx: Context, cfg: dict) -> dict:
    rows, data = throughput_lockstep(lockstep_runs(ctx, cfg))
    runs = train_runs(ctx, cfg)
    rate = {}
    for who, r in runs.items():
        t = r["timer"]
        loop = {k: t["train_end"][k] - t["train_begin"][k] for k in ("wall_s", "cpu_s")}
        rate[who] = {"steps": {k: r["train_samples"] / t["train"][k] for k in ("wall_s", "cpu_s")},
                     "loop": {k: r["train_samples"] / loop[k] for k in ("wall_s", "cpu_s")}}  # fmt: skip
    lp, bare = rate["loraplus"], rate["bare"]
    rows += [
        row("full epochs, one after the other: loraplus / bare", wall=lp["steps"]["wall_s"] / bare["steps"]["wall_s"],
            cpu=lp["steps"]["cpu_s"] / bare["steps"]["cpu_s"],
            value=f"{lp['steps']['wall_s']:.3g} vs {bare['steps']['wall_s']:.3g} samples/s",
            note="figure 4's two runs; sequential, so load drift between them is in the ratio"),
        row("whole train() loop: loraplus / bare samples/s", wall=lp["loop"]["wall_s"] / bare["loop"]["wall_s"],
            cpu=lp["loop"]["cpu_s"] / bare["loop"]["cpu_s"],
            value=f"{lp['loop']['wall_s']:.3g} vs {bare['loop']['wall_s']:.3g} samples/s",
            note="loraplus' periodic validation + checkpoints included"),
    ]  # fmt: skip
    return {"rows": rows, "data": {"lockstep": data, "samples_per_second": rate}}


def run_whole(ctx: Context, cfg: dict) -> dict:
    """Figure 12, whole runs: ``whole_pairs`` x (the bare script, ``loraplus train`` with every default), each pair
    two processes started together (one core each at one thread), each a whole run from the call to the end
    (model and data loading, training, each side's own evaluations and checkpoints, the final test evaluation,
    the artifacts). The ratio of a pair is loraplus' CPU seconds / bare's; the figure is the median over pairs,
    with its bootstrap 95 % interval, target <= 1.05. The detail splits each side into its training steps and
    everything else (evaluations, checkpoints, loading, writing)."""
    args = {"model": model_path(ctx, cfg["model"]), "limits": cfg["limits"], "probe_every": 0}
    pairs = []
    for p in range(cfg["whole_pairs"]):
        ctx.log(f"[whole run] pair {p + 1}/{cfg['whole_pairs']}: bare script and loraplus train, side by side")
        jobs = [("train_run", {**args, "kind": who, "workdir": str(ctx.workdir / f"whole-{p}" / who)})
                for who in ("bare", "loraplus")]  # fmt: skip
        bare, lp = run_workers(jobs, ctx, timeout=7200)
        pairs.append({"bare": bare, "loraplus": lp})
    ratios = {c: [q["loraplus"]["run_s"][f"{c}_s"] / q["bare"]["run_s"][f"{c}_s"] for q in pairs] for c in ("wall", "cpu")}
    ci = {c: median_interval(v) for c, v in ratios.items()}

    def split(who: str) -> str:
        run = statistics.median(q[who]["run_s"]["cpu_s"] for q in pairs)
        steps = statistics.median(q[who]["timer"]["train"]["cpu_s"] for q in pairs)
        return f"{who} {run:.0f} cpu-s ({steps:.0f} in steps, {run - steps:.0f} else)"

    rows = [row("loraplus train defaults / bare script, whole runs side by side",
                wall=statistics.median(ratios["wall"]), cpu=statistics.median(ratios["cpu"]), target=("<=", 1.05),
                spread=ci, value=f"{split('loraplus')} vs {split('bare')}; test accuracy "
                                 f"{statistics.median(q['loraplus']['test_accuracy'] for q in pairs):.4f} vs "
                                 f"{statistics.median(q['bare']['test_accuracy'] for q in pairs):.4f}",
                note=f"{len(pairs)} pairs; 95 % interval {ci['cpu'][0]:.3f}..{ci['cpu'][1]:.3f}")]  # fmt: skip
    return {"rows": rows, "data": {"pairs": [{w: {k: q[w][k] for k in ("run_s", "test_accuracy", "timer")}
                                              for w in q} for q in pairs], "ratios": ratios}}  # fmt: skip


def throughput_lockstep(pairs: list[dict]) -> tuple[list[dict], dict]:
    """Rows from ``lockstep_runs``: per step i >= 2 (step 1 warms up), bare's step time / loraplus' step time
    (= loraplus' samples/s over bare's at equal batches); the median over all pairs' steps with its bootstrap 95 %
    interval (``spread``), and the ratio of the summed step times."""
    ratios = {"wall": [], "cpu": []}
    sums = {"wall": [0.0, 0.0], "cpu": [0.0, 0.0]}  # loraplus, bare
    for pair in pairs:
        steps = zip(pair["loraplus"]["timer"]["intervals"][1:], pair["bare"]["timer"]["intervals"][1:])
        for lp, bare in steps:
            for c, clock in enumerate(("wall", "cpu")):
                ratios[clock].append(bare[c] / lp[c])
                sums[clock][0] += lp[c]
                sums[clock][1] += bare[c]
    if not ratios["cpu"]:
        raise RuntimeError("the lock-step runs timed no step after the first")
    median = {k: statistics.median(v) for k, v in ratios.items()}
    ci = {k: median_interval(v) for k, v in ratios.items()}
    quartiles = [float(q) for q in statistics.quantiles(ratios["cpu"], n=4)[::2]] if len(ratios["cpu"]) > 1 else None
    n = len(ratios["cpu"])
    rows = [
        row("steps taken in turns: loraplus / bare samples/s", wall=median["wall"], cpu=median["cpu"],
            target=(">=", 1.0), spread=ci,
            value=f"median of {n} adjacent step pairs, 95 % interval {ci['cpu'][0]:.3f}..{ci['cpu'][1]:.3f}; "
                  f"mean step {sums['cpu'][0] / n:.3g} vs {sums['cpu'][1] / n:.3g} cpu-s",
            note="one step's ratio varies " + (f"{quartiles[0]:.3f}..{quartiles[1]:.3f} (quartiles)" if quartiles else "-")),
        row("same steps, ratio of total step times", wall=sums["wall"][1] / sums["wall"][0],
            cpu=sums["cpu"][1] / sums["cpu"][0], value=f"{sums['cpu'][0]:.3g} vs {sums['cpu'][1]:.3g} cpu-s"),
    ]  # fmt: skip
    return rows, {"ratios": ratios, "sums_s": sums, "steps": n, "median_ci95": ci}


# ---------------------------------------------------------------- inside the worker process


def bench_callback(t0: tuple[float, float], probe=None, every: int = 0, target: float | None = None, turn=None):
    """A ``TrainerCallback`` that times training steps (see the module docstring) and optionally probes accuracy.

    ``turn`` (a ``common.LockStep``): take turns with a peer process, one optimizer step each; the waits fall
    between two timed intervals, outside both."""
    from transformers import TrainerCallback

    from benchmarks.common import clocks

    class BenchCallback(TrainerCallback):
        def __init__(self):
            self.mark = clocks()
            self.train = [0.0, 0.0]  # wall, cpu seconds inside training steps
            self.intervals: list[list[float]] = []  # per optimizer step: [wall, cpu] seconds
            self.excluded = [0.0, 0.0]  # probe time (wall, cpu)
            self.points: dict[str, dict] = {}
            self.trajectory: list[dict] = []
            self.crossed: dict | None = None

        def elapsed(self, now) -> dict:
            """Seconds since t0 minus the probes' time so far."""
            return {k: now[i] - t0[i] - self.excluded[i] for i, k in enumerate(("wall_s", "cpu_s"))}

        def touch(self, *args, **kwargs):
            self.mark = clocks()

        on_log = on_evaluate = on_save = touch

        def on_train_begin(self, args, state, control, **kwargs):
            if turn is not None:
                turn.begin()
            self.mark = clocks()
            self.points["train_begin"] = self.elapsed(self.mark)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            now = clocks()
            self.intervals.append([n - m for n, m in zip(now, self.mark)])
            self.train = [t + d for t, d in zip(self.train, self.intervals[-1])]
            if probe is not None and self.crossed is None and state.global_step % every == 0:
                self.probe(model, state.global_step, now)
            if turn is not None:
                turn.handover(last=state.global_step >= state.max_steps)
            self.mark = clocks()

        def on_train_end(self, args, state, control, model=None, **kwargs):
            now = clocks()
            if turn is not None:
                turn.finish()
            self.points["train_end"] = self.elapsed(now)
            if probe is not None and self.crossed is None and state.global_step % every != 0:
                self.probe(model, state.global_step, now)

        def probe(self, model, step: int, now) -> None:
            point = {"step": step, **self.elapsed(now), "accuracy": probe(model)}
            done = clocks()
            self.excluded = [e + d - n for e, d, n in zip(self.excluded, done, now)]
            self.trajectory.append(point)
            if target is not None and point["accuracy"] >= target:
                self.crossed = point

        def report(self) -> dict:
            return {**self.points, "train": {"wall_s": self.train[0], "cpu_s": self.train[1]},
                    "excluded": {"wall_s": self.excluded[0], "cpu_s": self.excluded[1]}, "intervals": self.intervals}  # fmt: skip

    return BenchCallback()


def accuracy_probe(model_path: str, test, max_length: int, batch_size: int = 64):
    """``probe(model) -> test accuracy``: eval mode, no grad, dynamic padding, RNG and train flag restored."""
    import torch
    from transformers import AutoTokenizer, DataCollatorWithPadding

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    enc = test.map(lambda b: tokenizer(b["text"], truncation=True, max_length=max_length), batched=True,
                   remove_columns=["text"])  # fmt: skip
    collate = DataCollatorWithPadding(tokenizer)
    rows = [enc[i] for i in range(len(enc))]
    batches = [collate(rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)]

    def probe(model) -> float:
        was_training, correct = model.training, 0
        model.eval()
        try:
            with torch.no_grad(), torch.random.fork_rng():
                for b in batches:
                    labels = b.pop("labels")
                    correct += int((model(**b).logits.argmax(-1) == labels).sum())
                    b["labels"] = labels
        finally:
            model.train(was_training)
        return correct / len(rows)

    return probe
