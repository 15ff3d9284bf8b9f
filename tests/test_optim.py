"""create_loraplus_optimizer: ratio-1 equivalence with HF's AdamW grouping, PEFT compatibility, bad inputs, bnb."""

from __future__ import annotations

import math
import re
import sys
import types
import warnings

import pytest
import torch
from torch import nn

from loraplus import create_loraplus_optimizer, describe_groups
from tiny_models import TINY_MODELS, P


def lr_by_name(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, float]:
    by_id = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    return {n: by_id[id(p)] for n, p in model.named_parameters() if id(p) in by_id}


def wd_by_name(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, float]:
    by_id = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    return {n: by_id[id(p)] for n, p in model.named_parameters() if id(p) in by_id}


# --------------------------------------------------------------------------- ratio 1 == plain AdamW (HF grouping)


def hf_adamw(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """What ``transformers.Trainer.create_optimizer`` builds for optim="adamw_torch" (its two decay groups)."""
    from transformers import Trainer

    decay = set(Trainer.get_decay_parameter_names(None, model))  # uses no Trainer state
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in params if n in decay], "weight_decay": weight_decay},
        {"params": [p for n, p in params if n not in decay], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr)


def train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 20) -> None:
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(steps, 8, 8, generator=gen), torch.randint(0, 3, (steps, 8), generator=gen)
    for i in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x[i]), y[i]).backward()
        optimizer.step()


@pytest.mark.parametrize("ratio, identical", [(1, True), (16, False)])
def test_ratio_one_equals_plain_adamw_with_hf_decay_grouping(ratio, identical):
    ours, plain = TINY_MODELS["peft_classifier_full"].build(), TINY_MODELS["peft_classifier_full"].build()
    start = {n: p.detach().clone() for n, p in ours.named_parameters()}
    opt_ours = create_loraplus_optimizer(ours, lr=1e-2, loraplus_lr_ratio=ratio, weight_decay=0.1)
    opt_plain = hf_adamw(plain, lr=1e-2, weight_decay=0.1)
    # the two groupings agree on what decays (biases and the LayerNorm do not, LoRA factors and the head do)
    assert wd_by_name(ours, opt_ours) == wd_by_name(plain, opt_plain)
    assert sorted(n for n, wd in wd_by_name(plain, opt_plain).items() if wd == 0.1) == [
        P + "fc1.lora_A.default.weight",
        P + "fc1.lora_B.default.weight",
        P + "fc2.lora_A.default.weight",
        P + "fc2.lora_B.default.weight",
        P + "head.modules_to_save.default.weight",
    ]
    train(ours, opt_ours)
    train(plain, opt_plain)
    ours_p, plain_p = dict(ours.named_parameters()), dict(plain.named_parameters())
    moved = [n for n, p in ours_p.items() if p.requires_grad and not torch.equal(p, start[n])]
    assert len(moved) == len([p for p in ours.parameters() if p.requires_grad])  # every trainable tensor moved
    same = [torch.equal(ours_p[n], plain_p[n]) for n in ours_p]
    assert all(same) if identical else not all(same)


# --------------------------------------------------------------------------- PEFT compatibility


def test_peft_documented_call_works_by_keyword_and_positionally():
    model = TINY_MODELS["peft_linear_plain"].build()
    by_keyword = create_loraplus_optimizer(
        model=model, optimizer_cls=torch.optim.AdamW, lr=5e-5, loraplus_lr_ratio=16, loraplus_weight_decay=0.0
    )
    positional = create_loraplus_optimizer(model, torch.optim.AdamW, lr=5e-5, loraplus_lr_ratio=16)
    for opt in (by_keyword, positional):
        assert isinstance(opt, torch.optim.AdamW)
        assert lr_by_name(model, opt) == {
            P + "fc1.lora_A.default.weight": 5e-5,
            P + "fc1.lora_B.default.weight": 5e-5 * 16,
            P + "fc2.lora_A.default.weight": 5e-5,
            P + "fc2.lora_B.default.weight": 5e-5 * 16,
        }
        assert set(wd_by_name(model, opt).values()) == {0.0}


@pytest.mark.parametrize("key", ["peft_linear_plain", "peft_no_bias", "peft_conv2d", "peft_classifier"])
def test_a_and_b_lrs_match_peft_create_loraplus_optimizer(key):
    """On models whose trainable tensors are only A, B and (2-D) head weights, PEFT and we agree by name."""
    from peft.optimizers import create_loraplus_optimizer as peft_create

    model = TINY_MODELS[key].build()
    ours = lr_by_name(model, create_loraplus_optimizer(model, torch.optim.AdamW, lr=2e-4, loraplus_lr_ratio=10))
    theirs = lr_by_name(model, peft_create(model, torch.optim.AdamW, lr=2e-4, loraplus_lr_ratio=10))
    factors = [n for n in ours if "lora_A" in n or "lora_B" in n]
    assert len(factors) >= 2 and any("lora_B" in n for n in factors)
    assert {n: ours[n] for n in factors} == {n: theirs[n] for n in factors}
    if key == "peft_classifier":  # the head bias is where we part ways (see the next test)
        assert ours.pop(P + "head.modules_to_save.default.bias") == 2e-4
        assert theirs.pop(P + "head.modules_to_save.default.bias") == pytest.approx(2e-3)
    assert ours == theirs


def test_intended_differences_from_peft():
    """Where PEFT gives a non-LoRA 1-D tensor lr·λ, we give lr; PEFT's weight_decay= is overridden, ours is kept.

    PEFT: biases, LayerNorm weights, DoRA magnitudes (any 1-D tensor) -> lr·λ; embedding factors -> 1e-6;
    ``weight_decay=0.1`` -> 0 (replaced by ``loraplus_weight_decay``'s default 0). Ours: lr, lr / lr·λ, 0.1.
    """
    from peft.optimizers import create_loraplus_optimizer as peft_create

    model = TINY_MODELS["peft_linear"].build()
    ours = create_loraplus_optimizer(model, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=16, weight_decay=0.1)
    theirs = peft_create(model, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=16, weight_decay=0.1)
    for name in (P + "fc1.base_layer.bias", P + "fc2.base_layer.bias", P + "ln.weight", P + "ln.bias"):
        assert lr_by_name(model, ours)[name] == 1e-3
        assert lr_by_name(model, theirs)[name] == 0.016
    assert wd_by_name(model, ours)[P + "fc1.lora_A.default.weight"] == 0.1
    assert wd_by_name(model, theirs)[P + "fc1.lora_A.default.weight"] == 0.0

    dora = TINY_MODELS["peft_dora"].build()
    magnitude = P + "fc1.lora_magnitude_vector.default.weight"
    assert lr_by_name(dora, create_loraplus_optimizer(dora, lr=1e-3))[magnitude] == 1e-3
    assert lr_by_name(dora, peft_create(dora, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=16))[magnitude] == 0.016

    emb = TINY_MODELS["peft_embedding"].build()
    a, b = P + "emb.lora_embedding_A.default", P + "emb.lora_embedding_B.default"
    ours_emb = lr_by_name(emb, create_loraplus_optimizer(emb, lr=1e-3))
    theirs_emb = lr_by_name(emb, peft_create(emb, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=16))
    assert (ours_emb[a], ours_emb[b]) == (1e-3, 0.016)
    assert (theirs_emb[a], theirs_emb[b]) == (1e-6, 1e-6)
    same = lr_by_name(emb, create_loraplus_optimizer(emb, lr=1e-3, loraplus_lr_embedding=1e-6))
    assert (same[a], same[b]) == (1e-6, 1e-6)  # PEFT's default, when asked for


def test_every_group_is_named_and_described():
    model = TINY_MODELS["peft_classifier_full"].build()
    opt = create_loraplus_optimizer(model, lr=1e-3, weight_decay=0.1)
    assert [g["name"] for g in opt.param_groups] == ["lora_A", "lora_B", "other", "no_decay"]
    table = describe_groups(opt).splitlines()
    assert table[0].split() == ["group", "tensors", "parameters", "lr", "weight_decay"]
    assert table[2].split() == ["lora_B", "2", "64", "0.016", "0.1"]  # B of fc1 and fc2: (16, 2) + (16, 2)


# --------------------------------------------------------------------------- bad inputs


BAD_NUMBERS = [0, -1.0, float("nan"), float("inf"), "abc", True]
BAD_OPTIONS = [(option, bad) for option in ("lr", "loraplus_lr_ratio", "loraplus_lr_embedding") for bad in BAD_NUMBERS]
BAD_OPTIONS += [("lr", None), ("loraplus_lr_ratio", None)]  # loraplus_lr_embedding=None is valid: no separate lr


@pytest.mark.parametrize("option, bad", BAD_OPTIONS, ids=repr)
def test_bad_numbers_raise_naming_the_value(option, bad):
    options = {"lr": 1e-3, option: bad}
    with pytest.raises(ValueError, match=rf"{option} must be .*got {re.escape(repr(bad))}"):
        create_loraplus_optimizer(TINY_MODELS["peft_linear_plain"].build(), **options)


def test_numeric_strings_are_converted():
    model = TINY_MODELS["peft_embedding"].build()
    opt = create_loraplus_optimizer(
        model, lr="1e-3", loraplus_lr_ratio="4", loraplus_lr_embedding="1e-6", weight_decay="0.1"
    )
    assert {g["name"]: (g["lr"], g["weight_decay"]) for g in opt.param_groups} == {
        "lora_A": (1e-3, 0.1),
        "lora_B": (4e-3, 0.1),
        "lora_embedding": (1e-6, 0.1),
    }


@pytest.mark.parametrize("option", ["weight_decay", "loraplus_weight_decay"])
@pytest.mark.parametrize("bad", [-0.1, float("nan"), "x"], ids=repr)
def test_bad_weight_decay_raises(option, bad):
    with pytest.raises(ValueError, match=rf"weight_decay must be .*got {re.escape(repr(bad))}"):
        create_loraplus_optimizer(TINY_MODELS["peft_linear_plain"].build(), lr=1e-3, **{option: bad})


def test_weight_decay_and_loraplus_weight_decay():
    model = TINY_MODELS["peft_linear"].build()
    with pytest.raises(ValueError, match=r"weight_decay=0\.1 and loraplus_weight_decay=0\.0 disagree"):
        create_loraplus_optimizer(model, lr=1e-3, weight_decay=0.1, loraplus_weight_decay=0.0)
    both = {"weight_decay": 0.1, "loraplus_weight_decay": 0.1}
    for options in ({"weight_decay": 0.1}, {"loraplus_weight_decay": 0.1}, both):
        opt = create_loraplus_optimizer(model, lr=1e-3, **options)
        got = {g["name"]: g["weight_decay"] for g in opt.param_groups}
        assert got == {"lora_A": 0.1, "lora_B": 0.1, "no_decay": 0.0}
    assert {g["weight_decay"] for g in create_loraplus_optimizer(model, lr=1e-3).param_groups} == {0.0}


def test_frozen_adapter_raises_mentioning_is_trainable(tmp_path):
    from peft import PeftModel

    TINY_MODELS["peft_linear_plain"].build().save_pretrained(tmp_path)
    from tiny_models import MLP

    torch.manual_seed(0)
    loaded = PeftModel.from_pretrained(MLP(), tmp_path)  # frozen: is_trainable defaults to False
    assert not any(p.requires_grad for p in loaded.parameters())
    with pytest.raises(ValueError, match=r"no trainable parameters.*is_trainable=True"):
        create_loraplus_optimizer(loaded, lr=1e-3)


def test_trainable_parameters_without_lora_warn():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    with pytest.warns(UserWarning, match="loraplus_lr_ratio has no effect"):
        opt = create_loraplus_optimizer(model, lr=1e-3, weight_decay=0.1)
    assert lr_by_name(model, opt) == {"0.weight": 1e-3, "0.bias": 1e-3, "1.weight": 1e-3, "1.bias": 1e-3}
    assert wd_by_name(model, opt) == {"0.weight": 0.1, "0.bias": 0.0, "1.weight": 0.0, "1.bias": 0.0}


@pytest.mark.parametrize("ratio", [0.5, "0.25"])
def test_ratio_below_one_warns(ratio):
    model = TINY_MODELS["peft_linear_plain"].build()
    with pytest.warns(UserWarning, match="< 1 gives lora_B a smaller lr"):
        opt = create_loraplus_optimizer(model, lr=1e-3, loraplus_lr_ratio=ratio)
    assert lr_by_name(model, opt)[P + "fc1.lora_B.default.weight"] == 1e-3 * float(ratio)


def test_ratio_one_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        create_loraplus_optimizer(TINY_MODELS["peft_linear_plain"].build(), lr=1e-3, loraplus_lr_ratio=1)


def test_mis_shaped_pair_raises():
    class Bad(nn.Linear):
        def __init__(self):
            super().__init__(10, 20)
            self.lora_A = nn.Parameter(torch.zeros(4, 10))
            self.lora_B = nn.Parameter(torch.zeros(20, 3))

    with pytest.raises(ValueError, match=r"shapes are not A \(r, in\) and B \(out, r\)"):
        create_loraplus_optimizer(nn.Sequential(Bad()), lr=1e-3)


def test_optimizer_whose_constructor_requires_lr():
    class NeedsLr(torch.optim.SGD):
        def __init__(self, params, lr, momentum=0.0):  # no default lr
            super().__init__(params, lr=lr, momentum=momentum)

    model = TINY_MODELS["peft_linear_plain"].build()
    opt = create_loraplus_optimizer(model, NeedsLr, lr=0.1, loraplus_lr_ratio=4, momentum=0.9)
    assert isinstance(opt, NeedsLr)
    got = {g["name"]: (g["lr"], g["momentum"]) for g in opt.param_groups}
    assert got == {"lora_A": (0.1, 0.9), "lora_B": (0.4, 0.9)}


def test_optimizer_kwargs_reach_the_optimizer():
    opt = create_loraplus_optimizer(TINY_MODELS["peft_linear_plain"].build(), lr=1e-3, betas=(0.8, 0.9), eps=1e-6)
    assert {(g["betas"], g["eps"]) for g in opt.param_groups} == {((0.8, 0.9), 1e-6)}


def test_misspelt_option_is_not_swallowed():
    with pytest.raises(TypeError, match="loraplus_lr_ration"):
        create_loraplus_optimizer(TINY_MODELS["peft_linear_plain"].build(), lr=1e-3, loraplus_lr_ration=16)


@pytest.mark.parametrize("cls_name", ["Prodigy", "DAdaptAdam"])
def test_adaptive_step_size_optimizers_warn(cls_name):
    cls = type(cls_name, (torch.optim.SGD,), {})
    with pytest.warns(UserWarning, match=f"{cls_name} adapts its own step size"):
        opt = create_loraplus_optimizer(TINY_MODELS["peft_linear_plain"].build(), cls, lr=1.0)
    assert [g["lr"] for g in opt.param_groups] == [1.0, 16.0]


# --------------------------------------------------------------------------- bitsandbytes 8-bit (simulated)


@pytest.fixture
def fake_bnb(monkeypatch):
    """A stand-in ``bitsandbytes`` whose GlobalOptimManager records ``register_module_override`` calls."""
    calls: list[tuple[nn.Module, str, dict]] = []

    class GlobalOptimManager:
        @classmethod
        def get_instance(cls):
            return cls()

        def register_module_override(self, module, param_name, config):
            calls.append((module, param_name, config))

    bnb, optim = types.ModuleType("bitsandbytes"), types.ModuleType("bitsandbytes.optim")
    optim.GlobalOptimManager = GlobalOptimManager
    bnb.optim = optim
    monkeypatch.setitem(sys.modules, "bitsandbytes", bnb)
    monkeypatch.setitem(sys.modules, "bitsandbytes.optim", optim)

    class Adam8bit(torch.optim.Adam):
        pass

    class AdamW(torch.optim.AdamW):  # bnb's AdamW takes optim_bits=8 (what HF's adamw_bnb_8bit passes)
        def __init__(self, params, lr=1e-3, optim_bits=32, **kwargs):
            super().__init__(params, lr=lr, **kwargs)

    Adam8bit.__module__ = "bitsandbytes.optim.adam"
    AdamW.__module__ = "bitsandbytes.optim.adamw"
    return types.SimpleNamespace(calls=calls, Adam8bit=Adam8bit, AdamW=AdamW)


@pytest.mark.parametrize("key, embedding_path", [("peft_embedding", "emb.base_layer"), ("loralib_style", "wte")])
def test_bnb_8bit_keeps_embeddings_in_32_bit(fake_bnb, key, embedding_path):
    model = TINY_MODELS[key].build()
    opt = create_loraplus_optimizer(model, fake_bnb.Adam8bit, lr=1e-3)
    assert isinstance(opt, fake_bnb.Adam8bit)
    root = model.base_model.model if key.startswith("peft") else model
    embedding = root.get_submodule(embedding_path)
    assert isinstance(embedding, nn.Embedding)
    assert len(fake_bnb.calls) == 1
    module, param_name, config = fake_bnb.calls[0]
    assert module is embedding and (param_name, config) == ("weight", {"optim_bits": 32})


def test_bnb_optim_bits_8_kwarg_also_counts(fake_bnb):
    model = TINY_MODELS["peft_embedding"].build()
    create_loraplus_optimizer(model, fake_bnb.AdamW, lr=1e-3, optim_bits=8)
    assert [(c[1], c[2]) for c in fake_bnb.calls] == [("weight", {"optim_bits": 32})]


def test_bnb_32_bit_and_non_bnb_optimizers_register_nothing(fake_bnb):
    model = TINY_MODELS["peft_embedding"].build()
    create_loraplus_optimizer(model, fake_bnb.AdamW, lr=1e-3, optim_bits=32)
    create_loraplus_optimizer(model, torch.optim.Adam, lr=1e-3)
    create_loraplus_optimizer(model, type("Adam8bit", (torch.optim.Adam,), {}), lr=1e-3)  # not from bitsandbytes
    assert fake_bnb.calls == []


def test_optimizer_cls_may_be_any_callable():
    """A ``functools.partial`` (no ``__name__``) works as ``optimizer_cls``."""
    import functools

    model = TINY_MODELS["peft_linear_plain"].build()
    sgd = functools.partial(torch.optim.SGD, momentum=0.5)
    opt = create_loraplus_optimizer(model, sgd, lr=0.1, loraplus_lr_ratio=2)
    got = {g["name"]: (g["lr"], g["momentum"]) for g in opt.param_groups}
    assert got == {"lora_A": (0.1, 0.5), "lora_B": (0.2, 0.5)}
    assert math.isclose(opt.defaults["lr"], 0.1)
