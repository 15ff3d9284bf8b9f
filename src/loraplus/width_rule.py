"""The width rule for ``loraplus_lr_ratio``: λ(n) = 16 · (n / 768)^0.918 for a model of hidden width n.

The paper's argument (Hayou et al. 2024, Sec. 3) says the best ratio grows with width, λ ∝ n^e (e = 1 in the
paper, 1/2 in Su 2024). The exponent used here is the one measured by ``loraplus toy``
(``experiments/toy/ratio_exponent.json``: trained toy, fixed data, the upper edge of the near-optimal band,
e = 0.918); the constant is anchored at the paper's default λ = 2^4 = 16 for width 768 (RoBERTa-base / GPT-2,
its GLUE models). ``loraplus train --loraplus-lr-ratio auto`` and ``loraplus ratio`` use it.
"""

from __future__ import annotations

from .models import resolve_model

__all__ = ["ANCHOR_RATIO", "ANCHOR_WIDTH", "TOY_EXPONENT", "model_width", "ratio_from_width", "width_rule_for"]

TOY_EXPONENT = 0.918  # experiments/toy/ratio_exponent.json: regimes.fixed.train.exponents.band_hi.pooled
ANCHOR_WIDTH, ANCHOR_RATIO = 768, 16.0  # the paper's default λ for its width-768 GLUE models


def width_rule_for(model: str, trust_remote_code: bool = False) -> tuple[int, float]:
    """(width n, width-rule ratio) for a built-in name, model folder or hub id (reads only its config)."""
    from transformers import AutoConfig

    n = model_width(AutoConfig.from_pretrained(resolve_model(model), trust_remote_code=trust_remote_code))
    return n, ratio_from_width(n)


def model_width(config) -> int:
    """The hidden width n of a transformers config (``hidden_size``, ``d_model`` or ``n_embd``).

    Raises:
        ValueError: the config has none of these.
    """
    for key in ("hidden_size", "d_model", "n_embd", "dim"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ValueError(f"cannot tell the width of {type(config).__name__}: no hidden_size, d_model or n_embd")


def ratio_from_width(n: int) -> float:
    """λ(n) = 16 · (n / 768)^0.918 (see the module docstring for where both numbers come from)."""
    if not isinstance(n, int) or n <= 0:
        raise ValueError(f"width must be a positive integer, got {n!r}")
    return ANCHOR_RATIO * (n / ANCHOR_WIDTH) ** TOY_EXPONENT
