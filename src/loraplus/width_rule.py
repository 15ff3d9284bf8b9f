"""The ratio rules: ``auto`` (λ = 4) and the width rule λ(n) = 16 · (n / 768)^0.918 for a model of hidden width n.

The paper's argument (Hayou et al. 2024, Sec. 3) says the best ratio grows with width, λ ∝ n^e (e = 1 in the
paper, 1/2 in Su 2024). The width rule's exponent is the one measured by ``loraplus toy``
(``experiments/toy/ratio_exponent.json``: trained toy, fixed data, the upper edge of the near-optimal band,
e = 0.918); its constant is anchored at the paper's default λ = 2^4 = 16 for width 768 (RoBERTa-base / GPT-2,
its GLUE models). ``loraplus ratio`` reports it.

``--loraplus-lr-ratio auto`` is ``AUTO_RATIO`` = 4, the paper's advice for LLMs (2^1–2^2, Sec. 5): of the rules
compared by ``experiments/report_auto.py`` (the width rule, √n, the paper's default 16, λ = 2 and λ = 4) it lies
nearest the near-optimal ratios measured on real models here (sweeps of minilm-l6 on bbc-news and multiemo and of
smollm2-135m on sms-spam, instruction tuning of smollm2-135m) and within the paper's Llama-7b advice: its distance
sums to 2.75 factors of 2, the width rule's to 7.73 (``experiments/auto-rule.json``). At widths 384 and 576 the
measured optima show no growth with width.
"""

from __future__ import annotations

from .models import resolve_model

__all__ = ["ANCHOR_RATIO", "ANCHOR_WIDTH", "AUTO_RATIO", "TOY_EXPONENT", "model_width", "ratio_from_width",
           "width_rule_for"]  # fmt: skip

TOY_EXPONENT = 0.918  # experiments/toy/ratio_exponent.json: regimes.fixed.train.exponents.band_hi.pooled
ANCHOR_WIDTH, ANCHOR_RATIO = 768, 16.0  # the paper's default λ for its width-768 GLUE models
AUTO_RATIO = 4.0  # experiments/auto-rule.json: the rule nearest the measured optima (module docstring)


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
