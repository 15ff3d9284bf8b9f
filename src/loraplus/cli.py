"""The ``loraplus`` command. Thin: options come from validated dataclasses, help from their field docs.

Errors a user can fix (bad values, missing files, a finished run in the way) print one line and exit 2;
no Python traceback unless ``--debug`` (or ``LORAPLUS_DEBUG=1``). Any other exception is a bug and shows its
traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import sys
import types
import typing
import warnings

from .config import set_by_experiment
from .distributed import is_main_process

__all__ = ["main"]

# ModuleNotFoundError: a built-in's PyPI package is missing (the message names the pip command). OSError: the
# environment (no network for a hub id, a full or read-only disk, a missing or unreadable file).
_USER_ERRORS = (ValueError, OSError, ModuleNotFoundError)


def _base_type(annotation):
    """The type inside a field annotation such as ``float | None`` (``float``)."""
    hint = annotation
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in args if a is not type(None))
    return hint


def add_dataclass_options(parser: argparse.ArgumentParser, cls) -> None:
    """``--config FILE`` plus one ``--option-name`` per field of ``cls``; help from ``field.metadata['help']``.

    Options not given stay out of the namespace, so a config file's values survive unless a flag overrides them.
    """
    parser.add_argument("--config", metavar="FILE", default=None, help="YAML file of options; flags override it")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error (also: LORAPLUS_DEBUG=1)")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if set_by_experiment(cls, f.name):  # the experiment sets it for every run: no flag (refused if given)
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = _base_type(hints[f.name])
        help_text = f.metadata.get("help", "")
        if "default" not in help_text:
            help_text += f" (default: {f.default})"
        if kind is bool:
            action = argparse.BooleanOptionalAction
            parser.add_argument(flag, dest=f.name, action=action, default=argparse.SUPPRESS, help=help_text)
            continue
        parser.add_argument(flag, dest=f.name, default=argparse.SUPPRESS, metavar=f.name.upper(), help=help_text)


def dataclass_from_args(cls, args: argparse.Namespace):
    """Build ``cls`` from: its defaults < the ``--config`` file < flags given on the command line."""
    from .configfile import read_config_file

    try:
        options = read_config_file(args.config, cls) if args.config else {}
    except UnicodeDecodeError as err:  # a ValueError whose text would not name the file
        raise ValueError(f"config file {args.config!r} is not UTF-8 (byte {err.start}); save it as UTF-8") from None
    options.update({f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})
    if getattr(args, "prompt_text", None) is not None:  # generate's positional prompt
        if getattr(args, "prompt", None) is not None:
            raise ValueError("give the prompt once: as --prompt or as the last argument, not both")
        options["prompt"] = args.prompt_text
    return cls(**options)


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import TrainConfig
    from .train import metrics_text, run_train

    cfg = dataclass_from_args(TrainConfig, args)
    metrics = run_train(cfg)
    if not is_main_process():  # under torchrun every rank runs the command; rank 0 reports
        return 0
    steps, seconds = metrics["train"]["steps"], metrics["wall_time_s"]
    print(f"test {metrics_text(metrics['test'])}  ({steps} steps, {seconds:.0f} s)  -> {cfg.output_dir}")
    for split in [s for s in metrics if s not in ("test", "validation", "train", "wall_time_s", "generation")]:
        print(f"{split} {metrics_text(metrics[split])}")
    for split, scores in metrics.get("generation", {}).items():
        print(f"{split} generations ({scores['num_examples']}, greedy): exact match {scores.get('exact_match', 0):.4f}  "
              f"ROUGE-L {scores.get('rougeL', 0):.4f}  -> {cfg.output_dir}/generations.jsonl")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .experiments.sweep import SweepConfig, run_sweep

    cfg = dataclass_from_args(SweepConfig, args)
    summary = run_sweep(cfg)
    failed = [r for r in summary["rows"] if r["status"].startswith("failed")]
    elsewhere = [r for r in summary["rows"] if r["status"] != "done" and r not in failed]  # another worker's
    best = summary["best"]
    if best:
        print(
            f"best cell (validation {cfg.metric}): lr_A {best['lr_A']:.3g}, lr_B {best['lr_B']:.3g}, ratio {best['ratio']:.3g}; "
            f"test {cfg.metric} {best['test_' + cfg.metric]:.4f}  -> {cfg.output_dir}/heatmap.png"
        )
    for row in failed + elsewhere:
        print(f"cell lr_A {row['lr_A']:.3g} lr_B {row['lr_B']:.3g} seed {row['seed']}: {row['status']}", file=sys.stderr)
    return 1 if failed else 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from .experiments.compare import CompareConfig, run_compare, summary_markdown

    cfg = dataclass_from_args(CompareConfig, args)
    summary = run_compare(cfg)
    print(summary_markdown(summary, cfg), end="")
    print(f"-> {cfg.output_dir}/summary.md, metric.png, train_loss.png")
    return 1 if any(s["failed"] for s in summary["methods"].values()) else 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from .experiments.tune import TuneConfig, run_tune, tune_text

    cfg = dataclass_from_args(TuneConfig, args)
    print(tune_text(run_tune(cfg)))
    print(f"-> {cfg.output_dir}/trials.csv, best.yaml (loraplus train --config {cfg.output_dir}/best.yaml), history.png, "
          "params.png")
    return 0


def _cmd_toy(args: argparse.Namespace) -> int:
    from .experiments.toy import ToyCommand, toy_summary_text

    cfg = dataclass_from_args(ToyCommand, args)
    print(toy_summary_text(cfg.run()))
    print(f"-> {cfg.output_dir}/delta_scaling.png" + (", ratio_exponent.png" if cfg.train else ""))
    return 0


def _cmd_ratio(args: argparse.Namespace) -> int:
    from .ratio import RatioCommand, explain

    print(explain(dataclass_from_args(RatioCommand, args).run()))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .adapters import EvaluateCommand, evaluate_text

    print(evaluate_text(dataclass_from_args(EvaluateCommand, args).run()))
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from .generate import GenerateCommand

    print(dataclass_from_args(GenerateCommand, args).run()["output"])
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from .adapters import MergeCommand

    result = dataclass_from_args(MergeCommand, args).run()
    print(
        f"merged {result['model_class']} ({result['num_parameters'] / 1e6:.1f} M parameters) -> {result['out']}\n"
        f"largest |merged - adapter| logit on a probe batch: {result['max_abs_diff']:.2e}"
    )
    if "float64_error_merged" in result:
        print(
            f"above 1e-5 by float32 rounding: against the float64 adapter model the merged model is off by "
            f"{result['float64_error_merged']:.2e}, the float32 adapter model by {result['float64_error_adapter']:.2e}"
        )
    return 0


def _config_classes() -> dict:
    from .adapters import EvaluateCommand, MergeCommand
    from .config import TrainConfig
    from .experiments.compare import CompareConfig
    from .experiments.sweep import SweepConfig
    from .experiments.toy import ToyCommand
    from .experiments.tune import TuneConfig
    from .generate import GenerateCommand
    from .ratio import RatioCommand

    return {"train": TrainConfig, "sweep": SweepConfig, "compare": CompareConfig, "tune": TuneConfig, "toy": ToyCommand,
            "ratio": RatioCommand, "evaluate": EvaluateCommand, "merge": MergeCommand,
            "generate": GenerateCommand}  # fmt: skip


COMMANDS = {
    "train": (
        _cmd_train,
        "fine-tune a model with PEFT LoRA and the LoRA+ optimizer",
        "Fine-tune a sequence classifier (--task causal-lm: a causal LM answering with the label; --task sft: "
        "instruction tuning of a causal LM on instruction or chat data) with PEFT LoRA and LoRA+ "
        "(lr_B = loraplus_lr_ratio · lr_A); "
        "prints test metrics and writes the run folder.",
    ),
    "sweep": (
        _cmd_sweep,
        "test metric over an (lr_A, lr_B) grid, as a heatmap",
        "Run one short fine-tune per (lr_A, lr_B) cell and seed (resumable: finished cells are kept), then write "
        "results.csv, results.json and heatmap.png (diagonal lr_A = lr_B dashed, best cell boxed).",
    ),
    "compare": (
        _cmd_compare,
        "LoRA vs LoRA+ vs rsLoRA, DoRA, LoRA-FA, Riemannian LoRA, each with a tuned lr, over seeds",
        "Tune each method's lr on a shared grid (validation metric), run every seed at that lr, and write a "
        "summary table (mean ± std, steps-to-target, speed-up over LoRA), per-run result JSONs and curves.",
    ),
    "tune": (
        _cmd_tune,
        "tune lr_A (and λ) with Optuna: the paper's procedure, cheaper than a grid, resumable, shareable",
        "Run Optuna trials of --budget steps over lr_A (log-uniform, --lr-a-min..--lr-a-max) and λ (--ratio-min.."
        "--ratio-max, or fixed by --loraplus-lr-ratio), pruning unpromising ones at each evaluation; then run the "
        "best at --max-steps and write trials.csv, best.yaml and plots. The study lives in --storage (default "
        "OUTPUT_DIR/study.db): rerunning continues it, and workers anywhere can share it.",
    ),
    "toy": (
        _cmd_toy,
        "the Section 3 toy model: δ terms against width, and the optimal ratio's exponent",
        "Measure |δ¹| (A moves), |δ²| (B moves), |δ³| against width n under equal Θ(1), equal Θ(1/n) and LoRA+ "
        "learning rates (Hayou et al. 2024, Sec. 3), and fit how the best lr_B / lr_A of a trained "
        "teacher-student LoRA toy grows with n (paper: n^1; Su 2024: n^1/2).",
    ),
    "ratio": (
        _cmd_ratio,
        "recommend a loraplus_lr_ratio for a model (width rule; --probe measures δ_A / δ_B)",
        "Print a recommended loraplus_lr_ratio with its reasoning: a rule from the model's width (exponent "
        "measured on the toy model), and with --probe a short run per candidate ratio that finds where A and B "
        "change the output equally (feature-learning monitor).",
    ),
    "evaluate": (
        _cmd_evaluate,
        "metrics of a trained adapter on the run's test (or validation) split, or on other data",
        "Load the run's base model with its adapter, rebuild the run's data split (same dataset, fractions, seed), "
        "and print its metrics; on the run's own split they reproduce metrics.json.",
    ),
    "generate": (
        _cmd_generate,
        "the reply of a trained causal LM (an sft run, or a merged model) to a prompt",
        "Load the run's base model with its adapter (or a merged model folder), render the prompt with the chat "
        "template the run trained with, and print the reply (greedy unless --temperature > 0).",
    ),
    "merge": (
        _cmd_merge,
        "fold a trained adapter into its base model: one standalone safetensors model",
        "Merge W + (lora_alpha / r) · B A into every adapted layer, save the model, config and tokenizer to --out, "
        "and check that the saved model's outputs equal the adapter model's within 1e-5 before putting it in place.",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loraplus", description="LoRA+ fine-tuning (Hayou, Ghosh, Yu, ICML 2024).", allow_abbrev=False
    )
    sub = parser.add_subparsers(dest="command", required=True)
    classes = _config_classes()
    for name, (func, short, long) in COMMANDS.items():
        # allow_abbrev=False: `--lr 1e-3` must not silently mean `--lr-scheduler-type 1e-3`
        command = sub.add_parser(name, help=short, description=long, allow_abbrev=False)
        add_dataclass_options(command, classes[name])
        if name == "generate":  # loraplus generate --adapter RUN "prompt"
            command.add_argument("prompt_text", nargs="?", default=None, metavar="PROMPT", help="the user message")
        command.set_defaults(func=func)
    return parser


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time of each record (a caller may have replaced or closed the
    stream it was when ``main`` ran)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass


def _setup_logging() -> None:
    handler = _StdoutHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.set_name("loraplus-cli")
    log = logging.getLogger("loraplus")
    for old in [h for h in log.handlers if h.get_name() == "loraplus-cli"]:  # main() called again in one process:
        log.removeHandler(old)  # one handler, on the current stdout (an old one may point at a closed stream)
    log.addHandler(handler)
    log.setLevel(logging.INFO if is_main_process() else logging.WARNING)  # one group table, not one per rank
    log.propagate = False
    try:
        import transformers

        transformers.logging.set_verbosity_error()  # keep the head-initialisation notice out of the way
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass


def _unknown_options(command: str, extra: list[str]) -> str:
    """argparse's "unrecognized arguments", plus the option probably meant (``--lr`` -> ``--learning-rate``)."""
    import difflib

    from .configfile import ALIASES

    cls = _config_classes()[command]
    fields = [f.name for f in dataclasses.fields(cls) if not set_by_experiment(cls, f.name)]
    hints = []
    for token in extra:
        name = token[2:].split("=", 1)[0].replace("-", "_") if token.startswith("--") else ""
        refusal = set_by_experiment(cls, ALIASES.get(name, name))
        if refusal:
            return refusal
        guess = ALIASES.get(name) or next(iter(difflib.get_close_matches(name, fields, n=1, cutoff=0.6)), None)
        if name and guess in fields:
            hints.append(f"--{guess.replace('_', '-')} for {token.split('=', 1)[0]}")
    hint = f"; did you mean {', '.join(hints)}?" if hints else ""
    return f"unrecognized arguments: {' '.join(extra)}{hint} (see loraplus {command} --help)"


def _close_progress_bars() -> None:
    """End the line of a progress bar cut short by an error, so the error starts a line of its own."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


@contextlib.contextmanager
def _one_line_warnings(command: str):
    """Print each distinct warning once, on one line (``loraplus train: warning: ...``), without a source line."""
    seen: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        text = text if category is UserWarning else f"{category.__name__}: {text}"
        if text not in seen:
            seen.add(text)
            print(f"loraplus {command}: warning: {text}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("always", UserWarning)  # shown once each by `show`, not once per code location
        # transformers 5 calls its own deprecated property while training: nothing for the user to act on
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        warnings.showwarning = show
        yield


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``loraplus`` console script; returns the exit status."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        parser.exit(2, f"loraplus {args.command}: error: {_unknown_options(args.command, extra)}\n")
    _setup_logging()
    try:
        with _one_line_warnings(args.command):
            return args.func(args)
    except _USER_ERRORS as err:
        if args.debug or os.environ.get("LORAPLUS_DEBUG"):
            raise
        _close_progress_bars()
        message = " ".join(str(err).split())  # one line, whatever the library wrote
        print(f"loraplus {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"loraplus {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
