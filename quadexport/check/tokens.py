"""Inputs of the parity check for token models (:mod:`quadexport.zoo.tokens`): random int64 token ids within the
vocabulary at every batch size and at every sequence length the file takes (the context and, for a file exported
with a dynamic length, the further lengths its metadata records), plus real text windows of the run's dataset (or
``--dataset``) at the full context."""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np

from quadexport.zoo.tokens import TokenInput
from quadexport.runmeta import meta_dict

__all__ = ["token_lengths_of", "token_sets"]


def token_lengths_of(dims: Sequence[Any], spec: TokenInput, metadata: dict[str, str]) -> list[int]:
    """The sequence lengths to check: the file's fixed length (``dims``: its input's dims, batch first), or the
    lengths recorded for a dynamic one (at least the context and a shorter one)."""
    from quadexport.exporter.dynamic import recorded
    from quadexport.zoo.tokens import token_lengths

    if len(dims) > 1 and isinstance(dims[1], int):
        return [int(dims[1])]
    dyn = recorded(metadata)
    lengths = [int(s[0]) for s in dyn["sizes"]] if dyn else []
    return lengths if len(lengths) >= 2 else token_lengths(spec, 2)


def _windows(dataset: Any, meta: dict[str, Any], n: int) -> tuple[str, np.ndarray, np.ndarray]:
    """``(name, the first n validation windows, their next tokens)`` of the run's own text or ``dataset``."""
    from quadexport.data import DataOptions, open_dataset, open_run_dataset

    own = meta.get("dataset") or (meta.get("train_config") or {}).get("dataset")
    spec = dataset or own
    name = getattr(spec, "name", spec)
    if spec == own:
        src = open_run_dataset(meta, workers=0)
    elif hasattr(spec, "loader"):
        src = spec
    else:
        src = open_dataset(spec, DataOptions(workers=0, context=int((meta.get("preprocessing") or {}).get(
            "context", 64))))
    xs, ys = next(iter(src.loader("test", n)))
    return f"{name}[{len(xs)}]", xs.numpy().astype(np.int64), ys.numpy()


def token_sets(model: Any, spec: TokenInput, lengths: Sequence[int], batches: Sequence[int], seed: int,
               dataset: Any, report: Any, say: Callable[[str], None], make_set: Callable[..., Any],
               samples: int = 512) -> list[Any]:
    """The input sets (``make_set(source, batch, chunks, labels)``) of a token model's check."""
    rng = np.random.default_rng(seed)
    sets = [make_set(f"random tokens len {n}", int(b), [rng.integers(0, spec.vocab_size, (int(b), n), dtype=np.int64)])
            for n in lengths for b in (batches if n == lengths[0] else sorted(set(int(b) for b in batches))[:2])]
    meta = meta_dict(model)
    if dataset is False or not (dataset or meta.get("dataset")):
        return sets
    try:
        name, xs, ys = _windows(dataset, meta, samples)
    except Exception as e:  # noqa: BLE001 - reported (a failure only when the dataset was asked for)
        if dataset:
            report.errors.append(f"dataset {dataset}: {e}")
            say(f"-[✗] dataset {dataset}: {e}")
        else:
            report.notes.append(f"dataset {meta.get('dataset')} (from the model metadata) not checked: {e}")
        return sets
    if xs.shape[1] not in lengths and len(lengths) == 1:
        xs, ys = xs[:, :lengths[0]], ys[:, :lengths[0]]
    bs = max(int(b) for b in batches)
    sets.append(make_set(name, bs, [xs[i:i + bs] for i in range(0, len(xs), bs)], None))
    return sets
