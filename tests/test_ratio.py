"""`loraplus ratio`: the width rule, its pinned exponent, the probe's crossing, and `--loraplus-lr-ratio auto`."""

import json
from pathlib import Path

import pytest

from loraplus.config import TrainConfig
from loraplus.ratio import RatioCommand, crossing, probe_ratio
from loraplus.train import resolve_ratio
from loraplus.width_rule import AUTO_RATIO, TOY_EXPONENT, ratio_from_width

ROOT = Path(__file__).resolve().parents[1]


def test_width_rule_is_anchored_at_the_paper_default_and_uses_the_toy_exponent():
    assert ratio_from_width(768) == pytest.approx(16.0)
    assert ratio_from_width(384) == pytest.approx(16.0 * 0.5**TOY_EXPONENT)
    assert ratio_from_width(4096) == pytest.approx(74.4, abs=0.1)
    with pytest.raises(ValueError, match="width must be a positive integer, got 0"):
        ratio_from_width(0)


def test_toy_exponent_is_the_committed_toy_result():
    """The constant in ratio.py is the fixed-data band_hi exponent of experiments/toy (made by `loraplus toy`)."""
    saved = json.loads((ROOT / "experiments" / "toy" / "ratio_exponent.json").read_text())
    pooled = saved["regimes"]["fixed"]["train"]["exponents"]["band_hi"]["pooled"]
    assert TOY_EXPONENT == pytest.approx(pooled, abs=5e-4)


def test_crossing_interpolates_in_log_ratio():
    ratio, how = crossing([1.0, 4.0, 16.0], [-0.5, 0.5, 1.0])
    assert ratio == pytest.approx(2.0) and how == "interpolated crossing"
    assert crossing([1.0, 4.0], [0.3, 0.6]) == (
        1.0, "B's change dominates at every candidate: the smallest candidate, an upper bound"
    )
    assert crossing([1.0, 4.0], [-0.3, None])[0] == 1.0
    assert "lower bound" in crossing([1.0, 4.0], [-0.3, -0.1])[1]
    with pytest.raises(ValueError, match="no δ_A/δ_B pair"):
        crossing([1.0, 2.0], [None, None])


@pytest.mark.parametrize(
    "bad, message",
    [(dict(candidates=("4",)), "at least two"), (dict(candidates=("1", "x")), "must be numbers"),
     (dict(candidates=("0", "4")), "> 0"), (dict(steps=0), "must be a positive integer, got 0")],
)  # fmt: skip
def test_bad_ratio_options_name_the_value(bad, message):
    with pytest.raises(ValueError, match=message):
        RatioCommand(**bad)


def test_probe_log_ratio_rises_with_the_ratio_at_fixed_lr_b(tiny_bert_dir, tiny_csv):
    cfg = TrainConfig(model=str(tiny_bert_dir), dataset=str(tiny_csv), learning_rate=1e-3, loraplus_lr_ratio=16.0,
                      max_steps=4, batch_size=8, max_length=16, warmup_ratio=0.0, lora_dropout=0.0, eval_steps=5,
                      save_checkpoints=False, target_modules=("query", "value"))  # fmt: skip
    result = probe_ratio(cfg, (1.0, 64.0))
    low, high = result["median_log10_dB_over_dA"]
    assert high > low + 0.5  # lr_A = lr_B / λ: a 64x smaller lr_A shrinks δ_A, not δ_B
    assert result["candidates"] == [1.0, 64.0] and result["ratio"] > 0


def test_auto_is_the_rule_nearest_the_measured_optima_and_reads_no_model():
    """``auto`` is λ = 4, the rule experiments/report_auto.py finds nearest the committed measurements (its
    auto-rule.json, recomputed here from the committed results); a model that does not exist is never read."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("report_auto", ROOT / "experiments" / "report_auto.py")
    report_auto = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report_auto)
    result = report_auto.report()
    assert result == json.loads((ROOT / "experiments" / "auto-rule.json").read_text())
    assert result["nearest"] == "paper's LLM advice, λ = 2²" and result["rules"][result["nearest"]]["sum"] == pytest.approx(2.75, abs=0.005)
    assert result["rules"]["width rule 16·(n/768)^0.918 (toy exponent)"]["sum"] == pytest.approx(7.73, abs=0.005)
    assert AUTO_RATIO == result["nearest_at_width"]["384"] == result["nearest_at_width"]["4096"] == 4.0
    cfg = TrainConfig(loraplus_lr_ratio="AUTO", model="/nonexistent/model-folder")
    assert cfg.loraplus_lr_ratio == "auto" and cfg.loraplus(8.0).loraplus_lr_ratio == 8.0  # kept as given
    with pytest.raises(ValueError, match="resolved when the run starts"):
        cfg.loraplus()
    assert resolve_ratio(cfg) == 4.0 and resolve_ratio(TrainConfig(loraplus_lr_ratio="3")) == 3.0


def test_ratio_explains_the_width_rule_and_recommends_auto():
    from loraplus.ratio import explain

    text = explain({"model": "minilm-l6", "width": 384, "width_rule": ratio_from_width(384)})
    assert "Width rule: loraplus_lr_ratio ≈ 16 · (n / 768)^0.918 = 8.47" in text
    assert text.endswith("Recommended: --loraplus-lr-ratio 4")
    probed = explain({"model": "m", "width": 384, "width_rule": 8.47,
                      "probe": {"candidates": [1.0, 4.0], "median_log10_dB_over_dA": [-0.1, 0.2], "ratio": 1.8, "how": "interpolated crossing"}})  # fmt: skip
    assert probed.endswith("Recommended: --loraplus-lr-ratio 1.8")


def test_probe_steps_zero_names_steps_not_a_derived_option():
    from loraplus.ratio import RatioCommand

    with pytest.raises(ValueError, match=r"^steps must be a positive integer, got 0$"):
        RatioCommand(probe=True, steps=0)
