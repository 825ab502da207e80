"""``imagefolder:PATH``: your own images, ``PATH/train/<class>/*.png|jpg|...`` and ``PATH/val/`` (or ``PATH/test/``).

Read with torchvision's ``ImageFolder`` and streamed through DataLoader workers, never held in memory. Before
training, every file's header is read with PIL (cheap: no pixel decoding) to check that each class folder has
images, that both splits have the same classes, and that every file is a readable image; the headers also give the
common image size (the default ``--image-size``) and whether the set is grey (all modes ``L``/``1``/``I``/``I;16``/
``LA``) or colour (converted to ``RGB``). Mean and std are computed on (at most 10000 images of) the training split
unless given. Pixels are decoded as ``Image.open(f).convert(mode)``, resized with PIL bilinear when not already
``image_size``, and normalised with :func:`quadexport.data.preprocess.normalise`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from quadexport._compat import import_torchvision
from quadexport.data.builtin import DatasetNotFoundError
from quadexport.data.resize import RESIZE
from quadexport.data.source import DataOptions, DataSource, auto_workers, stratified_subset
from quadexport.errors import UsageError
from quadexport.data.preprocess import Preprocessing, affine

__all__ = ["open_imagefolder"]

log = logging.getLogger(__name__)

_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})
_STATS_MAX = 10000


@dataclass(frozen=True)
class _Split:
    """One split folder after the header scan."""

    root: Path
    classes: tuple[str, ...]
    sizes: frozenset[tuple[int, int]]  # (width, height) as PIL reports them
    grey: bool
    count: int


def _extensions() -> tuple[str, ...]:
    return tuple(import_torchvision().datasets.folder.IMG_EXTENSIONS)


def _scan_split(root: Path) -> _Split:
    """Header-read every image of ``root/<class>/``; one-line errors for empty classes and unreadable files."""
    from PIL import Image, UnidentifiedImageError

    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if not classes:
        raise UsageError(f"{root} has no class folders; put images in {root}/<class name>/*.png")
    exts, sizes, grey, count = _extensions(), set(), True, 0
    for cls in classes:
        files = sorted(e.path for e in os.scandir(root / cls) if e.is_file() and e.name.lower().endswith(exts))
        if not files:
            raise UsageError(f"class folder {root / cls} has no images ({', '.join(exts)}); add some or remove it")
        for path in files:
            try:
                with Image.open(path) as im:
                    sizes.add(im.size)
                    grey = grey and im.mode in _GREY_MODES
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
                raise UsageError(f"{path}: not a readable image ({type(e).__name__}); fix or remove the file") from None
        count += len(files)
    return _Split(root, tuple(classes), frozenset(sizes), grey, count)


def _scan(path: Path) -> tuple[_Split, _Split]:
    if not path.is_dir():
        raise DatasetNotFoundError(f"imagefolder: {path} is not a directory (expected {path}/train/<class>/*.png)")
    if not (path / "train").is_dir():
        raise DatasetNotFoundError(f"imagefolder: {path} has no train/ folder (expected {path}/train/<class>/*.png)")
    test_dir = next((path / d for d in ("val", "test") if (path / d).is_dir()), None)
    if test_dir is None:
        raise DatasetNotFoundError(f"imagefolder: {path} has no val/ (or test/) folder beside train/")
    train, test = _scan_split(path / "train"), _scan_split(test_dir)
    if train.classes != test.classes:
        only_tr = sorted(set(train.classes) - set(test.classes))
        only_te = sorted(set(test.classes) - set(train.classes))
        raise UsageError(f"imagefolder: class folders differ between {train.root} and {test.root} (only in train: "
                         f"{only_tr or 'none'}; only in {test.root.name}: {only_te or 'none'}); make them match")
    return train, test


def _image_size(train: _Split, test: _Split, given: tuple[int, int] | None) -> tuple[int, int]:
    """``(height, width)``: ``given``, else the images' common size."""
    sizes = train.sizes | test.sizes
    if given is not None:
        return int(given[0]), int(given[1])
    if len(sizes) > 1:
        shown = ", ".join(f"{h}x{w}" for w, h in sorted(sizes)[:3])
        raise UsageError(f"imagefolder: images have {len(sizes)} different sizes ({shown}, ...); pass --image-size "
                         "H or HxW to resize them all")
    w, h = next(iter(sizes))
    return h, w


class _Loader:
    """``ImageFolder`` loader: open, convert to ``mode``, resize to ``(h, w)`` if needed, as ``uint8 (C, H, W)``."""

    def __init__(self, mode: str, size: tuple[int, int]):
        self.mode, self.size = mode, size

    def __call__(self, path: str) -> torch.Tensor:
        from PIL import Image

        try:
            with Image.open(path) as im:
                img = im.convert(self.mode)
                if img.size != (self.size[1], self.size[0]):
                    img = img.resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)
                arr = np.asarray(img, dtype=np.uint8)
        except (OSError, SyntaxError, ValueError) as e:
            raise UsageError(f"{path}: cannot decode image ({type(e).__name__}: {e}); fix or remove it") from None
        t = torch.from_numpy(arr.copy())
        return t[None] if t.ndim == 2 else t.permute(2, 0, 1).contiguous()


class _Normalise:
    """Transform ``uint8 (C, H, W)`` -> normalised float32 (:func:`quadexport.data.preprocess.normalise` arithmetic)."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor):
        self.a, self.b = a, b

    def __call__(self, raw: torch.Tensor) -> torch.Tensor:
        return raw.to(torch.float32).mul(self.a).sub(self.b)


def _stats(ds: torch.utils.data.Dataset, channels: int, scale: float, workers: int) -> tuple[tuple, tuple]:
    """Per-channel (mean, std) of ``raw * scale`` over ``ds`` (population std, float64 sums)."""
    s = torch.zeros(channels, dtype=torch.float64)
    s2 = torch.zeros(channels, dtype=torch.float64)
    n = 0
    for xb, _ in DataLoader(ds, batch_size=256, num_workers=workers):
        x = xb.to(torch.float64)
        s += x.sum((0, 2, 3))
        s2 += (x * x).sum((0, 2, 3))
        n += x.shape[0] * x.shape[2] * x.shape[3]
    mean = s / n
    std = (s2 / n - mean * mean).clamp_min(0).sqrt()
    return tuple(float(v) * scale for v in mean), tuple(float(v) * scale for v in std)


def open_imagefolder(spec: str, path: str | os.PathLike, opts: DataOptions) -> DataSource:
    """Open ``imagefolder:PATH`` (module docstring) as a streamed :class:`DataSource`.

    Raises:
        DatasetNotFoundError: PATH, ``train/`` or ``val/``/``test/`` is missing.
        UsageError: an empty class folder, different class sets in the two splits, an unreadable image, images of
            several sizes without ``image_size``, or bad ``mean``/``std``.
    """
    tv = import_torchvision()
    root = Path(path).expanduser()
    train_scan, test_scan = _scan(root)
    size = _image_size(train_scan, test_scan, opts.image_size)
    channels = 1 if train_scan.grey and test_scan.grey else 3
    mode = "L" if channels == 1 else "RGB"
    workers = auto_workers() if opts.workers is None else opts.workers
    loader = _Loader(mode, size)
    train_ds = tv.datasets.ImageFolder(str(train_scan.root), loader=loader)
    test_ds = tv.datasets.ImageFolder(str(test_scan.root), loader=loader)
    y_train, y_test = np.asarray(train_ds.targets), np.asarray(test_ds.targets)
    train = stratified_subset(train_ds, y_train, opts.train_subset, opts.seed, stream=0)
    test = stratified_subset(test_ds, y_test, opts.test_subset, opts.seed, stream=1)
    scale = 1.0 / 255.0
    mean, std = opts.mean, opts.std
    if mean is None:
        sample = stratified_subset(train, _labels(train, y_train), _STATS_MAX, opts.seed, stream=2)
        mean, std = _stats(sample, channels, scale, workers)
        log.info("imagefolder %s: mean %s std %s from %d training images", root, mean, std, len(sample))
    split = f"the {test_scan.root.name}/ folder of {root}"
    if opts.test_subset is not None:
        split += f"; stratified subset of at most {opts.test_subset} (seed {opts.seed})"
    prep = Preprocessing(channels=channels, size=size, scale=scale, mean=mean, std=std, class_names=train_ds.classes,
                         test_split=split, source=spec, resize=RESIZE if opts.image_size is not None else None)
    train_ds.transform = test_ds.transform = _Normalise(*affine(prep))
    return DataSource(name=spec, train=train, test=test, num_classes=len(train_ds.classes), preprocessing=prep,
                      workers=workers)


def _labels(ds: torch.utils.data.Dataset, all_labels: np.ndarray) -> np.ndarray:
    """Labels of ``ds`` (a dataset or a :class:`~torch.utils.data.Subset` of one labelled ``all_labels``)."""
    indices = getattr(ds, "indices", None)
    return all_labels if indices is None else all_labels[np.asarray(indices)]
