"""Is a model conversion (adopt's rewrite, BN folded into branches) as accurate as its source? Judged against
float64: the converted model (float32) against the source run in float64, held to ``max(tolerance, K × floor)``
where the floor is the source's own float32 error on the same inputs (:func:`verify_conversion`).

The figure is adopt's ``max|new − ref| / max|ref|`` per output (the worst output decides). Any NaN/Inf in the
converted model's outputs fails; NaN/Inf in the *source's* outputs raises :class:`NonFiniteOutputs` (one line: no
figure means anything on such inputs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from quadexport.errors import UsageError
from quadexport.parity.reference import Float64Reference, as_tuple, flatten_outputs
from quadexport.parity.verdict import Verdict, figures, finite_count, judge, max_rel, nonfinite_message

__all__ = ["ConversionCheck", "NonFiniteOutputs", "eval_outputs", "verify_conversion"]


class NonFiniteOutputs(UsageError):
    """The source model's own outputs are NaN/Inf on the inputs used: nothing can be verified on them."""


@dataclass(frozen=True)
class ConversionCheck:
    """Result of :func:`verify_conversion`.

    Attributes:
        max_rel_diff: converted against source, both float32 (the figure reported before).
        err_fp64: converted (float32) against the source in float64 (``None``: no float64 reference).
        floor: the source's own float32 error against float64 (``None``: no float64 reference).
        verdict: the decision (:func:`quadexport.parity.judge`); ``verdict.rule`` says which rule decided.
        reference: why there is no float64 reference (``None`` when there is).
    """

    max_rel_diff: float
    err_fp64: float | None
    floor: float | None
    verdict: Verdict
    reference: str | None = None

    @property
    def ok(self) -> bool:
        return self.verdict.ok

    def summary(self) -> str:
        """``max rel diff 7.7e-06; vs float64 3.1e-06 <= 4 x the source's float32 floor 2.0e-06``."""
        s = f"max rel diff {self.max_rel_diff:.1e}"
        v = self.verdict
        if v.rule == "nonfinite":
            return f"{s}; {v.reason}"
        if self.err_fp64 is None:
            return f"{s} ({'<=' if v.ok else '>'} {v.threshold:g}; no float64 reference: {self.reference})"
        bound = (f"{v.k:g} x the source's float32 floor {self.floor:.1e}" if v.rule == "floor"
                 else f"{v.threshold:g}")
        return f"{s}; vs float64 {self.err_fp64:.1e} {'<=' if v.ok else '>'} {bound}"


def eval_outputs(model: nn.Module, inputs: Any, flatten: Callable[[Any], list[torch.Tensor]] | None = None
                 ) -> list[torch.Tensor]:
    """``model``'s outputs on ``inputs`` (a tensor or a tuple) in eval mode, its train/eval state restored."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return (flatten or flatten_outputs)(model(*as_tuple(inputs)))
    finally:
        model.train(was)


def verify_conversion(source: nn.Module, converted: nn.Module, inputs: Any, tolerance: float, *,
                      inputs_desc: str = "the inputs used",
                      flatten: Callable[[Any], list[torch.Tensor]] | None = None) -> ConversionCheck:
    """Judge ``converted`` against ``source`` on ``inputs`` (a batch, or a tuple of batches for several inputs).

    Raises:
        NonFiniteOutputs: the source's own outputs hold NaN/Inf on ``inputs`` (the message names ``inputs_desc``
            and how to pass real or ranged inputs).
    """
    ref = eval_outputs(source, inputs, flatten)
    bad = sum(finite_count(t) for t in ref)
    if bad:
        raise NonFiniteOutputs(nonfinite_message(bad, inputs_desc))
    new = eval_outputs(converted, inputs, flatten)
    if len(ref) != len(new) or any(a.shape != b.shape for a, b in zip(ref, new)):
        v = Verdict(False, "rtol", tolerance, float("inf"), None,
                    f"outputs differ in number or shape ({[tuple(t.shape) for t in new]} vs "
                    f"{[tuple(t.shape) for t in ref]})")
        return ConversionCheck(float("inf"), None, None, v)
    f64 = Float64Reference(source, flatten=flatten)
    ref64 = f64(inputs)
    rows = [figures(n, r, None if ref64 is None else r64, metric="max_rel")
            for n, r, r64 in zip(new, ref, ref64 if ref64 is not None else [None] * len(ref))]
    verdicts = [judge(f, tolerance) for f in rows]
    # the worst row decides: the first failing one, else the one closest to its bound
    worst = min(range(len(rows)), key=lambda i: (verdicts[i].ok, -_ratio(verdicts[i]))) if rows else None
    if worst is None:
        return ConversionCheck(0.0, None, None, Verdict(True, "rtol", tolerance, 0.0, None), f64.reason)
    fig, v = rows[worst], verdicts[worst]
    return ConversionCheck(max(max_rel(n, r) for n, r in zip(new, ref)), fig.err_fp64, fig.floor, v, f64.reason)


def _ratio(v: Verdict) -> float:
    return v.err / v.threshold if v.threshold > 0 and v.err == v.err else float("inf")
