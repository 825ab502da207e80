"""The data of one compression, for any dataset kind the run was trained on (built-in, ``imagefolder:``, ``npz:``).

The run's own dataset is reopened with :func:`quadexport.data.open_run_dataset` (same spec, subsets, seed, image
size and the recorded mean/std) and its training split is carved into a seeded validation split (never the test
set) and the rest (fine-tuning); the calibration images are the first ``calib_samples`` of a seeded order of that
rest, and only those are loaded into memory. Everything else is a map-style dataset read in batches through a
``DataLoader``: in-memory tensors for built-ins and ``npz:``, files decoded by the source's worker processes for
image folders, so a folder larger than memory is never materialised.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from quadexport.compress.config import CompressError
from quadexport.compress.taskloss import TaskLoss
from quadexport.data.lm import task_loss
from quadexport.data import DataSource, DatasetNotFoundError, open_run_dataset, parse_dataset_spec

__all__ = ["EVAL_BATCH", "CompressData", "open_data", "random_data"]

log = logging.getLogger(__name__)

EVAL_BATCH = 256
"""Batch size of evaluation, calibration loading and onnxruntime accuracy passes."""


@dataclass
class CompressData:
    """The reopened dataset of a run, split for compression.

    Attributes:
        source: the run's dataset (:class:`~quadexport.data.DataSource`); ``source.test`` is the test split.
        calib: calibration images (normalised model inputs, in memory), from ``fit``'s part of the training split.
        fit: the training split without the validation split (fine-tuning).
        val: the validation split (``val_samples``, at most a fifth of the training split).
        task: the task loss (``None``: cross-entropy on the class labels) and ``teacher``, the uncompressed model
            whose outputs it compares against.
    A run without a dataset (:func:`random_data`) has ``source`` ``None``: random inputs, no labels, no test split
    (``test`` is the validation split).
    """

    source: DataSource | None
    calib: torch.Tensor
    fit: Dataset
    val: Dataset
    task: TaskLoss | None = None
    teacher: nn.Module | None = None

    @property
    def workers(self) -> int:
        """DataLoader worker processes for this dataset (0 for in-memory tensors)."""
        return self.source.workers if self.source is not None else 0

    @property
    def test(self) -> Dataset:
        return self.source.test if self.source is not None else self.val

    def batch_loss(self, out: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss of one batch's outputs: the task loss against the teacher's outputs on ``x``, else
        cross-entropy on the labels ``y``."""
        if self.task is None:  # a classifier's labels, or a language model's next tokens (quadexport.data.lm)
            return task_loss(out.float(), y)
        with torch.no_grad():
            ref = self.teacher.eval()(x)
        return self.task(out, ref, y)

    def batches(self, split: str | Dataset, batch_size: int = EVAL_BATCH) -> DataLoader:
        """The ``(x, y)`` batches of ``split`` (``"test"``, ``"val"``, ``"fit"`` or a dataset), in order."""
        ds = {"test": self.test, "val": self.val, "fit": self.fit}[split] if isinstance(split, str) else split
        return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=self.workers)

    def accuracy(self, model: nn.Module, split: str) -> float:
        """Top-1 accuracy of ``model`` (eval mode, CPU) on ``split``."""
        from quadexport.training.loop import evaluate_batches

        return float(evaluate_batches(model, self.batches(split), torch.device("cpu"))[1])

    def loss(self, model: nn.Module, split: str) -> float:
        """Mean loss of ``model`` (eval mode, CPU) on ``split``: the task loss, else cross-entropy."""
        from quadexport.training.loop import evaluate_batches

        if self.task is None:
            return float(evaluate_batches(model, self.batches(split), torch.device("cpu"))[0])
        model.eval()
        total, n = 0.0, 0
        with torch.no_grad():
            for x, y in self.batches(split):
                total, n = total + float(self.batch_loss(model(x), x, y)) * len(x), n + len(x)
        return total / max(n, 1)


def _missing(run_dir: Path, spec: str, err: Exception) -> CompressError:
    """The one-line error for a run whose dataset is not on disk any more (or not whole)."""
    ds = parse_dataset_spec(spec)
    if ds.kind == "builtin":
        return CompressError(f"{run_dir} was trained on {spec}, whose files are not here: {err}")
    what = "folder" if ds.kind == "imagefolder" else "file"
    if not Path(ds.target).expanduser().exists():
        return CompressError(f"{run_dir} was trained on {spec} which is not there any more; put the {what} back at "
                             f"{ds.target} (a symlink will do) to compress this run")
    return CompressError(f"{run_dir} was trained on {spec}, which is not as it was: {err}")


def open_data(run_dir: str | Path, meta: Mapping[str, Any], calib_samples: int, val_samples: int,
              data_dir: str | None = None, seed: int = 0) -> CompressData:
    """Reopen the dataset of a run and split it (module docstring).

    Args:
        run_dir: the run (for messages).
        meta: its ``quadexport_meta`` (``dataset``, ``preprocessing``, ``train_config``).
        calib_samples: calibration images to load.
        val_samples: validation split size (at most a fifth of the training split).
        data_dir: built-in datasets: directory override.
        seed: seed of the split.

    Raises:
        CompressError: the dataset (a built-in's files, the folder or the ``.npz``) is not there any more.
    """
    spec = str(meta.get("dataset"))
    try:
        src = open_run_dataset(meta, data_dir)
    except DatasetNotFoundError as e:
        raise _missing(Path(run_dir), spec, e) from None
    n = len(src.train)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    nv = min(int(val_samples), n // 5)
    val, rest = order[:nv], order[nv:]
    calib_idx = rest[:int(calib_samples)].tolist()
    loader = DataLoader(Subset(src.train, calib_idx), batch_size=EVAL_BATCH, num_workers=src.workers)
    calib = torch.cat([xb for xb, _ in loader]) if calib_idx else torch.empty(0, *src.input_shape)
    log.debug("%s: %d training images (%d validation), %d test, %d calibration images loaded", spec, n, nv,
              len(src.test), len(calib))
    per_epoch = getattr(src, "windows_per_epoch", None)  # text: an epoch is the run's number of random windows
    fit = rest[:per_epoch] if per_epoch else rest
    return CompressData(source=src, calib=calib, fit=Subset(src.train, fit.sort().values.tolist()),
                        val=Subset(src.train, val.tolist()))


def random_inputs(meta: Mapping[str, Any], n: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """``n`` random model inputs as the run knows them (:func:`quadexport.parity.random_inputs`): uniform in its
    recorded ``input_range``, else at its recorded ``input_stats`` (per-channel ``mean``/``std`` of the normalised
    inputs), N(0, 1) when it records neither."""
    if meta.get("input_range"):
        from quadexport.parity import random_inputs as drawn

        return torch.from_numpy(drawn(meta, [shape], n, seed)[0])
    x = torch.randn((n, *shape), generator=torch.Generator().manual_seed(int(seed)))
    stats = meta.get("input_stats") or {}
    if stats and len(shape) >= 2:
        bc = (-1,) + (1,) * (len(shape) - 1)
        mean, std = (torch.as_tensor(stats.get(k, d), dtype=torch.float32) for k, d in (("mean", 0.0), ("std", 1.0)))
        x = x * (std.reshape(bc) if std.dim() else std) + (mean.reshape(bc) if mean.dim() else mean)
    return x


def random_data(meta: Mapping[str, Any], shape: tuple[int, ...], calib_samples: int, val_samples: int,
                seed: int = 0) -> CompressData:
    """The data of a run without a dataset (a task loss that needs no labels): ``calib_samples`` random inputs for
    calibration and fine-tuning, ``val_samples`` others for validation, labels all 0 (unused)."""
    calib = random_inputs(meta, int(calib_samples), shape, seed)
    val = random_inputs(meta, int(val_samples), shape, seed + 1)
    zeros = lambda t: torch.zeros(len(t), dtype=torch.long)  # noqa: E731
    log.debug("no dataset: %d random calibration/fine-tuning inputs, %d validation inputs", len(calib), len(val))
    return CompressData(source=None, calib=calib, fit=TensorDataset(calib, zeros(calib)),
                        val=TensorDataset(val, zeros(val)))
