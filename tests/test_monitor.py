"""Feature-learning monitor: δ_A, δ_B against hand computations, LoRA+ ratio shift, Trainer logging, no side effects."""

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from torch import nn

from loraplus.groups import loraplus_param_groups
from loraplus.hf import add_feature_learning_callback
from loraplus.monitor import FeatureLearningMonitor, aggregate_records, plot_monitor

LOG10_16 = math.log10(16)


class MLP(nn.Module):
    """x (batch, seq, 6) -> (batch, seq, 3); fc1 sees the probe itself, fc2 sees relu(fc1(x)) after dropout."""

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.fc1, self.drop, self.fc2 = nn.Linear(6, 5), nn.Dropout(dropout), nn.Linear(5, 3)

    def forward(self, x):
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


def peft_mlp(*, random_b: bool, dropout: float = 0.0, lora_dropout: float = 0.0, seed: int = 0) -> nn.Module:
    """PEFT LoRA r=2, alpha=4 (s = 2) on fc1 and fc2. ``random_b``: B starts random instead of 0 (init False)."""
    torch.manual_seed(seed)
    config = LoraConfig(
        r=2, lora_alpha=4, target_modules=["fc1", "fc2"], lora_dropout=lora_dropout, init_lora_weights=not random_b
    )
    return get_peft_model(MLP(dropout), config)


def probe_x(seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 3, 6, generator=torch.Generator().manual_seed(seed))


def loss_fn(model, x):
    return model(x).pow(2).mean()


def rms(t: torch.Tensor) -> float:
    return t.pow(2).mean().sqrt().item()


def by_layer(records, step):
    return {r["layer"].rsplit(".", 1)[-1]: r for r in records if r["step"] == step}


def test_deltas_match_hand_computation_after_one_sgd_step():
    """The probe runs without dropout (eval mode), so x is the layer's clean input at θ_{t-1}."""
    model = peft_mlp(random_b=True, dropout=0.5, lora_dropout=0.5)
    x = probe_x()
    lora = {n: model.base_model.model.get_submodule(n) for n in ("fc1", "fc2")}
    before = {n: (m.lora_A["default"].weight.detach().clone(), m.lora_B["default"].weight.detach().clone())
              for n, m in lora.items()}  # fmt: skip
    with torch.no_grad():  # inputs of each LoRA layer at θ_{t-1} in eval mode: fc1 sees x, fc2 sees relu(fc1(x))
        model.eval()
        inputs = {"fc1": x.reshape(-1, 6), "fc2": torch.relu(lora["fc1"](x)).reshape(-1, 5)}
        model.train()
    monitor = FeatureLearningMonitor(model, x, every=1)
    factors = {role: [p for n, p in model.named_parameters() if role in n] for role in ("lora_A", "lora_B")}
    opt = torch.optim.SGD([{"params": factors["lora_A"], "lr": 0.1}, {"params": factors["lora_B"], "lr": 0.3}])
    loss_fn(model, x).backward()
    with monitor.step():
        opt.step()
    got = by_layer(monitor.history, 1)
    for name, m in lora.items():
        (a0, b0), s = before[name], m.scaling["default"]
        a1, b1 = m.lora_A["default"].weight.detach(), m.lora_B["default"].weight.detach()
        assert s == 2.0
        delta_a = s * (b0 @ (a1 - a0) @ inputs[name].T).T  # s · B_{t-1} (A_t − A_{t-1}) x, per token
        delta_b = s * ((b1 - b0) @ a0 @ inputs[name].T).T  # s · (B_t − B_{t-1}) A_{t-1} x
        assert got[name]["delta_A"] == pytest.approx(rms(delta_a), rel=1e-5)
        assert got[name]["delta_B"] == pytest.approx(rms(delta_b), rel=1e-5)
        assert got[name]["log10_ratio"] == pytest.approx(math.log10(rms(delta_b) / rms(delta_a)), rel=1e-5)
    agg = monitor.latest
    assert agg["n_layers"] == 2 and agg["delta_A"] == pytest.approx((got["fc1"]["delta_A"] + got["fc2"]["delta_A"]) / 2)


def test_first_step_from_zero_b_moves_only_b():
    """Standard init (B = 0): δ_A = s · B_0 (ΔA) x is exactly 0 whatever A does (AdamW decay moves A), δ_B > 0."""
    model = peft_mlp(random_b=False)
    monitor = FeatureLearningMonitor(model, probe_x(), every=1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    loss_fn(model, probe_x(2)).backward()
    with monitor.step():
        opt.step()
    for record in monitor.history:
        assert record["delta_A"] == 0.0 and record["delta_B"] > 0 and record["log10_ratio"] is None
    assert monitor.latest["log10_ratio"] is None


@pytest.mark.parametrize(("optimizer_cls", "tol"), [(torch.optim.SGD, 1e-5), (torch.optim.Adam, 1e-3)])
def test_loraplus_ratio_16_raises_log_ratio_by_log10_16(optimizer_cls, tol):
    """The expectation, precisely: from the SAME state θ_{t-1} (same A_{t-1}, B_{t-1}, x and gradients), one step
    moves A by ΔA = −lr_A·u_A and B by ΔB = −lr_B·u_B, where u is the gradient (SGD) or g/(|g| + eps) (Adam's first
    step, bias-corrected). δ_A is linear in ΔA and δ_B in ΔB, so λ = lr_B/lr_A = 16 instead of 1 multiplies δ_B by
    16 and leaves δ_A unchanged: log10(δ_B/δ_A) rises by log10 16 = 1.204 in every layer (exactly for SGD; for Adam
    up to eps). B must be non-zero (random init) or δ_A = 0. Later steps differ by less than log10 λ in general:
    from B = 0, B_{t-1} itself grows with lr_B and δ_A = s·B_{t-1}·ΔA·x grows with it.
    """
    base = peft_mlp(random_b=True)
    ratios = {}
    for lam in (1.0, 16.0):
        model = copy.deepcopy(base)
        opt = optimizer_cls(loraplus_param_groups(model, lr=1e-2, loraplus_lr_ratio=lam))
        monitor = FeatureLearningMonitor(model, probe_x(), every=1)
        loss_fn(model, probe_x(3)).backward()
        with monitor.step():
            opt.step()
        ratios[lam] = {r["layer"]: r["log10_ratio"] for r in monitor.history}
    for layer, ratio_1 in ratios[1.0].items():
        assert ratios[16.0][layer] - ratio_1 == pytest.approx(LOG10_16, abs=tol)


def test_embedding_lora_uses_token_ids():
    """PEFT embedding LoRA: A x = F.embedding(ids, A.T); its init is swapped (A = 0, B random) so step 1 moves A."""

    class Emb(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(11, 4)

        def forward(self, ids):
            return self.emb(ids)

    torch.manual_seed(0)
    model = get_peft_model(Emb(), LoraConfig(r=2, lora_alpha=2, target_modules=["emb"]))
    layer = model.base_model.model.emb
    ids = torch.tensor([[1, 2, 3], [4, 5, 10]])
    monitor = FeatureLearningMonitor(model, ids, every=1)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for step in (1, 2):
        a0, b0 = layer.lora_embedding_A["default"].detach().clone(), layer.lora_embedding_B["default"].detach().clone()
        model(ids).sin().sum().backward()
        with monitor.step():
            opt.step()
        opt.zero_grad()
        a1, b1 = layer.lora_embedding_A["default"].detach(), layer.lora_embedding_B["default"].detach()
        record = monitor.history[-1]
        assert record["delta_A"] == pytest.approx(rms(F.embedding(ids, (a1 - a0).T) @ b0.T), rel=1e-5)
        assert record["delta_B"] == pytest.approx(rms(F.embedding(ids, a0.T) @ (b1 - b0).T), rel=1e-5, abs=1e-12)
        if step == 1:
            assert record["delta_B"] == 0.0 and record["delta_A"] > 0


def train_plain(model, steps: int, monitor=None) -> dict:
    """AdamW LoRA+ (λ 16) steps on fresh random batches; returns the final parameters."""
    opt = torch.optim.AdamW(loraplus_param_groups(model, lr=1e-2, loraplus_lr_ratio=16.0))
    for _ in range(steps):
        loss_fn(model, torch.randn(4, 3, 6)).backward()
        if monitor is None:
            opt.step()
        else:
            with monitor.step():
                opt.step()
        opt.zero_grad()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_monitor_does_not_change_training_and_removes_hooks():
    runs = []
    for with_monitor in (False, True):
        model = peft_mlp(random_b=False, dropout=0.3, lora_dropout=0.2)
        model.train()
        model.base_model.model.fc2.base_layer.eval()  # a module the user keeps in eval mode must stay there
        monitor = FeatureLearningMonitor(model, probe_x(), every=1) if with_monitor else None
        torch.manual_seed(123)  # the data and the dropout masks both come from this stream
        runs.append(train_plain(model, 5, monitor))
        assert model.training and not model.base_model.model.fc2.base_layer.training
        assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
    assert monitor.summary()["sampled_steps"] == 5
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][n], runs[1][n]) for n in runs[0])


def test_sampling_interval_json_and_plot(tmp_path):
    model = peft_mlp(random_b=False)
    monitor = FeatureLearningMonitor(model, probe_x(), every=3)
    train_plain(model, 7, monitor)
    assert monitor.steps_seen == 7
    assert [a["step"] for a in aggregate_records(monitor.history)] == [1, 4, 7]
    monitor.save_json(tmp_path / "fl.json")
    saved = json.loads((tmp_path / "fl.json").read_text())
    assert saved["every"] == 3 and saved["sampled_steps"] == 3 and len(saved["per_layer"]) == 6
    assert saved["aggregate"][0]["log10_ratio"] is None and saved["aggregate"][-1]["log10_ratio"] is not None
    assert saved["layers"] == ["base_model.model.fc1", "base_model.model.fc2"]
    assert not list(tmp_path.glob(".fl.json*"))  # no temporary file left behind
    plot_monitor(monitor.history, tmp_path / "a.png")
    plot_monitor(saved, tmp_path / "b" / "b.png")
    for png in (tmp_path / "a.png", tmp_path / "b" / "b.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class ParamLoRA(nn.Module):
    """loralib style: factors are parameters of the layer itself, ``scaling`` a float."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(5, 6), requires_grad=False)
        self.lora_A, self.lora_B = nn.Parameter(torch.randn(2, 6)), nn.Parameter(torch.randn(5, 2))
        self.scaling = 0.5

    def forward(self, x):
        return x @ self.weight.T + self.scaling * x @ self.lora_A.T @ self.lora_B.T


class ChildLoRA(nn.Module):
    """torchtune style: ``lora_a`` / ``lora_b`` linear children, no ``scaling`` attribute (s = 1)."""

    def __init__(self):
        super().__init__()
        self.lora_a, self.lora_b = nn.Linear(6, 2, bias=False), nn.Linear(2, 5, bias=False)

    def forward(self, x):
        return self.lora_b(self.lora_a(x))


@pytest.mark.parametrize(("layer_cls", "s"), [(ParamLoRA, 0.5), (ChildLoRA, 1.0)])
def test_other_naming_conventions(layer_cls, s):
    torch.manual_seed(0)
    model = nn.Sequential(layer_cls(), nn.Tanh())
    a_name, b_name = [n for n, p in model.named_parameters() if p.requires_grad]
    params = dict(model.named_parameters())
    a0, b0 = params[a_name].detach().clone(), params[b_name].detach().clone()
    x = probe_x()
    monitor = FeatureLearningMonitor(model, x, every=1)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(x).sum().backward()
    with monitor.step():
        opt.step()
    (record,) = monitor.history
    a1, b1, xs = params[a_name].detach(), params[b_name].detach(), x.reshape(-1, 6)
    assert record["layer"] == "0"
    assert record["delta_A"] == pytest.approx(rms(s * xs @ (a1 - a0).T @ b0.T), rel=1e-5)
    assert record["delta_B"] == pytest.approx(rms(s * xs @ a0.T @ (b1 - b0).T), rel=1e-5)


def test_invalid_use_raises():
    model = peft_mlp(random_b=False)
    with pytest.raises(ValueError, match="every must be an int >= 1, got 0"):
        FeatureLearningMonitor(model, probe_x(), every=0)
    with pytest.raises(ValueError, match="no monitorable LoRA layer"):
        FeatureLearningMonitor(MLP(), probe_x())
    with pytest.raises(ValueError, match="no probe batch"):
        FeatureLearningMonitor(model).before_step()
    conv = get_peft_model(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 2)),
                          LoraConfig(r=2, target_modules=["0", "2"]))  # fmt: skip
    assert list(FeatureLearningMonitor(conv).skipped.values()) == ["factors are 4-D/4-D (Conv LoRA), not 2-D"]


def test_import_does_not_load_transformers():
    code = "import sys, loraplus.monitor; assert 'transformers' not in sys.modules and 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- transformers.Trainer ------------------------------------------------------------------------------------


def tiny_peft_bert(seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, num_labels=2)  # fmt: skip
    lora = LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"], lora_dropout=0.1)
    return get_peft_model(BertForSequenceClassification(config), lora)


def tiny_rows(n: int = 24, length: int = 10) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        real = 4 + i % 6  # 4..9 real tokens, the rest padding (id 0, mask 0)
        ids = torch.randint(1, 40, (length,), generator=g) * (torch.arange(length) < real)
        rows.append({"input_ids": ids, "attention_mask": (ids > 0).long(), "labels": torch.tensor(i % 2)})
    return rows


def run_trainer(out, *, monitor: bool):
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class Recorder(TrainerCallback):  # stands in for a reporter such as TensorBoard
        def __init__(self):
            self.seen = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.seen.append(dict(logs))

    args = TrainingArguments(
        output_dir=str(out), use_cpu=True, report_to="none", max_steps=6, logging_steps=2, learning_rate=1e-3,
        per_device_train_batch_size=4, gradient_accumulation_steps=2, save_strategy="no", seed=7,
        remove_unused_columns=False, disable_tqdm=True, dataloader_num_workers=0,
    )  # fmt: skip
    recorder = Recorder()
    trainer = Trainer(model=tiny_peft_bert(), args=args, train_dataset=tiny_rows(), callbacks=[recorder])
    callback = add_feature_learning_callback(trainer, every=2) if monitor else None
    trainer.train()
    params = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    return trainer, callback, recorder, params


@pytest.fixture(scope="module")
def trainer_runs(tmp_path_factory):
    return {flag: run_trainer(tmp_path_factory.mktemp(f"run{int(flag)}"), monitor=flag) for flag in (True, False)}


def test_trainer_callback_logs_values(trainer_runs):
    trainer, callback, recorder, _ = trainer_runs[True]
    monitor = callback.monitor
    assert monitor.steps_seen == 6  # optimizer steps, not the 12 micro-batches of gradient accumulation
    assert [a["step"] for a in aggregate_records(monitor.history)] == [1, 3, 5]
    assert len(monitor.layers) == 4  # query and value in 2 layers
    train_logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [(e["step"], e["fl/step"]) for e in train_logs] == [(2, 1), (4, 3), (6, 5)]
    assert "fl/log10_ratio" not in train_logs[0]  # step 1: B = 0, so δ_A = 0 and the ratio is undefined
    for entry in train_logs[1:]:
        assert entry["fl/delta_A"] > 0 and entry["fl/delta_B"] > 0 and math.isfinite(entry["fl/log10_ratio"])
    assert [e.get("fl/step") for e in recorder.seen if "loss" in e] == [1, 3, 5]  # reporters see the values too
    saved = json.loads((Path(trainer.args.output_dir) / "feature_learning.json").read_text())
    assert saved["sampled_steps"] == 3


def test_padding_tokens_are_left_out():
    """Two probes that differ only at padded positions (attention_mask 0) give the same δ in every layer."""
    model = tiny_peft_bert()
    rows = tiny_rows(4)
    probes = []
    for pad_id in (0, 7):
        ids = torch.stack([r["input_ids"] for r in rows])
        mask = torch.stack([r["attention_mask"] for r in rows])
        probes.append({"input_ids": torch.where(mask.bool(), ids, pad_id), "attention_mask": mask})
    assert not torch.equal(probes[0]["input_ids"], probes[1]["input_ids"])
    monitors = [FeatureLearningMonitor(model, probe, every=1) for probe in probes]
    opt = torch.optim.AdamW(loraplus_param_groups(model, lr=1e-2))
    for _ in range(2):
        model(**probes[0], labels=torch.tensor([0, 1, 0, 1])).loss.backward()
        with monitors[0].step(), monitors[1].step():
            opt.step()
        opt.zero_grad()
    for r0, r1 in zip(monitors[0].history, monitors[1].history, strict=True):
        assert r0["layer"] == r1["layer"]
        assert r0["delta_A"] == pytest.approx(r1["delta_A"], rel=1e-5, abs=1e-12)
        assert r0["delta_B"] == pytest.approx(r1["delta_B"], rel=1e-5)


def test_trainer_callback_does_not_change_training(trainer_runs):
    with_monitor, without = trainer_runs[True][3], trainer_runs[False][3]
    assert with_monitor.keys() == without.keys()
    assert all(torch.equal(with_monitor[n], without[n]) for n in with_monitor)
