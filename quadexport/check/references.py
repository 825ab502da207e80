"""The torch side of a check: each input set's float32 outputs and, from a float64 copy of the model
(:class:`quadexport.parity.Float64Reference`), its float64 outputs.

Input sets on which the model's *own* float32 outputs are not finite give no parity figure: they are dropped, and
one error line says so and how to pass real or ranged inputs (a model that overflows on N(0, 1) inputs is not an
export bug, and a file that "matches" NaN with NaN proves nothing).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from quadexport.parity import Float64Reference, finite_count, nonfinite_message

log = logging.getLogger(__name__)

__all__ = ["References", "torch_references"]


@dataclass
class References:
    """Per kept input set: per chunk, per output, the float32 and (``None`` without one) float64 outputs."""

    sets: list[Any] = field(default_factory=list)
    fp32: list[list[list[np.ndarray]]] = field(default_factory=list)
    fp64: list[list[list[np.ndarray]] | None] = field(default_factory=list)
    reason: str | None = None

    def output(self, i: int, k: int, precision: str = "fp32") -> np.ndarray | None:
        """Output ``k`` of set ``i``, its chunks concatenated (``None``: no float64 reference)."""
        chunks = self.fp32[i] if precision == "fp32" else self.fp64[i]
        return None if chunks is None else np.concatenate([c[k] for c in chunks])


@torch.no_grad()
def _outputs(model: nn.Module, x: np.ndarray | tuple[np.ndarray, ...],
             flatten: Callable[[Any], list[torch.Tensor]]) -> list[np.ndarray]:
    xs = x if isinstance(x, tuple) else (x,)  # a model with several inputs: one array each
    return [o.detach().float().cpu().numpy() for o in flatten(model(*(torch.from_numpy(a) for a in xs)))]


def torch_references(model: nn.Module, sets: Sequence[Any], inputs: str, report: Any,
                     say: Callable[[str], None]) -> References:
    """Run every set's chunks through ``model`` (float32) and its float64 copy; drop (one error line) the sets on
    which the model's own outputs are not finite. ``inputs`` names the random inputs for that line."""
    from quadexport.exporter.outputs import flatten

    f64 = Float64Reference(model, flatten=flatten)
    refs = References(reason=f64.reason)
    bad: list[str] = []
    count = 0
    for s in sets:
        r32 = [_outputs(model, x, flatten) for x in s.chunks]
        n = sum(finite_count(o) for c in r32 for o in c)
        if n:
            bad.append(f"{s.source} batch {s.batch}" if s.source.startswith("random") else s.source)
            count += n
            continue
        r64 = [f64(x) for x in s.chunks]
        refs.sets.append(s)
        refs.fp32.append(r32)
        refs.fp64.append(None if any(r is None for r in r64)
                         else [[t.cpu().numpy() for t in r] for r in r64])  # type: ignore[union-attr]
    refs.reason = f64.reason
    if refs.reason:
        refs.fp64 = [None] * len(refs.sets)
        report.notes.append(f"no float64 reference ({refs.reason}): judged by rel_l2 against torch float32 <= "
                            f"rtol, as before")
        say(f"-[!] {report.notes[-1]}")
    report.env["reference"] = "float32" if refs.reason else "float64"
    if bad:
        where = ", ".join(bad)
        report.errors.append(nonfinite_message(count, f"{inputs} ({where})" if any(b.startswith("random")
                                                                                   for b in bad) else where))
        say(f"-[✗] {report.errors[-1]}")
    return refs
