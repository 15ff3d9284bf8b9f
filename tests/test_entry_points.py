"""Every public entry point takes every LoRA+ option, as keywords or as one ``LoraPlusConfig``, and builds the
same groups from them (names, members, lr, weight decay)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import TrainingArguments

from loraplus import LoraPlusConfig, LoraPlusTrainer, LoraPlusTrainingArguments, create_loraplus_optimizer
from loraplus.groups import DEFAULT_LORAPLUS_LR_RATIO, loraplus_param_groups
from loraplus.lightning import loraplus_optimizers
from tiny_models import P, _peft

LR = 1e-3
OPTIONS = dict(loraplus_lr_ratio=8.0, loraplus_lr_embedding=1e-5, loraplus_lr_other=3e-4, weight_decay=0.1)


class EmbedHead(nn.Module):
    """ids (batch, seq) -> logits (batch, 3): an embedding, a Linear and a LayerNorm-free head with a bias."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.fc = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, input_ids, labels=None):
        logits = self.head(self.fc(self.emb(input_ids)).mean(1))
        return {"logits": logits, "loss": nn.functional.cross_entropy(logits, labels) if labels is not None else None}


def model() -> nn.Module:
    torch.manual_seed(0)
    return _peft(EmbedHead(), target_modules=["emb", "fc"], modules_to_save=["head"])


def summary(m: nn.Module, groups) -> dict[str, tuple[float, float, tuple[str, ...]]]:
    names = {id(p): n for n, p in m.named_parameters()}
    return {g["name"]: (g["lr"], g["weight_decay"], tuple(sorted(names[id(p)] for p in g["params"]))) for g in groups}


def groups_of(build) -> dict:
    m = model()
    built = build(m)
    groups = built.param_groups if hasattr(built, "param_groups") else built
    return summary(m, groups)


EXPECTED_LR = {"lora_A": LR, "lora_B": LR * 8, "lora_embedding": 1e-5, "other": 3e-4, "no_decay": 3e-4}


def test_reference_groups_pin_every_option_by_name():
    got = groups_of(lambda m: loraplus_param_groups(m, lr=LR, **OPTIONS))
    assert {name: lr for name, (lr, _, _) in got.items()} == pytest.approx(EXPECTED_LR, rel=1e-12)
    assert {name: wd for name, (_, wd, _) in got.items()} == {"lora_A": 0.1, "lora_B": 0.1, "lora_embedding": 0.1,
                                                              "other": 0.1, "no_decay": 0.0}  # fmt: skip
    assert got["lora_embedding"][2] == (P + "emb.lora_embedding_A.default", P + "emb.lora_embedding_B.default")


def _trainer(m, tmp_path, **kwargs):
    args = kwargs.pop("args", None) or TrainingArguments(output_dir=str(tmp_path), learning_rate=LR,
                                                         weight_decay=0.1, use_cpu=True, report_to="none")  # fmt: skip
    trainer = LoraPlusTrainer(model=m, args=args, **kwargs)
    return trainer.create_optimizer()


@pytest.mark.parametrize(
    "build",
    [
        lambda m, tmp: loraplus_param_groups(m, lr=LR, config=LoraPlusConfig(**OPTIONS)),
        lambda m, tmp: create_loraplus_optimizer(m, lr=LR, **OPTIONS),
        lambda m, tmp: create_loraplus_optimizer(m, lr=LR, config=LoraPlusConfig(**OPTIONS)),
        lambda m, tmp: loraplus_optimizers(m, lr=LR, **OPTIONS)["optimizer"],
        lambda m, tmp: loraplus_optimizers(m, lr=LR, config=LoraPlusConfig(**OPTIONS))["optimizer"],
        lambda m, tmp: _trainer(m, tmp, args=LoraPlusTrainingArguments(output_dir=str(tmp), learning_rate=LR,
                                                                       use_cpu=True, report_to="none", **OPTIONS)),
        lambda m, tmp: _trainer(m, tmp, args=LoraPlusTrainingArguments.from_loraplus_config(
            LoraPlusConfig(**OPTIONS), output_dir=str(tmp), learning_rate=LR, use_cpu=True, report_to="none")),
        lambda m, tmp: _trainer(m, tmp, loraplus_config=LoraPlusConfig(**OPTIONS)),
        lambda m, tmp: _trainer(m, tmp, **{k: v for k, v in OPTIONS.items() if k != "weight_decay"}),
    ],
    ids=["groups-config", "optimizer-kw", "optimizer-config", "lightning-kw", "lightning-config", "trainer-args",
         "trainer-args-from-config", "trainer-config", "trainer-kw"],
)  # fmt: skip
def test_every_entry_point_builds_the_same_groups(build, tmp_path):
    expected = groups_of(lambda m: loraplus_param_groups(m, lr=LR, **OPTIONS))
    assert groups_of(lambda m: build(m, tmp_path)) == expected


def test_config_and_keywords_together_are_refused(tmp_path):
    m = model()
    with pytest.raises(ValueError, match="give config= or the LoRA\\+ keywords, not both .*loraplus_lr_ratio"):
        create_loraplus_optimizer(m, lr=LR, loraplus_lr_ratio=4.0, config=LoraPlusConfig())
    with pytest.raises(ValueError, match="not both .*loraplus_lr_other"):
        _trainer(m, tmp_path, loraplus_config=LoraPlusConfig(), loraplus_lr_other=1e-4)


def test_the_default_ratio_is_one_constant(tmp_path):
    assert LoraPlusConfig().loraplus_lr_ratio == DEFAULT_LORAPLUS_LR_RATIO == 16.0
    args = LoraPlusTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    assert args.loraplus_lr_ratio == DEFAULT_LORAPLUS_LR_RATIO
    m = model()
    groups = summary(m, create_loraplus_optimizer(m, lr=LR).param_groups)
    assert groups["lora_B"][0] == pytest.approx(LR * DEFAULT_LORAPLUS_LR_RATIO, rel=1e-12)
