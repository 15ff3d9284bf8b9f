"""Property-based tests (hypothesis): LoRA+ grouping over random module trees, and configs that never crash.

1. Random trees mixing the LoRA naming conventions (PEFT ``lora_A``/``lora_B`` ModuleDicts and
   embedding ParameterDicts, torchtune ``lora_a``/``lora_b``, kohya ``lora_down``/``lora_up``, Megatron
   ``linear_in``/``linear_out``, loralib Parameters), random ranks, frozen/trainable mixes, biases, norms, tied
   tensors and shared modules: every trainable parameter lands in exactly one named, non-empty group, no frozen
   one does, and lr_B = λ · lr_A for every pair.
2. Random option values (nan, ±inf, negatives, strings, bools, None, huge ints, lists): ``TrainConfig``,
   ``SweepConfig``, ``CompareConfig`` and ``loraplus_param_groups`` either accept them or raise ``ValueError``.
"""

import dataclasses
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from loraplus.config import TrainConfig
from loraplus.experiments.compare import CompareConfig
from loraplus.experiments.sweep import SweepConfig
from loraplus.groups import find_lora_pairs, loraplus_param_groups

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------- random LoRA module trees


class PeftLike(nn.Module):
    """PEFT LoraLayer: base_layer + lora_A/lora_B ModuleDicts keyed by adapter name."""

    def __init__(self, i, o, r, adapters, bias):
        super().__init__()
        self.base_layer = nn.Linear(i, o, bias=bias)
        self.lora_A = nn.ModuleDict({a: nn.Linear(i, r, bias=False) for a in adapters})
        self.lora_B = nn.ModuleDict({a: nn.Linear(r, o, bias=False) for a in adapters})


class PeftEmbeddingLike(nn.Module):
    """PEFT Embedding LoRA: lora_embedding_A (r, num) and lora_embedding_B (dim, r) ParameterDicts."""

    def __init__(self, num, dim, r):
        super().__init__()
        self.base_layer = nn.Embedding(num, dim)
        self.lora_embedding_A = nn.ParameterDict({"default": nn.Parameter(torch.zeros(r, num))})
        self.lora_embedding_B = nn.ParameterDict({"default": nn.Parameter(torch.randn(dim, r))})


class SubmoduleFactors(nn.Module):
    """torchtune (lora_a/lora_b), kohya (lora_down/lora_up), Megatron (linear_in/linear_out): Linear factors."""

    def __init__(self, names, i, o, r, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(o, i))
        setattr(self, names[0], nn.Linear(i, r, bias=False))
        setattr(self, names[1], nn.Linear(r, o, bias=bias))


class LoralibLike(nn.Linear):
    """loralib: lora_A (r, in) and lora_B (out, r) are Parameters of the layer itself."""

    def __init__(self, i, o, r, bias):
        super().__init__(i, o, bias=bias)
        self.lora_A = nn.Parameter(torch.randn(r, i))
        self.lora_B = nn.Parameter(torch.zeros(o, r))


class PlainInOut(nn.Module):
    """An ordinary MLP that happens to use Megatron's names: hidden > in, so not a LoRA pair."""

    def __init__(self, i, o):
        super().__init__()
        self.linear_in = nn.Linear(i, 4 * i)
        self.linear_out = nn.Linear(4 * i, o)


class ScaleNorm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))


KINDS = ("peft", "peft_embedding", "torchtune", "kohya", "megatron", "loralib", "plain_in_out", "linear",
         "layer_norm", "scale_norm", "nested")  # fmt: skip
NAMES = {"torchtune": ("lora_a", "lora_b"), "kohya": ("lora_down", "lora_up"), "megatron": ("linear_in", "linear_out")}


def build_tree(data, depth: int = 0) -> nn.Module:
    root = nn.Module()
    for index in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(KINDS if depth < 2 else KINDS[:-1]))
        i, o = data.draw(st.integers(4, 10)), data.draw(st.integers(4, 10))
        r, bias = data.draw(st.integers(1, 4)), data.draw(st.booleans())
        if kind == "peft":
            adapters = data.draw(st.lists(st.sampled_from(["default", "other"]), min_size=1, max_size=2, unique=True))
            module = PeftLike(i, o, r, adapters, bias)
        elif kind == "peft_embedding":
            module = PeftEmbeddingLike(i, o, r)
        elif kind in NAMES:
            module = SubmoduleFactors(NAMES[kind], i, o, r, bias)
        elif kind == "loralib":
            module = LoralibLike(i, o, r, bias)
        elif kind == "plain_in_out":
            module = PlainInOut(i, o)
        elif kind == "linear":
            module = nn.Linear(i, o, bias=bias)
        elif kind == "layer_norm":
            module = nn.LayerNorm(i)
        elif kind == "scale_norm":
            module = ScaleNorm(i)
        else:
            module = build_tree(data, depth + 1)
        root.add_module(f"{kind}_{index}", module)
    return root


def tie_and_share(data, model: nn.Module) -> None:
    """Tie some same-shaped non-LoRA weights (embedding ↔ head style) and register some modules twice."""
    children = [(name, m) for name, m in model.named_modules() if name]
    if data.draw(st.booleans()) and children:
        name, module = data.draw(st.sampled_from(children))
        model.add_module("shared_" + name.replace(".", "_"), module)  # the same module under a second name
    plain = [m for _, m in model.named_modules() if type(m) is nn.Linear and not _inside_lora(model, m)]
    for a, b in zip(plain, plain[1:]):
        if a.weight.shape == b.weight.shape and data.draw(st.booleans()):
            b.weight = a.weight


def _inside_lora(model: nn.Module, target: nn.Module) -> bool:
    names = [n for n, m in model.named_modules() if m is target]
    factor_tokens = {"lora_A", "lora_B", "lora_a", "lora_b", "lora_down", "lora_up", "linear_in", "linear_out"}
    return any(set(n.split(".")) & factor_tokens for n in names)


def freeze_some(data, model: nn.Module) -> None:
    for p in {id(p): p for p in model.parameters()}.values():
        p.requires_grad_(data.draw(st.booleans()))


@SETTINGS
@given(data=st.data(), lr=st.floats(1e-6, 1.0), ratio=st.floats(1.0, 1e3), embedding=st.booleans())
def test_random_trees_group_every_trainable_parameter_once_with_lr_b_ratio(data, lr, ratio, embedding):
    torch.manual_seed(0)
    model = build_tree(data)
    tie_and_share(data, model)
    freeze_some(data, model)
    trainable = {id(p): p for p in model.parameters() if p.requires_grad}
    lr_embedding = 1e-5 if embedding else None
    if not trainable:
        with pytest.raises(ValueError, match="no trainable parameters"):
            loraplus_param_groups(model, lr=lr, loraplus_lr_ratio=ratio)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no trainable LoRA factor" is expected for some trees
        groups = loraplus_param_groups(model, lr=lr, loraplus_lr_ratio=ratio, loraplus_lr_embedding=lr_embedding)
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(trainable)  # every trainable tensor exactly once, no frozen one
    assert all(g["params"] and g["name"] for g in groups)  # named, none empty
    assert len({g["name"] for g in groups}) == len(groups)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    params = dict(model.named_parameters(remove_duplicate=False))
    for pair in set(find_lora_pairs(model).values()):
        if pair.a_name is None or pair.b_name is None:
            continue
        a, b = params[pair.a_name], params[pair.b_name]
        if not (a.requires_grad and b.requires_grad):
            continue
        if pair.embedding and lr_embedding is not None:
            assert lr_of[id(a)] == lr_of[id(b)] == lr_embedding, pair
        else:
            assert lr_of[id(a)] == lr and lr_of[id(b)] == lr * ratio, pair


def test_the_tree_builder_covers_every_convention():
    """Guard: the names the generator makes are found as pairs (else the property above proves little)."""
    model = nn.Module()
    model.peft = PeftLike(6, 5, 2, ["default"], True)
    model.emb = PeftEmbeddingLike(7, 4, 2)
    for kind, names in NAMES.items():
        model.add_module(kind, SubmoduleFactors(names, 6, 5, 2, False))
    model.loralib = LoralibLike(6, 5, 2, True)
    model.plain = PlainInOut(6, 5)
    prefixes = {pair.prefix for pair in find_lora_pairs(model).values()}
    assert prefixes == {"peft", "emb", "torchtune", "kohya", "megatron", "loralib"}


# --------------------------------------------------------------------------- random option values

WILD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),  # unbounded: 10**400 too
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["1e-3", "nan", "inf", "-1", "0", "16", "8", "", " ", "query,value", "1e400", "true", "cosine", "auto", "a/b"]),
    st.lists(st.one_of(st.integers(-3, 3), st.text(max_size=4), st.floats(allow_nan=True)), max_size=3),
)


def options_for(cls):
    names = [f.name for f in dataclasses.fields(cls)]
    return st.dictionaries(st.sampled_from(names), WILD, max_size=6)


def valid_or_value_error(build, check=None) -> None:
    """``build()`` raises ValueError, or its result passes ``check`` (the accepted values are in range)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            built = build()
        except ValueError:
            return  # any other exception type fails the test
    if check is not None:
        check(built)


POSITIVE_INTS = ("r", "batch_size", "eval_batch_size", "max_length", "eval_steps", "logging_steps", "monitor_every")


def check_train_config(cfg) -> None:
    """What an accepted ``TrainConfig`` guarantees: numbers finite and in range, ints ints, a known task."""
    import math

    from loraplus.tasks import TASKS

    assert cfg.task in TASKS and isinstance(cfg.model, str) and cfg.model.strip()
    assert math.isfinite(cfg.learning_rate) and cfg.learning_rate > 0
    assert cfg.loraplus_lr_ratio == "auto" or (math.isfinite(cfg.loraplus_lr_ratio) and cfg.loraplus_lr_ratio > 0)
    assert math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0
    assert 0 <= cfg.lora_dropout < 1 and 0 <= cfg.warmup_ratio < 1
    for name in POSITIVE_INTS:
        value = getattr(cfg, name)
        assert isinstance(value, int) and not isinstance(value, bool) and value > 0, (name, value)
    assert cfg.max_steps == -1 or cfg.max_steps > 0
    assert 0 < cfg.val_fraction < 1 and 0 < cfg.test_fraction < 1 and cfg.val_fraction + cfg.test_fraction < 1


def check_groups(groups) -> None:
    import math

    assert groups and all(g["params"] for g in groups)
    for g in groups:
        assert math.isfinite(g["lr"]) and g["lr"] > 0 and math.isfinite(g["weight_decay"]) and g["weight_decay"] >= 0


@SETTINGS
@given(options=options_for(TrainConfig))
def test_train_config_is_valid_or_raises_value_error(options):
    valid_or_value_error(lambda: TrainConfig(**options), check_train_config)


@SETTINGS
@given(options=options_for(SweepConfig))
def test_sweep_config_is_valid_or_raises_value_error(options):
    valid_or_value_error(lambda: SweepConfig(**options), check_train_config)


@SETTINGS
@given(options=options_for(CompareConfig))
def test_compare_config_is_valid_or_raises_value_error(options):
    valid_or_value_error(lambda: CompareConfig(**options), check_train_config)


GROUP_OPTIONS = ("lr", "loraplus_lr_ratio", "loraplus_lr_embedding", "weight_decay", "loraplus_lr_other")


@pytest.fixture(scope="module")
def peft_embedding_model():
    from tiny_models import TINY_MODELS

    return TINY_MODELS["peft_embedding"].build()  # grouping never changes the model: one for every example


@SETTINGS
@given(options=st.dictionaries(st.sampled_from(GROUP_OPTIONS), WILD, max_size=5))
def test_group_options_are_valid_or_raise_value_error(peft_embedding_model, options):
    options.setdefault("lr", 1e-3)
    valid_or_value_error(lambda: loraplus_param_groups(peft_embedding_model, **options), check_groups)
