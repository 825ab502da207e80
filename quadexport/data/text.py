"""Text as bytes for language models: ``text:PATH`` (a file or a folder of files) and the built-in ``pystdlib``.

- ``text:FILE``: the file's bytes; validation is its last :data:`TAIL_FRACTION`.
- ``text:DIR``: every regular file under the folder (sorted, hidden ones skipped); a file goes to validation when
  ``crc32(relative path) % 20 == 0`` (about 5 %; the last file when no name hashes there). A folder of one file is
  split like a file.
- ``pystdlib``: the running interpreter's standard-library ``.py`` sources (``sysconfig`` ``stdlib`` minus
  ``site-packages``), split by file name as a folder is. Every machine has it, so it needs no download.

Training draws random windows: each epoch visits a seeded random sample of start positions in the training bytes
(:class:`WindowSampler`; ``train_subset`` windows per epoch, default one window per ``context`` bytes); inputs are
``bytes[s : s + context]`` and targets the next bytes. Validation uses fixed, evenly spaced windows
(``test_subset`` of them, default all non-overlapping ones). How the split was made is recorded in the run
(:class:`TextPreprocessing`).
"""

from __future__ import annotations

import os
import sysconfig
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from quadexport.errors import UsageError

__all__ = ["BUILTIN_TEXT", "TAIL_FRACTION", "TextPreprocessing", "TextSource", "WindowSampler", "is_text_spec",
           "open_text", "read_corpus"]

TAIL_FRACTION = 0.1
"""Validation share of a single text file (its tail)."""
VAL_MODULUS = 20
"""A folder's file goes to validation when ``crc32(relative path) % VAL_MODULUS == 0``."""
BUILTIN_TEXT = ("pystdlib",)
VOCAB = 256


def is_text_spec(spec: str) -> bool:
    """Whether a ``--dataset`` value names text (``text:PATH`` or ``pystdlib``)."""
    s = str(spec).strip()
    return s.lower().startswith("text:") or s.lower() in BUILTIN_TEXT


@dataclass(frozen=True)
class TextPreprocessing:
    """How text became model inputs (recorded in the run as its ``preprocessing``): bytes are token ids.

    Attributes:
        source: the dataset spec (``pystdlib``, ``text:PATH``).
        context: window length (the model's context).
        test_split: how validation was drawn.
        train_bytes: bytes in the training split.
        test_bytes: bytes in the validation split.
        files: ``[train files, validation files]`` (``[1, 1]`` for a single file).
        kind: always ``"text"`` (what tells a text run's preprocessing from an image one).
    """

    source: str
    context: int
    test_split: str
    train_bytes: int
    test_bytes: int
    files: tuple[int, int] = (1, 1)
    kind: str = "text"
    encoding: str = "bytes (token id = byte value, vocabulary 256)"

    @property
    def input_shape(self) -> tuple[int]:
        return (self.context,)

    @property
    def class_names(self) -> tuple[str, ...]:
        return ()

    def normalization(self) -> dict[str, Any]:
        return {}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["files"] = list(self.files)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TextPreprocessing":
        keys = ("source", "context", "test_split", "train_bytes", "test_bytes", "files")
        return cls(**{k: (tuple(d[k]) if k == "files" else d[k]) for k in keys if k in d})


def _stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _folder_files(root: Path, suffix: str | None = None) -> list[tuple[str, Path]]:
    """``(relative posix path, path)`` of the regular files under ``root`` (sorted; hidden entries,
    ``site-packages`` and ``__pycache__`` skipped)."""
    out = []
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if not x.startswith(".") and x not in ("site-packages", "__pycache__"))
        for f in sorted(files):
            p = Path(d) / f
            if f.startswith(".") or (suffix and not f.endswith(suffix)) or not p.is_file():
                continue
            out.append((p.relative_to(root).as_posix(), p))
    return out


def _split_files(files: list[tuple[str, Path]]) -> tuple[list[Path], list[Path]]:
    val = [p for rel, p in files if zlib.crc32(rel.encode()) % VAL_MODULUS == 0]
    if not val:
        val = [files[-1][1]]
    vs = set(val)
    return [p for _, p in files if p not in vs], val


def _join(paths: list[Path]) -> np.ndarray:
    return np.frombuffer(b"".join(p.read_bytes() for p in paths), dtype=np.uint8)


def read_corpus(spec: str) -> tuple[np.ndarray, np.ndarray, str, tuple[int, int]]:
    """``(train bytes, validation bytes, how it was split, (train files, validation files))`` of a text spec."""
    s = str(spec).strip()
    if s.lower() == "pystdlib":
        root, suffix, what = _stdlib_dir(), ".py", "the interpreter's standard-library .py sources"
    else:
        target = s.partition(":")[2]
        if not target:
            raise UsageError("--dataset text:PATH: give a file or a folder after the colon")
        root, suffix, what = Path(target).expanduser(), None, target
        if not root.exists():
            raise UsageError(f"--dataset {s}: {root} does not exist")
        if root.is_file():
            return _split_tail(root.read_bytes(), s)
    files = _folder_files(root, suffix)
    if not files:
        raise UsageError(f"--dataset {s}: no files under {root}")
    if len(files) == 1:
        return _split_tail(files[0][1].read_bytes(), s)
    train, val = _split_files(files)
    how = (f"{what}: {len(val)} of {len(files)} files by name (crc32(relative path) % {VAL_MODULUS} == 0) "
           f"for validation")
    return _join(train), _join(val), how, (len(train), len(val))


def _split_tail(data: bytes, spec: str) -> tuple[np.ndarray, np.ndarray, str, tuple[int, int]]:
    arr = np.frombuffer(data, dtype=np.uint8)
    cut = int(round(len(arr) * (1 - TAIL_FRACTION)))
    return arr[:cut], arr[cut:], f"{spec}: the last {TAIL_FRACTION:.0%} of the bytes for validation", (1, 1)


class Windows(Dataset):
    """``(bytes[s : s + context], bytes[s + 1 : s + context + 1])`` as int64, for start ``s`` = the index (train)
    or ``starts[index]`` (validation)."""

    def __init__(self, data: np.ndarray, context: int, starts: np.ndarray | None = None) -> None:
        self.data, self.context, self.starts = torch.from_numpy(data.astype(np.int64)), context, starts

    def __len__(self) -> int:
        return len(self.starts) if self.starts is not None else max(0, len(self.data) - self.context)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = int(self.starts[i]) if self.starts is not None else int(i)
        w = self.data[s:s + self.context + 1]
        return w[:-1], w[1:]


class WindowSampler(torch.utils.data.Sampler):
    """Seeded random window starts, ``num`` per epoch, this rank's share (``set_epoch`` as ``DistributedSampler``)."""

    def __init__(self, positions: int, num: int, seed: int = 0, rank: int = 0, world: int = 1) -> None:
        self.positions, self.num, self.seed, self.rank, self.world, self.epoch = positions, num, seed, rank, world, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        starts = torch.randint(0, self.positions, (self.num,), generator=g)
        return iter(starts[self.rank::self.world].tolist())

    def __len__(self) -> int:
        return len(range(self.rank, self.num, self.world))


@dataclass
class TextSource:
    """An opened text dataset (the text counterpart of :class:`~quadexport.data.source.DataSource`)."""

    name: str
    train: Windows
    test: Windows
    preprocessing: TextPreprocessing
    windows_per_epoch: int
    num_classes: int = VOCAB
    task: str = "lm"
    workers: int = 0

    @property
    def input_shape(self) -> tuple[int]:
        return self.preprocessing.input_shape

    def sampler(self, seed: int, rank: int = 0, world: int = 1) -> WindowSampler:
        return WindowSampler(len(self.train), self.windows_per_epoch, seed, rank, world)

    def loader(self, split: str, batch_size: int, sampler: Any = None) -> DataLoader:
        ds = {"train": self.train, "test": self.test}[split]
        return DataLoader(ds, batch_size=batch_size, sampler=sampler, shuffle=False)


def open_text(spec: str, context: int = 64, train_subset: int | None = None,
              test_subset: int | None = None) -> TextSource:
    """Open a text spec as windows of ``context`` bytes.

    Args:
        spec: ``pystdlib`` or ``text:PATH``.
        context: window length.
        train_subset: training windows per epoch (default ``train bytes // context``).
        test_subset: validation windows (evenly spaced; default every non-overlapping one).
    """
    train, val, how, files = read_corpus(spec)
    for split, arr in (("training", train), ("validation", val)):
        if len(arr) <= context:
            raise UsageError(f"--dataset {spec}: the {split} split has {len(arr)} bytes, fewer than a window of "
                             f"{context + 1}; give more text")
    n_val = (len(val) - 1) // context
    if test_subset is not None and test_subset < n_val:
        starts = np.linspace(0, len(val) - context - 1, test_subset).round().astype(np.int64)
        how += f"; {test_subset} evenly spaced windows"
    else:
        starts = np.arange(n_val, dtype=np.int64) * context
    prep = TextPreprocessing(source=str(spec), context=context, test_split=how, train_bytes=len(train),
                             test_bytes=len(val), files=files)
    per_epoch = int(train_subset) if train_subset else max(1, len(train) // context)
    return TextSource(str(spec), Windows(train, context), Windows(val, context, starts), prep, per_epoch)
