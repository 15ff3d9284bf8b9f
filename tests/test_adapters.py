"""`loraplus evaluate` reproduces a run's test metrics; `loraplus merge` writes a standalone model that computes
what the adapter model computes (within 1e-5, float32), for both tasks and for DoRA."""

import json
from pathlib import Path

import pytest
import torch

from loraplus.adapters import EvaluateCommand, MergeCommand
from loraplus.runs import find_run
from loraplus.cli import main
from loraplus.train import run_train

from conftest import make_rows
from test_causal import tiny_causal_config
from test_train import tiny_config


def _csv_of_rows(folder):
    import csv

    path = folder / "data.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *make_rows(40)])
    return path


@pytest.fixture(scope="module")
def bert_run(tiny_bert_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bert-run")
    run_train(tiny_config(tiny_bert_dir, _csv_of_rows(folder), folder / "run", max_steps=8, eval_steps=8))
    return folder / "run"


@pytest.fixture(scope="module")
def llama_run(tiny_llama_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama-run")
    run_train(tiny_causal_config(folder / "run", task="causal-lm", model=str(tiny_llama_dir),
                                 dataset=str(_csv_of_rows(folder)), max_steps=8, eval_steps=8))  # fmt: skip
    return folder / "run"


@pytest.mark.parametrize("which", ["bert_run", "llama_run"])
def test_evaluate_reproduces_the_runs_test_metrics(which, request):
    run = request.getfixturevalue(which)
    recorded = json.loads((run / "metrics.json").read_text())
    for given in (run, run / "adapter"):  # the run folder or its adapter folder
        result = EvaluateCommand(adapter=str(given)).run()
        assert result["metrics"].keys() == recorded["test"].keys()
        for key, value in recorded["test"].items():
            assert result["metrics"][key] == pytest.approx(value, rel=1e-6, abs=1e-7), key
        assert result["matches_run"] < 1e-6
    validation = EvaluateCommand(adapter=str(run), split="validation", eval_batch_size=3).run()
    assert validation["metrics"]["accuracy"] == pytest.approx(recorded["validation"]["accuracy"])


def test_evaluate_other_data_is_scored_whole_at_any_size_and_any_subset_of_classes(bert_run, tmp_path):
    tiny = tmp_path / "two-rows.csv"
    tiny.write_text("text,label\nstocks fell sharply today,money\nshares rose on profits,money\n")
    result = EvaluateCommand(adapter=str(bert_run), dataset=str(tiny)).run()
    assert result["split"] == "all" and result["num_examples"] == 2 and result["classes_present"] == ["money"]


def test_evaluate_with_the_runs_own_file_spelt_another_way_scores_the_runs_split(bert_run, monkeypatch):
    config = json.loads((bert_run / "config.json").read_text())["config"]
    data = Path(config["dataset"])
    monkeypatch.chdir(data.parent)
    result = EvaluateCommand(adapter=str(bert_run), dataset=f"./{data.name}").run()
    assert result["split"] == "test" and result["matches_run"] is not None and result["matches_run"] < 1e-5


def test_evaluate_refuses_a_run_whose_data_file_changed(tiny_bert_dir, tmp_path):
    data = _csv_of_rows(tmp_path)
    run = tmp_path / "run"
    run_train(tiny_config(tiny_bert_dir, data, run, max_steps=2, eval_steps=2))
    data.write_text(data.read_text() + "one more row of text,money\n")
    with pytest.raises(ValueError, match=r"the run's data has changed since training \(dataset file '.*data\.csv' "
                                         r"changed since that run"):  # fmt: skip
        EvaluateCommand(adapter=str(run)).run()


def test_evaluate_cli_on_other_data_and_its_errors(bert_run, tmp_path, capsys):
    out_json = tmp_path / "m.json"
    assert main(["evaluate", "--adapter", str(bert_run), "--output", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("test (") and "largest difference from the run's metrics.json" in printed
    assert json.loads(out_json.read_text())["split"] == "test"

    other = tmp_path / "other.csv"
    other.write_text("text,label\n" + "".join(f"{text},{label}\n" for text, label in make_rows(10, seed=5)))
    result = EvaluateCommand(adapter=str(bert_run), dataset=str(other), max_eval_samples=2).run()
    assert result["num_examples"] == 2 and result["matches_run"] is None  # other data: nothing to compare

    wrong = tmp_path / "wrong.csv"
    wrong.write_text("text,label\n" + "".join(f"word {i}{c},{c}\n" for i in range(12) for c in ("a", "b", "c")))  # distinct texts
    with pytest.raises(ValueError, match=r"has labels \['a', 'b', 'c'\] that the trained head does not know \(its "
                                         r"classes: \['money', 'sport', 'tech'\]\)"):  # fmt: skip
        EvaluateCommand(adapter=str(bert_run), dataset=str(wrong)).run()
    with pytest.raises(ValueError, match="split must be one of test, validation, got 'train'"):
        EvaluateCommand(adapter=str(bert_run), split="train")
    assert main(["evaluate", "--adapter", str(tmp_path / "nope")]) == 2
    assert f"error: adapter {str(tmp_path / 'nope')!r} does not exist" in capsys.readouterr().err
    assert main(["evaluate", "--adapter", str(tmp_path)]) == 2
    assert "no adapter_config.json in" in capsys.readouterr().err
    assert main(["evaluate", "--adapter", str(bert_run), "--output", "/proc/m.json"]) == 2  # refused before evaluating
    assert "error: --output '/proc/m.json': folder '/proc' does not exist or is not writable" in capsys.readouterr().err


def _outputs(model, vocab: int):
    ids = torch.randint(0, vocab, (3, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


def _adapter_model(run, auto_class, **kwargs):
    from peft import PeftModel

    info = find_run(run)
    base = auto_class.from_pretrained(info.model_path, dtype=torch.float32, **kwargs)
    return PeftModel.from_pretrained(base, str(info.adapter)).eval()


def test_merge_classifier_equals_adapter_model(bert_run, tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "merged"
    assert main(["merge", "--adapter", str(bert_run), "--out", str(out)]) == 0
    assert "largest |merged - adapter|" in capsys.readouterr().out
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    merged = AutoModelForSequenceClassification.from_pretrained(out, dtype=torch.float32).eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert merged.config.id2label == {0: "money", 1: "sport", 2: "tech"}
    labels = json.loads((bert_run / "config.json").read_text())["labels"]
    reference = _adapter_model(bert_run, AutoModelForSequenceClassification, num_labels=len(labels))
    vocab = merged.config.vocab_size
    diff = (_outputs(merged, vocab) - _outputs(reference, vocab)).abs().max().item()
    assert diff <= 1e-5
    base = AutoModelForSequenceClassification.from_pretrained(find_run(bert_run).model_path, num_labels=3).eval()
    assert (_outputs(base, vocab) - _outputs(reference, vocab)).abs().max().item() > 1e-3  # the adapter mattered

    # never replaced silently; never over the adapter itself
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        MergeCommand(adapter=str(bert_run), out=str(out)).run()
    with pytest.raises(ValueError, match="holds the adapter or the current folder"):
        MergeCommand(adapter=str(bert_run), out=str(bert_run), overwrite=True).run()
    assert (bert_run / "adapter" / "adapter_model.safetensors").is_file()


def test_merge_causal_lm_and_plain_peft_adapter(llama_run, tmp_path):
    import shutil

    from transformers import AutoModelForCausalLM

    plain = tmp_path / "plain-adapter"  # a PEFT adapter with no run folder around it
    shutil.copytree(llama_run / "adapter", plain)
    result = MergeCommand(adapter=str(plain), out=str(tmp_path / "merged")).run()
    assert result["model_class"] == "LlamaForCausalLM"
    # this tiny Llama (init range 0.3) misses 1e-5 by float32 rounding alone (measured 1.1e-05): the merge must
    # then be as close to the float64 adapter model as the float32 adapter model is
    if result["max_abs_diff"] > 1e-5:
        assert result["float64_error_merged"] <= result["float64_error_adapter"] + 1e-5, result
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    reference = _adapter_model(llama_run, AutoModelForCausalLM)
    vocab = merged.config.vocab_size
    expected = _outputs(reference, vocab)
    assert (_outputs(merged, vocab) - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()


def test_merge_dora_classifier(tiny_bert_dir, tiny_csv, tmp_path):
    run = tmp_path / "dora"
    run_train(tiny_config(tiny_bert_dir, tiny_csv, run, max_steps=4, eval_steps=4, use_dora=True))
    result = MergeCommand(adapter=str(run), out=str(tmp_path / "merged")).run()
    assert result["max_abs_diff"] <= 1e-5


def test_merge_refuses_a_mismatch_and_writes_nothing(bert_run, tmp_path, monkeypatch):
    import loraplus.adapters as adapters

    monkeypatch.setattr(adapters, "MERGE_ATOL", -1.0)  # no difference passes: the check must refuse
    out = tmp_path / "merged"
    with pytest.raises(ValueError, match=r"differ from the adapter's by .* nothing written"):
        MergeCommand(adapter=str(bert_run), out=str(out)).run()
    assert not out.exists() and not list(tmp_path.glob(".merged*"))


def test_evaluate_scores_every_row_of_other_data_and_guards_its_output(bert_run, tmp_path):
    other = tmp_path / "other.csv"
    other.write_text("text,label\n" + "".join(f"{text},{label}\n" for text, label in make_rows(10, seed=5)))
    rows = len(load_classification_data_rows(other))
    result = EvaluateCommand(adapter=str(bert_run), dataset=str(other)).run()
    assert result["split"] == "all" and result["num_examples"] == rows  # not only a 10 % test part

    out = tmp_path / "m.json"
    out.write_text("{}")
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        EvaluateCommand(adapter=str(bert_run), output=str(out)).run()
    with pytest.raises(IsADirectoryError, match="is a folder"):
        EvaluateCommand(adapter=str(bert_run), output=str(tmp_path)).run()
    before = (bert_run / "metrics.json").read_text()
    with pytest.raises(ValueError, match="is a file of a run folder"):
        EvaluateCommand(adapter=str(bert_run), output=str(bert_run / "metrics.json"), overwrite=True).run()
    assert (bert_run / "metrics.json").read_text() == before


def load_classification_data_rows(path):
    from loraplus.data import load_classification_data

    data = load_classification_data(str(path))
    return [row for split in data.splits.values() for row in split]


def test_broken_adapters_and_a_moved_base_give_one_line_errors(bert_run, tiny_bert_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(bert_run, broken)
    weights = broken / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"cannot load the adapter .*broken/adapter.* \(SafetensorError: "):
        EvaluateCommand(adapter=str(broken)).run()
    with pytest.raises(ValueError, match=r"cannot load the adapter .*broken/adapter.* \(SafetensorError: "):
        MergeCommand(adapter=str(broken), out=str(tmp_path / "m")).run()
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="has no adapter_model.safetensors"):
        MergeCommand(adapter=str(broken), out=str(tmp_path / "m")).run()
    assert not (tmp_path / "m").exists()

    moved = tmp_path / "moved"  # the recorded base folder is gone: --base-model rescues the run
    shutil.copytree(bert_run, moved)
    config = json.loads((moved / "config.json").read_text())
    config["model_path"] = config["config"]["model"] = str(tmp_path / "gone")
    (moved / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="is not there any more; give --base-model"):
        find_run(moved)
    result = EvaluateCommand(adapter=str(moved), base_model=str(tiny_bert_dir)).run()
    assert result["matches_run"] < 1e-6


def test_merge_out_never_replaces_what_is_not_a_merged_model(bert_run, tmp_path, monkeypatch):
    import os

    folder = tmp_path / "stuff"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds something other than a merged model"):
        MergeCommand(adapter=str(bert_run), out=str(folder), overwrite=True).run()
    with pytest.raises(FileExistsError, match="is a file"):
        MergeCommand(adapter=str(bert_run), out=str(bert_run / "metrics.json"), overwrite=True).run()
    with pytest.raises(FileExistsError, match="holds something other than a merged model"):
        MergeCommand(adapter=str(bert_run), out=str(bert_run / "checkpoints"), overwrite=True).run()
    monkeypatch.chdir(folder)
    with pytest.raises(ValueError, match="holds the adapter or the current folder"):
        MergeCommand(adapter=str(bert_run), out=".", overwrite=True).run()
    with pytest.raises(PermissionError, match="cannot write in '/proc'"):
        MergeCommand(adapter=str(bert_run), out="/proc/merged").run()
    assert (folder / "notes.txt").read_text() == "mine" and not list(tmp_path.glob(".*.tmp"))

    out = tmp_path / "merged"  # an earlier merge is replaced with --overwrite; folders get mkdir's mode
    MergeCommand(adapter=str(bert_run), out=str(out)).run()
    MergeCommand(adapter=str(bert_run), out=str(out), overwrite=True).run()
    mask = os.umask(0)
    os.umask(mask)
    assert (out.stat().st_mode & 0o777) == 0o777 & ~mask
