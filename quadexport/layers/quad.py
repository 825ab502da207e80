"""Quadratic layers with the constructor signatures of ``torch.nn.Linear`` / ``Conv1d`` / ``Conv2d`` plus ``neuron=``.

Each branch of the neuron (see :mod:`quadexport.layers.neurons`) is a plain ``nn.Linear``/``nn.ConvNd`` submodule
named after its role (``r``, ``g``, ``b``, ``l``), so state-dict keys read ``conv.r.weight``, ``conv.g.bias`` etc.
Parameters start at the ReLinear initialisation, so a fresh layer computes exactly its ``r`` branch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from quadexport.errors import UsageError
from quadexport.layers.neurons import Branch, NeuronType, get_neuron, init_branch

Tensor = torch.Tensor


def _tuple(v: Any, n: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * n


class QuadLayer(nn.Module):
    """Base class of the quadratic layers: builds the branches and combines them.

    Subclasses implement :meth:`_make_branch`.
    """

    neuron_type: NeuronType

    def _build(self, neuron: str, bias: bool, rank: int | None = None) -> None:
        self.neuron = neuron
        self.neuron_type = get_neuron(neuron)
        if rank is not None:  # low-rank types (quadexport.layers.lowrank) take a rank; the others refuse one
            if not hasattr(self.neuron_type, "rank"):
                raise UsageError(f"rank= applies to low-rank neuron types (e.g. 'lowrank'), not {neuron!r}")
            self.neuron_type = self.neuron_type.with_arg(rank)
        self.rank: int | None = getattr(self.neuron_type, "rank", None)
        self.has_bias = bool(bias)
        make = getattr(self.neuron_type, "make_branch", None)
        for br in self.neuron_type.branches:
            use_bias = br.bias == "always" or (br.bias == "layer" and bias)
            setattr(self, br.name, make(self, br, use_bias) if make else self._make_branch(br, use_bias))
        self.reset_parameters()

    def _make_branch(self, branch: Branch, bias: bool) -> nn.Module:
        raise NotImplementedError

    def branch(self, name: str) -> nn.Module | None:
        """The branch module called ``name``, or ``None`` if this neuron type has no such branch."""
        return getattr(self, name, None) if name in {b.name for b in self.neuron_type.branches} else None

    def quadratic_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """``(qualified name, parameter)`` of the branches ReLinear treats as quadratic (``g``, ``b``)."""
        out = []
        for name in self.neuron_type.quadratic_branches:
            for pname, p in getattr(self, name).named_parameters():
                out.append((f"{name}.{pname}", p))
        return out

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """ReLinear initialisation: ``r`` Kaiming-normal, gate ``W_g=0, b_g=1``, power branch ``W_b=0, c=0`` (each
        branch as its :attr:`Branch.init` says)."""
        for br in self.neuron_type.branches:
            init_branch(getattr(self, br.name), br.init)

    @property
    def weight(self) -> Tensor:
        """The primary (``r``) weight, so code that reads ``layer.weight`` of a torch layer keeps working."""
        first = self.neuron_type.branches[0].name
        return getattr(self, first).weight

    def forward(self, x: Tensor) -> Tensor:
        outs: dict[str, Tensor] = {}
        if hasattr(self.neuron_type, "branch_outputs"):  # branches that share work (low-rank bottleneck)
            outs = self.neuron_type.branch_outputs(self, x)
        else:
            x2 = x * x if self.neuron_type.needs_square else x
            for br in self.neuron_type.branches:
                outs[br.name] = getattr(self, br.name)(x2 if br.input == "x2" else x)
        if torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda"):
            # Under bf16/fp16 autocast the branches run in low precision; products and sums of the quadratic
            # terms are formed in fp32 so they neither overflow nor lose the small quadratic contribution.
            outs = {k: v.float() for k, v in outs.items()}
        return self.neuron_type.combine(outs)

    def _neuron_repr(self) -> str:
        return f"neuron={self.neuron!r}" + (f", rank={self.rank}" if self.rank is not None else "")

    def extra_repr(self) -> str:
        return self._neuron_repr()


class QuadLinear(QuadLayer):
    """Quadratic dense layer, signature of ``torch.nn.Linear`` plus ``neuron``.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        bias: learn ``b_r`` (and ``c``); the gate bias ``b_g`` is always present for ReLinear.
        device: parameter device.
        dtype: parameter dtype.
        neuron: neuron type name (``quadexport.list_neurons()``), default ``"fan"``.
        rank: bottleneck rank of a low-rank neuron type (``"lowrank"``; default 4); other types refuse it.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device: Any = None,
                 dtype: Any = None, neuron: str = "fan", rank: int | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self._factory = {"device": device, "dtype": dtype}
        self._build(neuron, bias, rank)

    def _make_branch(self, branch: Branch, bias: bool) -> nn.Module:
        if branch.kind not in ("full", "pointwise"):
            raise UsageError(f"branch kind {branch.kind!r} is not defined for dense layers")
        return nn.Linear(self.in_features, self.out_features, bias=bias, **self._factory)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self._neuron_repr()}"


class _QuadConvNd(QuadLayer):
    _dims = 2
    _conv: type[nn.Module] = nn.Conv2d

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1,
                 padding: Any = 0, dilation: Any = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", device: Any = None, dtype: Any = None,
                 neuron: str = "fan", rank: int | None = None) -> None:
        super().__init__()
        n = self._dims
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride = _tuple(kernel_size, n), _tuple(stride, n)
        self.padding = padding if isinstance(padding, str) else _tuple(padding, n)
        self.dilation, self.groups, self.padding_mode = _tuple(dilation, n), int(groups), padding_mode
        self._factory = {"device": device, "dtype": dtype}
        self._build(neuron, bias, rank)

    def _make_branch(self, branch: Branch, bias: bool) -> nn.Module:
        common = dict(bias=bias, padding_mode=self.padding_mode, **self._factory)
        if branch.kind == "full":
            return self._conv(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                              self.dilation, self.groups, **common)
        if branch.kind == "pointwise":
            if self.padding != "same" and any(2 * p != d * (k - 1) for p, d, k in
                                              zip(self.padding, self.dilation, self.kernel_size)):
                raise UsageError("a pointwise branch needs a 'same'-geometry main conv (2*padding == dilation*(k-1))")
            return self._conv(self.in_channels, self.out_channels, 1, self.stride, 0, 1, self.groups, **common)
        if branch.kind == "depthwise":
            if self.out_channels % self.in_channels:
                raise UsageError("a depthwise branch needs out_channels to be a multiple of in_channels")
            return self._conv(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                              self.dilation, self.in_channels, **common)
        raise UsageError(f"unknown branch kind {branch.kind!r}")

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"padding={self.padding}")
        if any(d != 1 for d in self.dilation):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + f", {self._neuron_repr()}"


class QuadConv1d(_QuadConvNd):
    """Quadratic 1-D convolution, signature of ``torch.nn.Conv1d`` plus ``neuron`` (see :class:`QuadConv2d`)."""

    _dims = 1
    _conv = nn.Conv1d


class QuadConv2d(_QuadConvNd):
    """Quadratic 2-D convolution, signature of ``torch.nn.Conv2d`` plus ``neuron``.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: int or pair.
        stride: int or pair.
        padding: int, pair, ``'same'`` or ``'valid'``.
        dilation: int or pair.
        groups: blocked connections from input to output channels.
        bias: learn ``b_r`` (and ``c``); the gate bias ``b_g`` is always present.
        padding_mode: ``'zeros'``, ``'reflect'``, ``'replicate'`` or ``'circular'``.
        device: parameter device.
        dtype: parameter dtype.
        neuron: neuron type name, default ``"fan"``.
        rank: bottleneck rank of a low-rank neuron type (``"lowrank"``; default 4); other types refuse it.
    """

    _dims = 2
    _conv = nn.Conv2d


QUAD_LAYERS = (QuadLinear, QuadConv1d, QuadConv2d)
