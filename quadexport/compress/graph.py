"""Channel groups of any model, read from its autograd graph by torch-pruning's ``DependencyGraph``.

Every layer whose output channels we may reorder (a quadratic layer, a conv or linear map, an option-A shortcut)
roots a *pruning group*: the set of (module, dimension, indices) that must move together when one of its channels
moves - the BatchNorm after it, the other producers of a residual add, the consumers' input columns (with the
offsets of a concatenation or the ``C·H·W`` expansion of a flatten), depthwise convs and per-channel gates on the way.
:func:`discover` turns those groups into a :class:`~quadexport.compress.structure.Structure` whose groups carry a
:class:`Member` list; :func:`~quadexport.compress.permute.permute_model` permutes every member, so the model computes
the same function. A group with a member we cannot permute (a grouped quadratic branch, a parameter outside a known
layer, a norm over channel groups) is marked ``resolved=False`` with the reason; its layers are only ever made
wholly linear or kept whole.

Quadratic layers (:class:`~quadexport.layers.quad.QuadLayer`), :class:`~quadexport.layers.mixed.MixedQuad` and the
zoo's option-A shortcut are registered with torch-pruning as custom layers (their sub-modules are not traced).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from quadexport.layers.mixed import MixedQuad, PermShortcut
from quadexport.layers.quad import QuadLayer
from quadexport.zoo.structure import Group, Shortcut, Structure

log = logging.getLogger(__name__)

__all__ = ["GraphGroup", "Member", "discover"]

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.PReLU)
"""Per-channel modules whose parameters simply follow the channel order."""


@dataclass
class Member:
    """One module of a group: ``dim`` is ``"out"`` (output rows, norms, depthwise convs) or ``"in"`` (input
    columns); ``index[c]`` lists the module's indices that belong to group channel ``c``."""

    name: str
    dim: str
    index: list[list[int]]


@dataclass
class GraphGroup(Group):
    """A :class:`~quadexport.zoo.structure.Group` found in the graph, with every member module and whether it can be
    permuted (``reason`` says why not)."""

    members: list[Member] = field(default_factory=list)
    resolved: bool = True
    reason: str = ""


def _channels(m: nn.Module, out: bool) -> int | None:
    if out:
        v = getattr(m, "out_features", None) or getattr(m, "out_channels", None)
    else:
        v = getattr(m, "in_features", None) or getattr(m, "in_channels", None)
    return int(v) if v is not None else None


def _out_width(m: Any) -> int | None:
    """Output channels of a producing layer (``None`` for shortcuts, graph operations and unknown modules)."""
    return _channels(m, True) if isinstance(m, nn.Module) and not _is_shortcut(m) else None


def _pruner_class():
    import torch_pruning as tp

    class _Opaque(tp.pruner.BasePruningFunc):
        """Channel counts of a custom layer; the group is only read, never pruned."""

        TARGET_MODULES = None

        def prune_out_channels(self, layer: nn.Module, idxs: Any) -> nn.Module:
            raise NotImplementedError("quadexport reads pruning groups; it does not prune with torch-pruning")

        def prune_in_channels(self, layer: nn.Module, idxs: Any) -> nn.Module:
            raise NotImplementedError("quadexport reads pruning groups; it does not prune with torch-pruning")

        def get_out_channels(self, layer: nn.Module) -> int | None:
            return _channels(layer, True)

        def get_in_channels(self, layer: nn.Module) -> int | None:
            return _channels(layer, False)

    return _Opaque


def _custom_types(model: nn.Module) -> set[type]:
    from quadexport.zoo.resnet import ShortcutA

    types = {type(m) for m in model.modules() if isinstance(m, (QuadLayer, MixedQuad))}
    return types | {ShortcutA}


def _build(model: nn.Module, example: torch.Tensor):
    import torch_pruning as tp

    pruner = _pruner_class()()
    was = model.training
    try:
        with warnings.catch_warnings(), torch.enable_grad():
            warnings.simplefilter("ignore")
            dg = tp.DependencyGraph().build_dependency(
                model, example, customized_pruners={t: pruner for t in _custom_types(model)}, verbose=False)
    finally:
        model.train(was)
    return dg


def _is_shortcut(m: nn.Module) -> bool:
    from quadexport.zoo.resnet import ShortcutA

    return isinstance(m, (ShortcutA, PermShortcut))


def _producer_kind(m: nn.Module) -> bool:
    """A layer that writes a group's channels from other channels (a root of a group)."""
    if isinstance(m, (QuadLayer, MixedQuad)) or _is_shortcut(m):
        return True
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return m.groups == 1
    return isinstance(m, nn.Linear)


def _permutable_member(m: Any, dim: str, dg: Any) -> str:
    """Why ``m`` cannot be permuted along ``dim`` ("" if it can)."""
    import torch_pruning as tp

    if isinstance(m, nn.Parameter):
        return "a bare parameter follows its channels"
    if not isinstance(m, nn.Module) or type(m).__module__.startswith(tp.__name__):
        return ""  # graph operations (add, concat, slice, reshape...) have no parameters
    if isinstance(m, (QuadLayer, MixedQuad)):
        grouped = [n for n, c in m.named_children() if getattr(c, "groups", 1) != 1]
        return f"{type(m).__name__} with grouped branches ({', '.join(grouped)})" if grouped else ""
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        depthwise = m.groups == m.in_channels == m.out_channels
        return "" if m.groups == 1 or depthwise else f"grouped conv (groups={m.groups})"
    if isinstance(m, (nn.Linear,) + _NORMS) or _is_shortcut(m):
        return ""
    if not any(True for _ in m.parameters(recurse=False)) and not any(True for _ in m.buffers(recurse=False)):
        return ""
    return f"{type(m).__name__} is not a layer compression can permute"


def _group_of(dg: Any, model: nn.Module, root: nn.Module, names: dict[nn.Module, str]) -> GraphGroup | None:
    pruner = dg.get_pruner_of_module(root)
    n = pruner.get_out_channels(root)
    if not n:
        return None
    grp = dg.get_pruning_group(root, pruner.prune_out_channels, list(range(n)))
    g = GraphGroup(name=names[root], channels=int(n))
    seen: set[tuple[str, str]] = set()
    for item in grp.items:
        dep, idxs, roots = item.dep, list(item.idxs), list(getattr(item, "root_idxs", item.idxs))
        m = dep.target.module
        if type(m).__name__ == "_OutputOp" or (dep.target.outputs == [] and dg.is_out_channel_pruning_fn(dep.handler)):
            g.resolved, g.reason = False, "its channels are the model's output"
            continue
        dim = "out" if dg.is_out_channel_pruning_fn(dep.handler) else "in"
        width = _out_width(m) if dim == "out" and _producer_kind(m) else None
        if width is not None and width != n:  # another producer joined through an op torch-pruning reads as
            g.resolved = False                # elementwise, e.g. an inline option-A shortcut (F.pad over channels)
            g.reason = f"{names.get(m, dep.target.name)} has {width} channels, not {n} (joined through an op " \
                       f"that changes the channel count)"
            continue  # (a norm after a concatenation is wider than the group legitimately: kept, with offsets)
        why = _permutable_member(m, dim, dg)
        if why:
            g.resolved, g.reason = False, f"{names.get(m, dep.target.name)}: {why}"
        name = names.get(m) if isinstance(m, nn.Module) else None
        if name is None or (name, dim) in seen:
            continue
        seen.add((name, dim))
        index: list[list[int]] = [[] for _ in range(n)]
        for i, r in zip(idxs, roots):
            index[int(r)].append(int(i))
        if len({len(v) for v in index}) != 1:
            g.resolved, g.reason = False, f"{name}: uneven channel mapping"
        g.members.append(Member(name, dim, index))
        if _is_shortcut(m):
            continue  # a member; listed as a Shortcut between its two groups
        if dim == "out" and _producer_kind(m):
            g.producers.append((name, _bn_after(dg, m, names)))
        elif dim == "in" and _producer_kind(m):
            g.consumers.append(name)
    return g


def _bn_after(dg: Any, m: nn.Module, names: dict[nn.Module, str]) -> str | None:
    """The BatchNorm that alone reads ``m``'s output (folded into it, or given a linear layer's shift)."""
    outs = dg.module2node[m].outputs
    if len(outs) == 1 and isinstance(outs[0].module, nn.modules.batchnorm._BatchNorm):
        return names.get(outs[0].module)
    return None


def discover(model: nn.Module, example: torch.Tensor) -> Structure:
    """The channel groups of ``model`` (run once on ``example``, e.g. one input sample with its batch dimension).

    Groups are deduplicated (a residual stream is found once, whichever producer roots it); option-A shortcuts are
    listed as :class:`~quadexport.zoo.structure.Shortcut` between the group they read and the group they write.
    """
    dg = _build(model, example)
    names = {m: n for n, m in model.named_modules()}
    groups: list[GraphGroup] = []
    done: set[str] = set()
    for m in dg.module2node:
        if not isinstance(m, nn.Module) or m not in names or not _producer_kind(m) or names[m] in done:
            continue
        g = _group_of(dg, model, m, names)
        if g is None:
            continue
        done.update(p for p, _ in g.producers)
        if g.producers:
            g.name = g.producers[0][0] if len(g.producers) == 1 else f"stream:{g.producers[0][0]}"
            groups.append(g)
    groups.sort(key=lambda g: list(names.values()).index(g.producers[0][0]))
    return Structure(groups, _shortcuts(model, groups, names))


def _shortcuts(model: nn.Module, groups: list[GraphGroup], names: dict[nn.Module, str]) -> list[Shortcut]:
    from quadexport.zoo.resnet import ShortcutA

    src = {mb.name: g for g in groups for mb in g.members if mb.dim == "in"}
    dst = {mb.name: g for g in groups for mb in g.members if mb.dim == "out"}
    out = []
    for m, name in names.items():
        if isinstance(m, (ShortcutA, PermShortcut)) and name in src and name in dst:
            a, b = src[name], dst[name]
            pad = m.pad if isinstance(m, ShortcutA) else (b.channels - a.channels) // 2
            out.append(Shortcut(name, a.name, b.name, a.channels, b.channels, 2, pad))
    return out
