"""Baselines of a quadratic model: its ReLU twin (same builder and depth) and the MAC-matched ReLU model.

The MAC-matched model is found with the zoo's metadata (:func:`quadexport.zoo.get_model_info`): in a family with
several members (``list_models(family=...)``, e.g. ``resnet8`` … ``resnet110``) the member whose MACs are closest to
the quadratic model's (QResNet20 ↔ ResNet56); in a one-member family with a width knob (``ModelInfo.width_arg``,
e.g. ``mlp``, ``cnn``) the ReLU twin widened until its MACs match.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence

import torch
from torch import nn

from quadexport.bench.models import BenchModel, _build, _load_entry, _make, _source_run, _zoo_kwargs, _zoo_macs
from quadexport.errors import UsageError
from quadexport.zoo import ModelInfo, get_model_info, list_models

__all__ = ["mac_matched_baseline", "resolve_models"]

Pair = tuple[str, str, str]
"""``(quadratic id, baseline id, role)`` with role ``twin`` or ``mac_matched``."""


def _info(name: str) -> ModelInfo | None:
    try:
        return get_model_info(name)
    except UsageError:
        return None


def mac_matched_baseline(quad: BenchModel, gen: torch.Generator | None = None,
                         build: Callable[..., nn.Module] | None = None) -> tuple[nn.Module | None, str]:
    """The ReLU model whose MACs are closest to ``quad``'s, and a note saying how it was chosen.

    Families with several zoo members (``resnet8`` … ``resnet110``): the member with the closest MACs (the twin is
    refused - then there is no larger member). Families with one member and a width knob (``mlp``, ``cnn``): the
    ReLU twin widened to the closest MACs. Otherwise ``(None, reason)``.
    """
    gen = gen or torch.Generator().manual_seed(0)
    if build is None:
        def build(name: str, shp: tuple[int, ...], **kw: Any) -> nn.Module:
            return _build(name, "relu", shp, gen, **kw)
    info = _info(quad.name)
    if info is None:
        return None, f"{quad.name} is not a zoo model; MAC-matched baseline skipped"
    members = list_models(family=info.family)
    if len(members) > 1:
        return _closest_member(quad, info, members, build)
    return _widened(quad, info, build)


def _closest_member(quad: BenchModel, info: ModelInfo, members: list[str], build: Callable[..., nn.Module]
                    ) -> tuple[nn.Module | None, str]:
    shape, kw = tuple(quad.input_shape), _zoo_kwargs(quad)
    fkw = tuple(sorted((k, v) for k, v in kw.items() if k != info.width_arg))
    macs = {n: _zoo_macs(n, "relu", shape, fkw) for n in members}
    best = min(members, key=lambda n: abs(macs[n] - quad.macs))
    if best == quad.name:
        return None, (f"no {info.family} in the zoo has MACs closer to {quad.id}'s {quad.macs / 1e6:.1f}M than its "
                      f"twin; MAC-matched baseline skipped")
    return build(best, shape, **dict(fkw)), (
        f"zoo {info.family} with the closest MACs ({macs[best] / 1e6:.2f}M vs {quad.macs / 1e6:.2f}M "
        f"among {', '.join(members)})")


def _widened(quad: BenchModel, info: ModelInfo, build: Callable[..., nn.Module]) -> tuple[nn.Module | None, str]:
    """Binary search of the width whose ReLU MACs are closest to the quadratic model's (MACs grow with width)."""
    shape, kw, arg = tuple(quad.input_shape), _zoo_kwargs(quad), info.width_arg
    base = kw.get(arg, info.default_width) if arg else None
    if not isinstance(base, int):
        return None, f"{quad.name} has no other depth in the zoo and no width to widen; MAC-matched baseline skipped"

    def macs_at(w: int) -> int:
        return _zoo_macs(quad.name, "relu", shape, tuple(sorted({**kw, arg: w}.items())))

    try:
        if macs_at(base) >= quad.macs:
            return None, f"the ReLU {quad.name} already has >= the quadratic MACs; MAC-matched baseline skipped"
        lo, hi = base, base * 2
        while macs_at(hi) < quad.macs:
            lo, hi = hi, hi * 2
            if hi > base * 256:
                return None, f"widening {quad.name} does not reach {quad.macs} MACs; MAC-matched baseline skipped"
        while hi - lo > 1:  # macs_at(lo) < target <= macs_at(hi)
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if macs_at(mid) < quad.macs else (lo, mid)
        w = lo if abs(macs_at(lo) - quad.macs) <= abs(macs_at(hi) - quad.macs) else hi
    except (TypeError, ValueError) as e:
        return None, f"cannot widen {quad.name} ({e}); MAC-matched baseline skipped"
    m = build(quad.name, shape, **{**kw, arg: w})
    return m, (f"ReLU {quad.name} widened from {arg} {base} to {w} to match MACs "
               f"({macs_at(w) / 1e6:.3f}M vs {quad.macs / 1e6:.3f}M)")


class _Models:
    """The ordered, de-duplicated model list of a run (a given trained model beats a built one of the same id)."""

    def __init__(self) -> None:
        self.models: list[BenchModel] = []
        self.by_id: dict[str, BenchModel] = {}

    def add(self, m: BenchModel) -> BenchModel:
        old = self.by_id.get(m.id)
        if old is not None:
            if old.source == "zoo" and m.source != "zoo":
                self.models[self.models.index(old)] = m
                self.by_id[m.id] = m
                return m
            if not (m.source != "zoo" and old.source != "zoo" and m.source != old.source):
                return old
            k = 2
            while f"{m.id}#{k}" in self.by_id:
                k += 1
            m.id = f"{m.id}#{k}"
        self.models.append(m)
        self.by_id[m.id] = m
        return m


def _twin(q: BenchModel, acc: _Models, build: Callable[..., nn.Module], gen: torch.Generator) -> BenchModel:
    """The ReLU twin of ``q``: for an adopted run (``quadexport adopt``) the network its authors compare against,
    derived from its trained weights (:func:`quadexport.transforms.adopted.relu_twin`); for a quadratized model the model
    it came from (its source run dir when recorded, else its source architecture); for a zoo model the same builder
    and depth with ``neuron="relu"``."""
    if "adopt" in q.config:  # an adopted run: its own trained weights, each neuron cut to its r branch
        from quadexport.transforms.adopted import relu_twin

        tm = relu_twin(q.module).eval()
        tm.quadexport_config = {**q.module.quadexport_config, "neuron": "relu"}
        return acc.add(_make(tm, "twin", q.input_shape, note=(
            f"ReLU twin derived from {q.id}: each adopted neuron replaced by its r branch (or first factor) with "
            f"the trained weights, the rest of the network unchanged")))
    src = _source_run(q)
    if src is not None:
        m = _load_entry(src, "relu", q.input_shape, gen)
        m.role, m.note = "twin", f"the run {q.id} was quadratized from"
        return acc.add(m)
    what = "source architecture" if "quadratize" in q.config else "ReLU twin"
    tm = build(q.name, q.input_shape, **_zoo_kwargs(q))
    return acc.add(_make(tm, "twin", q.input_shape, note=f"{what} of {q.id} (same builder and depth)"))


def resolve_models(entries: Sequence[str], neuron: str, shape: tuple[int, ...] | None, baselines: bool,
                   gen: torch.Generator) -> tuple[list[BenchModel], list[Pair], list[str]]:
    """Load the given models, add baselines, pair them. Returns (models, pairs (quad id, base id, role), notes)."""
    acc = _Models()
    notes: list[str] = []
    built: dict[Any, nn.Module] = {}

    def build(name: str, shp: tuple[int, ...], **kw: Any) -> nn.Module:
        key = (name, tuple(shp), json.dumps(kw, sort_keys=True, default=str))  # options may hold lists
        if key not in built:
            built[key] = _build(name, "relu", shp, gen, **kw)
        return built[key]

    for e in entries:
        acc.add(_load_entry(str(e), neuron, shape, gen))
    given = list(acc.models)
    pairs: list[Pair] = []
    for q in (m for m in given if m.is_quadratic):
        twin = next((m for m in given if not m.is_quadratic and m.label == q.label), None)
        if twin is None and baselines:
            twin = _twin(q, acc, build, gen)
        if twin is not None:
            pairs.append((q.id, twin.id, "twin"))
        others = [m for m in given if not m.is_quadratic and m.label != q.label]
        pairs += [(q.id, o.id, "mac_matched") for o in others]
        if not others and baselines:
            mm, note = mac_matched_baseline(q, gen, build=build)
            if mm is None:
                notes.append(f"{q.id}: {note}")
            else:
                b = acc.add(_make(mm, "mac_matched", q.input_shape, note=f"MAC-matched to {q.id}: {note}"))
                pairs.append((q.id, b.id, "mac_matched"))
    rank = {"quadratic": 0, "twin": 1, "mac_matched": 2, "relu": 3}
    for m in acc.models:
        roles = [r for (_, b, r) in pairs if b == m.id]
        if roles and not m.is_quadratic:
            m.role = min(roles, key=rank.__getitem__)
    return acc.models, pairs, notes
