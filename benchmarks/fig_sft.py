"""Figure 10: instruction-tuning throughput, in tokens of loss per second of training. Three runs timed side by side
(shuffled order, fresh run folders every repeat, all in this process), each ``steps`` optimizer steps of batch
``batch_size`` at ``max_length`` tokens on the same rows of the built-in natural-instructions (its seed-0 split), the
completion tokens only carrying loss, LoRA r=8 (alpha 16, dropout 0.1) on q_proj,v_proj, LoRA+ ratio 16, lr 2e-4:

- ``packed``: ``loraplus train --task sft --packing`` (``run_train(TrainConfig(task="sft", packing=True, ...))``);
- ``padded``: the same without packing (each batch padded to its longest example);
- ``bare``: ``bare_sft.run``, TRL's ``SFTTrainer`` + PEFT LoRA + ``peft.optimizers.create_loraplus_optimizer`` at the
  same settings, without packing.

Neither side saves or generates (loraplus: no checkpoints, ``eval_generate=0``; bare: ``save_strategy="no"``) or
evaluates during the steps (loraplus: ``eval_steps`` past the last step; bare: ``eval_strategy="no"``). loraplus has no
option to skip the evaluation transformers runs after the last step under a step strategy; it is subtracted from the
clock. Counted: the tokens of loss, ``labels != -100`` in every batch the model trains on (a forward pre-hook on the
model, ``loss_token_meter``); timed: the training loop, ``on_train_begin`` to ``on_train_end`` (``common.clocks``),
less that evaluation, so loading, tokenization, packing and loraplus' final evaluations are outside the clock. Per
repeat, each run's seconds per token of loss; each ratio is the median of the paired ratios (``common.paired_ratio``)
with its bootstrap 95 % interval. Targets: packed / padded tokens of loss per second >= 1.5; loraplus (padded) / bare
>= 1.0. The padded and bare runs see the same batches, so their tokens of loss are equal (checked, in the note).

Sizes: a smollm2-135m step of 4 rows at 256 tokens takes about 13-17 CPU seconds at one thread, so the runs are
short: 2 steps each, 3 repeats after a one-step warm-up run of each (first-call costs: imports, kernels, file cache),
about 6 minutes in all (370 s measured). At 256 tokens loraplus drops the examples whose prompt leaves no room for an
answer (68 of the first 120 training rows; TRL drops the same ones on the bare side); the kept ones average about
206 tokens, so a packed row rarely holds two and a batch padded to its longest example is only about 14 % padding:
packing has little to gain on this data at this length.

The rows are read once from BIG-bench (about 9 s) and written to a data folder that every run reads: the first
``rows[split]`` rows of each seed-0 split, in order, so no split is carved again and there is no held-out split to
evaluate. Quick mode: seeded made-up rows of the same shape (no download), a 2-layer random Llama with a word-level
tokenizer over those rows' words and SmolLM2-Instruct's chat template, 3 steps, 1 repeat.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from benchmarks.common import Context, clocks, interleaved, paired_ratio, ratio_row, skipped_row

NAME = "sft_throughput"
TITLE = "10 instruction-tuning throughput"
ROWS = ("sft --packing / padded, tokens of loss/s", "loraplus sft / bare TRL script, tokens of loss/s")
IGNORE_INDEX = -100


def config(quick: bool) -> dict:
    if quick:
        return {"model": "tiny-chat-llama", "steps": 3, "warmup_steps": 1, "batch_size": 4, "max_length": 256,
                "repeats": 1, "rows": {"train": 64, "validation": 8, "test": 8}}  # fmt: skip
    return {"model": "smollm2-135m", "steps": 2, "warmup_steps": 1, "batch_size": 4, "max_length": 256, "repeats": 3,
            "rows": {"train": 120, "validation": 4, "test": 4}}  # fmt: skip


def loss_token_meter():
    """A ``TrainerCallback`` that counts the tokens of loss of the training batches and times the training loop.

    ``on_train_begin`` puts a forward pre-hook on the model; every forward in training mode adds ``labels != -100``
    (``loss_tokens``), the tokens that are not padding (``tokens``: the attention mask's sum, or every position of a
    padding-free batch) and the positions computed (``positions``, padding included). ``on_train_end`` removes the
    hook and records the loop's ``wall_s`` and ``cpu_s`` less any evaluation inside it (from the end of a step to
    ``on_evaluate``: with ``eval_strategy="steps"`` transformers evaluates after the last step), and the optimizer
    ``steps``."""
    from transformers import TrainerCallback

    class LossTokenMeter(TrainerCallback):
        def __init__(self):
            self.counts = {"loss_tokens": 0, "tokens": 0, "positions": 0}
            self.excluded = [0.0, 0.0]  # evaluation inside the loop: wall, cpu seconds
            self.result: dict = {}
            self._hook, self._start, self._step_end = None, None, None

        def count(self, module, args, kwargs) -> None:
            labels, ids = kwargs.get("labels"), kwargs.get("input_ids")
            if not module.training or labels is None or ids is None:
                return
            mask = kwargs.get("attention_mask")
            self.counts["loss_tokens"] += int((labels != IGNORE_INDEX).sum())
            self.counts["tokens"] += int(mask.sum()) if mask is not None else ids.numel()
            self.counts["positions"] += ids.numel()

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self._hook = model.register_forward_pre_hook(self.count, with_kwargs=True)
            self._start = self._step_end = clocks()

        def on_step_end(self, args, state, control, **kwargs):
            self._step_end = clocks()

        def on_evaluate(self, args, state, control, **kwargs):
            now = clocks()
            self.excluded = [e + n - s for e, n, s in zip(self.excluded, now, self._step_end)]

        def on_train_end(self, args, state, control, **kwargs):
            end = clocks()
            self._hook.remove()
            loop = [e - s - x for e, s, x in zip(end, self._start, self.excluded)]
            self.result = {"wall_s": loop[0], "cpu_s": loop[1], "steps": state.global_step,
                           "excluded_wall_s": self.excluded[0], **self.counts}  # fmt: skip

    return LossTokenMeter()


def export_rows(ctx: Context, rows: dict[str, int], synthetic: bool = False) -> tuple[Path | None, str]:
    """``(data folder, "")``: the first ``rows[split]`` rows of each seed-0 split of the built-in natural-instructions
    as ``{split}.jsonl`` (prompt, completion), written once per context; ``(None, why)`` when the data is missing.
    ``synthetic`` (quick mode): seeded made-up rows of the same shape instead, so no download is needed."""
    from loraplus.instruct_data import load_instruction_data

    kind = "synthetic" if synthetic else "natural-instructions"
    folder = ctx.workdir / (kind + "-" + "-".join(f"{split}{n}" for split, n in sorted(rows.items())))
    if folder.exists():
        return folder, ""
    if synthetic:
        _write_synthetic(folder, rows)
        return folder, ""
    try:
        data = load_instruction_data("natural-instructions", seed=0)
    except (ModuleNotFoundError, OSError, ValueError) as err:
        return None, f"natural-instructions unavailable: {type(err).__name__}: {err}"
    folder.mkdir(parents=True)
    for split, n in rows.items():
        data.splits[split].select(range(min(n, len(data.splits[split])))).to_json(folder / f"{split}.jsonl")
    return folder, ""


def _write_synthetic(folder: Path, rows: dict[str, int]) -> None:
    """Instruction rows of 10-120 prompt words and 2-12 answer words from a 60-word vocabulary (seed 0)."""
    import json
    import random

    rng = random.Random(0)
    words = [f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "pe", "ro") for b in ("ta", "ve", "xi", "zo", "du", "ga",
                                                                              "hu", "ji", "sa", "we")]  # fmt: skip
    folder.mkdir(parents=True)
    for split, n in rows.items():
        lines = []
        for _ in range(n):
            prompt = "Repeat the last words: " + " ".join(rng.choices(words, k=rng.randint(10, 120)))
            lines.append(json.dumps({"prompt": prompt, "completion": " ".join(rng.choices(words, k=rng.randint(2, 12)))}))
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")


def save_tiny_chat_llama(folder: Path, texts: list[str]) -> None:
    """``common.tiny_llama`` (2 layers, vocab 1000, random; up to 512 positions) with a lower-casing word-level
    tokenizer over the most frequent words of ``texts``, ChatML's markers as special tokens, EOS ``<|im_end|>`` and
    SmolLM2-Instruct's chat template as shipped (loraplus swaps in its marked copy, as for smollm2-135m). Quick mode."""
    from collections import Counter

    from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from benchmarks.common import tiny_llama
    from loraplus.tasks.sft import TRAINING_TEMPLATES

    special = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
    split = pre_tokenizers.Whitespace()
    words = Counter(w.lower() for t in texts for w, _ in split.pre_tokenize_str(t))
    vocab = {w: i for i, w in enumerate(special + [w for w, _ in words.most_common(1000 - len(special))])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.normalizer, core.pre_tokenizer = normalizers.Lowercase(), split
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<pad>",
                                        unk_token="<unk>")  # fmt: skip
    tokenizer.chat_template = next(iter(TRAINING_TEMPLATES))
    tokenizer.save_pretrained(folder)
    model = tiny_llama()
    model.config.max_position_embeddings = 512  # rotary positions: only loraplus' max_length check reads it
    model.save_pretrained(folder, safe_serialization=True)


def model_path(ctx: Context, name: str, data: Path) -> tuple[str | None, str]:
    """``(model folder, "")`` for ``name`` (``smollm2-135m`` or ``tiny-chat-llama``), or ``(None, why)``."""
    if name == "smollm2-135m":
        from benchmarks.common import smollm2_path

        return smollm2_path()
    import json

    folder = ctx.workdir / "tiny-chat-llama"
    if not folder.exists():
        rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
        save_tiny_chat_llama(folder, [r[k] for r in rows for k in ("prompt", "completion")])
    return str(folder), ""


def run(ctx: Context, cfg: dict) -> dict:
    data, why = export_rows(ctx, cfg["rows"], synthetic=cfg["model"] == "tiny-chat-llama")
    model, why = model_path(ctx, cfg["model"], data) if data is not None else (None, why)
    if model is None:
        return {"rows": [skipped_row(name, why) for name in ROWS]}
    runs = {"packed": [], "padded": [], "bare": []}
    for name in runs:  # warm-up: first-call costs (imports, kernels, file cache) before any timed run
        _variant(ctx, {**cfg, "steps": cfg["warmup_steps"]}, model, data, name, [])()
    variants = {name: _variant(ctx, cfg, model, data, name, found) for name, found in runs.items()}
    samples = interleaved(variants, repeats=cfg["repeats"], warmup=0)
    per_token = {name: [{k: r[k] / r["loss_tokens"] for k in ("wall_s", "cpu_s")} for r in found]
                 for name, found in runs.items()}  # fmt: skip
    rate = {name: statistics.median(r["loss_tokens"] / r["cpu_s"] for r in found) for name, found in runs.items()}
    same = [r["loss_tokens"] for r in runs["padded"]] == [r["loss_tokens"] for r in runs["bare"]]
    size = f"{cfg['steps']} steps of {cfg['batch_size']} at {cfg['max_length']} tokens"
    rows = [
        ratio_row(f"{ROWS[0]} ({cfg['model']})", paired_ratio(per_token, "padded", "packed"), (">=", 1.5),
                  value=_value(rate, runs, "packed", "padded", size)),
        ratio_row(f"{ROWS[1]} ({cfg['model']})", paired_ratio(per_token, "bare", "padded"), (">=", 1.0),
                  value=_value(rate, runs, "padded", "bare", size),
                  note="same tokens of loss" if same else "the tokens of loss differ"),
    ]  # fmt: skip
    return {"rows": rows, "data": {"runs": runs, "run_s": samples, "loss_tokens_per_cpu_s": rate}}


def _value(rate: dict, runs: dict, a: str, b: str, size: str) -> str:
    """Both sides' tokens of loss per CPU second (medians), per run, and the share of padding among the positions."""
    def padding(name: str) -> float:
        return statistics.median(1 - r["tokens"] / r["positions"] for r in runs[name])

    return (f"{size}: {a} {rate[a]:.3g} vs {b} {rate[b]:.3g} tokens of loss per cpu-s, {runs[a][0]['loss_tokens']} vs "
            f"{runs[b][0]['loss_tokens']} per run; padding {padding(a):.0%} vs {padding(b):.0%} of the positions")


def _variant(ctx: Context, cfg: dict, model: str, data: Path, name: str, into: list):
    """``go()``: one run of ``name`` (packed, padded or bare) with a fresh ``loss_token_meter``, whose result it
    appends to ``into``."""
    from benchmarks import bare_sft
    from loraplus.config import TrainConfig
    from loraplus.train import run_train

    common = dict(max_steps=cfg["steps"], batch_size=cfg["batch_size"], max_length=cfg["max_length"])
    counter = iter(range(10**6))

    def go() -> None:
        meter, folder = loss_token_meter(), ctx.workdir / f"sft-{name}-{cfg['steps']}-{next(counter)}"
        if name == "bare":
            bare_sft.run(model, str(folder), dataset=str(data), callbacks=[meter], **common)
        else:
            run_train(TrainConfig(task="sft", model=model, dataset=str(data), output_dir=str(folder),
                                  packing=name == "packed", learning_rate=2e-4, r=8, lora_alpha=16, lora_dropout=0.1,
                                  target_modules=("q_proj", "v_proj"), eval_steps=cfg["steps"] + 1,
                                  save_checkpoints=False, eval_generate=0, **common), callbacks=[meter])  # fmt: skip
        into.append(meter.result)

    return go
