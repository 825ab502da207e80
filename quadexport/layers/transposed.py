"""Quadratic transposed convolutions: ``QuadConvTranspose1d`` / ``QuadConvTranspose2d`` (issue #30).

The signatures of ``torch.nn.ConvTranspose1d`` / ``ConvTranspose2d`` plus ``neuron=`` (and ``rank=``, refused: the
low-rank bottleneck is defined for forward convolutions only). Each branch is a plain ``nn.ConvTransposeNd`` with
the layer's configuration, named after its role (``r``, ``g``, ``b``, ``l``), and the layer starts at the ReLinear
initialisation like :class:`~quadexport.layers.QuadConv2d`, so a fresh layer computes exactly its ``r`` branch.
Decoder neurons of quadratic autoencoders (three ``nn.ConvTranspose2d`` combined as ``r·g + b(x²)``) become these
under :func:`quadexport.adopt`.

Export: decomposed (``ConvTranspose``/``Mul``/``Add``) in every mode; the ``quadexport`` custom op and the fused
kernel cover forward convolutions only, so in ``function``/``fused`` mode these layers stay standard ops and the
export says so in one line. A transposed weight is ``[in, out/groups, k...]``: :func:`scale_out_channels` scales it
per output channel (BatchNorm folding).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from quadexport.errors import UsageError
from quadexport.layers.neurons import Branch
from quadexport.layers.quad import QuadLayer, _tuple

Tensor = torch.Tensor

__all__ = ["QuadConvTranspose1d", "QuadConvTranspose2d", "scale_out_channels"]


def scale_out_channels(w: Tensor, s: Tensor, transposed: bool = False, groups: int = 1) -> Tensor:
    """``w`` with output channel ``o`` scaled by ``s[o]`` (float64 ``s``; result in ``w``'s dtype). Forward conv and
    linear weights hold output channels on dim 0; transposed conv weights ``[in, out/groups, k...]`` on dim 1, per
    group."""
    if not transposed:
        return (w.double() * s.double().reshape((-1,) + (1,) * (w.dim() - 1))).to(w.dtype)
    cin, per = w.shape[0], w.shape[1]
    grouped = w.double().reshape(groups, cin // groups, per, *w.shape[2:])
    s = s.double().reshape(groups, 1, per, *(1,) * (w.dim() - 2))
    return (grouped * s).reshape(w.shape).to(w.dtype)


class _QuadConvTransposeNd(QuadLayer):
    _dims = 2
    _conv: type[nn.Module] = nn.ConvTranspose2d

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1, padding: Any = 0,
                 output_padding: Any = 0, groups: int = 1, bias: bool = True, dilation: Any = 1,
                 padding_mode: str = "zeros", device: Any = None, dtype: Any = None, neuron: str = "fan",
                 rank: int | None = None) -> None:
        super().__init__()
        n = self._dims
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride = _tuple(kernel_size, n), _tuple(stride, n)
        self.padding, self.output_padding = _tuple(padding, n), _tuple(output_padding, n)
        self.dilation, self.groups, self.padding_mode = _tuple(dilation, n), int(groups), padding_mode
        self._factory = {"device": device, "dtype": dtype}
        self._build(neuron, bias, rank)

    def _build(self, neuron: str, bias: bool, rank: int | None = None) -> None:
        from quadexport.layers.neurons import get_neuron

        nt = get_neuron(neuron)
        if rank is not None or hasattr(nt, "make_branch") or hasattr(nt, "branch_outputs"):
            raise UsageError(f"neuron {neuron!r}: transposed convolutions take neuron types with full-size "
                             f"branches only (no rank, no low-rank bottleneck)")
        super()._build(neuron, bias)

    def _make_branch(self, branch: Branch, bias: bool) -> nn.Module:
        if branch.kind != "full":
            raise UsageError(f"branch kind {branch.kind!r} is not defined for transposed convolutions (full only)")
        return self._conv(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                          self.output_padding, self.groups, bias, self.dilation, self.padding_mode, **self._factory)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"padding={self.padding}")
        if any(p != 0 for p in self.output_padding):
            s += f", output_padding={self.output_padding}"
        if any(d != 1 for d in self.dilation):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + f", {self._neuron_repr()}"


class QuadConvTranspose1d(_QuadConvTransposeNd):
    """Quadratic 1-D transposed convolution, signature of ``torch.nn.ConvTranspose1d`` plus ``neuron``."""

    _dims = 1
    _conv = nn.ConvTranspose1d


class QuadConvTranspose2d(_QuadConvTransposeNd):
    """Quadratic 2-D transposed convolution, signature of ``torch.nn.ConvTranspose2d`` plus ``neuron``.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: int or pair.
        stride: int or pair.
        padding: int or pair (``dilation·(kernel−1) − padding`` zeros are added to each side of the input).
        output_padding: extra size added to one side of the output.
        groups: blocked connections from input to output channels.
        bias: learn ``b_r`` (and ``c``); the gate bias ``b_g`` is always present.
        dilation: int or pair.
        padding_mode: ``'zeros'`` only (as torch).
        device: parameter device.
        dtype: parameter dtype.
        neuron: neuron type name, default ``"fan"`` (types with full-size branches).
    """

    _dims = 2
    _conv = nn.ConvTranspose2d
