"""Tests of ``loraplus.bigbench`` on a tiny fake BIG-bench sdist built here (never a download); one ``realdata``
test pins the real 1.0.0 tarball's counts when it is already in the cache."""

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import pytest

import loraplus.io

from loraplus import bigbench
from loraplus.bigbench import (
    TARBALL_ENV,
    TARBALL_NAME,
    classification_rows,
    fetch_bigbench,
    heldout_subtasks,
    natural_instructions,
    ni_prompt,
    read_task,
    split_natural_instructions,
    task_names,
    vitaminc_rows,
)
from loraplus.io import cache_dir

VITAMINC_INPUTS = [
    "Westlife: Westlife has been certified for 13 million albums , with more than 23 million sales in the UK .\n"
    "Claim: Westlife made under 23.5 million sales in the UK .",
    "Hawaii\ufffdAleutian Time Zone: It includes the Aleutian Islands west of 168\ufffd W.\nClaim: It has Hawaii .",
    "Oslo: Oslo is the capital of Norway .\nClaim: Oslo is in Sweden .",
]


def _scores(labels, top):
    return {label: int(label == top) for label in labels}


def _ni(name, definition, examples):
    return {"name": name, "task_prefix": definition, "examples": examples}


FAKE_TASKS = {
    "vitaminc_fact_verification": {
        "name": "vitaminc_fact_verification",
        "examples": [
            {"input": text, "target_scores": _scores(["True", "False", "Neither"], top)}
            for text, top in zip(VITAMINC_INPUTS, ["Neither", "True", "False"])
        ],
    },
    "multiemo": {"name": "multiemo", "description": "composite task: metadata only"},
    "multiemo/all_sentence_en": {
        "name": "all_sentence_en",
        "task_prefix": "Determine the sentiment.",
        "examples": [
            {"input": "Great hotel.", "target_scores": _scores(["negative", "positive", "neutral"], "positive")},
            {"input": "Awful food.", "target_scores": _scores(["negative", "positive", "neutral"], "negative")},
        ],
    },
    "natural_instructions": {"name": "natural_instructions", "description": "composite"},
    "natural_instructions/subtask001_quoref_question_generation": _ni(
        "subtask001_quoref_question_generation", "Definition: write a question. Prompt: Ask.",
        [{"input": "Passage: Ann met Bob.", "target": ["Who met Bob?", "Whom did Ann meet?"]}],
    ),
    "natural_instructions/subtask024_cosmosqa_answer_generation": _ni(
        "subtask024_cosmosqa_answer_generation", "Definition: answer it.\n",
        [{"input": "Context: rain. Question: wet?", "target": ["yes"]}, {"input": "Q2", "target": "no"}],
    ),
    "natural_instructions/subtask033_winogrande_answer_generation": _ni(
        "subtask033_winogrande_answer_generation", "Definition: fill the blank.",
        [{"input": "Sentence: _ ran.", "target": ["Tom"]}],
    ),
    "natural_instructions/subtask059_ropes_story_generation": _ni(
        "subtask059_ropes_story_generation", "Definition: write a story.",
        [{"input": "Background: heat.", "target": ["A hot day."]}],
    ),
}
NI_NAMES = sorted(name.split("/")[1] for name in FAKE_TASKS if name.startswith("natural_instructions/"))


def _add(tar, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_tarball(path: Path, tasks=FAKE_TASKS) -> Path:
    """A gzipped tar laid out like BIG-bench's sdist: ``bigbench-1.0.0/bigbench/benchmark_tasks/<task>/task.json``."""
    top = "bigbench-1.0.0/bigbench"
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, "bigbench-1.0.0/PKG-INFO", b"Name: bigbench\n")
        _add(tar, f"{top}/benchmark_tasks/some_program_task/task.py", b"# programmatic task: no task.json\n")
        _add(tar, f"{top}/models/task.json", b"{}")  # not under benchmark_tasks
        for name, task in tasks.items():
            _add(tar, f"{top}/benchmark_tasks/{name}/task.json", json.dumps(task).encode())
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(autouse=True)
def isolated_cache(request, tmp_path, monkeypatch):
    """Every test but the ``realdata`` one gets its own empty cache and no ``LORAPLUS_BIGBENCH_TARBALL``."""
    if request.node.get_closest_marker("realdata") is None:
        monkeypatch.setenv("LORAPLUS_CACHE", str(tmp_path / "cache"))
        monkeypatch.delenv(TARBALL_ENV, raising=False)


@pytest.fixture
def tarball(tmp_path):
    return make_tarball(tmp_path / "fake.tar.gz")


@pytest.fixture
def genuine(monkeypatch, tarball):
    """Make the fake tarball the one ``fetch_bigbench`` accepts (``BIGBENCH_SHA256`` = its hash)."""
    monkeypatch.setattr(bigbench, "BIGBENCH_SHA256", sha256(tarball))
    return tarball


def no_pip(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"pip was called: {args}")

    monkeypatch.setattr(subprocess, "run", refuse)


# ---------------------------------------------------------------- reading tasks


def test_task_names_lists_tasks_and_subtasks_only(tarball):
    names = task_names(tarball)
    assert names == sorted(FAKE_TASKS)  # no task.py-only task, nothing outside benchmark_tasks


def test_read_task_top_level_and_nested_subtask(tarball):
    assert read_task(tarball, "vitaminc_fact_verification") == FAKE_TASKS["vitaminc_fact_verification"]
    assert read_task(tarball, "multiemo/all_sentence_en") == FAKE_TASKS["multiemo/all_sentence_en"]
    assert read_task(tarball, "multiemo", cache=False) == FAKE_TASKS["multiemo"]


@pytest.mark.parametrize(("task", "near"), [("vitaminc", "vitaminc_fact_verification"),
                                             ("multiemo/all_sentence_eng", "multiemo/all_sentence_en")])  # fmt: skip
def test_read_task_unknown_lists_near_names(tarball, task, near):
    with pytest.raises(ValueError, match="near names") as err:
        read_task(tarball, task)
    assert repr(task) in str(err.value) and repr(near) in str(err.value)
    with pytest.raises(ValueError, match="no BIG-bench task '../vitaminc_fact_verification'"):
        read_task(tarball, "../vitaminc_fact_verification")


def test_read_task_cache_keyed_by_tarball_sha_skips_the_tar(tarball, monkeypatch):
    first = read_task(tarball, "multiemo/all_sentence_en")
    cached = cache_dir("bigbench") / "tasks" / sha256(tarball)[:16] / "multiemo" / "all_sentence_en" / "task.json"
    assert json.loads(cached.read_text()) == first
    scans = []
    scan = bigbench._scan
    monkeypatch.setattr(bigbench, "_scan", lambda *args: scans.append(args[0]) or scan(*args))
    assert read_task(tarball, "multiemo/all_sentence_en") == first
    assert task_names(tarball) == sorted(FAKE_TASKS)  # the index is cached too
    assert scans == []
    other = make_tarball(tarball.with_name("other.tar.gz"), {"multiemo/all_sentence_en": {"examples": []}})
    assert read_task(other, "multiemo/all_sentence_en") == {"examples": []}  # another sha: its own cache
    assert read_task(tarball, "multiemo/all_sentence_en", cache=False) == first
    assert scans == [other, tarball]


# ---------------------------------------------------------------- rows


def test_classification_rows_take_the_top_scoring_key(tarball):
    texts, labels = classification_rows(read_task(tarball, "multiemo/all_sentence_en"))
    assert texts == ["Great hotel.", "Awful food."]
    assert labels == ["positive", "negative"]


def test_classification_rows_tie_and_missing_scores_name_the_example():
    tie = {"name": "t", "examples": [{"input": "ok", "target_scores": {"a": 1}},
                                     {"input": "both", "target_scores": {"a": 1, "b": 1, "c": 0}}]}  # fmt: skip
    with pytest.raises(ValueError, match=r"t: example 1 \('both'\) ties at score 1 between \['a', 'b'\]"):
        classification_rows(tie)
    with pytest.raises(ValueError, match="example 0 has no target_scores"):
        classification_rows({"name": "g", "examples": [{"input": "x", "target": "y"}]})


def test_vitaminc_rows_split_evidence_and_claim(tarball):
    evidence, claims, labels = vitaminc_rows(read_task(tarball, "vitaminc_fact_verification"))
    assert evidence[0].startswith("Westlife: Westlife has been") and evidence[0].endswith("in the UK .")
    assert claims == ["Westlife made under 23.5 million sales in the UK .", "It has Hawaii .", "Oslo is in Sweden ."]
    assert evidence[1] == "Hawaii\ufffdAleutian Time Zone: It includes the Aleutian Islands west of 168\ufffd W."
    assert labels == ["Neither", "True", "False"]
    assert all("Claim:" not in text for text in evidence)


def test_vitaminc_rows_reject_another_layout():
    task = {"examples": [{"input": "no claim here", "target_scores": {"True": 1, "False": 0}}]}
    with pytest.raises(ValueError, match="vitaminc example 0"):
        vitaminc_rows(task)


def test_natural_instructions_rows_and_prompt(tarball):
    rows = natural_instructions(tarball)
    assert [row["subtask"] for row in rows] == [
        "subtask001_quoref_question_generation", "subtask024_cosmosqa_answer_generation",
        "subtask024_cosmosqa_answer_generation", "subtask033_winogrande_answer_generation",
        "subtask059_ropes_story_generation",
    ]  # fmt: skip
    first = rows[0]
    assert first == {
        "subtask": "subtask001_quoref_question_generation", "definition": "Definition: write a question. Prompt: Ask.",
        "input": "Passage: Ann met Bob.", "target": "Who met Bob?",
        "references": ["Who met Bob?", "Whom did Ann meet?"],
    }  # fmt: skip
    assert rows[2]["target"] == "no" and rows[2]["references"] == ["no"]  # a bare string target
    assert ni_prompt(first) == "Definition: write a question. Prompt: Ask.\n\nPassage: Ann met Bob."
    assert ni_prompt(rows[1]) == "Definition: answer it.\n\nContext: rain. Question: wet?"  # definition stripped


def test_heldout_subtasks_are_whole_source_datasets_never_trained_on(tarball):
    held = heldout_subtasks(NI_NAMES)
    assert held == ["subtask024_cosmosqa_answer_generation", "subtask059_ropes_story_generation"]
    assert heldout_subtasks(f"natural_instructions/{name}" for name in reversed(NI_NAMES)) == held  # fixed
    rows = natural_instructions(tarball)
    split = split_natural_instructions(rows)
    assert split.heldout == tuple(held)
    assert not {row["subtask"] for row in split.train} & set(held)
    assert {row["subtask"] for row in split.test} == set(held)
    assert len(split.train) + len(split.test) == len(rows)
    with pytest.raises(ValueError, match="nothing to hold out"):
        heldout_subtasks(["subtask001_quoref_question_generation"])


# ---------------------------------------------------------------- fetching and checksums


def test_fetch_with_verified_cache_never_calls_pip(genuine, monkeypatch):
    folder = cache_dir("bigbench")
    folder.mkdir(parents=True)
    cached = folder / TARBALL_NAME
    cached.write_bytes(genuine.read_bytes())  # put there by hand (or an earlier download)
    no_pip(monkeypatch)
    assert fetch_bigbench() == cached
    monkeypatch.setattr(loraplus.io.hashlib, "sha256", lambda: pytest.fail("hashed the same file twice"))
    assert fetch_bigbench() == cached  # verified once per process
    assert fetch_bigbench(folder) == cached


def test_fetch_wrong_file_in_cache_names_both_hashes_and_removes_it(genuine, tmp_path, monkeypatch):
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    bad = folder / TARBALL_NAME
    bad.write_bytes(b"not BIG-bench")
    no_pip(monkeypatch)
    with pytest.raises(ValueError) as err:
        fetch_bigbench(folder)
    assert sha256(genuine) in str(err.value) and hashlib.sha256(b"not BIG-bench").hexdigest() in str(err.value)
    assert "removed" in str(err.value) and not bad.exists()


def test_env_var_tarball_is_verified_used_in_place_and_kept(genuine, tmp_path, monkeypatch):
    no_pip(monkeypatch)
    monkeypatch.setenv(TARBALL_ENV, str(genuine))
    assert fetch_bigbench() == genuine
    assert not cache_dir("bigbench").exists()  # no copy, no download
    wrong = tmp_path / "wrong.tar.gz"
    wrong.write_bytes(b"something else")
    monkeypatch.setenv(TARBALL_ENV, str(wrong))
    with pytest.raises(ValueError, match=sha256(genuine)) as err:
        fetch_bigbench()
    assert sha256(wrong) in str(err.value) and wrong.exists()  # the user's file is left alone
    monkeypatch.setenv(TARBALL_ENV, str(tmp_path / "missing.tar.gz"))
    with pytest.raises(FileNotFoundError, match=TARBALL_ENV):
        fetch_bigbench()


def fake_pip(monkeypatch, payload: bytes, pip_version: str):
    """Replace pip: a ``pip<26`` download leaves a wheel name, a bigbench download writes ``payload``."""
    calls = []

    def run(command, **kwargs):
        calls.append(command)
        dest = Path(command[command.index("-d") + 1])
        dest.mkdir(parents=True, exist_ok=True)
        if command[-1] == "pip<26":
            (dest / "pip-25.3-py3-none-any.whl").write_bytes(b"wheel")
        else:
            (dest / TARBALL_NAME).write_bytes(payload)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setattr(bigbench.metadata, "version", lambda name: pip_version)
    return calls


@pytest.mark.parametrize("pip_version", ["26.3", "25.3"])
def test_fetch_downloads_with_pip_below_26_then_renames_into_place(genuine, monkeypatch, pip_version):
    calls = fake_pip(monkeypatch, genuine.read_bytes(), pip_version)
    path = fetch_bigbench(progress=False)
    folder = cache_dir("bigbench")
    assert path == folder / TARBALL_NAME and path.read_bytes() == genuine.read_bytes()
    assert [p.name for p in folder.iterdir() if not p.name.endswith(".lock")] == [TARBALL_NAME]  # no temporary folder left
    *first, last = calls
    assert last[-5:-3] == ["--progress-bar", "off"] and last[-1] == "bigbench==1.0.0" and "--no-deps" in last
    if pip_version == "25.3":  # this interpreter's pip will do
        assert not first and last[:3] == [sys.executable, "-m", "pip"]
    else:  # a pip 25 wheel, fetched by pip 26 and run from its path
        assert first[0][:3] == [sys.executable, "-m", "pip"] and first[0][-1] == "pip<26"
        assert last[1].endswith(os.path.join("pip-25.3-py3-none-any.whl", "pip"))
    assert fetch_bigbench() == path and len(calls) == len(first) + 1  # once


def test_fetch_bad_download_is_removed(genuine, monkeypatch):
    fake_pip(monkeypatch, b"truncated", "25.3")
    with pytest.raises(ValueError) as err:
        fetch_bigbench(progress=False)
    assert sha256(genuine) in str(err.value) and hashlib.sha256(b"truncated").hexdigest() in str(err.value)
    assert unlocked(cache_dir("bigbench")) == []  # nothing that looks complete, no temp folder


def test_fetch_killed_mid_download_leaves_nothing(monkeypatch):
    def run(command, **kwargs):
        dest = Path(command[command.index("-d") + 1])
        (dest / TARBALL_NAME).write_bytes(b"half a tarb")  # pip writes its file, then the user presses Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setattr(bigbench.metadata, "version", lambda name: "25.3")
    with pytest.raises(KeyboardInterrupt):
        fetch_bigbench()
    assert unlocked(cache_dir("bigbench")) == []


def test_fetch_pip_failure_says_what_to_run_by_hand(monkeypatch):
    def run(command, **kwargs):
        raise subprocess.CalledProcessError(1, command, "", "ERROR: network is unreachable\n")

    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setattr(bigbench.metadata, "version", lambda name: "25.3")
    folder = cache_dir("bigbench")
    with pytest.raises(OSError) as err:
        fetch_bigbench(progress=False)
    message = str(err.value)
    assert "\n" not in message and "network is unreachable" in message
    assert f"pip download --no-deps -d {folder} bigbench==1.0.0" in message and "pip < 26" in message
    assert f"{TARBALL_ENV}=/path/to/{TARBALL_NAME}" in message
    assert unlocked(folder) == []


# ---------------------------------------------------------------- the real tarball


@pytest.mark.realdata
def test_real_bigbench_counts():
    named = os.environ.get(TARBALL_ENV)
    present = Path(named) if named else cache_dir("bigbench") / TARBALL_NAME
    if not present.is_file():
        pytest.skip("BIG-bench is not in the cache (loraplus.bigbench.fetch_bigbench() downloads it, 358 MB)")
    tarball = fetch_bigbench()  # present: verified, never downloaded
    assert len(task_names(tarball)) == 1041  # task.json files: 167 tasks + 874 subtasks
    evidence, claims, labels = vitaminc_rows(read_task(tarball, "vitaminc_fact_verification"))
    assert len(evidence) == len(claims) == 54_668
    assert Counter(labels) == {"True": 27_242, "False": 20_169, "Neither": 7_257}
    assert all(evidence) and all(claims)
    _, emotions = classification_rows(read_task(tarball, "multiemo/all_sentence_en"))
    assert Counter(emotions) == {"negative": 21_156, "positive": 15_324, "neutral": 14_101, "ambivalent": 6_885}
    rows = natural_instructions(tarball)
    subtasks = sorted({row["subtask"] for row in rows})
    assert len(subtasks) == 61 and len(rows) == 193_250
    assert all(row["definition"].startswith("Definition: ") for row in rows)
    assert sum(not row["target"] for row in rows) == 1  # an empty reference in subtask044, kept as BIG-bench has it
    split = split_natural_instructions(rows)
    assert split.heldout == (
        "subtask022_cosmosqa_passage_inappropriate_binary", "subtask023_cosmosqa_question_generation",
        "subtask024_cosmosqa_answer_generation", "subtask025_cosmosqa_incorrect_answer_generation",
        "subtask059_ropes_story_generation", "subtask060_ropes_question_generation",
        "subtask061_ropes_answer_generation",
    )  # fmt: skip
    assert (len(split.train), len(split.test)) == (164_616, 28_634)


def unlocked(folder):
    """What ``folder`` holds besides the download's lock file (it stays: removing a lock file races)."""
    return [p for p in folder.iterdir() if not p.name.endswith(".lock")]
