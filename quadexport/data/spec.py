"""Dataset specs (``digits``, ``imagefolder:PATH``, ``npz:FILE``) and the loaders training iterates.

:func:`training_loaders` is the one call :func:`quadexport.training.loop.train` makes: it opens any kind of dataset and
returns a sharded, seeded training DataLoader (``DistributedSampler``, also with one process, so a resumed run sees
the batches an uninterrupted one sees) and an in-order test DataLoader.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from quadexport.data.arrays import open_npz
from quadexport.data.builtin import _SPECS, _canonical_name, list_datasets, load_dataset
from quadexport.data.folder import open_imagefolder
from quadexport.data.resize import RESIZE
from quadexport.data.source import DataOptions, DataSource
from quadexport.data.text import BUILTIN_TEXT, is_text_spec, open_text
from quadexport.errors import UsageError, did_you_mean
from quadexport.data.preprocess import Preprocessing

__all__ = ["DatasetSpec", "Loaders", "builtin_preprocessing", "open_dataset", "open_run_dataset", "parse_dataset_spec",
           "run_preprocessing", "training_loaders"]

KINDS = ("imagefolder", "npz")

_CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    "digits": tuple("0123456789"),
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),
    "mnist": tuple("0123456789"),
}
_TEST_SPLITS = {
    "cifar10": "the test_batch file",
    "digits": "sklearn train_test_split(test_size=0.2, stratify=y, random_state=0) of load_digits",
    "fashion-mnist": "the t10k IDX files",
    "mnist": "the t10k IDX files",
}


def builtin_preprocessing(name: str, test_subset: int | None = None, seed: int = 0,
                          image_size: tuple[int, int] | None = None) -> Preprocessing:
    """The full preprocessing of a built-in dataset: scale (``1/16`` digits, ``1/255`` others), mean, std, classes.

    Args:
        name: a name from :func:`list_datasets`.
        test_subset: the run's ``test_subset`` (recorded in ``test_split``).
        seed: the run's seed (the subset is drawn with it).
        image_size: the run's ``--image-size`` (the images are resized with :data:`~quadexport.data.resize.RESIZE`).
    """
    key = _canonical_name(name)
    spec = _SPECS[key]
    split = _TEST_SPLITS[key]
    if test_subset is not None:
        split += f"; stratified subset of at most {test_subset} (seed {seed})"
    mean = spec.mean if isinstance(spec.mean, tuple) else (spec.mean,)
    std = spec.std if isinstance(spec.std, tuple) else (spec.std,)
    return Preprocessing(channels=spec.input_shape[0], size=image_size or spec.input_shape[1:], scale=1.0 / spec.scale,
                         mean=mean, std=std, class_names=_CLASS_NAMES[key], test_split=split, source=key,
                         resize=RESIZE if image_size is not None else None)


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed ``--dataset`` value: ``kind`` is ``"builtin"``, ``"imagefolder"``, ``"npz"`` or ``"text"``
    (``text:PATH``, ``pystdlib``: :mod:`quadexport.data.text`)."""

    kind: str
    target: str  # built-in name, folder or file


def parse_dataset_spec(spec: str) -> DatasetSpec:
    """Parse ``--dataset``: a built-in name, ``imagefolder:PATH`` or ``npz:FILE``.

    Raises:
        UsageError: unknown name or empty path (the message lists what is accepted).
    """
    text = str(spec).strip()
    if is_text_spec(text):
        return DatasetSpec("text", text.partition(":")[2] if ":" in text else text.lower())
    kind, sep, target = text.partition(":")
    if sep and kind.lower() in KINDS:
        if not target:
            raise UsageError(f"--dataset {text}: give a path after the colon, e.g. imagefolder:/data/my-images or "
                             "npz:/data/arrays.npz")
        return DatasetSpec(kind.lower(), target)
    key = text.lower().replace("_", "-")
    if key in _SPECS:
        return DatasetSpec("builtin", key)
    raise UsageError(f"unknown dataset {text!r}: use one of {', '.join(list_datasets())}, imagefolder:PATH, "
                     f"npz:FILE, text:PATH or {', '.join(BUILTIN_TEXT)}{did_you_mean(key, list_datasets())}")


def open_dataset(spec: str, opts: DataOptions | None = None) -> DataSource:
    """Open any dataset kind as a :class:`DataSource` (built-ins and ``npz:`` in memory, folders streamed)."""
    opts = opts or DataOptions()
    ds = parse_dataset_spec(spec)
    if ds.kind == "text":
        return open_text(spec, opts.context, opts.train_subset, opts.test_subset)
    if ds.kind == "imagefolder":
        return open_imagefolder(spec, ds.target, opts)
    if ds.kind == "npz":
        return open_npz(spec, ds.target, opts)
    if opts.mean is not None:
        raise UsageError(f"--mean/--std apply to imagefolder: and npz: datasets; {ds.target} has fixed ones")
    d = load_dataset(ds.target, data_dir=opts.data_dir, train_subset=opts.train_subset,
                     test_subset=opts.test_subset, seed=opts.seed, image_size=opts.image_size)
    prep = builtin_preprocessing(d.name, opts.test_subset, opts.seed, opts.image_size)
    return DataSource(name=d.name, train=TensorDataset(d.x_train, d.y_train), test=TensorDataset(d.x_test, d.y_test),
                      num_classes=d.num_classes, preprocessing=prep)


@dataclass
class Loaders:
    """What training iterates: call ``sampler.set_epoch(epoch)`` before each pass over ``train``."""

    train: DataLoader
    test: DataLoader
    sampler: DistributedSampler
    source: DataSource

    @property
    def num_classes(self) -> int:
        return self.source.num_classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.source.input_shape

    @property
    def preprocessing(self) -> Preprocessing:
        return self.source.preprocessing


def training_loaders(spec: str, opts: DataOptions, batch_size: int, rank: int = 0, world: int = 1,
                     test_batch_size: int = 512) -> Loaders:
    """Open ``spec`` and build the training loader (``batch_size // world`` per process) and the test loader."""
    src = open_dataset(spec, opts)
    if len(src.train) == 0 or len(src.test) == 0:
        raise UsageError(f"dataset {spec} has an empty split ({len(src.train)} train, {len(src.test)} test)")
    if getattr(src, "task", "classify") == "lm":  # random windows (quadexport.data.text)
        sampler = src.sampler(opts.seed, rank, world)
    else:
        sampler = DistributedSampler(src.train, num_replicas=world, rank=rank, shuffle=True, seed=opts.seed,
                                     drop_last=False)
    return Loaders(train=src.loader("train", max(1, batch_size // world), sampler),
                   test=src.loader("test", test_batch_size), sampler=sampler, source=src)


def run_preprocessing(meta: Mapping[str, Any]) -> Preprocessing:
    """The :class:`Preprocessing` of a trained run from its ``quadexport_meta`` (checkpoint meta).

    Runs trained before preprocessing was recorded get their built-in dataset's (scale included).

    Raises:
        UsageError: the meta has neither ``preprocessing`` nor a built-in ``dataset``.
    """
    if meta.get("preprocessing"):
        if meta["preprocessing"].get("kind") == "text":
            from quadexport.data.text import TextPreprocessing

            return TextPreprocessing.from_dict(meta["preprocessing"])
        return Preprocessing.from_dict(meta["preprocessing"])
    name = meta.get("dataset")
    tc = meta.get("train_config") or {}
    if name is None or parse_dataset_spec(name).kind != "builtin":
        raise UsageError(f"this run records no preprocessing (dataset {name!r}); retrain it with this quadexport")
    return builtin_preprocessing(_canonical_name(name), tc.get("test_subset"), int(tc.get("seed", 0)))


def open_run_dataset(meta: Mapping[str, Any], data_dir: str | None = None, workers: int | None = None) -> DataSource:
    """The dataset a trained run used (same spec, subsets, seed, size and normalisation), e.g. to check accuracy.

    The run's recorded mean/std are reused, so a folder's statistics are not recomputed.

    Args:
        meta: the run's ``quadexport_meta`` (checkpoint meta, with ``train_config``).
        data_dir: overrides the run's ``data_dir`` (built-in datasets only).
        workers: DataLoader workers for folders (default :func:`~quadexport.data.source.auto_workers`).
    """
    tc = meta.get("train_config") or {}
    spec = meta.get("dataset") or tc.get("dataset")
    if not spec:
        raise UsageError("this run records no dataset; pass the data explicitly")
    if parse_dataset_spec(spec).kind == "text":
        ctx = (meta.get("preprocessing") or {}).get("context") or (tc.get("model_args") or {}).get("context", 64)
        return open_text(spec, int(ctx), tc.get("train_subset"), tc.get("test_subset"))
    custom = parse_dataset_spec(spec).kind != "builtin"
    prep = run_preprocessing(meta) if custom else None
    size = tc.get("image_size")
    opts = DataOptions(data_dir=data_dir or tc.get("data_dir"), train_subset=tc.get("train_subset"),
                       test_subset=tc.get("test_subset"), seed=int(tc.get("seed", 0)),
                       image_size=tuple(size) if size else None, mean=prep.mean if prep else None,
                       std=prep.std if prep else None, workers=workers)
    return open_dataset(spec, opts)
