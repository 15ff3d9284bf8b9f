"""LoRA+ parameter groups: every trainable parameter's group, lr and weight decay, by name, for every tiny model."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from loraplus.groups import find_lora_pairs, loraplus_param_groups
from tiny_models import TINY_MODELS, P, LoralibLinear

LR, RATIO, WD = 1e-3, 16.0, 0.1
# (lr, weight_decay) of each group for lr=1e-3, loraplus_lr_ratio=16, weight_decay=0.1, loraplus_lr_embedding=1e-6.
GROUP_OPTIONS = {
    "lora_A": (1e-3, 0.1),
    "lora_B": (0.016, 0.1),
    "lora_embedding": (1e-6, 0.1),
    "other": (1e-3, 0.1),
    "no_decay": (1e-3, 0.0),
    "lora_A_no_decay": (1e-3, 0.0),
    "lora_B_no_decay": (0.016, 0.0),
}


def options_by_name(model: nn.Module, groups: list[dict]) -> dict[str, tuple[str, float, float]]:
    """{parameter name: (group name, lr, weight_decay)} for every parameter found in ``groups``."""
    by_id = {id(p): (g["name"], g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    return {n: by_id[id(p)] for n, p in model.named_parameters() if id(p) in by_id}


def check_invariants(model: nn.Module, groups: list[dict]) -> None:
    """Named groups, none empty; each trainable tensor in exactly one group; no frozen tensor."""
    assert all(isinstance(g.get("name"), str) and g["name"] for g in groups)
    names = [g["name"] for g in groups]
    assert len(names) == len(set(names)), names
    assert all(len(g["params"]) > 0 for g in groups), [(g["name"], len(g["params"])) for g in groups]
    grouped = [id(p) for g in groups for p in g["params"]]
    assert len(grouped) == len(set(grouped)), "a tensor sits in two groups (or twice in one)"
    trainable = {id(p) for p in model.parameters() if p.requires_grad}  # parameters() dedups tied tensors
    frozen = {id(p) for p in model.parameters() if not p.requires_grad}
    assert set(grouped) == trainable
    assert not set(grouped) & frozen


def build_groups_quietly(model: nn.Module, **options) -> list[dict]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return loraplus_param_groups(model, **options)


@pytest.mark.parametrize("key", sorted(TINY_MODELS))
def test_every_trainable_parameter_by_name(key):
    case = TINY_MODELS[key]
    model = case.build()
    groups = build_groups_quietly(model, lr=LR, loraplus_lr_ratio=RATIO, weight_decay=WD)
    got = options_by_name(model, groups)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(case.expected) == trainable, "the table must list every trainable parameter"
    expected = {n: (g, *GROUP_OPTIONS[g]) for n, g in case.expected.items()}
    assert got == expected
    assert {n: g for n, (g, _, _) in got.items()} == case.expected


@pytest.mark.parametrize("key", sorted(TINY_MODELS))
def test_group_invariants(key):
    model = TINY_MODELS[key].build()
    check_invariants(model, build_groups_quietly(model, lr=LR, weight_decay=WD))


@pytest.mark.parametrize("key", sorted(k for k, case in TINY_MODELS.items() if case.has_lora))
def test_models_with_lora_do_not_warn(key):
    model = TINY_MODELS[key].build()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loraplus_param_groups(model, lr=LR)


@pytest.mark.parametrize("key", sorted(k for k, case in TINY_MODELS.items() if not case.has_lora))
def test_models_without_lora_warn_that_the_ratio_has_no_effect(key):
    model = TINY_MODELS[key].build()
    with pytest.warns(UserWarning, match="has no effect"):
        groups = loraplus_param_groups(model, lr=LR)
    assert {g["name"] for g in groups} == {"other", "no_decay"}


@pytest.mark.parametrize("key", sorted(k for k, case in TINY_MODELS.items() if case.embedding_factors))
@pytest.mark.parametrize("embedding_lr", [1e-6, "1e-6"])
def test_loraplus_lr_embedding_moves_both_embedding_factors(key, embedding_lr):
    case = TINY_MODELS[key]
    model = case.build()
    groups = loraplus_param_groups(
        model, lr=LR, loraplus_lr_ratio=RATIO, weight_decay=WD, loraplus_lr_embedding=embedding_lr
    )
    got = options_by_name(model, groups)
    expected = {n: (g, *GROUP_OPTIONS[g]) for n, g in case.expected.items()}
    for name in case.embedding_factors:
        expected[name] = ("lora_embedding", 1e-6, 0.1)
    assert got == expected
    check_invariants(model, groups)


def test_peft_embedding_factors_without_embedding_lr_get_lr_and_ratio():
    """PEFT < 0.21 left lora_embedding_B at base lr; here B gets lr·λ like any B."""
    model = TINY_MODELS["peft_embedding"].build()
    got = options_by_name(model, loraplus_param_groups(model, lr=2e-4, loraplus_lr_ratio=10))
    assert got[P + "emb.lora_embedding_A.default"] == ("lora_A", 2e-4, 0.0)
    assert got[P + "emb.lora_embedding_B.default"] == ("lora_B", pytest.approx(2e-3, rel=1e-12), 0.0)


def test_find_lora_pairs_marks_embeddings_and_partners():
    peft_emb = find_lora_pairs(TINY_MODELS["peft_embedding"].build())
    pair = peft_emb[P + "emb.lora_embedding_B.default"]
    assert (pair.a_name, pair.b_name, pair.embedding) == (
        P + "emb.lora_embedding_A.default",
        P + "emb.lora_embedding_B.default",
        True,
    )
    assert peft_emb[P + "out.lora_A.default.weight"].embedding is False
    loralib = find_lora_pairs(TINY_MODELS["loralib_style"].build())
    assert loralib["wte.lora_A"].embedding is True and loralib["wte.lora_A"].prefix == "wte"
    assert loralib["c_attn.lora_B"].embedding is False
    conv = find_lora_pairs(TINY_MODELS["peft_conv2d"].build())
    assert conv[P + "conv.lora_A.default.weight"].b_name == P + "conv.lora_B.default.weight"


def test_frozen_factors_are_found_but_not_grouped():
    model = TINY_MODELS["peft_linear_plain"].build()
    model.base_model.model.fc2.lora_B.requires_grad_(False)
    assert P + "fc2.lora_B.default.weight" in find_lora_pairs(model)
    groups = loraplus_param_groups(model, lr=LR)
    check_invariants(model, groups)
    assert P + "fc2.lora_B.default.weight" not in options_by_name(model, groups)


def test_megatron_plain_mlp_is_not_lora_but_adapter_is():
    assert find_lora_pairs(TINY_MODELS["megatron_plain_mlp"].build()) == {}
    pairs = find_lora_pairs(TINY_MODELS["megatron_adapter"].build())
    assert set(pairs) == {"adapter.linear_in.weight", "adapter.linear_out.weight"}
    assert pairs["adapter.linear_in.weight"].b_name == "adapter.linear_out.weight"


def test_dora_magnitude_is_no_decay_at_lr():
    model = TINY_MODELS["peft_dora"].build()
    got = options_by_name(model, loraplus_param_groups(model, lr=LR, weight_decay=WD))
    magnitude = {n: v for n, v in got.items() if "lora_magnitude_vector" in n}
    assert magnitude == {
        P + "fc1.lora_magnitude_vector.default.weight": ("no_decay", 1e-3, 0.0),
        P + "fc2.lora_magnitude_vector.default.weight": ("no_decay", 1e-3, 0.0),
    }


def test_lora_bias_goes_to_b_no_decay_at_ratio():
    model = TINY_MODELS["peft_lora_bias"].build()
    got = options_by_name(model, loraplus_param_groups(model, lr=LR, weight_decay=WD))
    assert got[P + "fc1.lora_B.default.bias"] == ("lora_B_no_decay", 0.016, 0.0)
    assert got[P + "fc1.lora_B.default.weight"] == ("lora_B", 0.016, 0.1)


def test_no_bias_model_has_no_empty_no_decay_group():
    model = TINY_MODELS["peft_no_bias"].build()
    groups = loraplus_param_groups(model, lr=LR)
    assert [g["name"] for g in groups] == ["lora_A", "lora_B"]
    assert [len(g["params"]) for g in groups] == [2, 2]


def test_tied_parameter_appears_once():
    model = TINY_MODELS["tied"].build()
    groups = loraplus_param_groups(model, lr=LR, weight_decay=WD)
    grouped = [p for g in groups for p in g["params"]]
    assert sum(p is model.emb.weight for p in grouped) == 1
    assert len(grouped) == 3  # emb/lm_head weight, lora_a, lora_b


def test_tied_lora_factor_appears_once():
    """One lora_A tensor shared by two layers (weight tying inside adapters) is still grouped once, as A."""
    torch.manual_seed(0)
    model = nn.Sequential(LoralibLinear(8, 8), LoralibLinear(8, 8))
    model[1].lora_A = model[0].lora_A
    groups = loraplus_param_groups(model, lr=LR)
    check_invariants(model, groups)
    assert options_by_name(model, groups) == {
        "0.bias": ("no_decay", 1e-3, 0.0),
        "0.lora_A": ("lora_A", 1e-3, 0.0),
        "0.lora_B": ("lora_B", 0.016, 0.0),
        "1.bias": ("no_decay", 1e-3, 0.0),
        "1.lora_B": ("lora_B", 0.016, 0.0),
    }


def test_bias_of_an_a_factor_goes_to_a_no_decay():
    class BiasedAdapter(nn.Module):  # torchtune-style names, both factors with biases
        def __init__(self):
            super().__init__()
            self.lora_a = nn.Linear(8, 2)
            self.lora_b = nn.Linear(2, 8)

    torch.manual_seed(0)
    model = BiasedAdapter()
    groups = loraplus_param_groups(model, lr=LR, weight_decay=WD)
    check_invariants(model, groups)
    assert options_by_name(model, groups) == {
        "lora_a.weight": ("lora_A", 1e-3, 0.1),
        "lora_a.bias": ("lora_A_no_decay", 1e-3, 0.0),
        "lora_b.weight": ("lora_B", 0.016, 0.1),
        "lora_b.bias": ("lora_B_no_decay", 0.016, 0.0),
    }


def test_mis_shaped_explicit_pair_raises():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.lora_A = nn.Parameter(torch.zeros(4, 10))
            self.lora_B = nn.Parameter(torch.zeros(20, 3))

    with pytest.raises(ValueError, match=r"lora_A \(4, 10\) and lora_B \(20, 3\)"):
        loraplus_param_groups(Bad(), lr=LR)


def test_groups_drive_a_real_optimizer_step():
    """The group dicts are accepted by torch.optim as they are, and the step moves only trainable tensors."""
    model = TINY_MODELS["peft_classifier_full"].build()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW(loraplus_param_groups(model, lr=LR, weight_decay=WD))
    model(torch.randn(4, 8)).sum().backward()
    opt.step()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert [g["name"] for g in opt.param_groups] == ["lora_A", "lora_B", "other", "no_decay"]


def test_an_lr_b_that_overflows_is_refused():
    """lr and λ each finite, their product inf: found by the property test; lr_B must be a finite number."""
    model = TINY_MODELS["peft_linear_plain"].build()
    with pytest.raises(ValueError, match=r"lr_B = lr · loraplus_lr_ratio = 1e\+200 · 1e\+200 is not finite"):
        loraplus_param_groups(model, lr=1e200, loraplus_lr_ratio=1e200)
