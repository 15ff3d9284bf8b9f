"""``loraplus generate``: try what was trained. The model's reply to one prompt, through its chat template.

Takes a run folder of ``loraplus train`` (or its ``adapter/`` folder, or a plain PEFT adapter folder): the base
model comes from the run as in ``loraplus evaluate`` (``--base-model`` overrides), the tokenizer (and so the
chat template the run trained with) from the adapter folder. Or a merged model folder (``loraplus merge``) or
any causal LM folder: loaded as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .runs import adapter_tokenizer, find_run
from .config import _opt, coerce_fields
from .generation import GenerationOptions, generate
from .models import load_adapter
from .tasks import get_task
from .tasks.causal_lm import load_causal_lm

__all__ = ["GenerateCommand", "load_for_generation"]


@dataclass(frozen=True)
class GenerateCommand:
    """Options of ``loraplus generate``."""

    adapter: str = _opt("", "run folder of `loraplus train` (sft or causal-lm), its adapter/ folder, a PEFT "
                        "adapter folder, or a merged/plain causal LM folder")  # fmt: skip
    prompt: str = _opt("", "the user message (also as the last positional argument)")
    system: str | None = _opt(None, "a system message before the prompt (default: the chat template's own, if any)")
    base_model: str | None = _opt(None, "base model folder or hub id (default: the one the run recorded)")
    max_new_tokens: int = _opt(128, "tokens generated at most")
    temperature: float = _opt(0.0, "0 = greedy (default); > 0 samples at this temperature")
    top_p: float = _opt(1.0, "nucleus sampling mass in (0, 1] (with temperature > 0)")
    seed: int = _opt(0, "seed of the sampling")

    def __post_init__(self) -> None:
        coerce_fields(self)
        if not self.adapter.strip():
            raise ValueError("give --adapter RUN_FOLDER (a run of `loraplus train --task sft`) or a model folder")
        if not self.prompt.strip():
            raise ValueError('give the prompt: loraplus generate --adapter RUN "your message"')
        self.options()  # validates the decoding options

    def options(self) -> GenerationOptions:
        return GenerationOptions(self.max_new_tokens, self.temperature, self.top_p, self.seed)

    def run(self) -> dict:
        model, tokenizer, source = load_for_generation(self.adapter, self.base_model)
        turns = ([{"role": "system", "content": self.system}] if self.system else []) + [
            {"role": "user", "content": self.prompt}]  # fmt: skip
        return {"source": source, "prompt": turns, "output": generate(model, tokenizer, turns, self.options())}


def _is_model_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("model*.safetensors"))


def _check_causal_folder(root: Path) -> None:
    """Refuse a model folder whose ``config.json`` names no causal-LM architecture (a merged classifier)."""
    import json

    try:
        architectures = json.loads((root / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError):
        return  # from_pretrained explains an unreadable config
    if architectures and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        raise ValueError(f"{str(root)!r} is a {architectures[0]} model, not a causal LM: it cannot generate text")


def load_for_generation(path: str, base_model: str | None = None):
    """``(model in eval mode, tokenizer, what was loaded)`` for ``path`` (see the module docstring).

    Raises:
        FileNotFoundError: ``path`` is missing, or a folder with neither an adapter nor model weights.
        ValueError: a classification run (no text to generate), or a model that cannot be loaded.
    """
    root = Path(path).expanduser()
    if root.is_dir() and _is_model_folder(root) and not (root / "adapter_config.json").is_file():
        _check_causal_folder(root)
        tokenizer, model = load_causal_lm(str(root))
        return model.eval(), tokenizer, f"model {root}"
    if root.is_dir() and (root / "config.json").is_file() and not (root / "adapter").exists() and not any(
        root.glob("adapter_config.json")
    ):  # fmt: skip
        raise FileNotFoundError(f"{str(root)!r} holds no adapter/ and no model weights: an unfinished run?")
    run = find_run(root, base_model)
    task = get_task(run.config.task) if run.config is not None else None
    if (task is not None and task.peft_task_type != "CAUSAL_LM") or run.task_type not in (None, "CAUSAL_LM"):
        raise ValueError(f"{str(run.adapter)!r} is a {run.task_type or task.name} adapter, not a causal LM's (a "
                         "run of --task sft or causal-lm): it cannot generate text")  # fmt: skip
    try:
        tokenizer, base = load_causal_lm(run.model_path)
    except OSError as err:
        raise ValueError(f"cannot load the base model {run.model_path!r}: {' '.join(str(err).split())[:300]}") from None
    tokenizer = adapter_tokenizer(run, tokenizer)  # the chat template the run trained with
    return load_adapter(base, run.adapter), tokenizer, f"adapter {run.adapter} on {run.model_path}"
