"""``loraplus ratio``: a recommended ``loraplus_lr_ratio`` for a model, with its reasoning.

The recommendation without ``--probe`` is ``auto``'s λ = 4 (``width_rule.AUTO_RATIO``: the paper's advice for
LLMs, and of the rules compared on the ratios measured here the nearest); the width rule is reported beside it.

1. The width rule, from the model's width n (no data, instant). The paper's argument (Hayou et al. 2024, Sec. 3) says the best
   ratio grows with width, λ ∝ n^e (e = 1 in the paper, 1/2 in Su 2024). The exponent used here is the one
   measured by ``loraplus toy`` (``experiments/toy/ratio_exponent.json``: trained toy, fixed data, the upper
   edge of the near-optimal band, e = 0.918); the constant is anchored at the paper's default λ = 2^4 = 16
   for width 768 (RoBERTa-base / GPT-2, its GLUE models): ``λ(n) = 16 · (n / 768)^0.918``.
2. ``--probe`` (needs data, a few minutes on minilm-l6): a few optimizer steps at each candidate ratio with the
   feature-learning monitor, and the ratio at which the median log10(δ_B / δ_A) over layers and steps crosses
   0, i.e. where A and B change the output by the same amount (interpolated in log λ). lr_B is held fixed
   (``--lr-b``) and lr_A = lr_B / λ varies: with Adam and B₀ = 0, |B| grows like t·lr_B, so δ_A = s·B ΔA x
   scales with lr_B·lr_A and δ_B = s·ΔB A x with lr_B; raising lr_B at a fixed lr_A leaves δ_B / δ_A
   unchanged (measured: +0.49…+0.67 for λ = 1…256 at lr_A = 1e-3 on minilm-l6/bbc-news), so the balance
   point is a statement about lr_A given lr_B — the Θ(1/n) rule for η_A of Sec. 3. The classification head
   keeps one lr (lr_B / 16) for every candidate.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .config import TrainConfig, _opt, coerce_fields
from .train import run_train
from .width_rule import AUTO_RATIO, TOY_EXPONENT, width_rule_for

__all__ = ["RatioCommand", "crossing", "explain", "probe_ratio"]

def _median_log_ratio(history: list[dict]) -> float | None:
    values = [row["log10_ratio"] for row in history if row["log10_ratio"] is not None]
    return float(np.median(values)) if values else None


def _probe_one(cfg: TrainConfig, ratio: float) -> float | None:
    """Median log10(δ_B/δ_A) of a short run with lr_B = cfg.learning_rate · cfg.loraplus_lr_ratio held fixed.

    One ``run_train`` in a temporary run folder with the monitor on at every step (the run API of every
    experiment); its ``feature_learning.json`` holds the per-layer records."""
    lr_b = cfg.learning_rate * cfg.loraplus_lr_ratio
    with tempfile.TemporaryDirectory() as tmp:
        run = replace(cfg, learning_rate=lr_b / ratio, loraplus_lr_ratio=ratio, output_dir=tmp, monitor=True,
                      monitor_every=1, overwrite=True)  # fmt: skip
        run_train(run)
        history = json.loads((Path(tmp) / "feature_learning.json").read_text())["per_layer"]
    return _median_log_ratio(history)


def crossing(ratios: list[float], log_ratios: list[float | None]) -> tuple[float, str]:
    """Where log10(δ_B/δ_A) crosses 0 against log λ (linear interpolation), or the nearest end, with a note."""
    points = [(r, v) for r, v in zip(ratios, log_ratios) if v is not None]
    if not points:
        raise ValueError("the probe measured no δ_A/δ_B pair (no LoRA layer moved)")
    for (r0, v0), (r1, v1) in zip(points, points[1:]):
        if v0 == 0 or (v0 < 0) != (v1 < 0):
            if v0 == 0:
                return r0, "δ_A = δ_B exactly at a candidate"
            t = v0 / (v0 - v1)
            return math.exp(math.log(r0) + t * (math.log(r1) - math.log(r0))), "interpolated crossing"
    if all(v > 0 for _, v in points):
        return points[0][0], "B's change dominates at every candidate: the smallest candidate, an upper bound"
    return points[-1][0], "A's change dominates at every candidate: the largest candidate, a lower bound"


def probe_ratio(cfg: TrainConfig, candidates: tuple[float, ...]) -> dict:
    """Run ``cfg.max_steps`` steps per candidate ratio (fresh model, same seed) and find the balance point."""
    logs = [_probe_one(cfg, r) for r in candidates]
    ratio, how = crossing(list(candidates), logs)
    return {"candidates": list(candidates), "median_log10_dB_over_dA": logs, "ratio": ratio, "how": how}


@dataclass(frozen=True)
class RatioCommand:
    """Options of ``loraplus ratio``."""

    model: str = _opt("minilm-l6", "built-in model name, a local model folder, or a hub id")
    probe: bool = _opt(False, "also measure: train a few steps per candidate ratio and balance δ_A and δ_B")
    dataset: str = _opt("bbc-news", "data of the probe (as in loraplus train)")
    text_column: str | None = _opt(None, "text column of a file dataset")
    label_column: str | None = _opt(None, "label column of a file dataset")
    lr_b: float = _opt(1.6e-2, "lr_B held fixed during the probe (default: loraplus train's 1e-3 × 16)")
    steps: int = _opt(20, "optimizer steps per candidate ratio")
    candidates: tuple[str, ...] = _opt(("1", "4", "16", "64", "256"), "candidate ratios of the probe")
    batch_size: int = _opt(16, "probe batch size")
    max_length: int = _opt(64, "probe tokens per example")
    seed: int = _opt(0, "seed of the probe's data split and initialisation")

    def __post_init__(self) -> None:
        coerce_fields(self)
        try:
            values = sorted(float(c) for c in self.candidates)
        except ValueError:
            raise ValueError(f"candidates must be numbers, got {self.candidates!r}") from None
        if len(values) < 2 or values[0] <= 0 or not all(math.isfinite(v) for v in values):
            raise ValueError(f"candidates must be at least two finite numbers > 0, got {self.candidates!r}")
        if isinstance(self.steps, bool) or self.steps < 1:  # before train_config names its derived options
            raise ValueError(f"steps must be a positive integer, got {self.steps!r}")
        self.train_config()  # validates the rest

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            model=self.model, dataset=self.dataset, text_column=self.text_column, label_column=self.label_column,
            learning_rate=self.lr_b / 16, loraplus_lr_ratio=16.0, loraplus_lr_other=self.lr_b / 16, max_steps=self.steps, batch_size=self.batch_size,
            max_length=self.max_length, seed=self.seed, warmup_ratio=0.0, lora_dropout=0.0,
            eval_steps=self.steps + 1, logging_steps=self.steps, save_checkpoints=False,
        )  # fmt: skip

    def run(self) -> dict:
        n, rule = width_rule_for(self.model)
        result = {"model": self.model, "width": n, "width_rule": rule}
        if self.probe:
            candidates = tuple(sorted(float(c) for c in self.candidates))
            result["probe"] = probe_ratio(self.train_config(), candidates)
        return result


def explain(result: dict) -> str:
    """The recommendation and its reasoning, for printing."""
    n, rule = result["width"], result["width_rule"]
    lines = [
        f"{result['model']}: width n = {n}.",
        f"Width rule: loraplus_lr_ratio ≈ 16 · (n / 768)^{TOY_EXPONENT} = {rule:.3g}  (exponent measured on the "
        "Section 3 toy by `loraplus toy`; anchored at the paper's λ = 16 for width 768).",
        f"Measured rule (--loraplus-lr-ratio auto): {AUTO_RATIO:g}, the paper's advice for LLMs (2¹–2²); on the "
        "sweeps of minilm-l6 (n 384) and smollm2-135m (n 576) it lies nearer the best ratios than the width rule, "
        "and the best ratios did not grow with width.",
    ]
    if "probe" in result:
        probe = result["probe"]
        pairs = ", ".join(
            f"λ={c:g}: {'—' if v is None else f'{v:+.2f}'}" for c, v in zip(probe["candidates"], probe["median_log10_dB_over_dA"])
        )
        lines.append(f"Probe, median log10(δ_B / δ_A): {pairs}.")
        lines.append(f"Probe: δ_A ≈ δ_B at loraplus_lr_ratio ≈ {probe['ratio']:.3g} ({probe['how']}).")
    best = result["probe"]["ratio"] if "probe" in result else AUTO_RATIO
    lines.append(f"Recommended: --loraplus-lr-ratio {best:.3g}")
    return "\n".join(lines)
