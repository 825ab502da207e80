"""The result of a parity check: one :class:`CheckLine` per comparison, gathered in a :class:`CheckReport`, and
:func:`compare`, the metrics of one output against its torch references (float32 and float64) and its verdict
(:func:`quadexport.parity.judge`: ``err_fp64 <= max(rtol, K × floor)``)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from quadexport.parity import K, figures, judge
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
    err_fp64: float | None = None
    floor: float | None = None
    rule: str = ""
    threshold: float | None = None
    warning: str = ""

    def format(self) -> str:
        mark = "✓" if self.ok else "✗"
        rt = f" [{self.runtime}]" if self.runtime else ""
        out = f" {self.output}" if self.output != "logits" else ""
        s = (f"-[{mark}] {LEVEL_NAMES.get(self.opt_level, self.opt_level)}{rt} batch {self.batch} {self.source}{out}: "
             f"rel_l2 {self.rel_l2:.1e}")
        if self.err_fp64 is not None:
            s += f" vs_fp64 {self.err_fp64:.1e} floor {self.floor:.1e}"
        s += f" max_abs {self.max_abs:.1e} nan/inf {self.nan_inf}"
        if self.top1 is not None:
            s += f" top1 {100 * self.top1:.2f}%"
        if self.argmax is not None:
            s += f" argmax {100 * self.argmax:.2f}%"
        if self.accuracy is not None:
            s += f" acc {100 * self.accuracy:.2f}%"
        if self.rule in ("rtol", "floor", "fp32"):
            bound = f"{K} x floor" if self.rule == "floor" else "rtol"
            s += f" [{'<=' if self.ok else '>'} {bound}{' vs float32' if self.rule == 'fp32' else ''}]"
        s += f"  ({self.reason})" if self.reason else ""
        return s + (f"  [!] {self.warning}" if self.warning else "")


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
        env: library versions, kernel library, model metadata; ``env["reference"]``: ``float64`` when the lines
            were judged against the model run in float64, ``float32`` when it cannot run so (a note says why).
        k: the multiple of the model's float32 floor a line may be from float64 (:data:`quadexport.parity.K`).
    """

    onnx_path: str
    provider: str
    rtol: float
    atol: float | None
    lines: list[CheckLine] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    env: dict[str, Any] = field(default_factory=dict)
    k: float = K

    @property
    def ok(self) -> bool:
        return bool(self.lines) and not self.errors and all(line.ok for line in self.lines)

    @property
    def worst_rel_l2(self) -> float:
        vals = [line.rel_l2 for line in self.lines]
        return max(vals) if vals else float("nan")

    @property
    def worst_err_fp64(self) -> float | None:
        vals = [line.err_fp64 for line in self.lines if line.err_fp64 is not None]
        return max(vals) if vals else None

    @property
    def worst_floor(self) -> float | None:
        vals = [line.floor for line in self.lines if line.floor is not None]
        return max(vals) if vals else None

    def _rule(self) -> str:
        if self.worst_floor is None:
            return f"rtol {self.rtol:g}"
        by_floor = sum(line.rule == "floor" and line.ok for line in self.lines)
        return (f"rtol {self.rtol:g} or {self.k:g} x float32 floor (worst {self.worst_floor:.1e}) vs float64"
                + (f"; {by_floor} passed by the floor" if by_floor else ""))

    def summary(self) -> str:
        failed = sum(not line.ok for line in self.lines) + len(self.errors)
        if self.ok:
            fp64 = f", worst vs_fp64 {self.worst_err_fp64:.1e}" if self.worst_err_fp64 is not None else ""
            return (f"-[✓] all {len(self.lines)} checks passed (worst rel_l2 {self.worst_rel_l2:.1e}{fp64}; "
                    f"{self._rule()})")
        return f"-[✗] {failed} of {len(self.lines) + len(self.errors)} checks failed ({self._rule()})"

    def format(self) -> str:
        """The whole report as text: hard failures, one line per comparison, notes, then the summary."""
        out = [f"-[✗] {e}" for e in self.errors] + [line.format() for line in self.lines]
        out += [f"-[!] {n}" for n in self.notes]
        return "\n".join(out + [self.summary()])

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "onnx_path": self.onnx_path, "provider": self.provider, "rtol": self.rtol,
                "atol": self.atol, "worst_rel_l2": _json_float(self.worst_rel_l2), "k": self.k,
                "worst_err_fp64": _json_float(self.worst_err_fp64), "worst_floor": _json_float(self.worst_floor),
                "reference": self.env.get("reference"), "errors": self.errors,
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
            classes: bool = False, ref64: np.ndarray | None = None) -> dict[str, Any]:
    """Metrics and verdict of one output against the torch references.

    Args:
        ref: the torch float32 output.
        ref64: the torch float64 output on the same inputs (``None``: no float64 reference, the old rule
            ``rel_l2 <= rtol`` decides).
        classes: the output is a dense class map ``[N, C>1, ...]``: also report pixel-wise argmax agreement.

    Returns:
        dict with ``rel_l2`` (against float32), ``err_fp64`` (against float64), ``floor`` (torch float32 against
        float64), ``max_abs``, ``nan_inf``, ``nan_inf_torch``, ``top1`` (fraction of rows whose argmax agrees, for
        ``[N, C>1]`` outputs, else ``None``), ``argmax`` (fraction of positions whose class agrees, for ``classes``
        outputs, else ``None``), ``ok``, ``reason``, ``rule`` (what decided), ``threshold`` and ``warning``. Any
        NaN/Inf in either output fails.
    """
    if out.shape != ref.shape:
        return {"rel_l2": float("inf"), "max_abs": float("inf"), "nan_inf": 0, "nan_inf_torch": 0, "top1": None,
                "argmax": None, "ok": False, "reason": f"shape {out.shape} != torch {ref.shape}", "err_fp64": None,
                "floor": None, "rule": "", "threshold": rtol, "warning": ""}
    fig = figures(out, ref, ref64)
    verdict = judge(fig, rtol)
    out64, ref64_ = out.astype(np.float64), ref.astype(np.float64)
    fo, fr = np.isfinite(out64), np.isfinite(ref64_)
    top1 = None
    if out.ndim == 2 and out.shape[1] > 1:
        top1 = float((np.argmax(np.where(fo, out64, -np.inf), 1) == np.argmax(np.where(fr, ref64_, -np.inf), 1)
                      ).mean())
    argmax = None
    if classes and out.ndim >= 3 and out.shape[1] > 1:
        argmax = float((np.argmax(np.where(fo, out64, -np.inf), 1) == np.argmax(np.where(fr, ref64_, -np.inf), 1)
                        ).mean())
    reasons = [verdict.reason] if verdict.reason else []
    if atol is not None and not fig.max_abs <= atol:
        reasons.append(f"max_abs > {atol:g}")
    return {"rel_l2": fig.rel_l2, "max_abs": fig.max_abs, "nan_inf": fig.nonfinite, "nan_inf_torch": fig.nonfinite_ref,
            "top1": top1, "argmax": argmax, "ok": not reasons, "reason": "; ".join(reasons),
            "err_fp64": fig.err_fp64, "floor": fig.floor, "rule": verdict.rule, "threshold": verdict.threshold,
            "warning": verdict.warning}
