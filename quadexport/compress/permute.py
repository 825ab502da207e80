"""Channel permutation of a model's channel groups (the model computes the same function), its verification, and
the option-A shortcut rewrite to :class:`~quadexport.layers.mixed.PermShortcut`."""

from __future__ import annotations

import copy

import torch
from torch import nn

from quadexport.compress.taskloss import outputs_rel
from quadexport.compress.structure import Member, Structure, describe, members, permutable
from quadexport.errors import UsageError
from quadexport.layers.mixed import MixedQuad, PermShortcut
from quadexport.layers.quad import QuadLayer

Tensor = torch.Tensor

__all__ = ["conv_shortcuts", "permute_model", "verify_permutations"]


def _maps(m: nn.Module) -> list[nn.Module]:
    if isinstance(m, (QuadLayer, MixedQuad)):
        return [c for c in m.children() if isinstance(c, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    return [m]


def _tensors(m: nn.Module, dim: str) -> list[tuple[Tensor, int]]:
    """``(tensor, axis)`` pairs of ``m`` indexed by its output (``dim="out"``) or input channels."""
    out: list[tuple[Tensor, int]] = []
    if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.PReLU)):
        if dim == "out":
            out = [(t, 0) for t in (*m.parameters(recurse=False), *m.buffers(recurse=False))
                   if t is not None and t.dim() >= 1 and t.numel() > 1]
        return out
    for lin in _maps(m):
        if dim == "out":
            out += [(lin.weight, 0)] + ([(lin.bias, 0)] if lin.bias is not None else [])
        elif getattr(lin, "groups", 1) == 1:  # a depthwise conv's input follows its output rows
            out.append((lin.weight, 1))
    if isinstance(m, MixedQuad) and m.qbias is not None and dim == "out":
        raise UsageError("cannot permute a mixed layer's split; compress the original model")
    return out


@torch.no_grad()
def _permute_member(m: nn.Module, mb: Member, perm: list[int]) -> None:
    dst = torch.tensor([i for j in range(len(perm)) for i in mb.index[j]], dtype=torch.long)
    src = torch.tensor([i for j in perm for i in mb.index[j]], dtype=torch.long)
    for t, axis in _tensors(m, mb.dim):
        t.index_copy_(axis, dst, t.index_select(axis, src).clone())


def permute_model(model: nn.Module, perms: dict[str, list[int]], structure: Structure | None = None) -> nn.Module:
    """Permute channel groups in place (``perms[group] = [original channel at each new position]``); the model
    computes the same function. Option-A shortcuts touching a permuted stream become :class:`PermShortcut`.

    Returns:
        ``model``.
    """
    structure = describe(model) if structure is None else structure
    ident = {g.name: list(range(g.channels)) for g in structure.groups}
    full = {**ident, **{k: v for k, v in perms.items() if k in ident}}
    if set(perms) - set(ident):
        raise UsageError(f"no channel group named {sorted(set(perms) - set(ident))}")
    for grp in structure.groups:
        perm = full[grp.name]
        if perm == ident[grp.name]:
            continue
        if sorted(perm) != ident[grp.name]:
            raise UsageError(f"perms[{grp.name!r}] is not a permutation of range({grp.channels})")
        if not permutable(model, grp):
            raise UsageError(f"group {grp.name} cannot be permuted ({getattr(grp, 'reason', '') or 'grouped layers'})")
        for mb in members(grp):
            m = model.get_submodule(mb.name)
            if not isinstance(m, PermShortcut) and type(m).__name__ != "ShortcutA":
                _permute_member(m, mb, perm)
    for sc in structure.shortcuts:
        if full[sc.src] == ident[sc.src] and full[sc.dst] == ident[sc.dst]:
            continue
        model.set_submodule(sc.name, PermShortcut(sc.in_channels, sc.out_channels, sc.stride)
             .set_mapping(sc.pad, full[sc.src], full[sc.dst]))
    return model


@torch.no_grad()
def verify_permutations(model: nn.Module, structure: Structure, x: Tensor, tol: float = 1e-5) -> list[str]:
    """Permute each permutable group of a copy of ``model`` by a reversal and compare outputs on ``x``; a group whose
    permutation changes the function (a coupling the graph did not show, e.g. a channel op without a module) is
    marked unresolved. Returns ``"group: reason"`` notes of the groups so marked."""
    model = model.eval()
    ref = model(x)
    notes = []
    for grp in structure.groups:
        if not permutable(model, grp) or grp.channels < 2:
            continue
        rev = {grp.name: list(range(grp.channels))[::-1]}
        # a reversal is its own inverse: permute in place and back, unless a shortcut module would be replaced
        in_place = not any(grp.name in (sc.src, sc.dst) for sc in structure.shortcuts)
        work = model if in_place else copy.deepcopy(model)
        try:
            permute_model(work, rev, structure)
            err = outputs_rel(work(x), ref)  # any output structure
        except (RuntimeError, UsageError, IndexError) as e:
            err, why = float("inf"), str(e).splitlines()[0]
        else:
            why = f"permuting it changes the output (rel. {err:.1e})"
        finally:
            if in_place:
                try:
                    permute_model(work, rev, structure)  # undoes the members a failed call had permuted
                except (RuntimeError, UsageError, IndexError):
                    pass
        if not err <= tol:
            grp.resolved, grp.reason = False, why
            notes.append(f"{grp.name}: {why}")
    return notes


def conv_shortcuts(model: nn.Module, structure: Structure | None = None) -> nn.Module:
    """Replace every option-A shortcut (``Slice`` + ``Pad`` in ONNX) of a CIFAR ResNet by the equivalent fixed 1×1
    strided conv (:class:`PermShortcut` with identity channel order), in place. Exact; works on ReLU models too."""
    structure = describe(model) if structure is None else structure
    for sc in structure.shortcuts:
        if not isinstance(model.get_submodule(sc.name), PermShortcut):
            model.set_submodule(sc.name, PermShortcut(sc.in_channels, sc.out_channels, sc.stride)
                 .set_mapping(sc.pad, list(range(sc.in_channels)), list(range(sc.out_channels))))
    return model
