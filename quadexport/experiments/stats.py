"""Mean ± sample standard deviation of per-seed results, and its text form for the report."""

from __future__ import annotations

import math
from typing import Any, Iterable


def mean_std(values: Iterable[float | None]) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value) of the non-None, finite values.

    Returns a JSON-ready ``{"n", "mean", "std"}`` (stored in the aggregated result files).
    """
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(xs)
    if n == 0:
        return {"n": 0, "mean": None, "std": None}
    mu = sum(xs) / n
    sd = math.sqrt(sum((x - mu) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    return {"n": n, "mean": mu, "std": sd}


def fmt_ms(stat: dict[str, Any], scale: float = 100.0, digits: int = 1) -> str:
    """``mean ± std`` (scaled, e.g. to percent), ``—`` when there are no values."""
    if not stat or stat.get("mean") is None:
        return "—"
    if stat["n"] == 1:
        return f"{stat['mean'] * scale:.{digits}f}"
    return f"{stat['mean'] * scale:.{digits}f} ± {stat['std'] * scale:.{digits}f}"
