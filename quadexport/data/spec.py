"""Dataset specs (``digits``, ``imagefolder:PATH``, ``npz:FILE``) and the loaders training iterates.

:func:`training_loaders` is the one call :func:`quadexport.train.train` makes: it opens any kind of dataset and
returns a sharded, seeded training DataLoader (``DistributedSampler``, also with one process, so a resumed run sees
the batches an uninterrupted one sees) and an in-order test DataLoader.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from quadexport.data.builtin import _canonical_name, _SPECS, builtin_preprocessing, list_datasets, load_dataset
from quadexport.data.source import DataOptions, DataSource
from quadexport.errors import UsageError, did_you_mean
from quadexport.preprocess import Preprocessing

__all__ = ["DatasetSpec", "Loaders", "open_dataset", "parse_dataset_spec", "run_preprocessing", "training_loaders"]

KINDS = ("imagefolder", "npz")


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed ``--dataset`` value: ``kind`` is ``"builtin"``, ``"imagefolder"`` or ``"npz"``."""

    kind: str
    target: str  # built-in name, folder or file


def parse_dataset_spec(spec: str) -> DatasetSpec:
    """Parse ``--dataset``: a built-in name, ``imagefolder:PATH`` or ``npz:FILE``.

    Raises:
        UsageError: unknown name or empty path (the message lists what is accepted).
    """
    text = str(spec).strip()
    kind, sep, target = text.partition(":")
    if sep and kind.lower() in KINDS:
        if not target:
            raise UsageError(f"--dataset {text}: give a path after the colon, e.g. {kind.lower()}:/data/my-images")
        return DatasetSpec(kind.lower(), target)
    key = text.lower().replace("_", "-")
    if key in _SPECS:
        return DatasetSpec("builtin", key)
    raise UsageError(f"unknown dataset {text!r}: use one of {', '.join(list_datasets())}, imagefolder:PATH or "
                     f"npz:FILE{did_you_mean(key, list_datasets())}")


def open_dataset(spec: str, opts: DataOptions | None = None) -> DataSource:
    """Open any dataset kind as a :class:`DataSource` (built-ins and ``npz:`` in memory, folders streamed)."""
    from quadexport.data.arrays import open_npz
    from quadexport.data.folder import open_imagefolder

    opts = opts or DataOptions()
    ds = parse_dataset_spec(spec)
    if ds.kind == "imagefolder":
        return open_imagefolder(spec, ds.target, opts)
    if ds.kind == "npz":
        return open_npz(spec, ds.target, opts)
    if opts.image_size is not None or opts.mean is not None:
        raise UsageError(f"--image-size/--mean/--std apply to imagefolder: and npz: datasets; {ds.target} has "
                         "fixed ones")
    d = load_dataset(ds.target, data_dir=opts.data_dir, train_subset=opts.train_subset,
                     test_subset=opts.test_subset, seed=opts.seed)
    return DataSource(name=d.name, train=TensorDataset(d.x_train, d.y_train), test=TensorDataset(d.x_test, d.y_test),
                      num_classes=d.num_classes, preprocessing=builtin_preprocessing(d.name, opts.test_subset, opts.seed))


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
        return Preprocessing.from_dict(meta["preprocessing"])
    name = meta.get("dataset")
    tc = meta.get("train_config") or {}
    if name is None or parse_dataset_spec(name).kind != "builtin":
        raise UsageError(f"this run records no preprocessing (dataset {name!r}); retrain it with this quadexport")
    return builtin_preprocessing(_canonical_name(name), tc.get("test_subset"), int(tc.get("seed", 0)))
