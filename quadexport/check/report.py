"""The result of a parity check: one :class:`CheckLine` per comparison, gathered in a :class:`CheckReport`, and
:func:`compare`, the metrics of one output against its torch reference."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from quadexport.runtimes.base import LEVEL_NAMES

TOLERANCES = {"float32": 1e-5, "float16": 1e-2}
"""Default ``rtol`` (max relative L2 error) per exported dtype."""


@dataclass
class CheckLine:
    """One comparison (one runtime setting × input set × output): ``opt_level`` is the setting's label (an
    onnxruntime opt level, ``openvino-cpu f32``, ...), ``runtime`` its variant (``bodies``/``kernel``/empty)."""

    opt_level: str
    runtime: str
    batch: int
    source: str
    output: str
    rel_l2: float
    max_abs: float
    nan_inf: int
    nan_inf_torch: int
    top1: float | None
    ok: bool
    reason: str = ""
    accuracy: float | None = None
    argmax: float | None = None

    def format(self) -> str:
        mark = "✓" if self.ok else "✗"
        rt = f" [{self.runtime}]" if self.runtime else ""
        out = f" {self.output}" if self.output != "logits" else ""
        s = (f"-[{mark}] {LEVEL_NAMES.get(self.opt_level, self.opt_level)}{rt} batch {self.batch} {self.source}{out}: "
             f"rel_l2 {self.rel_l2:.1e} max_abs {self.max_abs:.1e} nan/inf {self.nan_inf}")
        if self.top1 is not None:
            s += f" top1 {100 * self.top1:.2f}%"
        if self.argmax is not None:
            s += f" argmax {100 * self.argmax:.2f}%"
        if self.accuracy is not None:
            s += f" acc {100 * self.accuracy:.2f}%"
        return s + (f"  ({self.reason})" if self.reason else "")


@dataclass
class CheckReport:
    """Result of :func:`check`.

    Attributes:
        onnx_path: the checked model.
        provider: execution provider.
        rtol: max relative L2 error used.
        atol: max abs difference used (``None``: not checked).
        lines: the comparisons.
        notes: things that were skipped or worth knowing (not failures).
        errors: hard failures outside the comparisons (a session that cannot be created, output mismatch).
        env: library versions, kernel library, model metadata.
    """

    onnx_path: str
    provider: str
    rtol: float
    atol: float | None
    lines: list[CheckLine] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    env: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.lines) and not self.errors and all(line.ok for line in self.lines)

    @property
    def worst_rel_l2(self) -> float:
        vals = [line.rel_l2 for line in self.lines]
        return max(vals) if vals else float("nan")

    def summary(self) -> str:
        failed = sum(not line.ok for line in self.lines) + len(self.errors)
        if self.ok:
            return (f"-[✓] all {len(self.lines)} checks passed (worst rel_l2 {self.worst_rel_l2:.1e}, "
                    f"rtol {self.rtol:g})")
        return f"-[✗] {failed} of {len(self.lines) + len(self.errors)} checks failed (rtol {self.rtol:g})"

    def format(self) -> str:
        """The whole report as text: hard failures, one line per comparison, notes, then the summary."""
        out = [f"-[✗] {e}" for e in self.errors] + [line.format() for line in self.lines]
        out += [f"-[!] {n}" for n in self.notes]
        return "\n".join(out + [self.summary()])

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "onnx_path": self.onnx_path, "provider": self.provider, "rtol": self.rtol,
                "atol": self.atol, "worst_rel_l2": _json_float(self.worst_rel_l2), "errors": self.errors,
                "notes": self.notes, "env": self.env,
                "lines": [{k: _json_float(v) for k, v in asdict(line).items()} for line in self.lines]}

    def save(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_dict` as JSON (atomically)."""
        from quadexport.runs.atomicfile import write_json

        return write_json(path, self.to_dict())


def _json_float(v: Any) -> Any:
    if isinstance(v, float) and not np.isfinite(v):
        return None if np.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def compare(out: np.ndarray, ref: np.ndarray, rtol: float, atol: float | None = None, *,
            classes: bool = False) -> dict[str, Any]:
    """Metrics of one output against the torch reference.

    Args:
        classes: the output is a dense class map ``[N, C>1, ...]``: also report pixel-wise argmax agreement.

    Returns:
        dict with ``rel_l2``, ``max_abs``, ``nan_inf``, ``nan_inf_torch``, ``top1`` (fraction of rows whose argmax agrees, for
        ``[N, C>1]`` outputs, else ``None``), ``argmax`` (fraction of positions whose class agrees, for ``classes``
        outputs, else ``None``), ``ok`` and ``reason``.
    """
    if out.shape != ref.shape:
        return {"rel_l2": float("inf"), "max_abs": float("inf"), "nan_inf": 0, "nan_inf_torch": 0, "top1": None,
                "argmax": None, "ok": False, "reason": f"shape {out.shape} != torch {ref.shape}"}
    out64, ref64 = out.astype(np.float64), ref.astype(np.float64)
    fo, fr = np.isfinite(out64), np.isfinite(ref64)
    both = fo & fr
    diff = np.abs(out64[both] - ref64[both])
    max_abs = float(diff.max()) if diff.size else 0.0
    den = float(np.linalg.norm(ref64[both]))
    num = float(np.linalg.norm(diff))
    rel = num / den if den > 0 else num
    top1 = None
    if out.ndim == 2 and out.shape[1] > 1:
        top1 = float((np.argmax(np.where(fo, out64, -np.inf), 1) == np.argmax(np.where(fr, ref64, -np.inf), 1)).mean())
    argmax = None
    if classes and out.ndim >= 3 and out.shape[1] > 1:
        argmax = float((np.argmax(np.where(fo, out64, -np.inf), 1) == np.argmax(np.where(fr, ref64, -np.inf), 1)
                        ).mean())
    reasons = []
    if not np.array_equal(fo, fr):
        reasons.append(f"nan/inf {int((~fo).sum())} where torch has {int((~fr).sum())}")
    if not rel <= rtol:
        reasons.append(f"rel_l2 > {rtol:g}")
    if atol is not None and not max_abs <= atol:
        reasons.append(f"max_abs > {atol:g}")
    return {"rel_l2": rel, "max_abs": max_abs, "nan_inf": int((~fo).sum()), "nan_inf_torch": int((~fr).sum()),
            "top1": top1, "argmax": argmax, "ok": not reasons, "reason": "; ".join(reasons)}

__all__ = ["CheckLine", "CheckReport", "LEVEL_NAMES", "TOLERANCES", "compare"]
