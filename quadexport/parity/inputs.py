"""Random verification inputs that follow what the run knows about its inputs.

In order: ``meta["input_range"]`` (``[[lo, hi], ...]``, one pair per input, recorded by ``--input-range``): uniform
in the range; ``meta["input_stats"]`` (per-channel ``mean``/``std`` of the first input, e.g. measured on the run's
dataset): normal at those statistics; otherwise standard normal. Never N(0, 1) when the run knows better.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["describe", "input_ranges", "random_inputs"]


def input_ranges(meta: Mapping[str, Any] | None, n_inputs: int = 1) -> list[tuple[float, float]] | None:
    """The recorded ``(lo, hi)`` of each input (a single pair applies to every input), or ``None``."""
    rng = (meta or {}).get("input_range")
    if not rng:
        return None
    pairs = [rng] if isinstance(rng[0], (int, float)) else list(rng)
    if len(pairs) == 1 and n_inputs > 1:
        pairs = pairs * n_inputs
    return [(float(lo), float(hi)) for lo, hi in pairs]


def describe(meta: Mapping[str, Any] | None) -> str:
    """What :func:`random_inputs` draws for this run, in words."""
    ranges = input_ranges(meta)
    if ranges:
        return "random inputs uniform in " + ", ".join(f"[{lo:g}, {hi:g}]" for lo, hi in ranges)
    if (meta or {}).get("input_stats"):
        return "random inputs at the run's input statistics"
    return "N(0, 1) random inputs"


def _at_stats(x: np.ndarray, stats: Mapping[str, Any]) -> np.ndarray:
    bc = (-1,) + (1,) * (x.ndim - 2)
    mean, std = (np.asarray(stats.get(k, d), np.float32) for k, d in (("mean", 0.0), ("std", 1.0)))
    mean = mean.reshape(bc) if mean.ndim and x.ndim >= 2 else mean
    std = std.reshape(bc) if std.ndim and x.ndim >= 2 else std
    return (x * std + mean).astype(np.float32)


def random_inputs(meta: Mapping[str, Any] | None, shapes: Sequence[Sequence[int]], batch: int,
                  rng: np.random.Generator | int = 0, stats: Mapping[str, Any] | None = None
                  ) -> tuple[np.ndarray, ...]:
    """One random float32 batch per input of per-sample shape ``shapes[i]`` (see the module docstring).

    Args:
        meta: the run's meta (``input_range``, ``input_stats``); ``None``: none known.
        shapes: per-sample shape of each input.
        batch: samples per batch.
        rng: a generator, or a seed.
        stats: per-channel ``mean``/``std`` to use when the run records neither range nor statistics (e.g.
            measured on a batch of its dataset).
    """
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(int(rng))
    meta = meta or {}
    ranges = input_ranges(meta, len(shapes))
    out = []
    for i, shape in enumerate(shapes):
        full = (int(batch), *[int(s) for s in shape])
        if ranges and i < len(ranges):
            lo, hi = ranges[i]
            out.append(gen.uniform(lo, hi, full).astype(np.float32))
            continue
        x = gen.standard_normal(full).astype(np.float32)
        st = meta.get("input_stats") or stats
        out.append(_at_stats(x, st) if (st and i == 0 and len(full) >= 3) else x)
    return tuple(out)
