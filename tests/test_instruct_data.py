"""Tests of ``loraplus.instruct_data``: the four formats from local files, detection, cleaning, splitting, errors."""

from __future__ import annotations

import csv
import dataclasses
import json

import datasets
import pytest

from loraplus.instruct_data import FORMATS, InstructionData, detect_format, load_instruction_data

SPLITS = ["train", "validation", "test"]


@pytest.fixture(autouse=True)
def _hf_cache_in_tmp(tmp_path, monkeypatch):
    """Keep ``datasets``' cache of local files out of the user's ~/.cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def _write(path, rows: list[dict]) -> str:
    """Write rows as csv/json/jsonl/parquet according to the suffix; returns the path as str."""
    if path.suffix == ".parquet":
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    elif path.suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        path.write_text(json.dumps(rows), encoding="utf-8")
    return str(path)


def _all_rows(d: InstructionData) -> list[dict]:
    return [row for split in SPLITS for row in d.splits[split].to_list()]


def _key(row: dict) -> str:
    return json.dumps(row, sort_keys=True)


def _sorted(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=_key)


def _chat(i: int, system: bool = False) -> list[dict]:
    turns = [{"role": "system", "content": "Be brief."}] if system else []
    return turns + [{"role": "user", "content": f"question {i}?"}, {"role": "assistant", "content": f"answer {i}."}]


# ---------------------------------------------------------------- one test per format: exact canonical rows


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_prompt_completion_rows_are_kept_exactly(tmp_path, suffix):
    rows = [{"prompt": f"Q{i}, with a comma:", "completion": f" A{i}\n  indented"} for i in range(10)]
    d = load_instruction_data(_write(tmp_path / f"pc{suffix}", rows))
    assert (d.format, d.kind) == ("prompt-completion", "prompt-completion")
    assert (d.num_duplicates_removed, d.num_dropped) == (0, {})
    assert list(d.splits) == SPLITS
    assert all(d.splits[s].column_names == ["prompt", "completion"] for s in SPLITS)
    assert _sorted(_all_rows(d)) == _sorted(rows)  # texts not stripped: leading space and indentation kept


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_alpaca_prompt_is_instruction_plus_nonblank_input(tmp_path, suffix):
    rows = [{"instruction": f"Task {i}.", "input": ["", "  ", f"context {i}"][i % 3], "output": f"done {i}"}
            for i in range(9)]
    d = load_instruction_data(_write(tmp_path / f"alpaca{suffix}", rows))
    assert (d.format, d.kind) == ("alpaca", "prompt-completion")
    expected = [{"prompt": f"Task {i}." + (f"\n\ncontext {i}" if i % 3 == 2 else ""), "completion": f"done {i}"}
                for i in range(9)]
    assert _sorted(_all_rows(d)) == _sorted(expected)


def test_alpaca_without_input_column(tmp_path):
    rows = [{"instruction": f"Task {i}.", "output": f"done {i}"} for i in range(5)]
    d = load_instruction_data(_write(tmp_path / "alpaca.jsonl", rows))
    assert _sorted(_all_rows(d)) == _sorted([{"prompt": f"Task {i}.", "completion": f"done {i}"} for i in range(5)])


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_messages_rows_are_kept_exactly(tmp_path, suffix):
    rows = [{"messages": _chat(i, system=i % 2 == 0), "id": i} for i in range(6)]  # an extra column is ignored
    d = load_instruction_data(_write(tmp_path / f"chat{suffix}", rows))
    assert (d.format, d.kind) == ("messages", "messages")
    assert all(d.splits[s].column_names == ["messages"] for s in SPLITS)
    assert _sorted(_all_rows(d)) == _sorted([{"messages": r["messages"]} for r in rows])


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_sharegpt_roles_are_mapped(tmp_path, suffix):
    aliases = [("human", "gpt"), ("user", "assistant")]
    rows = [{"conversations": [{"from": "system", "value": "Be brief."},
                               {"from": aliases[i % 2][0], "value": f"q{i}"},
                               {"from": aliases[i % 2][1], "value": f"a{i}"}]} for i in range(6)]
    d = load_instruction_data(_write(tmp_path / f"sharegpt{suffix}", rows))
    assert (d.format, d.kind) == ("sharegpt", "messages")
    expected = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"q{i}"},
                              {"role": "assistant", "content": f"a{i}"}]} for i in range(6)]
    assert _sorted(_all_rows(d)) == _sorted(expected)


def test_messages_from_parquet(tmp_path):
    rows = [{"messages": _chat(i)} for i in range(5)]
    d = load_instruction_data(_write(tmp_path / "chat.parquet", rows))
    assert d.format == "messages"
    assert _sorted(_all_rows(d)) == _sorted(rows)


def test_multi_turn_conversation_keeps_every_turn_in_order(tmp_path):
    long = [{"role": r, "content": f"turn {k}"} for k, r in
            enumerate(["system", "user", "assistant", "user", "assistant", "user", "assistant"])]
    rows = [{"messages": long}] + [{"messages": _chat(i)} for i in range(4)]
    d = load_instruction_data(_write(tmp_path / "chat.jsonl", rows))
    found = [row["messages"] for row in _all_rows(d) if len(row["messages"]) > 2]
    assert found == [long]


def test_outputs_are_trl_dataset_types(tmp_path):
    """SFTTrainer tells the types apart with these helpers: messages is conversational, prompt-completion is not."""
    data_utils = pytest.importorskip("trl.data_utils")
    chat = load_instruction_data(_write(tmp_path / "chat.jsonl", [{"messages": _chat(i)} for i in range(5)]))
    pc = load_instruction_data(_write(tmp_path / "pc.jsonl", [{"prompt": f"p{i}", "completion": f"c{i}"}
                                                               for i in range(5)]))
    assert data_utils.is_conversational(chat.splits["train"][0])
    assert not data_utils.is_conversational(pc.splits["train"][0])


# ---------------------------------------------------------------- detection and format=


def test_detect_format_from_columns():
    assert detect_format(["prompt", "completion", "id"]) == "prompt-completion"
    assert detect_format(["instruction", "input", "output"]) == "alpaca"
    assert detect_format(["instruction", "output"]) == "alpaca"
    assert detect_format(["messages"]) == "messages"
    assert detect_format(["conversations", "source"]) == "sharegpt"
    assert FORMATS == ("prompt-completion", "alpaca", "messages", "sharegpt")


def test_unknown_columns_error_names_columns_and_formats(tmp_path):
    with pytest.raises(ValueError) as err:
        detect_format(["question", "answer"])
    message = str(err.value)
    for word in ["question", "answer", *FORMATS, "prompt", "completion", "instruction", "output", "conversations"]:
        assert word in message
    path = _write(tmp_path / "qa.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(ValueError, match=r"qa\.jsonl.*'question', 'answer'.*alpaca: instruction, output"):
        load_instruction_data(path)


def test_format_override_resolves_ambiguous_columns(tmp_path):
    rows = [{"prompt": f"p{i}", "completion": f"c{i}", "messages": _chat(i)} for i in range(5)]
    path = _write(tmp_path / "both.jsonl", rows)
    with pytest.raises(ValueError, match=r"several formats \(prompt-completion, messages\); choose one with --format"):
        load_instruction_data(path)
    d = load_instruction_data(path, format="messages")
    assert (d.format, d.kind) == ("messages", "messages")
    assert _sorted(_all_rows(d)) == _sorted([{"messages": r["messages"]} for r in rows])
    d = load_instruction_data(path, format="prompt-completion")
    assert _sorted(_all_rows(d)) == _sorted([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    with pytest.raises(ValueError, match=r"lacks the sharegpt column\(s\) \['conversations'\]"):
        load_instruction_data(path, format="sharegpt")
    with pytest.raises(ValueError, match=r"unknown format 'chatml'"):
        load_instruction_data(path, format="chatml")


# ---------------------------------------------------------------- cleaning


def test_exact_duplicates_are_removed_first_kept(tmp_path):
    rows = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(6)]
    rows += [rows[0], rows[3], rows[0], {"prompt": "p1", "completion": "c1 "}]  # the last one differs: kept
    d = load_instruction_data(_write(tmp_path / "pc.jsonl", rows))
    assert d.num_duplicates_removed == 3
    assert sum(len(d.splits[s]) for s in SPLITS) == 7


def test_duplicates_across_a_folders_own_splits(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    train = [{"messages": _chat(i)} for i in range(10)]
    validation = [train[2], {"messages": _chat(100)}, {"messages": _chat(101)}, {"messages": _chat(100)}]
    _write(folder / "train.jsonl", train)
    _write(folder / "validation.jsonl", validation)
    d = load_instruction_data(str(folder))
    assert d.num_duplicates_removed == 2
    assert d.splits["validation"].to_list() == [{"messages": _chat(100)}, {"messages": _chat(101)}]  # own split kept
    assert (len(d.splits["train"]), len(d.splits["test"])) == (9, 1)  # only test carved, from train
    keys = [{_key(r) for r in d.splits[s].to_list()} for s in SPLITS]
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])


def test_empty_texts_are_dropped_and_counted(tmp_path):
    rows = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(5)]
    rows += [{"prompt": "p", "completion": "  \n"}, {"prompt": "\t", "completion": "c"},
             {"prompt": "p", "completion": ""}]
    with pytest.warns(UserWarning, match=r"dropped 3 examples with empty texts \(2 empty completion, 1 empty prompt\)"):
        d = load_instruction_data(_write(tmp_path / "pc.jsonl", rows))
    assert d.num_dropped == {"empty_completion": 2, "empty_prompt": 1}
    assert sum(len(d.splits[s]) for s in SPLITS) == 5


def test_conversation_with_a_blank_turn_is_dropped(tmp_path):
    blank = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]
    rows = [{"messages": _chat(i)} for i in range(5)] + [{"messages": blank}]
    with pytest.warns(UserWarning, match="1 empty turn"):
        d = load_instruction_data(_write(tmp_path / "chat.jsonl", rows))
    assert d.num_dropped == {"empty_turn": 1}
    assert sum(len(d.splits[s]) for s in SPLITS) == 5


# ---------------------------------------------------------------- bad rows: ValueError naming the row and split


def _turns(*pairs) -> list[dict]:
    return [{"role": role, "content": content} for role, content in pairs]


@pytest.mark.parametrize(
    "bad, message",
    [
        (_turns(("user", "q"), ("bot", "a")),
         r"turn 1 of 'messages' in row 2 of the 'train' split .* unknown role 'bot'"),
        (_turns(("user", "q"), ("tool", "42"), ("assistant", "a")), r"turn 1 .* unknown role 'tool' \(tool turns"),
        (_turns(("system", "s"), ("user", "q")), r"'messages' in row 2 of the 'train' split .* no assistant turn"),
        (_turns(("user", "q"), ("assistant", None)), r"turn 1 of 'messages' in row 2 .* content of type NoneType"),
    ],
    ids=["unknown-role", "tool-role", "no-assistant", "non-string-content"],
)
def test_wrong_conversation_is_refused_naming_the_row(tmp_path, bad, message):
    rows = [{"messages": _chat(i)} for i in range(5)]
    rows.insert(2, {"messages": bad})
    with pytest.raises(ValueError, match=message):
        load_instruction_data(_write(tmp_path / "chat.jsonl", rows))


def test_messages_not_a_list_is_refused(tmp_path):
    rows = [{"messages": json.dumps(_chat(i))} for i in range(5)]  # a csv with JSON text in the messages column
    with pytest.raises(ValueError, match=r"'messages' in row 0 of the 'train' split .* not a list .* but str"):
        load_instruction_data(_write(tmp_path / "chat.csv", rows))


def test_sharegpt_unknown_sender_is_refused(tmp_path):
    rows = [{"conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]}
            for i in range(5)]
    rows[4]["conversations"][1]["from"] = "function_call"
    with pytest.raises(ValueError, match=r"turn 1 of 'conversations' in row 4 .* unknown from 'function_call'; "
                                         r"known: system, human, gpt, user, assistant"):
        load_instruction_data(_write(tmp_path / "sharegpt.jsonl", rows))


def test_bad_row_in_a_folders_validation_split_names_that_split(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    _write(folder / "train.jsonl", [{"messages": _chat(i)} for i in range(10)])
    _write(folder / "validation.jsonl", [{"messages": _chat(50)}, {"messages": _turns(("user", "q"))}])
    with pytest.raises(ValueError, match=r"row 1 of the 'validation' split of .*data.* no assistant turn"):
        load_instruction_data(str(folder))


def test_numeric_csv_column_is_refused(tmp_path):
    path = tmp_path / "sums.csv"
    path.write_text("prompt,completion\n1+1=,2\n2+2=,4\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"'completion' in row 0 of the 'train' split .* not a string but int"):
        load_instruction_data(str(path))


# ---------------------------------------------------------------- splitting


def test_split_sizes_determinism_and_disjointness(tmp_path):
    rows = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(50)]
    path = _write(tmp_path / "pc.jsonl", rows)
    a = load_instruction_data(path, seed=0)
    b = load_instruction_data(path, seed=0)
    c = load_instruction_data(path, seed=1)
    d = load_instruction_data(path, val_fraction=0.2, test_fraction=0.3)
    assert {s: len(a.splits[s]) for s in SPLITS} == {"train": 40, "validation": 5, "test": 5}
    assert {s: len(d.splits[s]) for s in SPLITS} == {"train": 25, "validation": 10, "test": 15}
    assert all(a.splits[s].to_list() == b.splits[s].to_list() for s in SPLITS)
    assert any(a.splits[s].to_list() != c.splits[s].to_list() for s in SPLITS)
    keys = [{_key(r) for r in a.splits[s].to_list()} for s in SPLITS]
    assert sum(map(len, keys)) == 50 and set().union(*keys) == {_key(r) for r in rows}


def test_a_folder_with_all_splits_is_kept_in_order(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    parts = {s: [{"prompt": f"{s} {i}", "completion": "x"} for i in range(3)] for s in ["train", "dev", "test"]}
    for name, rows in parts.items():
        _write(folder / f"{name}.jsonl", rows)
    d = load_instruction_data(str(folder), seed=7)
    assert [d.splits[s].to_list() for s in SPLITS] == [parts["train"], parts["dev"], parts["test"]]


def test_too_few_examples_to_carve_is_an_error_with_counts(tmp_path):
    rows = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(4)] * 2  # 4 distinct after dedup
    with pytest.raises(ValueError, match=r"'train' has 4 .* validation 0 \(fraction 0.1\), test 0 \(fraction 0.1\) "
                                         r"and train 4"):
        load_instruction_data(_write(tmp_path / "pc.jsonl", rows))


def test_split_that_is_left_empty_is_an_error(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    train = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(10)]
    _write(folder / "train.jsonl", train)
    _write(folder / "validation.jsonl", train[:2])
    with pytest.raises(ValueError, match=r"'validation' split of .* no rows left"):
        load_instruction_data(str(folder))


@pytest.mark.parametrize(
    "options, message",
    [({"val_fraction": 0}, "val_fraction must be"), ({"test_fraction": 1.5}, "test_fraction must be"),
     ({"val_fraction": 0.5, "test_fraction": 0.5}, "must be < 1"), ({"seed": -1}, "seed must be"),
     ({"seed": 1.0}, "seed must be")],
)
def test_bad_options(tmp_path, options, message):
    path = _write(tmp_path / "pc.jsonl", [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(10)])
    with pytest.raises(ValueError, match=message):
        load_instruction_data(path, **options)


def test_result_is_frozen(tmp_path):
    rows = [{"prompt": f"p{i}", "completion": "c"} for i in range(5)]
    d = load_instruction_data(_write(tmp_path / "pc.jsonl", rows))
    assert d.source == str(tmp_path / "pc.jsonl")
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.format = "messages"  # type: ignore[misc]
