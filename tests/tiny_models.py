"""A table of tiny models, one per LoRA convention, each built fresh and seeded (CPU, < 0.1 s each).

``TINY_MODELS[key].build()`` returns a new model; ``TINY_MODELS[key].expected`` maps the name of every trainable
parameter (as ``model.named_parameters()`` gives it) to the LoRA+ group it belongs in under the default options
(``loraplus_lr_embedding=None``). The expected groups are written by hand from the policy table in
``loraplus.groups`` (not produced by the code under test).

Shapes: A (r, in), B (out, r); r = 2 everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

R = 2  # LoRA rank of every tiny model
P = "base_model.model."  # prefix PEFT puts in front of every parameter name


@dataclass(frozen=True)
class TinyModel:
    """A builder and the expected group of each trainable parameter (by name)."""

    build: Callable[[], nn.Module]
    expected: dict[str, str]
    embedding_factors: tuple[str, ...] = ()  # parameter names of embedding-LoRA factors
    has_lora: bool = True
    notes: str = ""


# --------------------------------------------------------------------------- plain base models


class MLP(nn.Module):
    """x: (batch, 8) -> (batch, 4): fc1 (bias) -> LayerNorm -> GELU -> fc2 (bias)."""

    def __init__(self, bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(8, 16, bias=bias)
        self.ln = nn.LayerNorm(16)
        self.fc2 = nn.Linear(16, 4, bias=bias)

    def forward(self, x):
        return self.fc2(torch.nn.functional.gelu(self.ln(self.fc1(x))))


class Classifier(nn.Module):
    """x: (batch, 8) -> logits (batch, 3): MLP body (biases + LayerNorm) and a ``head`` Linear(16, 3)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.ln = nn.LayerNorm(16)
        self.fc2 = nn.Linear(16, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = torch.nn.functional.gelu(self.ln(self.fc1(x)))
        return self.head(torch.nn.functional.gelu(self.fc2(h)))


class EmbedLinear(nn.Module):
    """ids: (batch, seq) -> (batch, seq, 4): Embedding(20, 8) -> Linear(8, 4)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.out = nn.Linear(8, 4)

    def forward(self, ids):
        return self.out(self.emb(ids))


class ConvNet(nn.Module):
    """x: (batch, 3, 6, 6) -> (batch, 4): Conv2d(3, 8, 3) -> mean pool -> Linear(8, 4)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.out = nn.Linear(8, 4)

    def forward(self, x):
        return self.out(self.conv(x).mean(dim=(2, 3)))


def _peft(base: nn.Module, **lora_options) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    return get_peft_model(base, LoraConfig(r=R, lora_alpha=4, **lora_options))


# --------------------------------------------------------------------------- PEFT models


def peft_linear() -> nn.Module:
    """PEFT LoRA on fc1, fc2 of ``MLP``; biases (``bias="all"``) and the LayerNorm unfrozen."""
    torch.manual_seed(0)
    model = _peft(MLP(), target_modules=["fc1", "fc2"], bias="all")
    for p in model.base_model.model.ln.parameters():
        p.requires_grad_(True)
    return model


def peft_linear_plain() -> nn.Module:
    """PEFT LoRA on fc1, fc2 of ``MLP``; only the LoRA factors train (PEFT's default)."""
    torch.manual_seed(0)
    return _peft(MLP(), target_modules=["fc1", "fc2"])


def peft_embedding() -> nn.Module:
    """PEFT LoRA on an Embedding (``lora_embedding_A``/``_B``) and on the following Linear."""
    torch.manual_seed(0)
    return _peft(EmbedLinear(), target_modules=["emb", "out"])


def peft_dora() -> nn.Module:
    """PEFT DoRA (``use_dora=True``) on fc1, fc2 of ``MLP``: adds 1-D ``lora_magnitude_vector`` weights."""
    torch.manual_seed(0)
    return _peft(MLP(), target_modules=["fc1", "fc2"], use_dora=True)


def peft_classifier() -> nn.Module:
    """PEFT LoRA on fc1, fc2 of ``Classifier`` with ``head`` in ``modules_to_save`` (a trainable copy)."""
    torch.manual_seed(0)
    return _peft(Classifier(), target_modules=["fc1", "fc2"], modules_to_save=["head"])


def peft_classifier_full() -> nn.Module:
    """``peft_classifier`` with every bias (``bias="all"``) and the LayerNorm trainable too."""
    torch.manual_seed(0)
    model = _peft(Classifier(), target_modules=["fc1", "fc2"], modules_to_save=["head"], bias="all")
    for p in model.base_model.model.ln.parameters():
        p.requires_grad_(True)
    return model


def peft_conv2d() -> nn.Module:
    """PEFT LoRA on a Conv2d: A is Conv2d(3, r, 3) (r, 3, 3, 3), B is Conv2d(r, 8, 1) (8, r, 1, 1)."""
    torch.manual_seed(0)
    return _peft(ConvNet(), target_modules=["conv"])


def peft_lora_bias() -> nn.Module:
    """PEFT ``lora_bias=True``: B (a Linear(r, out)) has a trainable bias of shape (out,)."""
    torch.manual_seed(0)
    return _peft(MLP(), target_modules=["fc1", "fc2"], lora_bias=True)


def peft_no_bias() -> nn.Module:
    """PEFT LoRA on an MLP whose Linears have no bias (LayerNorm frozen): only A and B train."""
    torch.manual_seed(0)
    return _peft(MLP(bias=False), target_modules=["fc1", "fc2"])


# --------------------------------------------------------------------------- other conventions


class TorchtuneLoRALinear(nn.Module):
    """torchtune-style: frozen ``weight`` (out, in); ``lora_a`` Linear(in, r), ``lora_b`` Linear(r, out)."""

    def __init__(self, in_dim: int, out_dim: int, rank: int = R):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim), requires_grad=False)
        self.lora_a = nn.Linear(in_dim, rank, bias=False)
        self.lora_b = nn.Linear(rank, out_dim, bias=False)
        nn.init.zeros_(self.lora_b.weight)

    def forward(self, x):
        return x @ self.weight.T + self.lora_b(self.lora_a(x))


class TorchtuneBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = TorchtuneLoRALinear(8, 8)
        self.v_proj = TorchtuneLoRALinear(8, 8)
        self.norm = nn.RMSNorm(8)  # trainable: torchtune trains norms only when asked; here it is

    def forward(self, x):
        return self.v_proj(self.norm(self.q_proj(x)))


def torchtune_style() -> nn.Module:
    torch.manual_seed(0)
    return TorchtuneBlock()


class KohyaLoRAModule(nn.Module):
    """kohya sd-scripts: ``lora_down`` Linear(in, r) and ``lora_up`` Linear(r, out), no biases."""

    def __init__(self, in_dim: int, out_dim: int, rank: int = R):
        super().__init__()
        self.lora_down = nn.Linear(in_dim, rank, bias=False)
        self.lora_up = nn.Linear(rank, out_dim, bias=False)
        self.register_buffer("alpha", torch.tensor(float(rank)))


class KohyaNetwork(nn.Module):
    """kohya's ``LoRANetwork``: flat names, modules kept apart from the (frozen, absent) base model."""

    def __init__(self):
        super().__init__()
        self.lora_unet_proj_in = KohyaLoRAModule(8, 16)
        self.lora_te_q_proj = KohyaLoRAModule(16, 16)


def kohya_style() -> nn.Module:
    torch.manual_seed(0)
    return KohyaNetwork()


class MegatronLinearAdapter(nn.Module):
    """NeMo/Megatron ``LinearAdapter``: LayerNorm(16) -> linear_in Linear(16, r) -> linear_out Linear(r, 16)."""

    def __init__(self, dim: int = 16, rank: int = R):
        super().__init__()
        self.layer_norm = nn.LayerNorm(dim)
        self.linear_in = nn.Linear(dim, rank, bias=False)
        self.linear_out = nn.Linear(rank, dim, bias=False)


class MegatronLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(16, 16)
        self.dense.requires_grad_(False)
        self.adapter = MegatronLinearAdapter()


def megatron_adapter() -> nn.Module:
    torch.manual_seed(0)
    return MegatronLayer()


class PlainInOutMLP(nn.Module):
    """An ordinary MLP that happens to use the Megatron names: linear_in Linear(8, 32), linear_out Linear(32, 8).

    hidden 32 > in 8: not low rank, so not a LoRA pair.
    """

    def __init__(self):
        super().__init__()
        self.linear_in = nn.Linear(8, 32)
        self.linear_out = nn.Linear(32, 8)


def megatron_plain_mlp() -> nn.Module:
    torch.manual_seed(0)
    return PlainInOutMLP()


class LoralibLinear(nn.Linear):
    """microsoft loralib ``lora.Linear``: nn.Linear subclass with ``lora_A`` (r, in), ``lora_B`` (out, r)."""

    def __init__(self, in_features: int, out_features: int, rank: int = R):
        super().__init__(in_features, out_features)
        self.lora_A = nn.Parameter(torch.randn(rank, in_features) / in_features**0.5)
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        self.weight.requires_grad_(False)  # loralib.mark_only_lora_as_trainable(model, bias="all") keeps biases


class LoralibEmbedding(nn.Embedding):
    """microsoft loralib ``lora.Embedding``: ``lora_A`` (r, num_embeddings) zero, ``lora_B`` (dim, r) random."""

    def __init__(self, num_embeddings: int, embedding_dim: int, rank: int = R):
        super().__init__(num_embeddings, embedding_dim)
        self.lora_A = nn.Parameter(torch.zeros(rank, num_embeddings))
        self.lora_B = nn.Parameter(torch.randn(embedding_dim, rank))
        self.weight.requires_grad_(False)


class LoralibModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = LoralibEmbedding(20, 8)
        self.c_attn = LoralibLinear(8, 8)


def loralib_style() -> nn.Module:
    torch.manual_seed(0)
    return LoralibModel()


class RMSNorm(nn.Module):
    """A user-defined RMSNorm (not torch's): x * rsqrt(mean(x²) + eps) * weight, weight (dim,)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class ScaleNorm2d(nn.Module):
    """A norm whose scale is 2-D, (1, dim) broadcast over the batch: no decay because the class is a *Norm*."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1, dim))

    def forward(self, x):
        return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6) * self.scale


class RMSNormModel(nn.Module):
    """Biased Linears (trainable), a custom ``RMSNorm``, a 2-D-scale norm and a loralib-style adapted layer."""

    def __init__(self):
        super().__init__()
        self.up = nn.Linear(8, 16)
        self.rms = RMSNorm(16)
        self.attn = LoralibLinear(16, 16)
        self.down = nn.Linear(16, 8)
        self.final = ScaleNorm2d(8)


def rmsnorm_biases() -> nn.Module:
    torch.manual_seed(0)
    return RMSNormModel()


class TiedModel(nn.Module):
    """A tiny LM: ``emb`` Embedding(20, 8) tied to ``lm_head`` Linear(8, 20) (one tensor), torchtune LoRA inside."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.block = TorchtuneLoRALinear(8, 8)
        self.lm_head = nn.Linear(8, 20, bias=False)
        self.lm_head.weight = self.emb.weight


def tied() -> nn.Module:
    torch.manual_seed(0)
    return TiedModel()


# --------------------------------------------------------------------------- the table


def _ab(prefix: str, a: str = "lora_A", b: str = "lora_B", suffix: str = ".default.weight") -> dict[str, str]:
    return {f"{prefix}.{a}{suffix}": "lora_A", f"{prefix}.{b}{suffix}": "lora_B"}


TINY_MODELS: dict[str, TinyModel] = {
    "peft_linear": TinyModel(
        peft_linear,
        {
            **_ab(P + "fc1"),
            **_ab(P + "fc2"),
            P + "fc1.base_layer.bias": "no_decay",
            P + "fc2.base_layer.bias": "no_decay",
            P + "ln.weight": "no_decay",
            P + "ln.bias": "no_decay",
        },
    ),
    "peft_linear_plain": TinyModel(peft_linear_plain, {**_ab(P + "fc1"), **_ab(P + "fc2")}),
    "peft_embedding": TinyModel(
        peft_embedding,
        {
            P + "emb.lora_embedding_A.default": "lora_A",
            P + "emb.lora_embedding_B.default": "lora_B",
            **_ab(P + "out"),
        },
        embedding_factors=(P + "emb.lora_embedding_A.default", P + "emb.lora_embedding_B.default"),
    ),
    "peft_dora": TinyModel(
        peft_dora,
        {
            **_ab(P + "fc1"),
            **_ab(P + "fc2"),
            P + "fc1.lora_magnitude_vector.default.weight": "no_decay",
            P + "fc2.lora_magnitude_vector.default.weight": "no_decay",
        },
    ),
    "peft_classifier": TinyModel(
        peft_classifier,
        {
            **_ab(P + "fc1"),
            **_ab(P + "fc2"),
            P + "head.modules_to_save.default.weight": "other",
            P + "head.modules_to_save.default.bias": "no_decay",
        },
    ),
    "peft_classifier_full": TinyModel(
        peft_classifier_full,
        {
            **_ab(P + "fc1"),
            **_ab(P + "fc2"),
            P + "fc1.base_layer.bias": "no_decay",
            P + "fc2.base_layer.bias": "no_decay",
            P + "ln.weight": "no_decay",
            P + "ln.bias": "no_decay",
            P + "head.modules_to_save.default.weight": "other",
            P + "head.modules_to_save.default.bias": "no_decay",
        },
    ),
    "peft_conv2d": TinyModel(peft_conv2d, _ab(P + "conv")),
    "peft_lora_bias": TinyModel(
        peft_lora_bias,
        {
            **_ab(P + "fc1"),
            **_ab(P + "fc2"),
            P + "fc1.lora_B.default.bias": "lora_B_no_decay",
            P + "fc2.lora_B.default.bias": "lora_B_no_decay",
        },
    ),
    "peft_no_bias": TinyModel(peft_no_bias, {**_ab(P + "fc1"), **_ab(P + "fc2")}),
    "torchtune_style": TinyModel(
        torchtune_style,
        {
            **_ab("q_proj", "lora_a", "lora_b", ".weight"),
            **_ab("v_proj", "lora_a", "lora_b", ".weight"),
            "norm.weight": "no_decay",
        },
    ),
    "kohya_style": TinyModel(
        kohya_style,
        {
            **_ab("lora_unet_proj_in", "lora_down", "lora_up", ".weight"),
            **_ab("lora_te_q_proj", "lora_down", "lora_up", ".weight"),
        },
    ),
    "megatron_adapter": TinyModel(
        megatron_adapter,
        {
            **_ab("adapter", "linear_in", "linear_out", ".weight"),
            "adapter.layer_norm.weight": "no_decay",
            "adapter.layer_norm.bias": "no_decay",
        },
    ),
    "megatron_plain_mlp": TinyModel(
        megatron_plain_mlp,
        {
            "linear_in.weight": "other",
            "linear_in.bias": "no_decay",
            "linear_out.weight": "other",
            "linear_out.bias": "no_decay",
        },
        has_lora=False,
        notes="hidden 32 > in 8: an ordinary MLP, not a LoRA pair",
    ),
    "loralib_style": TinyModel(
        loralib_style,
        {
            "wte.lora_A": "lora_A",
            "wte.lora_B": "lora_B",
            "c_attn.lora_A": "lora_A",
            "c_attn.lora_B": "lora_B",
            "c_attn.bias": "no_decay",
        },
        embedding_factors=("wte.lora_A", "wte.lora_B"),
    ),
    "rmsnorm_biases": TinyModel(
        rmsnorm_biases,
        {
            "up.weight": "other",
            "up.bias": "no_decay",
            "rms.weight": "no_decay",
            "attn.bias": "no_decay",
            "attn.lora_A": "lora_A",
            "attn.lora_B": "lora_B",
            "down.weight": "other",
            "down.bias": "no_decay",
            "final.scale": "no_decay",  # 2-D, but owned by a *Norm* class
        },
    ),
    "tied": TinyModel(
        tied,
        {
            "emb.weight": "other",  # == lm_head.weight: listed once, under its first name
            **_ab("block", "lora_a", "lora_b", ".weight"),
        },
    ),
}
