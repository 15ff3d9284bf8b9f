"""A run folder that knows what it is: its identity, its lock, and how a new run replaces an old one.

Before training starts, ``identity.json`` records the run's resolved options and a fingerprint of every local
file they name (the dataset file or folder, a chat template): resolved path, size and SHA-256. A rerun, a
``--resume``, an experiment cell or ``loraplus evaluate`` compares against it: identical means reuse or continue;
different is refused with the options (or files) that differ. Options that do not change what is trained
(``IGNORED_OPTIONS``: where and how often it is logged, the evaluation batch size, CPU threads) may differ.

While a run works in its folder it holds ``.lock`` (``fcntl.flock``; the file holds the owner's pid): a second
process on the same folder is refused, naming that pid. The lock goes with the process, so a killed run never
leaves a stale lock behind.

``--overwrite`` replaces a run only once the new run has passed every check (options, data, model): the old
run's files are then moved into ``.previous/`` and deleted when the new run finishes. A new run that dies
leaves an unfinished run (``--resume`` or ``--overwrite`` accept it) and the old run in ``.previous/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

from .io import atomic_write_json, file_sha256

__all__ = ["IDENTITY_FILE", "IGNORED_OPTIONS", "LOCK_FILE", "PREVIOUS_DIR", "FolderLocked", "differences",
           "file_fingerprint", "folder_lock", "identity_of", "read_identity", "replace_previous", "finish_replace", "holds_nothing", "write_identity"]

IDENTITY_FILE = "identity.json"
LOCK_FILE = ".lock"
PREVIOUS_DIR = ".previous"
# options that may differ between two runs of one identity: they change where or how often results are written,
# not what is trained (evaluation draws no random numbers from the training stream: see hf.LoraPlusMixin)
IGNORED_OPTIONS = frozenset({"output_dir", "overwrite", "resume", "report_to", "logging_steps", "eval_batch_size",
                             "threads"})
# options naming a local file whose content changes the run
FILE_OPTIONS = ("dataset", "chat_template")


class FolderLocked(FileExistsError):
    """Another process holds the folder's lock (its pid is in the message)."""


def file_fingerprint(value: str | None) -> dict | None:
    """``{"path", "size", "sha256"}`` of a local file, or of a folder (every file under it, sorted, hashed
    together); ``None`` when ``value`` names nothing on disk (a built-in name, a Hub id)."""
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.exists():
        return None
    path = path.resolve()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest, size = hashlib.sha256(), 0
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else "").encode() + b"\0")
        digest.update(file_sha256(file).encode())
        size += file.stat().st_size
    return {"path": str(path), "size": size, "sha256": digest.hexdigest()}


def identity_of(options: Mapping) -> dict:
    """The identity of a run with the resolved ``options`` (a ``TrainConfig.to_dict()``): the options that
    change what is trained, and the fingerprint of each local file they name."""
    kept = {k: v for k, v in options.items() if k not in IGNORED_OPTIONS}
    fingerprints = {k: file_fingerprint(options.get(k)) for k in FILE_OPTIONS}
    files = {k: v for k, v in fingerprints.items() if v is not None}
    return {"options": json.loads(json.dumps(kept, default=str)), "files": files}


def read_identity(folder: str | Path) -> dict | None:
    """The recorded identity of the run in ``folder``: ``identity.json``, else (a run written before identities
    existed) the options of its ``config.json`` with no file fingerprints; ``None`` when neither is there.

    Raises:
        ValueError: either file is unreadable or malformed (names the file).
    """
    folder = Path(folder)
    for name in (IDENTITY_FILE, "config.json"):
        file = folder / name
        if not file.is_file():
            continue
        try:
            record = json.loads(file.read_text(encoding="utf-8"))
            if name == IDENTITY_FILE:
                return {"options": dict(record["options"]), "files": dict(record.get("files", {}))}
            return {"options": dict(record["config"]), "files": {}}
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{str(file)!r} is unreadable or malformed ({type(err).__name__}: {err}); "
                             "move the run folder aside or pass --overwrite") from None  # fmt: skip
    return None


def differences(recorded: Mapping, current: Mapping) -> list[str]:
    """What differs between two identities, one ``"name: old -> new"`` per option or file; ``[]`` if none.

    An option missing from ``recorded`` (a run from a version without it) is not compared; ignored options never
    are."""
    found = []
    old, new = recorded.get("options", {}), current.get("options", {})
    for name in sorted(set(old) & set(new) - IGNORED_OPTIONS):
        if _normal(old[name]) != _normal(new[name]):
            found.append(f"{name}: {old[name]!r} -> {new[name]!r}")
    old_files, new_files = recorded.get("files", {}), current.get("files", {})
    for name in sorted(set(old_files) & set(new_files)):
        a, b = old_files[name], new_files[name]
        if a.get("sha256") != b.get("sha256"):
            change = "changed since" if a.get("path") == b.get("path") else f"is another file than {a.get('path')!r} in"
            found.append(f"{name} file {b.get('path')!r} {change} that run (size {a.get('size')} -> {b.get('size')})")
    return found


def _normal(value):
    """Lists and tuples compare equal; numbers compare as floats (YAML and JSON spell them differently)."""
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


@contextmanager
def folder_lock(folder: str | Path, what: str = "run folder", *, wait: bool = False,
                name: str = LOCK_FILE) -> Iterator[Path]:  # fmt: skip
    """Hold ``folder/<name>`` (default ``.lock``; the folder is created) for the ``with`` block.

    ``wait``: block until the holder finishes (a cache entry another process is writing) instead of refusing.

    Raises:
        FolderLocked: another live process holds it and ``wait`` is off; the message names its pid.
        PermissionError: the folder cannot be created or written.
    """
    import fcntl
    import logging

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / name, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise PermissionError(f"{what} {str(folder)!r} cannot be written ({err.strerror or err})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            if not wait:
                raise FolderLocked(f"{what} {str(folder)!r} is in use by another loraplus process (pid {owner}); "
                                   "wait for it to finish or choose another folder") from None  # fmt: skip
            logging.getLogger("loraplus").info("waiting for loraplus process %s, which is writing %s", owner, what)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield folder
    finally:
        os.close(fd)  # releases the lock


def replace_previous(folder: Path) -> None:
    """Move what ``folder`` holds (the run being replaced) into ``folder/.previous``, the lock excepted. If
    ``.previous`` already holds a run (a replacement that never finished), that older run stays and the unfinished
    replacement's files are deleted instead."""
    previous = folder / PREVIOUS_DIR
    keep_older = previous.exists()
    previous.mkdir(exist_ok=True)
    for entry in folder.iterdir():
        if entry.name in (LOCK_FILE, PREVIOUS_DIR):
            continue
        if keep_older:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        else:
            os.replace(entry, previous / entry.name)


def finish_replace(folder: Path) -> None:
    """Delete the replaced run (``.previous``) once the new run in ``folder`` has finished."""
    shutil.rmtree(Path(folder) / PREVIOUS_DIR, ignore_errors=True)


def holds_nothing(folder: Path) -> bool:
    """``folder`` holds no file but the lock (a run refused before it started)."""
    return all(entry.name == LOCK_FILE for entry in Path(folder).iterdir())


def write_identity(folder: Path, identity: Mapping) -> None:
    atomic_write_json(Path(folder) / IDENTITY_FILE, dict(identity))
