"""Optuna storages and studies: the one engine under ``sweep``, ``compare`` and ``tune``.

Every experiment command keeps its runs as trials of Optuna studies in one storage: ``study.db`` (SQLite) in the
experiment folder by default, or any Optuna storage URL (``postgresql://…``, ``mysql://…``, or ``journal:PATH``
for a journal file on a shared filesystem), so that workers on several machines share one experiment. The
search (TPE for ``tune``, a grid for ``sweep`` and ``compare``), the trial records and the scheduling of workers
are Optuna's; this module only opens storages and studies with one error message for a storage that cannot be
opened.
"""

from __future__ import annotations

import os
import socket
import warnings
import zlib
from pathlib import Path

from ..config import _opt

__all__ = ["STORAGE_HELP", "check_storage", "open_storage", "open_study", "quiet_optuna", "storage_option", "storage_url",
           "worker_seed"]  # fmt: skip

STORAGE_HELP = ("Optuna storage URL shared by every worker (default: sqlite:///OUTPUT_DIR/study.db; e.g. "
                "postgresql://..., or journal:/shared/runs.log)")  # fmt: skip


def storage_option():
    """The ``storage`` option of an experiment config (``None``: the experiment folder's ``study.db``)."""
    return _opt(None, STORAGE_HELP)


def storage_url(output_dir: str | Path, storage: str | None) -> str:
    """``storage``, or ``sqlite:///<absolute output_dir>/study.db`` when it is ``None``."""
    return storage or f"sqlite:///{Path(output_dir).expanduser().absolute() / 'study.db'}"


def quiet_optuna() -> None:
    """Optuna's notices off: "Using an existing study" at every open, experimental-feature warnings (heartbeat,
    constant liar), and its own report of a failed trial (the experiment's rows carry the run's error)."""
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.ERROR)


def open_storage(url: str, *, heartbeat: bool = True):
    """The Optuna storage at ``url``: a journal file for ``journal:PATH``, else an RDB storage, with a heartbeat
    when ``heartbeat`` (for ``Study.optimize``: a trial of a killed worker is marked failed after two minutes
    instead of running forever).

    Raises:
        ValueError: the storage cannot be opened (names the URL and the cause).
    """
    import optuna

    quiet_optuna()
    if url.startswith("journal:") and not url[len("journal:"):].strip():
        raise ValueError(f"a journal storage needs a file path, e.g. journal:/shared/runs.log, got {url!r}")
    try:
        if url.startswith("journal:"):  # a journal file: workers on a shared filesystem without a database server
            from optuna.storages import JournalStorage
            from optuna.storages.journal import JournalFileBackend

            return JournalStorage(JournalFileBackend(str(Path(url[len("journal:"):]).expanduser())))
        if not heartbeat:
            return optuna.storages.RDBStorage(url)
        return optuna.storages.RDBStorage(url, heartbeat_interval=30, grace_period=120)
    except Exception as err:
        raise _cannot_open(url, err) from None


def check_storage(storage: str | None) -> None:
    """Open a storage URL the user gave (``None``: the experiment folder's own, nothing to check), so that a bad
    one is refused before the experiment folder is made.

    Raises:
        ValueError: see ``open_storage``.
    """
    if storage is not None:
        open_storage(storage)


def open_study(storage, url: str, name: str, *, direction: str, sampler, pruner=None):
    """The study ``name`` in ``storage`` (opened from ``url``), created if missing.

    Raises:
        ValueError: the storage cannot be opened or written (names the URL and the cause).
    """
    import optuna

    try:
        return optuna.create_study(storage=storage, study_name=name, direction=direction, sampler=sampler,
                                   pruner=pruner, load_if_exists=True)  # fmt: skip
    except Exception as err:
        raise _cannot_open(url, err) from None


def _cannot_open(url: str, err: Exception) -> Exception:
    """The one-line error for a storage that cannot be opened; an unrelated exception is returned unchanged."""
    opening = isinstance(err, (ImportError, ValueError, OSError, RuntimeError))
    if not opening and type(err).__module__.split(".")[0] != "sqlalchemy":  # SQLAlchemy's errors share no base
        return err
    return ValueError(f"the Optuna storage {url!r} cannot be opened ({type(err).__name__}: "
                      f"{' '.join(str(err).split())[:300]})")  # fmt: skip


def worker_seed(seed: int, existing: int, shared: bool) -> int:
    """A sampler's seed: ``seed`` for a new study worked on by this process alone (reproducible); derived from
    the seed and the ``existing`` trials when a study is continued (a fresh sampler with the old seed would
    propose the first trials' parameters again); and, when other workers may share the study (``shared``), from
    this host and pid too, so that two workers never draw the same proposals."""
    if not shared:
        return seed if existing == 0 else zlib.crc32(f"{seed}:{existing}".encode())
    return zlib.crc32(f"{seed}:{existing}:{socket.gethostname()}:{os.getpid()}".encode())
