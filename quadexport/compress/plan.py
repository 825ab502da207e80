"""Pruning decisions (step 3 of :mod:`quadexport.compress.prune`): which output channels stay quadratic, the
channel permutations that make them a block-aligned prefix of their group, and which branches a prefix drops."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

from quadexport.compress.stats import Fit, power_on_square, splittable
from quadexport.compress.structure import Group, Structure, describe, permutable

__all__ = ["LayerPlan", "Plan", "nchwc_block", "plan", "search_threshold"]

_log = logging.getLogger(__name__)


def nchwc_block() -> int:
    """onnxruntime's NCHWc channel block on this CPU: 16 with AVX-512, 8 otherwise (MlasNchwcGetBlockSize)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return 8
    return 16 if " avx512f" in flags else 8


@dataclass
class LayerPlan:
    """What happens to one quadratic layer.

    Attributes:
        name: module name.
        channels: output channels.
        own: channels whose own score asks for the quadratic terms (original indices).
        k: quadratic prefix after grouping/alignment (0: linear layer; ``channels``: fully quadratic).
        g, b: branches kept in the prefix.
        slot_fit: per prefix channel, which refit ("exact", "no_b", "lin", "no_g").
        error: worst score over the channels made (partly) linear.
    """

    name: str
    channels: int
    own: list[int]
    k: int
    g: bool = True
    b: bool = True
    slot_fit: list[str] = field(default_factory=list)
    error: float = 0.0

    @property
    def unchanged(self) -> bool:
        return self.k == self.channels and self.g and self.b

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.name, "channels": self.channels, "quadratic_own": len(self.own), "k": self.k,
                "g": self.g and self.k > 0, "b": self.b and self.k > 0, "max_error": self.error}


@dataclass
class Plan:
    """A pruning plan: per-layer decisions and per-group permutations (``perm[i]`` = original channel at new
    position ``i``)."""

    threshold: float
    align: int
    layers: dict[str, LayerPlan]
    perms: dict[str, list[int]]
    structure: Structure | None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "align": self.align,
                "layers": [p.to_dict() for p in self.layers.values()],
                "permuted_groups": sorted(g for g, p in self.perms.items() if p != list(range(len(p)))),
                "notes": self.notes}


def _round_up(n: int, align: int, cap: int) -> int:
    return min(cap, int(math.ceil(n / align) * align)) if n > 0 else 0


def plan(model: nn.Module, scores: dict[str, dict[str, Fit]], threshold: float, align: int | None = None,
         drop_branches: bool = True, structure: Structure | None = None,
         keep: Mapping[str, int] | None = None) -> Plan:
    """Decide per layer and group (see the module docstring).

    Args:
        model: the (uncompressed) model.
        scores: :func:`channel_scores` of its calibration statistics.
        threshold: a channel is quadratic when its ``lin`` score is ≥ this (0: nothing changes).
        align: round the quadratic prefix of conv layers up to a multiple of this (default: :func:`nchwc_block`);
            dense layers use 1.
        drop_branches: drop ``b``/``g`` from a layer's prefix when no prefix channel needs it.
        structure: the model's channel groups (default: :func:`~quadexport.compress.structure.describe`).
        keep: per-layer choice instead of the threshold (:mod:`quadexport.compress.select`): layer → number of its
            highest-scoring channels that stay quadratic (0 or missing: linear; its channel count: whole). Grouping and
            alignment apply as with a threshold, which then only decides branch drops.
    """
    align = nchwc_block() if align is None else int(align)
    structure = describe(model) if structure is None else structure
    notes: list[str] = []
    layers: dict[str, LayerPlan] = {}
    for name, sc in scores.items():
        lin = sc["lin"].score
        if keep is None:
            own = [int(i) for i in torch.nonzero(lin >= threshold).flatten()]
        else:
            own = sorted(int(i) for i in torch.argsort(lin, descending=True)[:max(0, int(keep.get(name, 0)))])
        layers[name] = LayerPlan(name, len(lin), own, k=len(own))
    perms: dict[str, list[int]] = {}
    in_group: set[str] = set()
    for grp in (structure.groups if structure is not None else []):
        in_group.update(_plan_group(model, grp, layers, scores, perms, align, notes))
    for name, lp in layers.items():
        if name in in_group:
            continue
        # not produced into a channel group (e.g. it writes the model's output): whole-layer decision
        lp.k = lp.channels if lp.own else 0
        if 0 < len(lp.own) < lp.channels:
            notes.append(f"{name}: its output channels cannot be reordered, layer kept whole")
    mods = dict(model.named_modules())
    for name, lp in layers.items():  # a gate can go only where the power branch reads x*x (not lowrank's z*z)
        _plan_branches(lp, scores[name], _perm_of(structure, perms, name) or list(range(lp.channels)), threshold,
                       drop_branches and power_on_square(mods[name]))
    return Plan(float(threshold), align, layers, perms, structure, notes)


def _align_of(m: nn.Module, align: int) -> int:
    return 1 if isinstance(m, nn.Linear) or hasattr(m, "in_features") else align


def _plan_group(model: nn.Module, grp: Group, layers: dict[str, LayerPlan], scores: dict[str, dict[str, Fit]],
                perms: dict[str, list[int]], align: int, notes: list[str]) -> list[str]:
    """Set ``k`` of the group's producers and the group's permutation (``perms[grp.name]``); returns the producers."""
    mods = dict(model.named_modules())
    n = grp.channels
    perms[grp.name] = list(range(n))
    prods = [p for p, _ in grp.producers if p in layers]
    partial = []
    for p in prods:
        lp = layers[p]
        if not splittable(mods[p]):
            lp.k = n if lp.own else 0
        elif 0 < len(lp.own) < n:
            partial.append(p)
        else:
            lp.k = len(lp.own)
    if not partial:
        return prods
    if permutable(model, grp):
        union = sorted(set().union(*(layers[p].own for p in partial)))
        k = _round_up(len(union), max(_align_of(mods[p], align) for p in partial), n)
        if k < n:
            best = torch.stack([scores[p]["lin"].score for p in partial]).max(0).values
            rest = sorted((i for i in range(n) if i not in set(union)), key=lambda i: -float(best[i]))
            front = sorted(union + sorted(rest[:k - len(union)]))
            perms[grp.name] = front + [i for i in range(n) if i not in set(front)]
        for p in partial:
            layers[p].k = k
    else:
        notes.append(f"group {grp.name} cannot be permuted ({getattr(grp, 'reason', '') or 'grouped branches'}): "
                     f"quadratic prefixes cover the highest quadratic channel index")
        for p in partial:
            lp = layers[p]
            lp.k = _round_up(max(lp.own) + 1, _align_of(mods[p], align), n)
    return prods


def _plan_branches(lp: LayerPlan, sc: dict[str, Fit], perm: list[int], threshold: float,
                   drop_branches: bool) -> None:
    """Branch drops and refit choices for the prefix of one layer; the error of its linear rest."""
    front = torch.tensor(perm[:lp.k], dtype=torch.long)
    rest = torch.tensor(perm[lp.k:], dtype=torch.long)
    lin_err = float(sc["lin"].score[rest].max()) if len(rest) else 0.0
    lp.slot_fit = ["exact"] * lp.k
    if lp.k and drop_branches:
        err_nob = torch.minimum(sc["no_b"].score[front], sc["lin"].score[front])
        err_nog = sc["no_g"].score[front]
        if float(err_nob.max()) < threshold:
            lp.b = False
            lp.slot_fit = ["no_b" if float(sc["no_b"].score[i]) <= float(sc["lin"].score[i]) else "lin"
                           for i in perm[:lp.k]]
            lin_err = max(lin_err, float(err_nob.max()))
        elif float(err_nog.max()) < threshold:
            lp.g = False
            lp.slot_fit = ["no_g"] * lp.k
            lin_err = max(lin_err, float(err_nog.max()))
    lp.error = lin_err


def _perm_of(structure: Structure | None, perms: dict[str, list[int]], layer: str) -> list[int]:
    if structure is not None:
        for g in structure.groups:
            if any(p == layer for p, _ in g.producers):
                return perms.get(g.name, list(range(g.channels)))
    return []  # filled by caller with identity


def search_threshold(model: nn.Module, scores: dict, target: float, cost: Callable[[Plan], float], align: int,
                     drop_branches: bool = True, max_steps: int = 40, log: Callable[[str], None] | None = None,
                     structure: Structure | None = None) -> tuple[float, list[dict[str, float]]]:
    """Smallest threshold whose plan has ``cost(plan) <= target`` (cost falls as the threshold rises), by bisection
    over the distinct channel scores. Returns ``(threshold, trace)``; each step goes to ``log`` (default: this
    module's logger at INFO)."""
    log = log or _log.info
    structure = describe(model) if structure is None else structure
    vals = sorted({float(v) for sc in scores.values() for v in sc["lin"].score.tolist()})
    cands = [0.0] + [math.nextafter(v, math.inf) for v in vals]
    trace: list[dict[str, float]] = []
    memo: dict[int, float] = {}

    def c(i: int) -> float:
        if i not in memo:
            memo[i] = cost(plan(model, scores, cands[i], align, drop_branches, structure))
            trace.append({"threshold": cands[i], "cost": memo[i]})
            log(f"  threshold {cands[i]:.4g}: cost {memo[i]:.3f}")
        return memo[i]

    if c(0) <= target:
        return cands[0], trace
    lo, hi = 0, len(cands) - 1
    if c(hi) > target:
        return cands[hi], trace
    steps = 0
    while hi - lo > 1 and steps < max_steps:
        mid = (lo + hi) // 2
        if c(mid) <= target:
            hi = mid
        else:
            lo = mid
        steps += 1
    return cands[hi], trace
