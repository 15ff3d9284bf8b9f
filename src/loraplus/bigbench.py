"""Data sets read from BIG-bench's source release (Srivastava et al. 2022, "Beyond the Imitation Game"), fetched once.

BIG-bench 1.0.0 is published on PyPI as a 358 MB sdist (Apache-2.0) that holds every task as
``bigbench/benchmark_tasks/<task>/task.json`` (subtasks one folder deeper: ``<task>/<subtask>/task.json``).
``fetch_bigbench`` downloads it once into ``cache_dir("bigbench")`` with pip (never installed: loraplus only
reads JSON from the tar), and the readers below take what a task holds:

- ``vitaminc_fact_verification``: Wikipedia evidence + claim -> ``True`` / ``False`` / ``Neither``
  (``vitaminc_rows`` splits each input into a sentence pair);
- ``multiemo/all_sentence_en`` and other ``target_scores`` tasks: text -> label (``classification_rows``);
- ``natural_instructions/*``: the 61 tasks of Natural Instructions v1 (Mishra et al. 2022, "Cross-Task
  Generalization via Natural Language Crowdsourcing Instructions"): a human-written definition + input -> target
  (``natural_instructions``, ``ni_prompt``, and the held-out tasks of ``split_natural_instructions``).

BIG-bench tasks have no train/test splits. A task's ``task.json`` is cached on first read under
``cache_dir("bigbench")/tasks/<first 16 hex digits of the tarball's sha256>/`` (one scan of the whole tar takes 5-8 s).
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from .io import atomic_write_bytes, atomic_write_json, cache_dir, file_sha256, write_problem

__all__ = [
    "BIGBENCH_SHA256", "BIGBENCH_VERSION", "NI_HELDOUT_DATASETS", "TARBALL_ENV", "NaturalInstructionsSplit",
    "classification_rows", "fetch_bigbench", "heldout_subtasks", "natural_instructions", "ni_prompt",
    "read_task", "split_natural_instructions", "task_names", "vitaminc_rows",
]  # fmt: skip

BIGBENCH_VERSION = "1.0.0"
BIGBENCH_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"  # bigbench-1.0.0.tar.gz
TARBALL_NAME = f"bigbench-{BIGBENCH_VERSION}.tar.gz"
TARBALL_ENV = "LORAPLUS_BIGBENCH_TARBALL"  # a tarball downloaded by hand; used instead of the cache
_REQUIREMENT = f"bigbench=={BIGBENCH_VERSION}"
_TASKS_DIR = "bigbench/benchmark_tasks/"  # inside the sdist's top folder
_NI = "natural_instructions/"
_CLAIM = "\nClaim: "  # vitaminc inputs are "<page title>: <evidence sentence>\nClaim: <claim>"

# Natural Instructions v1 source data sets whose tasks are all held out: no passage of a held-out task is seen in
# training. cosmosqa + ropes = 7 of the 61 tasks (28,634 of 193,250 examples) of five task types: classification
# (subtask022 passage inappropriate), question generation (023, 060), answer generation (024, 061), incorrect
# answer generation (025) and story generation (059).
NI_HELDOUT_DATASETS = ("cosmosqa", "ropes")


# ---------------------------------------------------------------- the tarball


def fetch_bigbench(cache: Path | None = None, *, progress: bool = True) -> Path:
    """Path of BIG-bench 1.0.0's sdist ``bigbench-1.0.0.tar.gz``, downloaded once (358 MB) with pip.

    Args:
        cache: folder that keeps the tarball; default ``cache_dir("bigbench")``
            (``$LORAPLUS_CACHE/bigbench`` or ``~/.cache/loraplus/bigbench``).
        progress: show pip's progress bar (default ``True``); ``False`` runs pip quietly.

    The environment variable ``LORAPLUS_BIGBENCH_TARBALL=/path/to/bigbench-1.0.0.tar.gz`` names a tarball
    downloaded by hand: it is used in place (its checksum verified, the file never removed) and nothing is
    downloaded. Otherwise pip (< 26: pip 26 refuses this sdist's metadata; a pip 25 wheel is fetched and run from
    its path if this interpreter's pip is newer) downloads into a temporary folder beside the cache; the checksum
    is verified and the file renamed into place, so a killed download leaves nothing that looks complete. A tarball
    already in the cache is only hashed (0.4 s; once per process), never downloaded again.

    Raises:
        ValueError: the tarball's sha256 is not ``BIGBENCH_SHA256`` (both hashes named); a bad file in the cache
            or a bad download is removed, a file named by the environment variable is left alone.
        FileNotFoundError: the environment variable names no file.
        OSError: the cache folder is not writable, or pip failed (no network?); the message gives the
            ``pip download`` command to run by hand and where to put the file.
    """
    named = os.environ.get(TARBALL_ENV)
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{TARBALL_ENV}={named}: no such file")
        _verify(path, remove=False)
        return path
    folder = Path(cache).expanduser() if cache is not None else cache_dir("bigbench")
    target = folder / TARBALL_NAME
    if target.is_file():
        _verify(target, remove=True)
        return target
    problem = write_problem(folder, create=True)
    if problem:
        raise OSError(f"cannot write the BIG-bench cache folder {folder} ({problem}); set LORAPLUS_CACHE to a "
                      f"writable folder or {TARBALL_ENV}=/path/to/{TARBALL_NAME}")  # fmt: skip
    from .runfolder import folder_lock

    with folder_lock(folder, "the BIG-bench download", wait=True, name=".download.lock"):
        if target.is_file():  # another process downloaded it while this one waited
            _verify(target, remove=True)
            return target
        tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=folder))
        try:
            _pip_download(tmp, folder, progress=progress)
            downloaded = tmp / TARBALL_NAME
            _verify(downloaded, remove=True)
            os.replace(downloaded, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _manual_command(folder: Path) -> str:
    return (f"run `python -m pip download --no-deps -d {folder} {_REQUIREMENT}` with a pip < 26 (pip 26 refuses "
            f"this sdist), or set {TARBALL_ENV}=/path/to/{TARBALL_NAME}")  # fmt: skip


def _pip_download(dest: Path, folder: Path, *, progress: bool) -> None:
    """``pip download --no-deps -d dest bigbench==1.0.0`` with a pip < 26; pip's failure -> ``OSError``."""
    quiet = [] if progress else ["--quiet", "--progress-bar", "off"]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    try:
        pip = _old_pip(dest, quiet, env)
        _run([*pip, "download", "--no-deps", *quiet, "-d", str(dest), _REQUIREMENT], env, capture=not progress)
    except (OSError, subprocess.CalledProcessError) as err:
        why = _why(err)
        raise OSError(f"pip could not download {TARBALL_NAME} ({why}); {_manual_command(folder)}") from err
    if not (dest / TARBALL_NAME).is_file():
        raise OSError(f"pip downloaded no {TARBALL_NAME} into {dest}; {_manual_command(folder)}")


def _old_pip(workdir: Path, quiet: list[str], env: dict[str, str]) -> list[str]:
    """A command running pip < 26: this interpreter's pip if it is older, else a pip 25 wheel run from its path."""
    try:
        major = int(metadata.version("pip").split(".")[0])
    except (metadata.PackageNotFoundError, ValueError):
        major = None
    if major is not None and major < 26:
        return [sys.executable, "-m", "pip"]
    wheels = workdir / "pip-wheel"
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", *quiet, "-d", str(wheels),
          "pip<26"], env, capture=bool(quiet))  # fmt: skip
    found = sorted(wheels.glob("pip-*.whl"))
    if not found:
        raise OSError(f"pip downloaded no pip<26 wheel into {wheels}")
    return [sys.executable, str(found[-1] / "pip")]  # a pip wheel is importable from its path


def _run(command: list[str], env: dict[str, str], *, capture: bool) -> None:
    subprocess.run(command, env=env, check=True, capture_output=capture, text=True)


def _why(err: BaseException) -> str:
    """One line on why a pip run failed: its last line of output if captured, else the exit status."""
    if isinstance(err, subprocess.CalledProcessError):
        lines = [line.strip() for line in f"{err.stdout or ''}\n{err.stderr or ''}".splitlines() if line.strip()]
        return lines[-1] if lines else f"exit status {err.returncode}"
    return str(err)


def _verify(path: Path, *, remove: bool) -> None:
    """Raise ``ValueError`` (both hashes named) unless ``path`` is BIG-bench's sdist; ``remove`` deletes a bad file."""
    got = file_sha256(path)
    if got != BIGBENCH_SHA256:
        if remove:
            path.unlink(missing_ok=True)
        fate = "removed; run again to download it anew" if remove else "left in place"
        raise ValueError(f"{path} has sha256 {got}, expected {BIGBENCH_SHA256} ({TARBALL_NAME}); the file was {fate}")


# ---------------------------------------------------------------- tasks


def _task_cache(tarball: Path) -> Path:
    return cache_dir("bigbench") / "tasks" / file_sha256(Path(tarball))[:16]


def _scan(tarball: Path, wanted: set[str]) -> tuple[list[str], dict[str, bytes]]:
    """One pass over the tar: every task name, and the raw ``task.json`` of the ``wanted`` ones."""
    names, raw = [], {}
    with tarfile.open(tarball, "r|*") as tar:
        for member in tar:
            if not (member.isfile() and member.name.endswith("/task.json")):
                continue
            head, sep, rest = member.name.partition(_TASKS_DIR)
            if not sep or head.count("/") > 1:  # <top>/bigbench/benchmark_tasks/... only
                continue
            name = rest[: -len("/task.json")]
            if ".." in name.split("/"):  # never a cache path outside the cache
                continue
            names.append(name)
            if name in wanted:
                raw[name] = tar.extractfile(member).read()
    return sorted(names), raw


def task_names(tarball: Path, *, cache: bool = True) -> list[str]:
    """Every task and subtask with a ``task.json`` in the tarball, sorted (e.g. ``"multiemo/all_sentence_en"``).

    With ``cache`` (default) the list is kept in the task cache (see the module docstring) after the first scan.
    """
    index = _task_cache(tarball) / "index.json" if cache else None
    if index is not None and index.is_file():
        return json.loads(index.read_text())
    names, _ = _scan(tarball, set())
    _try_write(index, lambda path: atomic_write_json(path, names))
    return names


def _try_write(path: Path | None, write) -> None:
    """``write(path)`` unless ``path`` is ``None``; a cache file that cannot be written only costs time."""
    if path is not None:
        try:
            write(path)
        except OSError:
            pass


def _read_tasks(tarball: Path, tasks: Iterable[str], *, cache: bool) -> dict[str, dict[str, Any]]:
    """Parsed ``task.json`` of each task, read from the task cache or in one scan of the tar."""
    tasks = list(dict.fromkeys(tasks))
    folder = _task_cache(tarball) if cache else None
    raw: dict[str, bytes] = {}
    for task in tasks:
        inside = not task.startswith("/") and ".." not in task.split("/")  # a cache path stays in the cache
        if folder is not None and inside and (folder / task / "task.json").is_file():
            raw[task] = (folder / task / "task.json").read_bytes()
    missing = {task for task in tasks if task not in raw}
    if missing:
        names, found = _scan(tarball, missing)
        _try_write(folder / "index.json" if folder else None, lambda path: atomic_write_json(path, names))
        unknown = sorted(missing - set(found))
        if unknown:
            near = _near(unknown[0], names)
            raise ValueError(f"no BIG-bench task {unknown[0]!r} in {tarball}; near names: {near or 'none'} "
                             f"({len(names)} tasks; see task_names())")  # fmt: skip
        for task, data in found.items():
            where = folder / task / "task.json" if folder else None
            _try_write(where, lambda path, data=data: atomic_write_bytes(path, data))
        raw.update(found)
    return {task: json.loads(raw[task]) for task in tasks}


def _near(task: str, names: list[str]) -> list[str]:
    """Up to five task names near ``task``: those containing it, then difflib's close matches."""
    containing = [name for name in names if task.lower() in name.lower()]
    return list(dict.fromkeys(containing + difflib.get_close_matches(task, names, n=5)))[:5]


def read_task(tarball: Path, task: str, *, cache: bool = True) -> dict[str, Any]:
    """The parsed ``task.json`` of one task, e.g. ``"vitaminc_fact_verification"`` or ``"multiemo/all_sentence_en"``.

    Args:
        tarball: BIG-bench's sdist (``fetch_bigbench()``).
        task: task name, a subtask as ``"<task>/<subtask>"``.
        cache: keep the extracted ``task.json`` in the task cache and read it from there (default ``True``).

    Raises:
        ValueError: no such task; the message lists near names.
    """
    return _read_tasks(Path(tarball), [task], cache=cache)[task]


# ---------------------------------------------------------------- rows


def classification_rows(task_json: dict[str, Any]) -> tuple[list[str], list[str]]:
    """``(texts, labels)`` of a ``target_scores`` task: each example's ``input`` and its top-scoring key.

    Raises:
        ValueError: an example without ``target_scores``, or whose top score is shared by several keys (a tie).
    """
    task = task_json.get("name", "task")
    texts, labels = [], []
    for i, example in enumerate(task_json["examples"]):
        scores = example.get("target_scores")
        if not scores:
            raise ValueError(f"{task}: example {i} has no target_scores (not a classification task?)")
        top = max(scores.values())
        best = [label for label, score in scores.items() if score == top]
        if len(best) > 1:
            raise ValueError(f"{task}: example {i} ({example['input'][:60]!r}) ties at score {top} between {best}")
        texts.append(example["input"])
        labels.append(best[0])
    return texts, labels


def vitaminc_rows(task_json: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """``(evidence, claims, labels)`` of ``vitaminc_fact_verification`` (labels ``True`` / ``False`` / ``Neither``).

    Each input reads ``"<Wikipedia page title>: <evidence sentence>\\nClaim: <claim>"``; the evidence keeps its
    page title (``"Westlife: According to ..."``). Text is left as BIG-bench has it, including a few hundred
    garbled characters (``"\\ufffd"``, ``"ï¿½"``).

    Raises:
        ValueError: an input without exactly one ``"\\nClaim: "``; or as ``classification_rows``.
    """
    texts, labels = classification_rows(task_json)
    evidence, claims = [], []
    for i, text in enumerate(texts):
        if text.count(_CLAIM) != 1:
            raise ValueError(f"vitaminc example {i} ({text[:60]!r}) does not read '<evidence>\\nClaim: <claim>'")
        left, right = text.split(_CLAIM)
        evidence.append(left.strip())
        claims.append(right.strip())
    return evidence, claims, labels


def natural_instructions(tarball: Path, *, cache: bool = True) -> list[dict[str, Any]]:
    """Every example of the 61 Natural Instructions v1 tasks (``natural_instructions/*``), in task order.

    Each row is ``{"subtask", "definition", "input", "target", "references"}``: ``subtask`` the task's folder name
    (e.g. ``"subtask001_quoref_question_generation"``), ``definition`` its human-written instructions (the
    ``task_prefix``, starting ``"Definition: "``), ``references`` every accepted output and ``target`` the first
    (in 1.0.0 one example of subtask044 has the empty reference ``""``; kept). ``cache`` as in ``read_task``.
    """
    names = [name for name in task_names(tarball, cache=cache) if name.startswith(_NI)]
    rows = []
    for name, task in _read_tasks(Path(tarball), names, cache=cache).items():
        for example in task["examples"]:
            target = example["target"]
            references = [target] if isinstance(target, str) else list(target)
            rows.append({"subtask": name[len(_NI):], "definition": task.get("task_prefix", ""),
                         "input": example["input"], "target": references[0], "references": references})  # fmt: skip
    return rows


def ni_prompt(row: dict[str, Any]) -> str:
    """The prompt of a Natural Instructions row: ``definition + "\\n\\n" + input``, each stripped.

    The definition already starts ``"Definition: "`` and ends with its ``"Prompt: ..."`` line, and inputs carry
    their own field names (``"Passage: ..."``), so nothing else is added; the model's output is ``row["target"]``.
    """
    return f"{row['definition'].strip()}\n\n{row['input'].strip()}"


def heldout_subtasks(subtasks: Iterable[str]) -> list[str]:
    """The Natural Instructions tasks to hold out, sorted: those built from a data set in ``NI_HELDOUT_DATASETS``.

    A name ``subtaskNNN_<dataset>_<what>`` (optionally prefixed ``natural_instructions/``) is held out when its
    ``<dataset>`` is ``cosmosqa`` or ``ropes``: whole source data sets, so held-out passages never appear in
    training, and tasks of five types (see ``NI_HELDOUT_DATASETS``). Training on the rest and testing on these is
    the paper's generalisation to unseen tasks.

    Raises:
        ValueError: none of ``subtasks`` is held out (a test set would be empty).
    """
    names = {name.rsplit("/", 1)[-1] for name in subtasks}
    held = sorted(name for name in names if len(parts := name.split("_")) > 1 and parts[1] in NI_HELDOUT_DATASETS)
    if not held:
        raise ValueError(f"none of {len(names)} subtasks comes from {NI_HELDOUT_DATASETS}: nothing to hold out")
    return held


@dataclass(frozen=True)
class NaturalInstructionsSplit:
    """Natural Instructions rows split by task.

    Attributes:
        train: rows of the seen tasks.
        test: rows of the held-out tasks (never in ``train``).
        heldout: the held-out task names (``heldout_subtasks``).
    """

    train: list[dict[str, Any]]
    test: list[dict[str, Any]]
    heldout: tuple[str, ...]


def split_natural_instructions(rows: list[dict[str, Any]]) -> NaturalInstructionsSplit:
    """Split ``natural_instructions`` rows into seen (train) and held-out (test) tasks.

    Raises:
        ValueError: as ``heldout_subtasks``.
    """
    held = heldout_subtasks(row["subtask"] for row in rows)
    test_names = set(held)
    return NaturalInstructionsSplit(
        train=[row for row in rows if row["subtask"] not in test_names],
        test=[row for row in rows if row["subtask"] in test_names],
        heldout=tuple(held),
    )
