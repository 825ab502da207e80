"""Channel groups for compression: :func:`describe` reads a model's :class:`Structure` from its graph
(:func:`quadexport.compress.graph.discover`, torch-pruning's ``DependencyGraph``) - the same for zoo models,
quadratized torchvision/timm models and user modules; :func:`permutable` says whether a group's members allow a
channel permutation; :func:`example_input` makes the tracing input of a model."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from quadexport.compress.graph import GraphGroup, Member, discover
from quadexport.errors import UsageError
from quadexport.layers.quad import QuadLayer
from quadexport.zoo.structure import Group, Shortcut, Structure
from quadexport.runmeta import config_dict


def example_input(model: nn.Module, input_shape: Sequence[int] | None = None) -> torch.Tensor:
    """A one-sample input for tracing: ``input_shape`` ``(C, H, W)`` or, for models built by
    :func:`quadexport.create_model`, the shape in their ``quadexport_config``; a token model (``gpt``): int64 token
    ids of its context (or of length ``input_shape[-1]``)."""
    from quadexport.zoo.tokens import random_tokens, token_input

    tok = token_input(model)
    if tok is not None:
        return random_tokens(tok, 1, int(input_shape[-1]) if input_shape else tok.context)
    if input_shape is None:
        cfg = config_dict(model)
        if "in_channels" not in cfg:
            raise UsageError("tracing the model's channel groups needs its input shape (pass input_shape=(C, H, W))")
        size = cfg.get("input_size", [28, 28])
        input_shape = (int(cfg["in_channels"]), *(int(v) for v in size))
    g = torch.Generator().manual_seed(0)
    return torch.randn((1, *(int(v) for v in input_shape)), generator=g)


def describe(model: nn.Module, input_shape: Sequence[int] | None = None) -> Structure:
    """The :class:`Structure` of any model, traced on an :func:`example_input` (see
    :mod:`quadexport.compress.graph`)."""
    return discover(model, example_input(model, input_shape))


def members(group: Group) -> list[Member]:
    """The modules whose channels follow ``group``'s order: a traced :class:`GraphGroup`'s members, or (for a
    hand-written :class:`Group`) its producers, their BatchNorms and its consumers with one-to-one indices."""
    if isinstance(group, GraphGroup):
        return group.members
    ident = [[i] for i in range(group.channels)]
    out = [Member(p, "out", ident) for p, _ in group.producers]
    out += [Member(bn, "out", ident) for _, bn in group.producers if bn is not None]
    return out + [Member(c, "in", ident) for c in group.consumers]


def permutable(model: nn.Module, group: Group) -> bool:
    """Whether every member of ``group`` can have its channels permuted (quadratic layers with grouped/depthwise
    branches cannot: their output channel ``o`` is tied to input channel ``o // multiplier``; traced groups carry
    their own verdict)."""
    if isinstance(group, GraphGroup) and not group.resolved:
        return False
    mods = dict(model.named_modules())
    for name in [p for p, _ in group.producers] + group.consumers:
        m = mods[name]
        if isinstance(m, QuadLayer):
            if any(br.input not in ("x", "x2") for br in m.neuron_type.branches):
                return False  # e.g. lowrank: its power branch reads the bottleneck, whose input channels are mixed
            for br in m.neuron_type.branches:
                if getattr(getattr(m, br.name), "groups", 1) != 1:
                    return False
        elif getattr(m, "groups", 1) != 1:
            return False
        elif not isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return False
    return True


__all__ = ["Group", "GraphGroup", "Member", "Shortcut", "Structure", "describe", "example_input", "members",
           "permutable"]
