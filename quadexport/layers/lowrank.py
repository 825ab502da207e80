"""The low-rank quadratic neuron ``"lowrank"`` (issue #12): gate and power terms through one rank-``k`` bottleneck.

::

    z = V x                                  (V: in → k, 1×1 with the layer's stride, no bias)
    y = (W_r x + b_r) * (U_g z + b_g) + U_b (z*z) + c

``W_r`` is the full linear map (the linear twin's weights); ``V`` is a map ``in → k``, ``U_g`` and ``U_b`` are
``k → out`` (1×1 convs, or ``Linear``). ``V`` is pointwise (1×1, the layer's stride) when the conv has 'same'
geometry (``2·padding == dilation·(kernel-1)``: every ResNet/VGG conv); otherwise it takes the layer's kernel,
padding and dilation so the output positions match. The bottleneck ``z`` is *shared* by gate and power, and the
power term squares ``z`` (``k`` channels) rather than the input, so the quadratic part costs ``k·(in + 2·out)``
MACs per output position against ``in·out·K`` for the linear twin (``K`` = kernel size): ``1 + O(k/(K·C))``. In
ONNX a layer is ``Conv(r), Conv(V), Conv(U_g)`` with the gate's ``1`` in ``U_g``'s bias, ``Mul(z, z)``,
``Conv(U_b)`` (BatchNorm shift in its bias), ``Mul``, ``Add``: 7 ops, no full-size ``x*x``. Every one of these
choices (shared ``V``, pointwise ``V``, the ``1`` in a bias, BN folded) was measured: ``docs/quadratize.md``,
"Cost of the low-rank neuron" (a 3×3 ``V`` cost ResNet-18 ×1.20 of the original, the 1×1 ``V`` ×1.09).

ReLinear: ``U_g = 0, b_g = 1, U_b = 0, c = 0`` and ``V`` Kaiming-normal (it must not be zero, or ``U_g`` and
``U_b`` would get no gradient), so a fresh layer computes exactly its ``r`` branch. ``V`` lives inside the gate
module (``layer.g.v``, ``layer.g.u``), so ReLinear's ``sg``/``sw`` (which select the ``g`` and ``b`` branches)
treat the whole bottleneck as quadratic parameters; ``layer.g.weight``/``.bias`` are ``U_g``'s.

Rank: ``QuadConv2d(..., neuron="lowrank", rank=8)``, or the neuron name ``"lowrank:8"`` (what zoo models and
checkpoints use: ``create_model("resnet20", neuron="lowrank:8")``); default :data:`DEFAULT_RANK`. Grouped convs get
a rank-``k`` bottleneck per group (``V``: ``in → k·groups`` and ``U``: ``k·groups → out``, both with ``groups``).
BatchNorm folds exactly: its scale into ``r`` and ``U_b`` (``b_g`` stays 1), its shift into ``c``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from quadexport.errors import UsageError
from quadexport.layers.neurons import Branch, NeuronType, _fan, register_neuron

Tensor = torch.Tensor

DEFAULT_RANK = 4
"""Rank of ``neuron="lowrank"`` when none is given."""

__all__ = ["DEFAULT_RANK", "LOWRANK", "LowRankGate", "LowRankNeuronType", "same_geometry"]


class LowRankGate(nn.Module):
    """The gate branch ``U_g (V x) + b_g`` of a low-rank layer; ``weight``/``bias`` are ``U_g``'s (the output-side
    map, so per-output-channel code such as BN folding and perturbation acts on it).

    Args:
        v: the bottleneck ``in → k`` (no bias).
        u: the pointwise ``k → out`` map with the bias ``b_g``.
    """

    def __init__(self, v: nn.Module, u: nn.Module) -> None:
        super().__init__()
        self.v, self.u = v, u

    @property
    def weight(self) -> Tensor:
        return self.u.weight

    @property
    def bias(self) -> Tensor | None:
        return self.u.bias

    def forward(self, x: Tensor) -> Tensor:
        return self.u(self.v(x))


def same_geometry(layer: Any) -> bool:
    """The conv keeps the spatial size up to its stride (``2·padding == dilation·(kernel-1)``, or ``'same'``), so a
    1×1 conv with its stride gives the same output positions."""
    if layer.padding == "same":
        return True
    if layer.padding == "valid":
        return all(k == 1 for k in layer.kernel_size)
    return all(2 * p == d * (k - 1) for p, d, k in zip(layer.padding, layer.dilation, layer.kernel_size))


def _conv_maps(layer: Any, rank: int, bias: bool) -> tuple[nn.Module, nn.Module]:
    """``(V, U)`` for a quadratic conv layer: ``V`` 1×1 with the layer's stride (the layer's own kernel and padding
    when its geometry is not 'same'), ``U`` 1×1; both grouped."""
    g = layer.groups
    if same_geometry(layer):
        v = layer._conv(layer.in_channels, rank * g, 1, layer.stride, 0, 1, g, bias=False, **layer._factory)
    else:
        v = layer._conv(layer.in_channels, rank * g, layer.kernel_size, layer.stride, layer.padding,
                        layer.dilation, g, bias=False, padding_mode=layer.padding_mode, **layer._factory)
    return v, _conv_u(layer, rank, bias)


def _conv_u(layer: Any, rank: int, bias: bool) -> nn.Module:
    return layer._conv(rank * layer.groups, layer.out_channels, 1, 1, 0, 1, layer.groups, bias=bias,
                       **layer._factory)


@dataclass(frozen=True)
class LowRankNeuronType(NeuronType):
    """A neuron type whose quadratic branches share a rank-``rank`` bottleneck (see the module docstring).

    Attributes:
        rank: bottleneck width ``k`` (per group for grouped convs).
        fold_scale: branches that take a folded BatchNorm's scale (verified by
            :func:`quadexport.exporter.fold.fold_plan`, which otherwise picks the quadratic ones).
    """

    rank: int = DEFAULT_RANK
    fold_scale: tuple[str, ...] = ()

    def with_arg(self, arg: Any) -> "LowRankNeuronType":
        """This type with another rank (``arg``: an int, or the text after ``:`` in ``"lowrank:8"``)."""
        try:
            rank = int(arg)
        except (TypeError, ValueError):
            rank = 0
        if rank < 1 or str(arg).strip() != str(rank):
            raise UsageError(f"the rank of neuron {self.name!r} must be a positive integer, got {arg!r} "
                             f"(e.g. neuron='{self.name}:8' or rank=8)")
        return dataclasses.replace(self, rank=rank)

    def make_branch(self, layer: Any, branch: Branch, bias: bool) -> nn.Module:
        """Build branch ``branch`` of quadratic layer ``layer`` (dense or conv)."""
        if branch.kind == "full":
            return layer._make_branch(branch, bias)
        dense = hasattr(layer, "in_features")
        if branch.kind == "lowrank":
            if dense:
                gate = LowRankGate(nn.Linear(layer.in_features, self.rank, bias=False, **layer._factory),
                                   nn.Linear(self.rank, layer.out_features, bias=bias, **layer._factory))
            else:
                gate = LowRankGate(*_conv_maps(layer, self.rank, bias))
            with torch.no_grad():  # V stays random under ReLinear (a zero V would give U_g, U_b no gradient)
                nn.init.kaiming_normal_(gate.v.weight)
            return gate
        if branch.kind == "lowrank_out":
            if dense:
                return nn.Linear(self.rank, layer.out_features, bias=bias, **layer._factory)
            return _conv_u(layer, self.rank, bias)
        raise UsageError(f"unknown branch kind {branch.kind!r} for neuron {self.name!r}")

    def branch_outputs(self, layer: nn.Module, x: Tensor) -> dict[str, Tensor]:
        """``{"r", "g", "b"}`` outputs for input ``x``, the bottleneck computed once."""
        z = layer.g.v(x)
        return {"r": layer.r(x), "g": layer.g.u(z), "b": layer.b(z * z)}


LOWRANK = register_neuron(LowRankNeuronType(
    "lowrank", "(W_r x + b_r) * (U_g z + b_g) + U_b (z*z) + c,  z = V x (rank k)",
    (Branch("r", "x", quadratic=False, bias="layer", init="kaiming"),
     Branch("g", "x", quadratic=True, bias="always", init="one", kind="lowrank"),
     Branch("b", "z2", quadratic=True, bias="layer", init="zero", kind="lowrank_out")),
    _fan, fan_form=None, fold_scale=("r", "b"),
    reference="quadexport issue #12: low-rank quadratic neuron (gate and power through one rank-k bottleneck)"))
