"""Which layers keep quadratic terms, chosen by measured cost per accuracy (``--select layers``, issue #13).

A global threshold keeps a channel wherever its score is high, so at a tight latency target it scatters a few
quadratic channels over many layers, and every partly quadratic layer pays a fixed price in onnxruntime (a split
conv, the gate and power convs, ``Mul``/``Add``/``Concat``, a ReLU that no longer fuses into the conv: see
docs/compression.md, "Where the cost of the first quadratic channels comes from"). At ResNet20's size that price,
not the MACs, decides the latency, so the search ends with every channel linear. This module decides per *layer*
instead, from two measurements per option, both taken from the all-linear model (the twin's graph, refitted):

- **benefit**: the validation loss the option saves when it is the only quadratic layer (all-linear model's loss −
  the loss with that one layer quadratic; the model is not fine-tuned for this);
- **cost**: the measured onnxruntime latency it adds, worst of the batch sizes (ratio to the ReLU twin − 1), all
  options timed interleaved in one run, and never less than the MACs it adds (noise floor).

Options per quadratic layer: ``whole`` (every channel quadratic, no split) and, where the layer is wider than the
alignment block, ``mixed`` (its ``align`` highest-scoring channels). A greedy knapsack then takes the move with the
best benefit per cost that still fits the budget ``target - 1`` (adding an option, or upgrading a layer from mixed to
whole), and the combined model is measured: while it is over the target, the least efficient move is undone.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Collection, Mapping

__all__ = ["Option", "Selection", "select_layers"]

_log = logging.getLogger(__name__)
_MIN_COST = 1e-3  # measured costs below this (noise) count as this much


@dataclass
class Option:
    """One way to keep quadratic terms in one layer.

    Attributes:
        layer: module name.
        kind: ``"whole"`` or ``"mixed"``.
        k: quadratic channels asked for (the layer's channel count for ``whole``).
        benefit: validation loss (nats) saved against the all-linear model, this layer alone quadratic.
        cost: latency ratio to the ReLU twin minus 1, this layer alone quadratic (worst batch size).
        chosen: part of the final selection.
    """

    layer: str
    kind: str
    k: int
    benefit: float
    cost: float
    chosen: bool = False

    @property
    def efficiency(self) -> float:
        return self.benefit / max(self.cost, _MIN_COST)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Selection:
    """The result: ``keep`` (layer → quadratic channels, for :func:`~quadexport.compress.plan.plan`), every option
    measured, the all-linear model's validation loss, and the verification steps (``{"keep", "cost"}``)."""

    keep: dict[str, int]
    options: list[Option]
    linear_loss: float
    trace: list[dict[str, Any]] = field(default_factory=list)
    cost: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"keep": dict(self.keep), "linear_val_loss": self.linear_loss, "cost": self.cost,
                "options": [o.to_dict() for o in self.options], "verify": list(self.trace)}


Keep = Mapping[str, int]


def candidate_options(channels: Mapping[str, int], align: int,
                      splittable: Collection[str] | None = None) -> list[tuple[str, str, int]]:
    """``(layer, kind, k)`` of every option: ``whole`` for each layer, ``mixed`` (k = ``align``) where wider and
    splittable (default: every layer)."""
    out = []
    for name, c in channels.items():
        out.append((name, "whole", int(c)))
        if c > align and (splittable is None or name in splittable):
            out.append((name, "mixed", int(align)))
    return out


def select_layers(channels: Mapping[str, int], align: int, target: float,
                  measure: Callable[[Keep], tuple[float, float]], costs: Callable[[list[Keep]], list[float]],
                  max_verify: int = 6, log: Callable[[str], None] | None = None,
                  splittable: Collection[str] | None = None) -> Selection:
    """Choose which layers keep quadratic terms under a cost target (see the module docstring).

    Args:
        channels: quadratic layer → output channels.
        align: channel count of a ``mixed`` option.
        target: the cost target (latency ratio to the ReLU twin).
        measure: ``(validation loss, MAC ratio to the ReLU twin)`` of the model built from a ``keep`` map (not
            fine-tuned); called once per option, so the caller can build each model once (and export it for
            ``costs``). An option's cost is never taken below its MAC increase: a short timing on a loaded machine
            can read an option as free, or cheaper than the all-linear model (measured on the 2-core machine: −0.10
            to +0.01 for layers whose MACs add 0.01–0.03).
        costs: measured cost ratios (to the ReLU twin) of the models built from several ``keep`` maps, timed
            together (interleaved).
        max_verify: combined-model measurements at most.
        splittable: the layers that can keep part of their channels quadratic (default: all; a ``lowrank`` layer
            cannot: whole or linear).
        log: progress lines (default: this module's logger).
    """
    log = log or _log.info
    cands = candidate_options(channels, align, splittable)
    base = measure({})[0]
    log(f"  all-linear validation loss {base:.4f}; measuring {len(cands)} options (loss, then latency)")
    measured = [measure({name: k}) for name, _, k in cands]
    twin_cost, *ratios = costs([{}] + [{name: k} for name, _, k in cands])
    options = [Option(name, kind, k, base - loss, max(ratio - twin_cost, mac_ratio - 1))
               for (name, kind, k), (loss, mac_ratio), ratio in zip(cands, measured, ratios, strict=True)]
    for o in sorted(options, key=lambda o: -o.efficiency):
        log(f"  {o.layer} {o.kind} k={o.k}: saves {o.benefit:+.4f} loss, costs {o.cost:+.3f}")
    budget = target - twin_cost
    moves = _greedy(options, budget)
    sel = Selection({}, options, base)
    while True:
        keep = _keep_of(moves)
        if not keep:
            sel.cost = twin_cost
            break
        measured = costs([keep])[0]
        sel.trace.append({"keep": dict(keep), "cost": measured})
        log(f"  {len(keep)} layer(s) quadratic: measured cost {measured:.3f} (target {target:g})")
        if measured <= target or len(sel.trace) >= max_verify:
            sel.cost = measured
            break
        moves.pop(min(range(len(moves)), key=lambda i: moves[i][2]))  # undo the least efficient move
    sel.keep = _keep_of(moves)
    for o in options:
        o.chosen = sel.keep.get(o.layer) == o.k
    return sel


def _greedy(options: list[Option], budget: float) -> list[tuple[str, Option, float]]:
    """Moves ``(layer, option, efficiency)`` by best benefit per cost within ``budget``: add a layer's option, or
    upgrade a layer from its ``mixed`` to its ``whole`` option (efficiency of the difference)."""
    chosen: dict[str, Option] = {}
    moves: list[tuple[str, Option, float]] = []
    spent = 0.0
    while True:
        best: tuple[float, Option, float] | None = None
        for o in options:
            if o.benefit <= 0:
                continue
            cur = chosen.get(o.layer)
            if cur is None:
                gain, extra = o.benefit, o.cost
            elif cur.kind == "mixed" and o.kind == "whole":
                gain, extra = o.benefit - cur.benefit, o.cost - cur.cost
            else:
                continue
            if gain <= 0 or spent + max(extra, 0.0) > budget:
                continue
            eff = gain / max(extra, _MIN_COST)
            if best is None or eff > best[0]:
                best = (eff, o, max(extra, 0.0))
        if best is None:
            return moves
        eff, o, extra = best
        chosen[o.layer] = o
        spent += extra
        moves.append((o.layer, o, eff))


def _keep_of(moves: list[tuple[str, Option, float]]) -> dict[str, int]:
    keep: dict[str, int] = {}
    for layer, o, _ in moves:  # later moves (upgrades) override earlier ones
        keep[layer] = o.k
    return keep
