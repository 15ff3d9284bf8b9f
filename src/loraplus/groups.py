"""Find LoRA factor pairs in any module tree and build named LoRA+ parameter groups.

The core of loraplus: imports torch only.

LoRA adds ``s · B A x`` to a frozen layer, with ``A`` of shape (r, in) and ``B`` of shape (out, r).
LoRA+ trains ``B`` (the output-side factor) with a learning rate ``loraplus_lr_ratio`` times larger than
``A``'s. Source: Hayou, Ghosh, Yu 2024, "LoRA+", Sec. 3 and Algorithm 1.

Grouping policy (one pass over ``model.named_parameters()``; every trainable tensor lands in exactly one group):

=====================  ==========================================  ======================  ==============
group                  what                                        lr                      weight decay
=====================  ==========================================  ======================  ==============
``lora_A``             input-side factors (A, ``lora_a``, down…)    ``lr``                  ``weight_decay``
``lora_B``             output-side factors (B, ``lora_b``, up…)     ``lr · ratio``          ``weight_decay``
``lora_embedding``     both factors of an embedding LoRA, only      ``loraplus_lr_embedding``  ``weight_decay``
                       when ``loraplus_lr_embedding`` is given
``other``              every other trainable tensor with ≥ 2 dims   ``lr``                  ``weight_decay``
                       (classifier heads, ``modules_to_save``)
``no_decay``           biases, normalisation weights (a class       ``lr``                  0
                       named ``*Norm``/``*Norm2d``), DoRA magnitudes,
                       any other tensor with < 2 dims
``lora_A_no_decay``,   biases of factor modules (PEFT               as the factor           0
``lora_B_no_decay``    ``lora_bias=True``)
=====================  ==========================================  ======================  ==============

Unlike the authors' code and PEFT, a 1-D tensor is not sent to the B group for being 1-D: a bias or a norm
scale is not a LoRA factor, and giving it ``lr · ratio`` changes the model's non-LoRA training.
Empty groups are dropped.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, fields

from torch import nn

__all__ = [
    "FACTOR_CONVENTIONS",
    "LoraPair",
    "DEFAULT_LORAPLUS_LR_RATIO",
    "LoraPlusConfig",
    "as_float",
    "build_groups",
    "find_lora_pairs",
    "loraplus_param_groups",
    "resolve_config",
]

# (A name, B name, generic): one row per framework. A "generic" pair of names is also used by
# ordinary layers, so it counts as LoRA only when both factors are present with low-rank shapes.
FACTOR_CONVENTIONS: tuple[tuple[str, str, bool], ...] = (
    ("lora_A", "lora_B", False),  # PEFT Linear/Conv, microsoft loralib, litgpt
    ("lora_embedding_A", "lora_embedding_B", False),  # PEFT Embedding
    ("lora_a", "lora_b", False),  # torchtune
    ("lora_down", "lora_up", False),  # kohya sd-scripts
    ("linear_in", "linear_out", True),  # Megatron / NeMo adapters
)
_ROLE_OF = {a: ("A", b, generic) for a, b, generic in FACTOR_CONVENTIONS}
_ROLE_OF.update({b: ("B", a, generic) for a, b, generic in FACTOR_CONVENTIONS})
_MAGNITUDE = "lora_magnitude_vector"  # PEFT DoRA: neither A nor B
# LayerNorm, RMSNorm, LlamaRMSNorm, GroupNorm, BatchNorm2d, ... (not Denormalize or NormalHead)
_NORM_CLASS = re.compile(r"Norm(\d+d)?$")


def as_float(name: str, value: object, *, allow_zero: bool = False) -> float:
    """Return ``value`` as a finite float > 0 (>= 0 with ``allow_zero``).

    Strings such as ``"1e-6"`` (YAML reads these as str) are converted. Raises ``ValueError`` naming
    ``name`` and the bad value for booleans, non-numeric strings, NaN, ±inf and out-of-range numbers.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)) and not hasattr(value, "__float__"):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int too large for a float (10**400)
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if number < 0 or (number == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return number


DEFAULT_LORAPLUS_LR_RATIO = 16.0  # λ = 2^4, the paper's default (Hayou et al. 2024, Sec. 4)


@dataclass(frozen=True)
class LoraPlusConfig:
    """The LoRA+ options, validated on construction; built once and passed unchanged to every entry point
    (``loraplus_param_groups``, ``create_loraplus_optimizer``, ``LoraPlusTrainingArguments``, ``LoraPlusMixin``,
    ``loraplus.lightning.loraplus_optimizers``). The base lr (lr_A) is not part of it: the trainer or the caller
    owns it.

    Attributes:
        loraplus_lr_ratio: λ = lr_B / lr_A, default 16 = 2^4 (Sec. 4 of the paper). Must be > 0;
            values < 1 give B the *smaller* rate and warn.
        loraplus_lr_embedding: absolute lr for both factors of embedding LoRA layers; ``None`` (default)
            treats them like any other pair (A at lr, B at lr·λ). The authors' code and PEFT default to 1e-6,
            which all but freezes embedding adapters.
        loraplus_lr_other: absolute lr of every trainable non-LoRA tensor (classification heads,
            ``modules_to_save``, biases, norms, DoRA magnitudes); ``None`` (default) gives them lr_A.
        weight_decay: decoupled weight decay (>= 0, default 0) for every group except the no-decay ones.

    Raises:
        ValueError: a value that is not a finite number in range (strings like "1e-6" are converted).
    """

    loraplus_lr_ratio: float = DEFAULT_LORAPLUS_LR_RATIO
    loraplus_lr_embedding: float | None = None
    loraplus_lr_other: float | None = None
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "loraplus_lr_ratio", as_float("loraplus_lr_ratio", self.loraplus_lr_ratio))
        for name in ("loraplus_lr_embedding", "loraplus_lr_other"):
            if getattr(self, name) is not None:
                set_(self, name, as_float(name, getattr(self, name)))
        set_(self, "weight_decay", as_float("weight_decay", self.weight_decay, allow_zero=True))
        if self.loraplus_lr_ratio < 1:
            warnings.warn(
                f"loraplus_lr_ratio={self.loraplus_lr_ratio} < 1 gives lora_B a smaller lr than lora_A; "
                "LoRA+ uses ratios >> 1 (default 16)",
                stacklevel=3,
            )

    def group_options(self, lr: float) -> dict[str, tuple[float, float]]:
        """``{group name: (lr, weight decay)}`` for base lr ``lr`` (lr_A, > 0); see the module docstring."""
        lr = as_float("lr", lr)
        wd, lr_b = self.weight_decay, lr * self.loraplus_lr_ratio
        if not math.isfinite(lr_b):
            raise ValueError(f"lr_B = lr · loraplus_lr_ratio = {lr!r} · {self.loraplus_lr_ratio!r} is not finite")
        lr_other = self.loraplus_lr_other or lr
        return {
            "lora_A": (lr, wd),
            "lora_B": (lr_b, wd),
            "lora_embedding": (self.loraplus_lr_embedding or lr, wd),
            "other": (lr_other, wd),
            "no_decay": (lr_other, 0.0),
            "lora_A_no_decay": (lr, 0.0),
            "lora_B_no_decay": (lr_b, 0.0),
        }


@dataclass(frozen=True)
class LoraPair:
    """One LoRA factor pair found in a model.

    ``a_name``/``b_name`` are full parameter names (``None`` when that factor is absent or not a parameter),
    ``prefix`` the dotted path of the adapted layer, ``embedding`` whether the adapted layer is an embedding.
    """

    prefix: str
    a_name: str | None
    b_name: str | None
    embedding: bool


def _split(name: str) -> tuple[int, str, str, bool] | None:
    """Locate the factor token in a parameter name: (index, role, partner token, generic) or None."""
    parts = name.split(".")
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] in _ROLE_OF:
            role, partner, generic = _ROLE_OF[parts[i]]
            return i, role, partner, generic
    return None


def _low_rank(a_shape: tuple[int, ...], b_shape: tuple[int, ...], generic: bool) -> bool:
    """A (r·g, in, …) and B (out, r, …): B's rank dim divides A's (g > 1 for loralib MergedLinear).

    Generic names must also be low rank (r <= min(in, out)), or an ordinary 2-layer MLP would qualify.
    """
    r_a, r_b = a_shape[0], b_shape[1]
    fits = r_b > 0 and r_a % r_b == 0
    return fits and (not generic or r_b <= min(a_shape[1], b_shape[0]))


def _is_embedding(model: nn.Module, prefix: str, token: str) -> bool:
    if token.startswith("lora_embedding"):
        return True
    try:
        owner = model.get_submodule(prefix)
    except AttributeError:
        return False
    return isinstance(owner, nn.Embedding)  # loralib's Embedding holds lora_A/lora_B itself


def find_lora_pairs(model: nn.Module) -> dict[str, LoraPair]:
    """Return ``{parameter name: LoraPair}`` for every LoRA factor in ``model`` (frozen ones included).

    A factor is recognised by the naming conventions in ``FACTOR_CONVENTIONS`` (PEFT, loralib/litgpt,
    torchtune, kohya, Megatron) and paired with its partner by the shared prefix and suffix
    (``x.lora_A.default.weight`` ↔ ``x.lora_B.default.weight``). Where both factors are present their shapes
    must fit A (r·g, in) and B (out, r).

    Raises:
        ValueError: both factors present with shapes that cannot be A (r, in) and B (out, r) under an
            unambiguous LoRA naming convention (for the generic Megatron names such tensors are simply not
            LoRA factors).
    """
    params = dict(model.named_parameters(remove_duplicate=False))
    found: dict[str, LoraPair] = {}
    for name in params:
        hit = _split(name)
        if hit is None or name in found:
            continue
        i, role, partner, generic = hit
        parts = name.split(".")
        other = ".".join(parts[:i] + [partner] + parts[i + 1 :])
        a_name, b_name = (name, other) if role == "A" else (other, name)
        a, b = params.get(a_name), params.get(b_name)
        a_name, b_name = (a_name if a is not None else None), (b_name if b is not None else None)
        if a is not None and b is not None and a.ndim >= 2 and b.ndim >= 2:
            if not _low_rank(tuple(a.shape), tuple(b.shape), generic):
                if generic:
                    continue  # e.g. an ordinary MLP's linear_in / linear_out
                raise ValueError(
                    f"{a_name} {tuple(a.shape)} and {b_name} {tuple(b.shape)} are named as a LoRA pair but "
                    "their shapes are not A (r, in) and B (out, r)"
                )
        elif generic:
            continue  # lone or 1-D linear_in / linear_out: not evidence of LoRA
        prefix = ".".join(parts[:i])
        pair = LoraPair(prefix, a_name, b_name, _is_embedding(model, prefix, parts[i]))
        found.update({n: pair for n in (a_name, b_name) if n is not None})
    return found


def _no_decay(name: str, p: nn.Parameter, norm_params: set[int]) -> bool:
    return p.ndim < 2 or name.endswith("bias") or id(p) in norm_params


def _norm_param_ids(model: nn.Module) -> set[int]:
    """ids of parameters owned by normalisation modules (LayerNorm, RMSNorm, custom *Norm classes)."""
    ids: set[int] = set()
    for module in model.modules():
        if _NORM_CLASS.search(type(module).__name__):
            ids.update(id(p) for p in module.parameters(recurse=False))
    return ids


def _group_of(name: str, p: nn.Parameter, pair: LoraPair | None, cfg: LoraPlusConfig, norm_ids: set[int]) -> str:
    if pair is not None and _MAGNITUDE not in name:
        if pair.embedding and cfg.loraplus_lr_embedding is not None:
            return "lora_embedding"
        role = "lora_A" if name == pair.a_name else "lora_B"
        return f"{role}_no_decay" if name.endswith("bias") else role
    return "no_decay" if _no_decay(name, p, norm_ids) else "other"


def loraplus_param_groups(
    model: nn.Module,
    *,
    lr: float,
    loraplus_lr_ratio: float = DEFAULT_LORAPLUS_LR_RATIO,
    loraplus_lr_embedding: float | None = None,
    loraplus_lr_other: float | None = None,
    weight_decay: float = 0.0,
    config: LoraPlusConfig | None = None,
) -> list[dict]:
    """Named LoRA+ parameter groups for ``torch.optim`` optimizers.

    Every parameter with ``requires_grad=True`` appears in exactly one group (by identity, tied tensors once);
    frozen parameters appear in none; empty groups are dropped. Each group is
    ``{"name": str, "params": list[Parameter], "lr": float, "weight_decay": float}``; see the module docstring
    for the policy. lr_B = ``loraplus_lr_ratio`` · ``lr``. Source: Hayou et al. 2024, Sec. 3–4, Algorithm 1.

    Args:
        model: any ``nn.Module`` (a PEFT model, a torchtune/loralib/kohya/Megatron-style model, ...).
        lr: learning rate (> 0) of A factors and non-LoRA parameters.
        loraplus_lr_ratio, loraplus_lr_embedding, loraplus_lr_other, weight_decay: the fields of
            ``LoraPlusConfig`` (defaults 16, None, None, 0).
        config: a ready ``LoraPlusConfig`` instead of the four keywords (give one or the other).

    Raises:
        ValueError: a bad number (names the value), no trainable parameters, mis-shaped LoRA pairs, or both
            ``config`` and a keyword option.

    Warns:
        UserWarning: when no LoRA factor is trainable (the ratio then changes nothing), or λ < 1.
    """
    cfg = resolve_config(config, loraplus_lr_ratio=loraplus_lr_ratio, loraplus_lr_embedding=loraplus_lr_embedding,
                         loraplus_lr_other=loraplus_lr_other, weight_decay=weight_decay)  # fmt: skip
    return build_groups(model, lr, cfg)


def resolve_config(config: LoraPlusConfig | None, **options) -> LoraPlusConfig:
    """``config`` as given, or a ``LoraPlusConfig`` of the keyword ``options`` (their defaults mean "not given").

    Raises:
        ValueError: ``config`` together with a keyword that differs from its default, or ``config`` of another type.
    """
    defaults = {f.name: f.default for f in fields(LoraPlusConfig)}
    if config is None:
        return LoraPlusConfig(**options)
    if not isinstance(config, LoraPlusConfig):
        raise ValueError(f"config must be a LoraPlusConfig, got {type(config).__name__}")
    given = sorted(name for name, value in options.items() if value != defaults[name])
    if given:
        raise ValueError(f"give config= or the LoRA+ keywords, not both (got config and {', '.join(given)})")
    return config


def build_groups(model: nn.Module, lr: float, cfg: LoraPlusConfig) -> list[dict]:
    """``loraplus_param_groups`` for an already validated ``LoraPlusConfig`` and base lr ``lr``."""
    pairs = find_lora_pairs(model)
    norm_ids = _norm_param_ids(model)
    members: dict[str, list] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        members.setdefault(_group_of(name, p, pairs.get(name), cfg, norm_ids), []).append(p)
    if not seen:
        raise ValueError(
            f"{type(model).__name__} has no trainable parameters (requires_grad=True). An adapter loaded with "
            "PeftModel.from_pretrained is frozen unless you pass is_trainable=True; a model prepared for LoRA "
            "needs its adapters injected first (peft.get_peft_model)."
        )
    if not any(g.startswith(("lora_A", "lora_B", "lora_embedding")) for g in members):
        warnings.warn(
            f"no trainable LoRA factor found in {type(model).__name__} (looked for "
            f"{', '.join(a + '/' + b for a, b, _ in FACTOR_CONVENTIONS)}): loraplus_lr_ratio has no effect",
            stacklevel=3,
        )
    options = cfg.group_options(lr)
    return [
        {"name": name, "params": members[name], "lr": options[name][0], "weight_decay": options[name][1]}
        for name in options
        if name in members
    ]
