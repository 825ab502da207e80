"""Datasets: four offline built-ins (:mod:`quadexport.data.builtin`), your own image folders
(``imagefolder:PATH``, :mod:`quadexport.data.folder`) and arrays (``npz:FILE``, :mod:`quadexport.data.arrays`).

* :func:`load_dataset` — a built-in dataset as normalised in-memory tensors (:class:`Dataset`).
* :func:`open_dataset` — any dataset spec as a :class:`DataSource` (map-style train/test + :class:`Preprocessing`).
* :func:`training_loaders` — what ``quadexport train`` iterates (seeded, DDP-sharded DataLoaders).
* :func:`run_preprocessing` — the full preprocessing of a trained run, for export.
* :func:`open_run_dataset` — the dataset a trained run used (for accuracy checks of any dataset kind).
"""

from __future__ import annotations

from quadexport.data.builtin import (Dataset, DatasetNotFoundError, default_mnist_dir, install_hint, list_datasets,
                                     load_dataset)
from quadexport.data.source import DataOptions, DataSource
from quadexport.data.spec import (DatasetSpec, Loaders, builtin_preprocessing, open_dataset, open_run_dataset,
                                  parse_dataset_spec, run_preprocessing, training_loaders)
from quadexport.data.preprocess import Preprocessing

__all__ = ["DataOptions", "DataSource", "Dataset", "DatasetNotFoundError", "DatasetSpec", "Loaders",
           "Preprocessing", "builtin_preprocessing", "default_mnist_dir", "install_hint", "list_datasets",
           "load_dataset", "open_dataset", "open_run_dataset", "parse_dataset_spec", "run_preprocessing",
           "training_loaders"]
