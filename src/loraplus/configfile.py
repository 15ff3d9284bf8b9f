"""YAML run configs like the anchors' (LLaMA-Factory, axolotl): field names of the field, safe loading."""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path

from .config import set_by_experiment

__all__ = ["ALIASES", "read_config_file"]

# Names used by Hugging Face TrainingArguments, PEFT and the anchors -> our field names.
ALIASES: dict[str, str] = {
    "lora_r": "r",
    "lora_rank": "r",
    "lr": "learning_rate",
    "num_train_epochs": "epochs",
    "per_device_train_batch_size": "batch_size",
    "per_device_eval_batch_size": "eval_batch_size",
    "max_seq_length": "max_length",
    "cutoff_len": "max_length",
    "sequence_len": "max_length",
    "lora_target": "target_modules",
    "lora_target_modules": "target_modules",
    "model_name_or_path": "model",
    "base_model": "model",
    "lora_dropout_p": "lora_dropout",
}


def _repeated_key(text: str) -> str | None:
    """The first option given twice at the top of a YAML document (PyYAML would keep the last silently), found on
    the composed node tree (nothing is constructed)."""
    import yaml

    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if not isinstance(node, yaml.MappingNode):
        return None
    seen = set()
    for key, _ in node.value:
        if key.value in seen:
            return key.value
        seen.add(key.value)
    return None


def read_config_file(path: str | Path, cls) -> dict:
    """Read a YAML (or JSON) mapping of options for dataclass ``cls``; keys may use ``-`` or aliases.

    Values are returned as written (``"1e-6"`` stays a string: the dataclass converts it). Parsed with
    ``yaml.safe_load`` (no Python objects).

    Raises:
        FileNotFoundError: no such file; IsADirectoryError: a folder.
        ValueError: not a mapping, an unknown key (with the closest valid key), a key the experiment ``cls`` sets
            itself (``SET_BY_EXPERIMENT``), or the same option twice.
    """
    import yaml

    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"config file {str(path)!r} is a folder; give a YAML file")
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} not found")
    try:
        text = path.read_text(encoding="utf-8")
        raw = yaml.safe_load(text)
        twice = _repeated_key(text) if isinstance(raw, dict) else None
    except yaml.YAMLError as err:
        raise ValueError(f"config file {str(path)!r} is not valid YAML: {err}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"config file {str(path)!r} must hold a mapping of option: value, got {type(raw).__name__}")
    if twice is not None:
        raise ValueError(f"config file {str(path)!r} gives key {twice!r} twice; keep one")
    fields = [f.name for f in dataclasses.fields(cls)]
    options: dict = {}
    for key, value in raw.items():
        name = ALIASES.get(str(key).replace("-", "_"), str(key).replace("-", "_"))
        if name not in fields:
            close = difflib.get_close_matches(name, fields + list(ALIASES), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(fields)}"
            raise ValueError(f"unknown key {key!r} in {str(path)!r}{hint}")
        refusal = set_by_experiment(cls, name)
        if refusal:
            raise ValueError(f"key {key!r} in {str(path)!r}: {refusal}")
        if name in options:
            raise ValueError(f"{str(path)!r} sets {name!r} twice (as {key!r} and an alias)")
        options[name] = value
    return options
