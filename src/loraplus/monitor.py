"""Feature-learning monitor: how far each LoRA factor's update moves its layer's output on a fixed probe batch.

For ``h = W x + s · B A x`` (A (r, in), B (out, r)) and optimizer step t (t = 1 is the first update):
``δ_A = s · B_{t-1} (A_t − A_{t-1}) x`` (A moves) and ``δ_B = s · (B_t − B_{t-1}) A_{t-1} x`` (B moves), each a
root-mean-square over probe tokens × output features (per coordinate, where the theory asks for Θ(1)), and
``log10_ratio = log10(δ_B / δ_A)`` (``None`` when either is 0); the cross term s·ΔB ΔA x is not reported.
Source: Hayou et al. 2024, Sec. 3 (δ¹, δ²; efficient feature learning = both Θ(1)).

Choices:
- Sampled steps t = 1, 1 + every, 1 + 2·every, ... At each, x is recomputed: just before ``optimizer.step()``
  (parameters θ_{t-1}) the probe runs in eval mode (dropout off) under ``torch.no_grad``, with forward pre-hooks
  on the A factor's module (PEFT ``lora_A[adapter]``, torchtune ``lora_a``, kohya ``lora_down``, Megatron
  ``linear_in``) or, for factors held as parameters (loralib), on their layer. Hooks are removed at once; module
  train/eval flags and the torch, ``random`` and numpy RNG states are restored, so training is unchanged.
- Embedding LoRA (PEFT ``lora_embedding_A``, loralib): x are token ids, ``A x = F.embedding(ids, A.T)`` (no
  ``embed_scale``). s is PEFT's ``layer.scaling[adapter]`` or a numeric ``layer.scaling`` (loralib, torchtune),
  else 1.0 (the log-ratio does not depend on s). With ``attention_mask`` in a dict probe, padding tokens are
  dropped wherever x has the mask's leading shape.
- Skipped (``monitor.skipped``): non-2-D factors (Conv LoRA), A rows ≠ B columns (loralib MergedLinear),
  pairs with both factors frozen. Layers the probe never reaches (merged or inactive adapters) give no
  record. DoRA gets the plain LoRA formula. Sharded parameters (FSDP, ZeRO-3) are not supported.
- Cost per sampled step: one probe forward, plus x kept across ``optimizer.step()`` (probe tokens × Σ in_features
  values in the model's dtype) and O(tokens · r · (in + r)) per layer.
- Aggregate per step: the median over layers of δ_A, of δ_B and of log10_ratio (robust to odd layers; the
  median log-ratio is not log10 of the ratio of medians). torch only; the Trainer callback is
  ``loraplus.hf.FeatureLearningCallback``.
"""

from __future__ import annotations

import functools
import itertools
import math
import random
import statistics
import sys
from collections import Counter
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .groups import find_lora_pairs
from .io import atomic_write_json

__all__ = ["FeatureLearningMonitor", "aggregate_records", "plot_monitor"]


@dataclass(frozen=True)
class _Layer:
    name: str  # the adapted layer's dotted path (plus "[adapter]" when a layer holds several adapters)
    a: nn.Parameter  # (r, in), or (r, num_embeddings) for embeddings
    b: nn.Parameter  # (out, r), or (embedding_dim, r)
    hooked: nn.Module  # whose first forward argument is x (token ids for embeddings)
    owner: nn.Module  # the LoRA layer at pair.prefix, which holds `scaling`
    adapter: str | None
    embedding: bool


def _find_layers(model: nn.Module) -> tuple[list[_Layer], dict[str, str]]:
    """The monitorable LoRA layers of ``model`` and ``{name: why skipped}`` for the others."""
    params = dict(model.named_parameters(remove_duplicate=False))
    pairs = {(p.a_name, p.b_name): p for p in find_lora_pairs(model).values() if p.a_name and p.b_name}
    per_prefix = Counter(pair.prefix for pair in pairs.values())
    layers, skipped = [], {}
    for (a_name, b_name), pair in pairs.items():
        a, b = params[a_name], params[b_name]
        rest = a_name[len(pair.prefix) + 1 :].split(".")  # e.g. ["lora_A", "default", "weight"]
        adapter = rest[1] if len(rest) > 1 and rest[1] != "weight" else None
        name = pair.prefix + (f"[{adapter}]" if per_prefix[pair.prefix] > 1 else "")
        if a.ndim != 2 or b.ndim != 2:
            skipped[name] = f"factors are {a.ndim}-D/{b.ndim}-D (Conv LoRA), not 2-D"
        elif a.shape[0] != b.shape[1]:
            skipped[name] = f"A {tuple(a.shape)} and B {tuple(b.shape)} differ in rank (merged LoRA)"
        elif not (a.requires_grad or b.requires_grad):
            skipped[name] = "both factors are frozen"
        else:
            owner = model.get_submodule(pair.prefix)
            hooked = owner if pair.embedding else model.get_submodule(a_name.rpartition(".")[0])
            layers.append(_Layer(name, a, b, hooked, owner, adapter, pair.embedding))
    return layers, skipped


def _scale(layer: _Layer) -> float:
    scaling = getattr(layer.owner, "scaling", None)
    if isinstance(scaling, dict) and layer.adapter in scaling:
        return float(scaling[layer.adapter])
    return float(scaling) if isinstance(scaling, (int, float)) else 1.0


@contextmanager
def preserved_rng(model: nn.Module) -> Iterator[None]:
    """Restore the torch (CPU and the model's CUDA devices), ``random`` and numpy RNG states on exit."""
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    np = sys.modules.get("numpy")  # a numpy that nobody imported has no RNG state to protect
    py_state, np_state = random.getstate(), np.random.get_state() if np else None
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py_state)
            if np:
                np.random.set_state(np_state)


def _to_device(obj: Any, device: torch.device) -> Any:
    """Tensors in ``obj`` (a tensor, a mapping such as ``BatchEncoding``, a list or tuple) moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, Mapping):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_to_device(v, device) for v in obj)
    return obj


def _flatten(x: torch.Tensor, mask: torch.Tensor | None, embedding: bool) -> torch.Tensor:
    """x (..., in) -> (tokens, in); ids (...) -> (tokens,); padding tokens dropped when ``mask`` fits."""
    lead = x.shape if embedding else x.shape[:-1]
    if mask is not None and lead == mask.shape:
        return x[mask].detach().clone()
    return (x.reshape(-1) if embedding else x.reshape(-1, x.shape[-1])).detach().clone()


def _capture_inputs(model: nn.Module, layers: list[_Layer], args: tuple, kwargs: dict) -> dict[str, list]:
    """Run ``model(*args, **kwargs)`` (eval mode, no grad) and return each layer's inputs x, flattened."""
    mask = kwargs["attention_mask"].bool() if isinstance(kwargs.get("attention_mask"), torch.Tensor) else None
    seen: dict[str, list[torch.Tensor]] = {}

    def hook(layer: _Layer, module: nn.Module, f_args: tuple, f_kwargs: dict) -> None:
        x = f_args[0] if f_args else f_kwargs.get("input", f_kwargs.get("x"))  # nn.Linear: input; PEFT: x
        if isinstance(x, torch.Tensor):
            seen.setdefault(layer.name, []).append(_flatten(x, mask, layer.embedding))

    handles = [m.hooked.register_forward_pre_hook(functools.partial(hook, m), with_kwargs=True) for m in layers]
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad(), preserved_rng(model):
            model(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes:
            module.training = training
    return seen


def _rms_deltas(x: torch.Tensor, a0: torch.Tensor, b0: torch.Tensor, layer: _Layer) -> tuple[float, float]:
    """(RMS δ_A, RMS δ_B) over tokens × out features; x (N, in) or ids (N,), a0 (r, in), b0 (out, r)."""
    a1, b1 = layer.a.detach().float(), layer.b.detach().float()
    if layer.embedding:  # A x = F.embedding(ids, A.T): (N, r)
        da_x, a0_x = F.embedding(x, (a1 - a0).T), F.embedding(x, a0.T)
    else:
        da_x, a0_x = x.float() @ (a1 - a0).T, x.float() @ a0.T
    count, s = max(x.shape[0], 1) * b0.shape[0], _scale(layer)

    def rms(u: torch.Tensor, b: torch.Tensor) -> float:  # of s·u bᵀ, as ‖u bᵀ‖² = Σ (uᵀu)∘(bᵀb): N·r², not N·out
        u, b = u.double(), b.double()
        return abs(s) * math.sqrt(max(((u.T @ u) * (b.T @ b)).sum().item(), 0.0) / count)

    return rms(da_x, b0), rms(a0_x, b1 - b0)


def check_every(every: object) -> int:
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be an int >= 1, got {every!r}")
    return every


def _log10_ratio(delta_a: float, delta_b: float) -> float | None:
    return math.log10(delta_b / delta_a) if delta_a > 0 and delta_b > 0 else None


def aggregate_records(records: Sequence[dict]) -> list[dict]:
    """Per sampled step, the median over layers: ``{step, delta_A, delta_B, log10_ratio, n_layers}``."""
    out = []
    for step, group in itertools.groupby(sorted(records, key=itemgetter("step")), key=itemgetter("step")):
        rows = list(group)
        ratios = [r["log10_ratio"] for r in rows if r["log10_ratio"] is not None]
        out.append({
            "step": step, "n_layers": len(rows), "log10_ratio": statistics.median(ratios) if ratios else None,
            "delta_A": statistics.median(r["delta_A"] for r in rows),
            "delta_B": statistics.median(r["delta_B"] for r in rows),
        })  # fmt: skip
    return out


class FeatureLearningMonitor:
    """Measure δ_A and δ_B of every LoRA layer at sampled optimizer steps (see the module docstring).

    In a plain loop, wrap every optimizer step: ``with monitor.step(): optimizer.step()`` (or call
    ``monitor.before_step()`` and ``monitor.after_step()`` around it); then read ``monitor.history``.

    Args:
        model: a model with LoRA factor pairs (PEFT, loralib, torchtune, kohya, Megatron names).
        probe_inputs: the fixed probe batch: a dict (``model(**probe)``), a tuple (``model(*probe)``) or a tensor
            (``model(probe)``); moved to the model's device. ``None``: give one later with ``set_probe``.
        every: sample step t when ``(t - 1) % every == 0`` (t counts optimizer steps from 1); default 10.

    Raises ``ValueError`` for ``every`` < 1 or a model without a monitorable LoRA pair.
    """

    def __init__(self, model: nn.Module, probe_inputs: dict | torch.Tensor | tuple | None = None, *, every: int = 10):
        self.model, self.every = model, check_every(every)
        self.layers, self.skipped = _find_layers(model)
        if not self.layers:
            raise ValueError(f"no monitorable LoRA layer in {type(model).__name__} (skipped: {self.skipped or 'none'})")
        self.probe: tuple[tuple, dict] | None = None  # (args, kwargs) of the probe forward
        if probe_inputs is not None:
            self.set_probe(probe_inputs)
        self.history: list[dict] = []  # per layer: {step, layer, delta_A, delta_B, log10_ratio}
        self.latest: dict | None = None  # the aggregate of the most recent sampled step
        self.steps_seen = 0  # optimizer steps counted by after_step
        self._pending: tuple[int, dict[str, tuple]] | None = None

    def set_probe(self, probe_inputs: dict | torch.Tensor | tuple) -> None:
        """Use ``probe_inputs`` (moved to the model's device) as the probe batch from now on."""
        probe = _to_device(probe_inputs, next(self.model.parameters()).device)
        if isinstance(probe, dict):
            self.probe = ((), probe)
        else:
            self.probe = (probe if isinstance(probe, tuple) else (probe,), {})

    def before_step(self, step: int | None = None) -> bool:
        """Call just before ``optimizer.step()``. At a sampled step, snapshot A, B and capture x on the probe.

        ``step`` is the 1-based index of the coming optimizer step (default: ``steps_seen + 1``).
        Returns whether this step is sampled.
        """
        step = self.steps_seen + 1 if step is None else step
        self._pending = None
        if (step - 1) % self.every != 0:
            return False
        if self.probe is None:
            raise ValueError("FeatureLearningMonitor has no probe batch: pass probe_inputs or call set_probe()")
        inputs = _capture_inputs(self.model, self.layers, *self.probe)
        snap = {}
        for layer in self.layers:
            if layer.name in inputs:
                x = torch.cat(inputs[layer.name])
                snap[layer.name] = (x, layer.a.detach().float().clone(), layer.b.detach().float().clone())
        self._pending = (step, snap)
        return True

    def after_step(self) -> dict | None:
        """Call just after ``optimizer.step()``. Returns the step's aggregate record, or None if not sampled."""
        self.steps_seen += 1
        if self._pending is None:
            return None
        step, snap = self._pending
        self._pending, rows = None, []
        for layer in self.layers:
            if layer.name in snap:
                d_a, d_b = _rms_deltas(*snap[layer.name], layer)
                rows.append({"step": step, "layer": layer.name, "delta_A": d_a, "delta_B": d_b,
                             "log10_ratio": _log10_ratio(d_a, d_b)})  # fmt: skip
        self.history.extend(rows)
        self.latest = aggregate_records(rows)[0] if rows else None
        return self.latest

    @contextmanager
    def step(self, step: int | None = None) -> Iterator[None]:
        """``with monitor.step(): optimizer.step()`` = ``before_step(step)``, the body, ``after_step()``."""
        self.before_step(step)
        yield  # an exception here skips after_step; the next before_step drops the stale snapshot
        self.after_step()

    def summary(self) -> dict:
        """Layers, skipped layers, number of sampled steps, the last aggregate and the median log10 ratio."""
        aggregates = aggregate_records(self.history)
        ratios = [a["log10_ratio"] for a in aggregates if a["log10_ratio"] is not None]
        return {
            "every": self.every, "layers": [layer.name for layer in self.layers], "skipped": dict(self.skipped),
            "sampled_steps": len(aggregates), "last": aggregates[-1] if aggregates else None,
            "median_log10_ratio": statistics.median(ratios) if ratios else None,
        }  # fmt: skip

    def save_json(self, path: str | Path) -> None:
        """Write ``summary()`` plus ``aggregate`` and ``per_layer`` records to ``path`` (atomic)."""
        record = {**self.summary(), "aggregate": aggregate_records(self.history), "per_layer": self.history}
        atomic_write_json(path, record)


def _points(rows: Sequence[dict], key: str, log: bool) -> tuple[list, list]:
    keep = [r for r in rows if r[key] is not None and (not log or r[key] > 0)]
    return [r["step"] for r in keep], [r[key] for r in keep]


def plot_monitor(history: Sequence[dict] | dict, path: str | Path) -> None:
    """Plot δ_A, δ_B (log y) and log10(δ_B/δ_A) vs step: the median over layers thick, each layer thin.

    ``history``: per-layer records (``monitor.history``) or the dict written by ``save_json``. Zero values
    (δ_A at the first step from B = 0) cannot sit on a log axis and are left out. Uses the Agg canvas only.
    """
    from matplotlib.figure import Figure

    records = history["per_layer"] if isinstance(history, dict) else list(history)
    fig = Figure(figsize=(12, 3.6), layout="constrained")
    axes = fig.subplots(1, 3)
    panels = [("delta_A", "δ_A (RMS)", True), ("delta_B", "δ_B (RMS)", True)]
    panels.append(("log10_ratio", "log10(δ_B / δ_A)", False))
    layers = sorted({r["layer"] for r in records})
    for ax, (key, title, log) in zip(axes, panels):
        for name in layers:
            ax.plot(*_points([r for r in records if r["layer"] == name], key, log), lw=0.6, c="0.6")
        ax.plot(*_points(aggregate_records(records), key, log), lw=2.2, c="tab:blue", marker="o", label="median")
        ax.set(title=title, xlabel="optimizer step", yscale="log" if log else "linear")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def probe_from_dataloader(loader: Any, size: int) -> Any:
    """The first ``size`` examples of ``loader.dataset`` through ``loader.collate_fn`` (no shuffling, no RNG)."""
    dataset, collate = getattr(loader, "dataset", None), getattr(loader, "collate_fn", None)
    if dataset is None or collate is None:
        raise ValueError("cannot build a probe batch from the train dataloader; pass probe_inputs explicitly")
    if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
        return collate([dataset[i] for i in range(min(size, len(dataset)))])
    return collate(list(itertools.islice(dataset, size)))
