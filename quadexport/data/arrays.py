"""``npz:FILE``: your own arrays, ``x_train, y_train, x_test, y_test`` in one ``.npz`` (``numpy.savez``).

Images may be ``(N, H, W)`` (grey), NHWC or NCHW with 1 or 3 channels, ``uint8`` (scale ``1/255``) or float (used as
they are: scale ``1``). Labels are integers ``0..K-1``; an optional ``class_names`` array names them. The file is
read with ``allow_pickle=False`` (an ``.npz`` cannot run code) and held in memory as normalised float32 tensors.
Mean and std are computed on the training split unless given. ``--image-size`` resizes the images (PIL bilinear).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from quadexport.data.builtin import DatasetNotFoundError
from quadexport.data.resize import RESIZE, resize_images
from quadexport.data.source import DataOptions, DataSource, stratified_subset
from quadexport.errors import UsageError
from quadexport.data.preprocess import Preprocessing, normalise

__all__ = ["open_npz", "to_nchw"]

_KEYS = ("x_train", "y_train", "x_test", "y_test")


def to_nchw(x: np.ndarray, what: str) -> np.ndarray:
    """``x`` as ``(N, C, H, W)`` with C in (1, 3): ``(N,H,W)`` gets C=1; NHWC is transposed; NCHW is kept.

    Raises:
        UsageError: not 3-D/4-D, not 1 or 3 channels, or both layouts possible (e.g. ``(N, 3, 5, 3)``).
    """
    if x.ndim == 3:
        return x[:, None]
    if x.ndim != 4:
        raise UsageError(f"{what} has shape {x.shape}; expected (N,H,W), (N,H,W,C) or (N,C,H,W) with C = 1 or 3")
    first, last = x.shape[1] in (1, 3), x.shape[3] in (1, 3)
    if first and not last:
        return x
    if last and not first:
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    why = "both" if first else "neither"
    raise UsageError(f"{what} has shape {x.shape}: {why} axis 1 and axis 3 look like 1 or 3 channels, so NHWC and "
                     "NCHW cannot be told apart; save it as (N, C, H, W) with C = 1 or 3")


def _labels(y: np.ndarray, what: str) -> np.ndarray:
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or np.array_equal(y, np.round(y))):
        raise UsageError(f"{what} must be a 1-D array of integer class labels, got {y.dtype} {y.shape}")
    y = y.astype(np.int64)
    if len(y) and y.min() < 0:
        raise UsageError(f"{what} has negative labels; use 0..K-1")
    return y


def _read(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DatasetNotFoundError(f"npz: no file {path} (expected an .npz with {', '.join(_KEYS)})")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in _KEYS if k not in f.files]
            if missing:
                raise UsageError(f"npz: {path} lacks {', '.join(missing)} (has {', '.join(f.files) or 'nothing'}); "
                                 f"save it with numpy.savez(FILE, {'=..., '.join(_KEYS)}=...)")
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        if isinstance(e, UsageError):
            raise
        raise UsageError(f"npz: cannot read {path} ({type(e).__name__}: {e}); is it a numpy .npz file?") from None


def _check_pair(x: np.ndarray, y: np.ndarray, split: str) -> None:
    if len(x) != len(y):
        raise UsageError(f"npz: x_{split} has {len(x)} images but y_{split} has {len(y)} labels")
    if not (x.dtype == np.uint8 or np.issubdtype(x.dtype, np.floating)):
        raise UsageError(f"npz: x_{split} is {x.dtype}; use uint8 (0-255) or float images")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise UsageError(f"npz: x_{split} holds NaN or Inf")


def _stats(x: np.ndarray, scale: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x64 = x.astype(np.float64)
    return tuple(float(v) * scale for v in x64.mean((0, 2, 3))), tuple(float(v) * scale for v in x64.std((0, 2, 3)))


def open_npz(spec: str, path: str | os.PathLike, opts: DataOptions) -> DataSource:
    """Open ``npz:FILE`` (module docstring) as an in-memory :class:`DataSource`.

    Raises:
        DatasetNotFoundError: no such file.
        UsageError: missing arrays, unreadable file, bad shapes/dtypes/labels, train and test image shapes differ.
    """
    path = Path(path).expanduser()
    arrays = _read(path)
    x_tr, x_te = to_nchw(arrays["x_train"], "npz x_train"), to_nchw(arrays["x_test"], "npz x_test")
    y_tr, y_te = _labels(arrays["y_train"], "npz y_train"), _labels(arrays["y_test"], "npz y_test")
    _check_pair(x_tr, y_tr, "train")
    _check_pair(x_te, y_te, "test")
    if x_tr.shape[1:] != x_te.shape[1:] or x_tr.dtype != x_te.dtype:
        raise UsageError(f"npz: x_train is {x_tr.dtype} {x_tr.shape[1:]} but x_test is {x_te.dtype} {x_te.shape[1:]} "
                         "(C, H, W); they must match")
    if len(y_tr) == 0 or len(y_te) == 0:
        raise UsageError(f"npz: {path} has an empty split ({len(y_tr)} train, {len(y_te)} test)")
    names = [str(c) for c in arrays["class_names"]] if "class_names" in arrays else []
    num_classes = max(int(y_tr.max()) + 1, int(y_te.max()) + 1, len(names))
    if names and len(names) != num_classes:
        raise UsageError(f"npz: class_names has {len(names)} names but labels go up to {num_classes - 1}")
    scale = 1.0 / 255.0 if x_tr.dtype == np.uint8 else 1.0
    if opts.image_size is not None:  # before the statistics: the model sees the resized images
        x_tr, x_te = resize_images(x_tr, opts.image_size), resize_images(x_te, opts.image_size)
    mean, std = (opts.mean, opts.std) if opts.mean is not None else _stats(x_tr, scale)
    split = f"the x_test/y_test arrays of {path}"
    if opts.test_subset is not None:
        split += f"; stratified subset of at most {opts.test_subset} (seed {opts.seed})"
    prep = Preprocessing(channels=x_tr.shape[1], size=x_tr.shape[2:], scale=scale, mean=mean, std=std,
                         class_names=names or [str(i) for i in range(num_classes)], test_split=split, source=spec,
                         resize=RESIZE if opts.image_size is not None else None)
    train = TensorDataset(normalise(torch.from_numpy(x_tr), prep), torch.from_numpy(y_tr))
    test = TensorDataset(normalise(torch.from_numpy(x_te), prep), torch.from_numpy(y_te))
    return DataSource(name=spec, train=stratified_subset(train, y_tr, opts.train_subset, opts.seed, stream=0),
                      test=stratified_subset(test, y_te, opts.test_subset, opts.seed, stream=1),
                      num_classes=num_classes, preprocessing=prep, workers=0)
