"""Instruction-tuning data: local files, data folders and Hub ids -> train/validation/test splits in TRL's forms.

Four source formats, detected from the columns (``detect_format``) or chosen with ``format=``:

- ``prompt-completion``: string columns ``prompt`` and ``completion``.
- ``alpaca``: string columns ``instruction``, ``output`` and optionally ``input``.
- ``messages``: a column ``messages``, each a list of ``{"role", "content"}`` turns (TRL / OpenAI style).
- ``sharegpt``: a column ``conversations``, each a list of ``{"from", "value"}`` turns.

Two canonical forms come out, both dataset types that ``trl.SFTTrainer`` takes as they are:

- ``prompt-completion`` (from prompt-completion and alpaca): columns ``prompt`` and ``completion``. Alpaca's prompt
  is the instruction, followed by ``"\\n\\n"`` and the input when the input is not blank; its completion is the output.
- ``messages`` (from messages and sharegpt): one column ``messages``, a list of ``{"role", "content"}`` with roles
  ``system``, ``user`` and ``assistant``, every turn kept, in order. ShareGPT's ``human`` becomes ``user`` and
  ``gpt`` becomes ``assistant``; ``system``, ``user`` and ``assistant`` are accepted as they are.

Other columns are ignored. Texts are kept exactly as written (not stripped): whitespace can matter to a completion.

Rules for bad rows, in the spirit of ``loraplus.data``:

- Empty texts are dropped, with one warning and a count per reason in ``num_dropped``: ``"empty_prompt"`` (a blank
  or missing prompt / instruction), ``"empty_completion"`` (a blank or missing completion / output) and
  ``"empty_turn"`` (a conversation with a blank turn, the whole conversation is dropped). Blank means empty or
  whitespace only.
- Structurally wrong rows are refused with a ``ValueError`` naming the row (0-based within its split), the split and
  the source: a text that is not a string (numbers, lists), conversations that are not a list of turns, a turn with
  a role outside the ones above, a turn whose content is not a string, and a conversation with no assistant turn.
  The role ``tool`` is refused too: a tool turn means little without the ``tool_calls`` of the assistant turn
  before it, which these formats do not carry, and many chat templates do not render it.

Exact duplicates of a whole canonical example are dropped (the first occurrence is kept, in the order train,
validation, test) before splitting, so no example is in two splits.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np

from .bigbench import fetch_bigbench, natural_instructions, ni_prompt, split_natural_instructions
from .data import check_split_options, load_source, standard_splits

__all__ = ["BUILTIN_INSTRUCTION_DATASETS", "EXTRA_SPLITS", "FORMATS", "InstructionData", "detect_format",
           "load_instruction_data"]

BUILTIN_INSTRUCTION_DATASETS: dict[str, str] = {
    "natural-instructions": "Natural Instructions v1 from the BIG-bench 1.0.0 sdist (fetched once, 358 MB): task "
    "definition + input -> target; a fixed subset of NI_PER_TASK examples of each of the 54 seen tasks, and a "
    "'heldout' split of NI_HELDOUT_PER_TASK examples of each of the 7 held-out tasks (CosmosQA, ROPES)",
}
EXTRA_SPLITS = ("heldout",)  # kept beside train/validation/test when a source has it (evaluated, never trained on)
NI_PER_TASK = 24  # examples of each seen task (split into train/validation/test by the run's fractions and seed)
NI_HELDOUT_PER_TASK = 8  # examples of each held-out task

FORMATS: tuple[str, ...] = ("prompt-completion", "alpaca", "messages", "sharegpt")
ROLES: tuple[str, ...] = ("system", "user", "assistant")

# format -> columns it needs (detection looks for exactly these), kind of canonical output
_COLUMNS: dict[str, tuple[str, ...]] = {
    "prompt-completion": ("prompt", "completion"), "alpaca": ("instruction", "output"),
    "messages": ("messages",), "sharegpt": ("conversations",),
}
_KIND = {"prompt-completion": "prompt-completion", "alpaca": "prompt-completion",
         "messages": "messages", "sharegpt": "messages"}
# conversational format -> (role key, content key, role name -> canonical role)
_TURNS: dict[str, tuple[str, str, dict[str, str]]] = {
    "messages": ("role", "content", {role: role for role in ROLES}),
    "sharegpt": ("from", "value", {"system": "system", "human": "user", "gpt": "assistant",
                                   "user": "user", "assistant": "assistant"}),
}
_FEATURES = {
    "prompt-completion": datasets.Features({"prompt": datasets.Value("string"),
                                            "completion": datasets.Value("string")}),
    "messages": datasets.Features({"messages": datasets.List({"role": datasets.Value("string"),
                                                              "content": datasets.Value("string")})}),
}
_SPLITS = ("train", "validation", "test")

Example = tuple  # (prompt, completion) or ((role, content), ...): hashable, so duplicates are found exactly


@dataclass(frozen=True)
class InstructionData:
    """An instruction-tuning dataset, cleaned and split.

    Attributes:
        splits: ``"train"``, ``"validation"``, ``"test"``; columns ``prompt`` and ``completion`` (strings) when
            ``kind == "prompt-completion"``, or ``messages`` (list of ``{"role", "content"}``) when
            ``kind == "messages"``.
        format: the source format, one of ``FORMATS``.
        kind: the canonical form, ``"prompt-completion"`` or ``"messages"``.
        source: where the data came from: the file/folder path or the Hub id.
        num_duplicates_removed: examples dropped because the same canonical example had already been seen.
        num_dropped: examples dropped for empty texts, reason -> count (reasons with a count only; ``{}`` if none).
    """

    splits: datasets.DatasetDict
    format: str
    kind: str
    source: str
    num_duplicates_removed: int
    num_dropped: dict[str, int]


def detect_format(columns: list[str]) -> str:
    """The format (one of ``FORMATS``) whose columns are all in ``columns``; other columns are ignored.

    Raises:
        ValueError: no format matches (the message lists the columns found and each format with the columns it
            needs), or several do (the message names them; choose one with ``format=``).
    """
    matches = [fmt for fmt in FORMATS if set(_COLUMNS[fmt]) <= set(columns)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ValueError(f"columns {list(columns)} match several formats ({', '.join(matches)}); "
                         f"choose one with --format (format: in a config file or in Python)")
    known = "; ".join(f"{fmt}: {', '.join(cols)}" for fmt, cols in _COLUMNS.items())
    raise ValueError(f"columns {list(columns)} match no instruction format; known formats and the columns each "
                     f"needs: {known} (alpaca may also have 'input')")


def load_instruction_data(
    dataset: str,
    *,
    format: str = "auto",
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> InstructionData:
    """Load, clean, deduplicate and split an instruction-tuning dataset (see the module docstring for the rules).

    Args:
        dataset: a built-in name (``BUILTIN_INSTRUCTION_DATASETS``), a local
            ``.csv``/``.tsv``/``.json``/``.jsonl``/``.parquet`` file, a data folder (files named
            after their split, e.g. ``train.jsonl`` and ``validation.jsonl``) or a Hub id ``"owner/name"``
            (needs a network).
        format: ``"auto"`` (default: detect from the columns of the train split) or one of ``FORMATS``.
        val_fraction, test_fraction: shares of the train split carved out as validation / test (default 0.1
            each), each in (0, 1) with a sum < 1. A split the source already has is kept as it is; only a missing
            one is carved, getting ``round(fraction * n)`` of the ``n`` train examples (rounded half up).
        seed: seed of the random (not stratified) carving (default 0); same seed, same splits. The row order of
            a source that has all three splits is kept.

    Raises:
        ValueError: bad option; unreadable source (see ``loraplus.data``); columns in no format or in several;
            a split lacking the format's columns; a structurally wrong row (names the row, split and source); a
            split with no rows left after cleaning; too few examples to carve a split (a carved split or train
            would get 0 rows; the message gives the counts).
        FileNotFoundError: a path with a supported suffix that does not exist.
    """
    _check_options(format, val_fraction, test_fraction, seed)
    if dataset in BUILTIN_INSTRUCTION_DATASETS:
        raw, source = _natural_instructions(), f"builtin:{dataset}"
    else:
        raw, source = load_source(dataset)
    parts = {**standard_splits(raw, source), **{k: v for k, v in raw.items() if k in EXTRA_SPLITS}}
    fmt = _choose_format(parts, format, source)
    rows, num_duplicates, dropped = _clean(parts, fmt, source)
    if dropped:
        details = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in dropped.items())
        warnings.warn(f"{source}: dropped {sum(dropped.values())} examples with empty texts ({details})",
                      stacklevel=2)
    fractions = {"validation": val_fraction, "test": test_fraction}
    split_rows = _carve(rows, fractions, seed, source)
    kind = _KIND[fmt]
    splits = datasets.DatasetDict({
        split: datasets.Dataset.from_list([_as_record(ex, kind) for ex in examples], features=_FEATURES[kind])
        for split, examples in split_rows.items()
    })
    return InstructionData(splits, fmt, kind, source, num_duplicates, dropped)


def _natural_instructions() -> dict[str, datasets.Dataset]:
    """The ``natural-instructions`` built-in as prompt/completion rows: ``train`` (seen tasks) and ``heldout``.

    The subset is fixed (drawn with seed 0, whatever the run's seed): ``NI_PER_TASK`` examples per seen task,
    ``NI_HELDOUT_PER_TASK`` per held-out task (``loraplus.bigbench.heldout_subtasks``). Prompt: ``ni_prompt``
    (definition + input); completion: the first reference.
    """
    split = split_natural_instructions(natural_instructions(fetch_bigbench()))
    rng = np.random.default_rng(0)

    def subset(rows: list[dict], per_task: int) -> datasets.Dataset:
        by_task: dict[str, list[dict]] = {}
        for row in rows:
            by_task.setdefault(row["subtask"], []).append(row)
        picked = []
        for task in sorted(by_task):
            members = by_task[task]
            picked += [members[i] for i in sorted(rng.permutation(len(members))[:per_task])]
        return datasets.Dataset.from_dict({"prompt": [ni_prompt(r) for r in picked],
                                           "completion": [r["target"] for r in picked]})  # fmt: skip

    return {"train": subset(split.train, NI_PER_TASK), "heldout": subset(split.test, NI_HELDOUT_PER_TASK)}


def _check_options(format: str, val_fraction: float, test_fraction: float, seed: int) -> None:
    if format != "auto" and format not in FORMATS:
        raise ValueError(f"unknown format {format!r}: use 'auto' or one of {', '.join(FORMATS)}")
    check_split_options(val_fraction, test_fraction, seed)


def _choose_format(parts: Mapping[str, datasets.Dataset], format: str, source: str) -> str:
    if format == "auto":
        try:
            format = detect_format(parts["train"].column_names)
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from err
    for split, ds in parts.items():
        lacking = [col for col in _COLUMNS[format] if col not in ds.column_names]
        if lacking:
            raise ValueError(f"the {split!r} split of {source} lacks the {format} column(s) {lacking}; "
                             f"columns found: {ds.column_names}")
    return format


# ---------------------------------------------------------------- rows -> canonical examples


def _clean(parts: Mapping[str, datasets.Dataset], fmt: str, source: str
           ) -> tuple[dict[str, list[Example]], int, dict[str, int]]:
    """Canonical examples per split, empty ones dropped (counted per reason), then duplicates (first kept)."""
    seen: set[Example] = set()
    dropped: Counter[str] = Counter()
    out: dict[str, list[Example]] = {}
    num_duplicates = 0
    for split, ds in parts.items():
        kept = []
        for i, row in enumerate(_iter_rows(ds, fmt)):
            result = _convert(row, fmt, f"row {i} of the {split!r} split of {source}")
            if isinstance(result, str):
                dropped[result] += 1
            elif result in seen:
                num_duplicates += 1
            else:
                seen.add(result)
                kept.append(result)
        if not kept:
            raise ValueError(f"the {split!r} split of {source} has no rows left after dropping empty and "
                             f"duplicate examples")
        out[split] = kept
    return out, num_duplicates, dict(sorted(dropped.items()))


def _iter_rows(ds: datasets.Dataset, fmt: str):
    columns = [*_COLUMNS[fmt], *(["input"] if fmt == "alpaca" and "input" in ds.column_names else [])]
    table = ds.select_columns(columns).to_dict()
    for values in zip(*(table[col] for col in columns)):
        yield dict(zip(columns, values))


def _convert(row: dict[str, Any], fmt: str, where: str) -> Example | str:
    """The canonical example of ``row``, or the reason it is dropped; raises ValueError on a wrong row."""
    if fmt == "prompt-completion":
        return _pair(_text(row, "prompt", where), _text(row, "completion", where))
    if fmt == "alpaca":
        instruction, extra = _text(row, "instruction", where), _text(row, "input", where)
        prompt = instruction + "\n\n" + extra if instruction.strip() and extra.strip() else instruction
        return _pair(prompt, _text(row, "output", where))
    return _conversation(row[_COLUMNS[fmt][0]], fmt, where)


def _text(row: dict[str, Any], column: str, where: str) -> str:
    value = row.get(column)
    if value is None:
        return ""
    if not isinstance(value, str):
        hint = " (a csv column holding only numbers is read as numbers: write the file as JSON Lines)" \
            if isinstance(value, numbers.Number) else ""
        raise ValueError(f"{column!r} in {where} is not a string but {type(value).__name__} {value!r}{hint}")
    return value


def _pair(prompt: str, completion: str) -> Example | str:
    if not prompt.strip():
        return "empty_prompt"
    if not completion.strip():
        return "empty_completion"
    return (prompt, completion)


def _conversation(turns: Any, fmt: str, where: str) -> Example | str:
    role_key, content_key, role_map = _TURNS[fmt]
    column = _COLUMNS[fmt][0]
    if not isinstance(turns, list):
        raise ValueError(f"{column!r} in {where} is not a list of {{{role_key!r}, {content_key!r}}} turns but "
                         f"{type(turns).__name__} {turns!r:.80}")
    out = []
    for k, turn in enumerate(turns):
        if not isinstance(turn, dict) or role_key not in turn or content_key not in turn:
            raise ValueError(f"turn {k} of {column!r} in {where} is not a {{{role_key!r}, {content_key!r}}} "
                             f"mapping: {turn!r}")
        role, content = turn[role_key], turn[content_key]
        if not isinstance(role, str) or role not in role_map:
            hint = " (tool turns are not supported)" if role == "tool" else ""
            raise ValueError(f"turn {k} of {column!r} in {where} has unknown {role_key} {role!r}{hint}; "
                             f"known: {', '.join(role_map)}")
        if not isinstance(content, str):
            raise ValueError(f"turn {k} of {column!r} in {where} has {content_key} of type "
                             f"{type(content).__name__}, not a string: {content!r}")
        out.append((role_map[role], content))
    if not any(role == "assistant" for role, _ in out):
        raise ValueError(f"{column!r} in {where} has no assistant turn (roles found: "
                         f"{[turn[role_key] for turn in turns]})")
    if any(not content.strip() for _, content in out):
        return "empty_turn"
    return tuple(out)


def _as_record(example: Example, kind: str) -> dict[str, Any]:
    if kind == "prompt-completion":
        return {"prompt": example[0], "completion": example[1]}
    return {"messages": [{"role": role, "content": content} for role, content in example]}


# ---------------------------------------------------------------- splitting


def _carve(rows: Mapping[str, list[Example]], fractions: Mapping[str, float], seed: int, source: str
           ) -> dict[str, list[Example]]:
    """Carve each split missing from ``rows`` out of train at random; train and carved splits in shuffled order."""
    missing = {split: f for split, f in fractions.items() if split not in rows}
    names = (*_SPLITS, *(split for split in rows if split in EXTRA_SPLITS))
    if not missing:
        return {split: list(rows[split]) for split in names}
    train = rows["train"]
    n = len(train)
    counts = {split: math.floor(f * n + 0.5) for split, f in missing.items()}
    n_train = n - sum(counts.values())
    if n_train < 1 or 0 in counts.values():
        wanted = ", ".join(f"{split} {c} (fraction {missing[split]!r})" for split, c in counts.items())
        raise ValueError(
            f"too few examples to split {source}: 'train' has {n} after dropping empty and duplicate examples, "
            f"which would give {wanted} and train {n_train}; every split needs at least 1: add examples, raise "
            f"the fractions, or provide the splits (e.g. a data folder with train and validation files)"
        )
    order = np.random.default_rng(seed).permutation(n)
    out = dict(rows)
    start = 0
    for split, count in counts.items():
        out[split] = [train[i] for i in order[start : start + count]]
        start += count
    out["train"] = [train[i] for i in order[start:]]
    return {split: out[split] for split in names}
