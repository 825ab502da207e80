"""Figures and verdict of one output row, judged against float64.

``rel_l2(a, ref) = ‖a − ref‖₂ / ‖ref‖₂`` (float64 arithmetic). For a candidate output (an onnxruntime run, an adopted
model) with the source model's float32 and float64 outputs on the same inputs, :func:`figures` gives

- ``rel_l2``: candidate against torch float32 (what parity meant before: the fixed-tolerance figure),
- ``err_fp64``: candidate against float64,
- ``floor``: torch float32 against float64, the model's own float32 floor on these inputs,

and :func:`judge` decides: **pass when ``err_fp64 <= max(rtol, K * floor)``**. Why it holds: float64 carries 29 more
bits than float32, so on the same inputs its output is the exact function to far below any float32 error; the floor
is what float32 rounding costs this model on these inputs, and a file computed in float32 by another runtime
(other summation orders, fused kernels) has errors of the same size but not the same sign, so it lands within a
small multiple of the floor (:data:`K` = 4) when it computes the same function. A file that computes something else
(a wrong weight, a dropped term) is off by its own amount, which does not shrink with the floor: on a
well-conditioned model (floor ~1e-7) a weight tensor scaled by 1 + 1e-4 still fails ``rtol`` = 1e-5.

Any NaN/Inf in either output fails, named as such (comparisons with NaN are false: nothing else may decide).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["FLOAT32_EPS", "Figures", "K", "Verdict", "figures", "finite_count", "judge", "lost_digits", "max_rel",
           "nonfinite_message", "rel_l2"]

K = 4
"""A candidate may be this many times the model's own float32 floor away from float64 and still pass."""
FLOAT32_EPS = float(np.finfo(np.float32).eps)
"""float32 machine epsilon (2**-23): a relative error of this size is the last of float32's ~7 digits."""
RULES = ("rtol", "floor", "fp32", "nonfinite")
"""What decided a :class:`Verdict`: ``rtol`` (err_fp64 within rtol), ``floor`` (within K × floor, or failed the
larger of the two bounds when that was the floor's), ``fp32`` (no float64 reference: rel_l2 against float32 within
rtol, the old rule), ``nonfinite`` (a NaN/Inf in the candidate or in the model's own output)."""


def _np(a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu()
        a = a.double() if a.is_floating_point() else a
        return a.numpy()
    return np.asarray(a)


def finite_count(a: Any) -> int:
    """Number of NaN/Inf values in ``a`` (a tensor or an array)."""
    x = _np(a)
    return int((~np.isfinite(x)).sum()) if np.issubdtype(x.dtype, np.floating) else 0


def rel_l2(a: Any, ref: Any) -> float:
    """``‖a − ref‖ / ‖ref‖`` over the positions finite in both (``‖a − ref‖`` when ``ref`` is all zero)."""
    x, r = _np(a).astype(np.float64), _np(ref).astype(np.float64)
    both = np.isfinite(x) & np.isfinite(r)
    num = float(np.linalg.norm(x[both] - r[both]))
    den = float(np.linalg.norm(r[both]))
    return num / den if den > 0 else num


def max_rel(a: Any, ref: Any) -> float:
    """``max|a − ref| / max|ref|`` over the positions finite in both (adopt's figure)."""
    x, r = _np(a).astype(np.float64), _np(ref).astype(np.float64)
    both = np.isfinite(x) & np.isfinite(r)
    if not both.any():
        return 0.0
    diff = float(np.abs(x[both] - r[both]).max())
    scale = float(np.abs(r[both]).max())
    return diff / scale if scale > 0 else diff


METRICS = {"rel_l2": rel_l2, "max_rel": max_rel}


def lost_digits(floor: float) -> float:
    """Decimal digits of float32 this floor costs: ``log10(floor / FLOAT32_EPS)`` (0 for a floor at epsilon)."""
    return max(0.0, math.log10(floor / FLOAT32_EPS)) if floor > 0 and math.isfinite(floor) else 0.0


@dataclass(frozen=True)
class Figures:
    """One output row's figures (see the module docstring); ``err_fp64``/``floor`` are ``None`` without a float64
    reference. ``nonfinite``/``nonfinite_ref``: NaN/Inf values in the candidate / in torch float32."""

    rel_l2: float
    max_abs: float
    err_fp64: float | None
    floor: float | None
    nonfinite: int
    nonfinite_ref: int
    metric: str = "rel_l2"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def figures(out: Any, ref32: Any, ref64: Any = None, metric: str = "rel_l2") -> Figures:
    """The figures of candidate ``out`` against the model's float32 output ``ref32`` and float64 output ``ref64``
    (``None``: no float64 reference). ``metric``: ``rel_l2`` (check) or ``max_rel`` (adopt). Shapes must agree."""
    f = METRICS[metric]
    x, r = _np(out), _np(ref32)
    both = np.isfinite(x.astype(np.float64)) & np.isfinite(r.astype(np.float64))
    diff = np.abs(x.astype(np.float64)[both] - r.astype(np.float64)[both])
    err64 = floor = None
    if ref64 is not None and finite_count(ref64) == 0:
        err64, floor = f(x, ref64), f(r, ref64)
    return Figures(rel_l2=f(x, r), max_abs=float(diff.max()) if diff.size else 0.0, err_fp64=err64, floor=floor,
                   nonfinite=finite_count(x), nonfinite_ref=finite_count(r), metric=metric)


@dataclass(frozen=True)
class Verdict:
    """How one row was judged.

    Attributes:
        ok: the row passes.
        rule: what decided (:data:`RULES`).
        threshold: the bound the judged figure was held to (``max(rtol, K × floor)``, or ``rtol``).
        err: the judged figure (``err_fp64``, or ``rel_l2`` under the ``fp32`` rule; NaN for ``nonfinite``).
        floor: the model's float32 floor (``None`` without a float64 reference).
        reason: why the row failed (empty when it passed).
        warning: set when the floor exceeds ``rtol`` ("the model itself loses N digits in float32 here").
    """

    ok: bool
    rule: str
    threshold: float
    err: float
    floor: float | None
    reason: str = ""
    warning: str = ""
    k: float = K

    def describe(self) -> str:
        """The rule as applied, e.g. ``err_fp64 2.8e-03 <= 4 x floor 2.5e-03``."""
        if self.rule == "nonfinite":
            return self.reason
        name = "rel_l2" if self.rule == "fp32" else "err_fp64"
        rel = "<=" if self.ok else ">"
        bound = f"{self.k:g} x floor {self.floor:.1e}" if self.rule == "floor" else f"rtol {self.threshold:g}"
        return f"{name} {self.err:.1e} {rel} {bound}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def judge(fig: Figures, rtol: float, k: float = K) -> Verdict:
    """Pass when ``fig.err_fp64 <= max(rtol, k × fig.floor)``; without a float64 reference when ``fig.rel_l2 <= rtol``
    (rule ``fp32``); any NaN/Inf in either output fails (rule ``nonfinite``)."""
    floor = fig.floor
    warning = ""
    if floor is not None and floor > rtol:
        warning = f"the model itself loses {lost_digits(floor):.1f} digits in float32 here (floor {floor:.1e})"
    if fig.nonfinite_ref:
        return Verdict(False, "nonfinite", rtol, float("nan"), floor,
                       f"the model's own output holds {fig.nonfinite_ref} NaN/Inf", warning)
    if fig.nonfinite:
        return Verdict(False, "nonfinite", rtol, float("nan"), floor, f"{fig.nonfinite} NaN/Inf in the output",
                       warning)
    if fig.err_fp64 is None or floor is None:
        ok = fig.rel_l2 <= rtol
        return Verdict(ok, "fp32", rtol, fig.rel_l2, None, "" if ok else f"rel_l2 > {rtol:g}", warning)
    by_floor = k * floor
    if fig.err_fp64 <= rtol:
        return Verdict(True, "rtol", rtol, fig.err_fp64, floor, "", warning)
    if fig.err_fp64 <= by_floor:
        return Verdict(True, "floor", by_floor, fig.err_fp64, floor, "", warning, k)
    if by_floor > rtol:
        return Verdict(False, "floor", by_floor, fig.err_fp64, floor,
                       f"err_fp64 > {k:g} x floor {floor:.1e}", warning, k)
    return Verdict(False, "rtol", rtol, fig.err_fp64, floor, f"err_fp64 > {rtol:g}", warning)


def nonfinite_message(count: int, inputs: str) -> str:
    """The one line for a model whose own outputs are not finite on the inputs used (no parity figure then)."""
    return (f"the model's own outputs are not finite ({count} NaN/Inf) on {inputs}: no parity figure; give real "
            f"inputs (--dataset DATASET) or their range (--input-range LO,HI)")
