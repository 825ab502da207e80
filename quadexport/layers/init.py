"""Initialisation of quadratic layers, model-wide (the per-layer rule is :meth:`QuadLayer.reset_parameters`).

- :func:`relinear_init_layer` / :func:`relinear_init`: ReLinear (Fan et al., TNNLS 2023): ``W_g = 0, b_g = 1,
  W_b = 0, c = 0``, ``W_r`` Kaiming-normal, so a quadratic layer starts as its linear twin.
- :func:`plain_init_layer` / :func:`plain_init`: the control, Kaiming-normal on every branch (no ReLinear).
- :func:`perturb_quadratic`: ReLinear init plus a small perturbation, for untrained models whose quadratic terms must
  be live (benchmarks, export studies); :func:`calibrate_bn`: BatchNorm statistics from N(0, 1) inputs.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from quadexport.layers.neurons import init_branch
from quadexport.layers.quad import QuadLayer

__all__ = ["PERTURB_SCALES", "calibrate_bn", "perturb_quadratic", "plain_init", "plain_init_layer", "quad_layers",
           "relinear_init", "relinear_init_layer"]

PERTURB_SCALES = ("abs", "r_std", "fan_in")


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


@torch.no_grad()
def calibrate_bn(model: nn.Module, shape: tuple[int, ...], generator: torch.Generator | None = None,
                 batches: int = 1, n: int = 16) -> nn.Module:
    """Set BatchNorm running statistics from train-mode passes over N(0, 1) inputs of one-sample ``shape``
    (cumulative average over ``batches`` batches of ``n``), as a trained model has them; returns ``model`` in eval
    mode. Untrained models otherwise keep mean 0 / var 1 and their activations grow through depth, which quadratic
    layers turn into inf/NaN."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [b.momentum for b in bns]
    for b in bns:
        b.reset_running_stats()
        b.momentum = None
    if bns:
        model.train()
        try:
            for _ in range(batches):
                model(torch.randn((n, *shape), generator=generator))
        finally:
            for b, mom in zip(bns, momenta):
                b.momentum = mom
    return model.eval()


@torch.no_grad()
def perturb_quadratic(model: nn.Module, std: float, *, seed: int = 0, generator: torch.Generator | None = None,
                      scale: str = "abs", calib_shape: tuple[int, ...] | None = None, calib_n: int = 16
                      ) -> nn.Module:
    """ReLinear init plus a small perturbation: add N(0, s²) to the weights of the quadratic branches (``g``, ``b``,
    ... of :attr:`NeuronType.quadratic_branches`) of every quadratic layer of ``model``, in place, so the quadratic
    terms of an untrained model are live but small.

    Args:
        model: any module; its quadratic layers are perturbed (nothing else).
        std: the perturbation's size ``s``, per ``scale``: ``"abs"``: ``s = std``; ``"r_std"``: ``std × std(W_r)`` of
            the layer (relative to its linear branch; ``std`` for a neuron without ``r``); ``"fan_in"``: ``std / sqrt(fan-in)`` of the branch (deep
            nets: keeps each output's perturbation the same size whatever the width).
        seed: seed of the perturbation (and of the calibration inputs) when no ``generator`` is given.
        generator: the random generator to draw from (shared across models by a caller that builds several).
        scale: see ``std``.
        calib_shape: if given, then :func:`calibrate_bn` on ``calib_n`` N(0, 1) inputs of this one-sample shape.
        calib_n: calibration batch size.

    Returns:
        ``model``, in eval mode.
    """
    if scale not in PERTURB_SCALES:
        raise ValueError(f"scale must be one of {PERTURB_SCALES}, got {scale!r}")
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)
    for _, layer in quad_layers(model):
        r = getattr(layer, "r", None)
        r_std = float(r.weight.std()) if scale == "r_std" and r is not None else 1.0
        for name in layer.neuron_type.quadratic_branches:
            w = getattr(layer, name).weight
            s = std * r_std if scale != "fan_in" else std / w[0].numel() ** 0.5
            w.add_(torch.randn(w.shape, generator=gen, dtype=w.dtype) * s)
    if calib_shape is not None:
        calibrate_bn(model, tuple(calib_shape), gen, n=calib_n)
    return model.eval()
