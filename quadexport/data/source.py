"""What every dataset kind (built-in, ``imagefolder:``, ``npz:``) hands to training: map-style train/test datasets of
normalised ``(C, H, W)`` float32 images with ``int`` labels, plus the run's
:class:`~quadexport.data.preprocess.Preprocessing`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from quadexport.data.builtin import _stratified_indices
from quadexport.errors import UsageError
from quadexport.data.preprocess import Preprocessing

__all__ = ["DataOptions", "DataSource", "auto_workers"]


def auto_workers() -> int:
    """DataLoader worker processes for file-backed datasets: ``$QUADEXPORT_DATA_WORKERS`` or min(4, CPUs)."""
    env = os.environ.get("QUADEXPORT_DATA_WORKERS")
    if env:
        try:
            return max(0, int(env))
        except ValueError:
            raise UsageError(f"QUADEXPORT_DATA_WORKERS must be an integer, got {env!r}") from None
    return min(4, os.cpu_count() or 1)


@dataclass(frozen=True)
class DataOptions:
    """How to open a dataset (the data part of a training config).

    Attributes:
        data_dir: directory override for built-in datasets (ignored by ``imagefolder:``/``npz:``).
        train_subset: keep at most this many training samples (class-stratified, seeded).
        test_subset: same for the test split.
        seed: seed of the subset sampling.
        image_size: ``(height, width)`` to resize ``imagefolder:`` images to (default: their common size).
        mean: per-channel mean on the ``[0, 1]`` scale (default: computed on the training split; built-ins: fixed).
        std: per-channel std, same form (both or neither of ``mean``/``std``).
        workers: DataLoader workers for file-backed data (``None``: :func:`auto_workers`).
        context: window length of text datasets (the language model's context).
    """

    data_dir: str | os.PathLike | None = None
    train_subset: int | None = None
    test_subset: int | None = None
    seed: int = 0
    image_size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    workers: int | None = None
    context: int = 64

    def __post_init__(self) -> None:
        if (self.mean is None) != (self.std is None):
            raise UsageError("give --mean and --std together (or neither, to compute them on the training split)")


@dataclass
class DataSource:
    """An opened dataset: map-style ``train``/``test`` of ``(float32 (C,H,W) normalised image, int label)``.

    Attributes:
        name: the dataset spec (``digits``, ``imagefolder:PATH``, ``npz:FILE``).
        train: training split.
        test: test split.
        num_classes: number of classes.
        preprocessing: how raw images became these inputs (stored in the run).
        workers: DataLoader worker processes to use (0 for in-memory tensors).
    """

    name: str
    train: Dataset
    test: Dataset
    num_classes: int
    preprocessing: Preprocessing
    workers: int = 0

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one model input."""
        return self.preprocessing.input_shape

    def loader(self, split: str, batch_size: int, sampler: torch.utils.data.Sampler | None = None) -> DataLoader:
        """A DataLoader over ``split`` (``"train"`` or ``"test"``), in order unless ``sampler`` says otherwise."""
        ds = {"train": self.train, "test": self.test}[split]
        return DataLoader(ds, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=self.workers,
                          persistent_workers=self.workers > 0)


def stratified_subset(ds: Dataset, labels: np.ndarray, n: int | None, seed: int, stream: int) -> Dataset:
    """``ds`` itself, or a class-stratified seeded :class:`Subset` of at most ``n`` items (as built-ins draw it)."""
    if n is None or n >= len(labels):
        return ds
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise UsageError(f"subset size must be a positive integer, got {n!r}")
    return Subset(ds, _stratified_indices(labels, int(n), seed, stream).tolist())
