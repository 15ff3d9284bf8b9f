"""The ``loraplus`` command. Thin: options come from validated dataclasses, help from their field docs.

Errors a user can fix (bad values, missing files, a finished run in the way) print one line and exit 2;
no Python traceback unless ``LORAPLUS_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import types
import typing

__all__ = ["main"]

# ModuleNotFoundError: a built-in's PyPI package is missing (the message names the pip command).
_USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, PermissionError, NotADirectoryError, ModuleNotFoundError)


def _base_type(annotation):
    """(type, optional) from a field annotation such as ``float | None``."""
    hint = annotation
    args = typing.get_args(hint)
    optional = type(None) in args
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in args if a is not type(None))
    return hint, optional


def _parse_tuple(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def add_dataclass_options(parser: argparse.ArgumentParser, cls) -> None:
    """One ``--option-name`` per field of ``cls`` (a dataclass); help from ``field.metadata['help']``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kind, _ = _base_type(hints[f.name])
        help_text = f.metadata.get("help", "")
        if kind is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
            continue
        convert = _parse_tuple if typing.get_origin(kind) is tuple else kind
        parser.add_argument(
            flag, dest=f.name, type=convert, default=f.default, metavar=f.name.upper(),
            help=help_text,
        )  # fmt: skip


def dataclass_from_args(cls, args: argparse.Namespace):
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import TrainConfig
    from .train import run_train

    cfg = dataclass_from_args(TrainConfig, args)
    metrics = run_train(cfg)
    test = metrics["test"]
    print(
        f"test accuracy {test['accuracy']:.4f}  macro-F1 {test['macro_f1']:.4f}  loss {test['loss']:.4f}  "
        f"({metrics['train']['steps']} steps, {metrics['wall_time_s']:.0f} s)  -> {cfg.output_dir}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .config import TrainConfig

    parser = argparse.ArgumentParser(prog="loraplus", description="LoRA+ fine-tuning (Hayou, Ghosh, Yu, ICML 2024).")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train",
        help="fine-tune a model with PEFT LoRA and the LoRA+ optimizer",
        description="Fine-tune a sequence classifier with PEFT LoRA and LoRA+ (lr_B = loraplus_lr_ratio · lr_A); "
        "prints test metrics and writes the run folder.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_dataclass_options(train, TrainConfig)
    train.set_defaults(func=_cmd_train)
    return parser


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("loraplus")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        import transformers

        transformers.logging.set_verbosity_error()  # keep the head-initialisation notice out of the way
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``loraplus`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging()
    try:
        return args.func(args)
    except _USER_ERRORS as err:
        if os.environ.get("LORAPLUS_DEBUG"):
            raise
        print(f"loraplus {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"loraplus {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
