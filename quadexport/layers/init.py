"""Initialisation of quadratic layers, model-wide (the per-layer rule is :meth:`QuadLayer.reset_parameters`).

- :func:`relinear_init_layer` / :func:`relinear_init`: ReLinear (Fan et al., TNNLS 2023): ``W_g = 0, b_g = 1,
  W_b = 0, c = 0``, ``W_r`` Kaiming-normal, so a quadratic layer starts as its linear twin.
- :func:`plain_init_layer` / :func:`plain_init`: the control, Kaiming-normal on every branch (no ReLinear).
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from quadexport.layers.neurons import init_branch
from quadexport.layers.quad import QuadLayer

__all__ = ["plain_init", "plain_init_layer", "quad_layers", "relinear_init", "relinear_init_layer"]


def quad_layers(model: nn.Module) -> Iterator[tuple[str, QuadLayer]]:
    """``(qualified name, layer)`` of every quadratic layer of ``model``."""
    return ((n, m) for n, m in model.named_modules() if isinstance(m, QuadLayer))


@torch.no_grad()
def relinear_init_layer(layer: nn.Module) -> None:
    """Apply the ReLinear initialisation to one quadratic layer (in place).

    Args:
        layer: a :class:`~quadexport.layers.QuadLayer`.
    """
    for br in layer.neuron_type.branches:
        init_branch(getattr(layer, br.name), br.init)


@torch.no_grad()
def plain_init_layer(layer: nn.Module) -> None:
    """Control init of one quadratic layer: Kaiming-normal weights and zero biases on every branch."""
    for br in layer.neuron_type.branches:
        init_branch(getattr(layer, br.name), "kaiming")


def relinear_init(model: nn.Module) -> nn.Module:
    """ReLinear-initialise every quadratic layer of ``model`` (in place) and return it."""
    for _, layer in quad_layers(model):
        relinear_init_layer(layer)
    return model


def plain_init(model: nn.Module) -> nn.Module:
    """Control init: Kaiming-normal weights and zero biases on *every* branch of every quadratic layer."""
    for _, layer in quad_layers(model):
        plain_init_layer(layer)
    return model
