"""One parity row: a runtime's output against the torch reference (relative L2 error and max abs difference).

``rel_l2 = ‖out − ref‖₂ / ‖ref‖₂`` over the finite positions of both; a row passes when the shapes match, the
NaN/Inf positions agree and ``rel_l2 ≤ rtol``. Default tolerances per exported dtype are :data:`TOLERANCES`
(the same as ``quadexport check``); reduced-precision inference (OpenVINO bf16) uses :data:`BF16_RTOL`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from quadexport.runtimes.base import BF16_RTOL

__all__ = ["BF16_RTOL", "TOLERANCES", "ParityRow", "parity_row", "tolerance"]

TOLERANCES = {"float32": 1e-5, "float16": 1e-2}
"""Max relative L2 error per exported dtype (float32 files: 1e-5; float16 files: 1e-2)."""


def tolerance(dtype: str) -> float:
    """Default ``rtol`` for an exported dtype (metadata ``quadexport.dtype``; unknown values count as float32)."""
    return TOLERANCES.get(dtype, TOLERANCES["float32"])


@dataclass
class ParityRow:
    """One runtime × precision × batch comparison against torch."""

    runtime: str
    precision: str
    batch: int
    rel_l2: float
    max_abs: float
    ok: bool
    rtol: float
    reason: str = ""

    def format(self) -> str:
        mark = "✓" if self.ok else "✗"
        s = (f"-[{mark}] {self.runtime} {self.precision} batch {self.batch}: rel_l2 {self.rel_l2:.1e} "
             f"max_abs {self.max_abs:.1e} (rtol {self.rtol:g})")
        return s + (f"  ({self.reason})" if self.reason else "")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parity_row(runtime: str, precision: str, out: np.ndarray, ref: np.ndarray, rtol: float) -> ParityRow:
    """Compare ``out`` with ``ref`` (any float dtypes; computed in float64)."""
    batch = int(ref.shape[0]) if ref.ndim else 1
    if out.shape != ref.shape:
        return ParityRow(runtime, precision, batch, float("inf"), float("inf"), False, rtol,
                         f"shape {tuple(out.shape)} != torch {tuple(ref.shape)}")
    out64, ref64 = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    fo, fr = np.isfinite(out64), np.isfinite(ref64)
    both = fo & fr
    diff = np.abs(out64[both] - ref64[both])
    max_abs = float(diff.max()) if diff.size else 0.0
    den = float(np.linalg.norm(ref64[both]))
    rel = float(np.linalg.norm(diff)) / den if den > 0 else float(np.linalg.norm(diff))
    reasons = []
    if not np.array_equal(fo, fr):
        reasons.append(f"nan/inf {int((~fo).sum())} where torch has {int((~fr).sum())}")
    if not rel <= rtol:
        reasons.append(f"rel_l2 > {rtol:g}")
    return ParityRow(runtime, precision, batch, rel, max_abs, not reasons, rtol, "; ".join(reasons))
