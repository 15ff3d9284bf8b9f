"""Read a run folder of ``loraplus train`` (or an adapter folder): where its adapter is and what the run recorded.

``evaluate``, ``merge`` and ``generate`` start here.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from .config import TrainConfig
from .models import looks_like_path, resolve_model

__all__ = ["RunFolder", "adapter_tokenizer", "find_run"]

logger = logging.getLogger("loraplus")


@dataclass(frozen=True)
class RunFolder:
    """Where an adapter lives and what its run recorded.

    Attributes:
        adapter: the PEFT adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``).
        config: the run's ``TrainConfig`` (``None`` for a plain PEFT adapter).
        labels: class names per label id (``None`` for a plain PEFT adapter).
        model_path: the base model the adapter was trained on (a folder or hub id).
        task_type: PEFT's ``task_type`` of the adapter (``SEQ_CLS``, ``CAUSAL_LM``, ...).
        metrics: the run's ``metrics.json`` (``None`` when absent).
    """

    adapter: Path
    config: TrainConfig | None
    labels: list[str] | None
    model_path: str
    task_type: str | None
    metrics: dict | None


def find_run(path: str | Path, base_model: str | None = None) -> RunFolder:
    """Read the run folder (or adapter folder) at ``path``.

    The base model is ``base_model`` if given, else the run's recorded model folder, else (that folder gone, e.g.
    on another machine) the run's ``model`` option resolved again, else ``adapter_config.json``'s
    ``base_model_name_or_path``.

    Raises:
        FileNotFoundError: ``path`` does not exist, or holds no ``adapter_config.json`` (itself or in ``adapter/``).
        ValueError: an unreadable ``config.json``/``adapter_config.json``.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"adapter {str(root)!r} does not exist")
    if (root / "adapter_config.json").is_file():
        adapter, run = root, root.parent
    elif (root / "adapter" / "adapter_config.json").is_file():
        adapter, run = root / "adapter", root
    else:
        raise FileNotFoundError(
            f"no adapter_config.json in {str(root)!r} or {str(root / 'adapter')!r}: give a run folder of "
            "`loraplus train` or a PEFT adapter folder"
        )
    adapter_config = _read_json(adapter / "adapter_config.json")
    run_info = _read_json(run / "config.json") if (run / "config.json").is_file() else None
    if run_info is not None and "config" not in run_info:
        run_info = None  # a config.json of something else (e.g. a model folder), not a loraplus run
    cfg = labels = None
    model_path = adapter_config.get("base_model_name_or_path")
    if run_info is not None:
        options = {k: v for k, v in run_info["config"].items() if k in TrainConfig.__dataclass_fields__}
        try:
            cfg = TrainConfig(**{**options, "overwrite": False, "resume": False, "report_to": ("none",)})
        except ValueError as err:
            raise ValueError(f"{str(run / 'config.json')!r}: {err}") from None
        labels = list(run_info.get("labels") or []) or None
        model_path = run_info.get("model_path") or model_path
    if base_model is not None:
        model_path = resolve_model(base_model)
    elif model_path and not _local_base_exists(model_path):  # the recorded folder is gone (another machine?)
        try:
            model_path = resolve_model(cfg.model if cfg is not None else model_path)
        except ValueError:
            raise ValueError(
                f"the base model {model_path!r} recorded with the adapter is not there any more; give --base-model"
            ) from None
    if not model_path:
        raise ValueError(f"{str(adapter / 'adapter_config.json')!r} names no base model; give --base-model")
    metrics = None
    if run_info is not None and (run / "metrics.json").is_file():
        try:
            metrics = _read_json(run / "metrics.json")
        except ValueError:  # only used to compare with; the evaluation itself does not need it
            logger.warning("%s is unreadable: no comparison with the run's metrics", run / "metrics.json")
    return RunFolder(adapter, cfg, labels, str(model_path), adapter_config.get("task_type"), metrics)


def _local_base_exists(path: str) -> bool:
    """False only for a local path (``models.looks_like_path``) that does not exist; a hub id counts as present."""
    return Path(path).expanduser().exists() or not looks_like_path(path)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read {str(path)!r}: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{str(path)!r} does not hold a JSON object")
    return data


def adapter_tokenizer(run: RunFolder, fallback):
    """The tokenizer saved with the adapter (with the chat template the run trained with), else ``fallback``;
    pad = EOS when it has no pad token."""
    if not (run.adapter / "tokenizer_config.json").is_file():
        return fallback
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(run.adapter))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
