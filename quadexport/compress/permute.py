"""Channel permutation of a model's channel groups (the model computes the same function) and the option-A
shortcut rewrite to :class:`~quadexport.layers.mixed.PermShortcut`."""

from __future__ import annotations

import torch
from torch import nn

from quadexport.compress.structure import Structure, describe, permutable
from quadexport.errors import UsageError
from quadexport.layers.mixed import PermShortcut
from quadexport.layers.quad import QuadLayer
from quadexport.zoo._prune import set_module as _set

Tensor = torch.Tensor

__all__ = ["conv_shortcuts", "permute_model"]


@torch.no_grad()
def _permute_out(m: nn.Module, perm: Tensor) -> None:
    mods = [getattr(m, b.name) for b in m.neuron_type.branches] if isinstance(m, QuadLayer) else [m]
    for lin in mods:
        lin.weight.copy_(lin.weight[perm])
        if lin.bias is not None:
            lin.bias.copy_(lin.bias[perm])


@torch.no_grad()
def _permute_in(m: nn.Module, perm: Tensor) -> None:
    mods = [getattr(m, b.name) for b in m.neuron_type.branches] if isinstance(m, QuadLayer) else [m]
    for lin in mods:
        lin.weight.copy_(lin.weight[:, perm])


@torch.no_grad()
def _permute_bn(bn: nn.Module, perm: Tensor) -> None:
    for key in ("weight", "bias", "running_mean", "running_var"):
        t = getattr(bn, key, None)
        if t is not None:
            t.copy_(t[perm])


def permute_model(model: nn.Module, perms: dict[str, list[int]], structure: Structure | None = None) -> nn.Module:
    """Permute channel groups in place (``perms[group] = [original channel at each new position]``); the model
    computes the same function. Option-A shortcuts touching a permuted stream become :class:`PermShortcut`.

    Returns:
        ``model``.
    """
    structure = structure or describe(model)
    if structure is None:
        raise UsageError("channel permutation needs a model of known structure (CIFAR ResNet, cnn, mlp)")
    ident = {g.name: list(range(g.channels)) for g in structure.groups}
    full = {**ident, **perms}
    for grp in structure.groups:
        perm = full[grp.name]
        if perm == ident[grp.name]:
            continue
        if sorted(perm) != ident[grp.name]:
            raise UsageError(f"perms[{grp.name!r}] is not a permutation of range({grp.channels})")
        if not permutable(model, grp):
            raise UsageError(f"group {grp.name} has grouped/depthwise layers and cannot be permuted")
        p = torch.tensor(perm, dtype=torch.long)
        for layer, bn in grp.producers:
            _permute_out(model.get_submodule(layer), p)
            if bn is not None:
                _permute_bn(model.get_submodule(bn), p)
        for layer in grp.consumers:
            _permute_in(model.get_submodule(layer), p)
    for sc in structure.shortcuts:
        if full[sc.src] == ident[sc.src] and full[sc.dst] == ident[sc.dst]:
            continue
        _set(model, sc.name, PermShortcut(sc.in_channels, sc.out_channels, sc.stride)
             .set_mapping(sc.pad, full[sc.src], full[sc.dst]))
    return model


def conv_shortcuts(model: nn.Module, structure: Structure | None = None) -> nn.Module:
    """Replace every option-A shortcut (``Slice`` + ``Pad`` in ONNX) of a CIFAR ResNet by the equivalent fixed 1×1
    strided conv (:class:`PermShortcut` with identity channel order), in place. Exact; works on ReLU models too."""
    structure = structure or describe(model)
    if structure is None:
        raise UsageError("conv shortcuts need a model of known structure (CIFAR ResNet)")
    for sc in structure.shortcuts:
        if not isinstance(model.get_submodule(sc.name), PermShortcut):
            _set(model, sc.name, PermShortcut(sc.in_channels, sc.out_channels, sc.stride)
                 .set_mapping(sc.pad, list(range(sc.in_channels)), list(range(sc.out_channels))))
    return model
