"""Calibration statistics and channel scores of quadratic-term pruning (steps 1–2 of :mod:`quadexport.compress.prune`).

- :func:`collect_stats`: on real training images, every Fan-form quadratic layer's branch outputs ``R = r(x)``,
  ``P = r(x)·g(x)`` and ``B = b(x·x)`` per output channel as means and covariances (float64).
- :func:`channel_scores`: per channel, the RMS residual (relative to ``std(Y)``) of the best least-squares refit of
  ``Y = P + B`` with a reduced set of terms (``lin``: ``{R}``; ``no_b``: ``{P}``; ``no_g``: ``{R, B}``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from quadexport.layers.quad import QuadLayer

Tensor = torch.Tensor
CONSTANT_TOL = 1e-9
"""A term (or ``Y``) whose variance over the calibration data is at most this fraction of its mean square is constant
there. ``E[X²] − E[X]²`` in float64 leaves ~1e-16·E[X²] of cancellation noise, of either sign, for a channel that
never varies (a dead input channel; a depthwise conv on a 1×1 map): solving the refit on that noise gave NaN or
arbitrary coefficients, and the all-linear candidate of a compress search went NaN (issue #29). A constant term's
coefficient is not identifiable: it gets 0 and the shift carries its mean (exact on the calibration data)."""
TERMS = ("R", "P", "B")
FIT_SETS = {"lin": ("R",), "no_b": ("P",), "no_g": ("R", "B")}

__all__ = ["FIT_SETS", "Fit", "LayerStats", "TERMS", "channel_scores", "collect_stats", "fit_terms", "is_fan_form",
           "power_on_square", "splittable"]


def is_fan_form(layer: nn.Module) -> bool:
    """A quadratic layer whose output is ``r*g + b(·)`` with ``r`` and ``g`` on the input: the layers we prune —
    ``fan``, ``fan_pw``, ``fan_dw`` (``b`` on ``x*x``) and ``lowrank`` (``b`` on the squared bottleneck; pruned as
    whole layers, see :func:`splittable`)."""
    if not isinstance(layer, QuadLayer):
        return False
    nt = layer.neuron_type
    names = {b.name: b for b in nt.branches}
    if set(names) != {"r", "g", "b"} or names["r"].input != "x" or names["g"].input != "x":
        return False
    gen = torch.Generator().manual_seed(0)
    o = {n: torch.randn(3, 4, generator=gen, dtype=torch.float64) for n in names}
    return bool(torch.allclose(nt.combine(o), o["r"] * o["g"] + o["b"]))


def power_on_square(layer: QuadLayer) -> bool:
    """The power branch reads ``x*x`` (Fan form proper): a layer may drop its gate and keep ``r + b(x*x)``."""
    return next(b.input for b in layer.neuron_type.branches if b.name == "b") == "x2"


def splittable(layer: QuadLayer) -> bool:
    """Output channels can be split between a quadratic prefix and a linear rest: every branch a plain ungrouped
    map of ``x`` or ``x*x`` (not grouped/depthwise, not the low-rank bottleneck, whose rows share one ``V``)."""
    def plain(m: nn.Module) -> bool:
        return isinstance(m, nn.Linear) or (isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and m.groups == 1)

    return power_on_square(layer) and all(plain(getattr(layer, b.name)) for b in layer.neuron_type.branches)


def branch_outputs(layer: QuadLayer, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(r, g, b)`` branch outputs of a Fan-form layer on input ``x`` (shared work computed once)."""
    nt = layer.neuron_type
    if hasattr(nt, "branch_outputs"):
        o = nt.branch_outputs(layer, x)
        return o["r"], o["g"], o["b"]
    return layer.r(x), layer.g(x), layer.b(x * x)



@dataclass
class LayerStats:
    """Per-channel first and second moments of ``R, P, B`` (float64), over batch and spatial positions."""

    n: int
    s1: Tensor  # (3, C)
    s2: Tensor  # (3, 3, C)

    @property
    def mean(self) -> Tensor:
        return self.s1 / self.n

    @property
    def cov(self) -> Tensor:
        m = self.mean
        return self.s2 / self.n - m[:, None, :] * m[None, :, :]


@torch.no_grad()
def collect_stats(model: nn.Module, x: Tensor, batch_size: int = 256,
                  layers: Iterable[str] | None = None) -> dict[str, LayerStats]:
    """Per-channel moments of ``R = r(x)``, ``P = r·g``, ``B = b(x·x)`` of every Fan-form quadratic layer (or
    ``layers``) on the calibration inputs ``x`` (model in eval mode; its mode is restored)."""
    mods = dict(model.named_modules())
    names = [n for n, m in mods.items() if is_fan_form(m)] if layers is None else list(layers)
    acc: dict[str, list] = {}

    def make_hook(name: str):
        def hook(m: QuadLayer, inp, out) -> None:
            r, g, b = branch_outputs(m, inp[0])
            p = r * g
            d = -1 if isinstance(m.r, nn.Linear) else 1  # a Linear's channels are its last dim (NHWC in ConvNeXt)
            c = r.shape[d]
            t = torch.stack([v.movedim(d, 0).reshape(c, -1) for v in (r, p, b)]).double()  # (3, C, M)
            s1 = t.sum(-1)
            s2 = torch.einsum("icm,jcm->ijc", t, t)
            if name not in acc:
                acc[name] = [0, torch.zeros_like(s1), torch.zeros_like(s2)]
            a = acc[name]
            a[0] += t.shape[-1]
            a[1] += s1
            a[2] += s2
        return hook

    handles = [mods[n].register_forward_hook(make_hook(n)) for n in names]
    was = model.training
    model.eval()
    try:
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size])
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return {n: LayerStats(*acc[n]) for n in names if n in acc}


@dataclass
class Fit:
    """Least-squares refit of one layer's channels with a reduced set of terms."""

    terms: tuple[str, ...]
    coef: Tensor  # (C, len(terms))
    shift: Tensor  # (C,)
    score: Tensor  # (C,) residual RMS / std(Y)


def fit_terms(st: LayerStats, terms: tuple[str, ...]) -> Fit:
    """Refit ``Y = P + B`` per channel as ``Σ coef_i · X_i + shift`` with ``X ∈ terms`` (subset of R, P, B); terms
    constant on the calibration data get coefficient 0 (:data:`CONSTANT_TOL`)."""
    idx = [TERMS.index(t) for t in terms]
    cov, mean = st.cov, st.mean  # (3,3,C), (3,C)
    c = cov.shape[-1]
    msq = st.s2.diagonal(dim1=0, dim2=1).T / st.n  # E[X_i²], (3, C)
    varying = (cov.diagonal(dim1=0, dim2=1).T > CONSTANT_TOL * msq)[idx].T.to(cov.dtype)  # (C, k)
    cov_xy = cov[:, 1, :] + cov[:, 2, :]  # Cov(X_i, Y), (3, C)
    var_y = (cov[1, 1] + 2 * cov[1, 2] + cov[2, 2]).clamp_min(0)
    msq_y = (st.s2[1, 1] + 2 * st.s2[1, 2] + st.s2[2, 2]) / st.n
    var_y = torch.where(var_y > CONSTANT_TOL * msq_y, var_y, torch.zeros_like(var_y))  # a constant Y: shift alone
    mean_y = mean[1] + mean[2]
    sxx = cov[idx][:, idx].permute(2, 0, 1) * varying[:, :, None] * varying[:, None, :]  # (C, k, k)
    sxx = sxx + torch.diag_embed(1 - varying)  # constant terms: coefficient 0
    sxy = cov_xy[idx].T * varying  # (C, k)
    eps = 1e-12 * (sxx.diagonal(dim1=1, dim2=2) * varying).sum(-1).clamp_min(1e-300)
    sxx = sxx + eps[:, None, None] * torch.eye(len(idx), dtype=sxx.dtype)
    coef = torch.linalg.solve(sxx, sxy.unsqueeze(-1)).squeeze(-1)  # (C, k)
    explained = (coef * sxy).sum(-1)
    resid = (var_y - explained).clamp_min(0)
    score = torch.where(var_y > 0, torch.sqrt(resid / var_y.clamp_min(1e-300)), torch.zeros(c, dtype=var_y.dtype))
    shift = mean_y - (coef * mean[idx].T).sum(-1)
    return Fit(terms, coef, shift, score)


def channel_scores(stats: dict[str, LayerStats]) -> dict[str, dict[str, Fit]]:
    """``{layer: {"lin": Fit, "no_b": Fit, "no_g": Fit}}``."""
    return {n: {k: fit_terms(st, t) for k, t in FIT_SETS.items()} for n, st in stats.items()}
