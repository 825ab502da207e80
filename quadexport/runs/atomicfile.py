"""Files that appear whole or not at all, with the permissions a plain ``open()`` would give.

:class:`StagedFile` writes in a hidden sibling folder and renames into place only when accepted (``quadexport
export`` renames its ONNX file, with its external data file if any, only after the parity check passed).
``tempfile.mkstemp``/``mkdtemp`` create 0600/0700; :func:`file_mode` / :func:`current_umask` give what the user's umask asks for (:func:`atomic_write` and the run dir
staging use them); :func:`write_json` writes JSON reports and run files atomically.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


def current_umask() -> int:
    """The process umask (read from /proc where possible; else set-and-restore)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode a plain ``open()`` would give a new file: ``0o666 & ~umask`` (mkstemp gives 0600)."""
    return 0o666 & ~current_umask()


def fsync_dir(path: Path) -> None:
    """fsync a directory (makes renames in it durable); best effort."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass
class StagedFile:
    """A file (and the files written beside it, e.g. an ONNX model's external data) staged in a hidden sibling folder
    and moved into place only when accepted::

        with StagedFile(out) as f:
            write(f.path)          # f.path has out's name, in the staging folder: relative references stay valid
            if not good:
                f.discard()        # nothing at ``out``; an older file there stays untouched

    On acceptance every file of the staging folder is renamed next to ``out``, ``out`` itself last (so a reader that
    finds the new ``out`` also finds the files it references); the folder is removed either way.
    """

    final: Path
    path: Path = field(init=False)
    discarded: bool = False

    def __post_init__(self) -> None:
        self.final = Path(self.final)
        self.folder = self.final.parent / f".{self.final.name}.{uuid.uuid4().hex[:8]}.tmp"
        self.path = self.folder / self.final.name

    def discard(self) -> None:
        self.discarded = True

    def __enter__(self) -> StagedFile:
        self.folder.mkdir(parents=True)
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        try:
            if exc_type is None and not self.discarded and self.path.exists():
                staged = sorted(self.folder.iterdir(), key=lambda p: p.name == self.final.name)
                for p in staged:
                    fd = os.open(p, os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                for p in staged:
                    os.replace(p, self.final.parent / p.name)
                fsync_dir(self.final.parent)
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


__all__ = ["StagedFile", "current_umask", "file_mode", "fsync_dir"]


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Write a file atomically: ``write(fileobj)`` into a temporary file in the same folder, fsync, rename.

    Args:
        path: destination.
        write: callable receiving the open temporary file.
        mode: ``"wb"`` or ``"w"``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())  # mkstemp makes 0600; the file gets what open() would give (the user's umask)
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    return atomic_write(path, lambda f: json.dump(obj, f, indent=2, allow_nan=False), mode="w")
