"""Layers of compressed models: :class:`MixedQuad` (quadratic on a prefix of its output channels, linear on the
rest) and :class:`PermShortcut` (the option-A ResNet shortcut with permuted channels, as a fixed 0/1 1×1 conv).

Both are built from plain ``nn.Conv2d``/``nn.Linear`` submodules, so :func:`quadexport.count_macs` counts them, the
decomposed ONNX export writes standard ``Conv``/``Gemm``/``Mul``/``Add``/``Concat`` nodes, and onnxruntime's NCHWc
layout covers the whole layer when the channel counts are multiples of the NCHWc block (8 on AVX2, 16 on AVX-512):
``Concat`` along channels stays in NCHWc only for block-aligned inputs (onnxruntime ``nchwc_transformer.cc``,
``TransformConcat``), which is why the quadratic prefix ``k`` is rounded up to that block.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from quadexport.errors import UsageError
from quadexport.layers.quad import QuadLayer, QuadLinear

Tensor = torch.Tensor

SPLITS = ("conv", "slice")
"""How :class:`MixedQuad` forms its linear map: ``"conv"`` = two maps (``r_q`` for the quadratic prefix, ``r_l`` for
the linear rest) joined by ``Concat``; ``"slice"`` = one map ``r`` whose output is sliced (``Slice`` + ``Concat``)."""


def like(m: nn.Module, out: int, bias: bool) -> nn.Module:
    """A fresh ``nn.Linear``/``nn.ConvNd`` with ``m``'s configuration and ``out`` outputs."""
    if isinstance(m, nn.Linear):
        return nn.Linear(m.in_features, out, bias=bias)
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        if m.groups != 1 and out != m.out_channels:
            raise UsageError(f"cannot take {out} of the {m.out_channels} outputs of a grouped conv (groups={m.groups})")
        return type(m)(m.in_channels, out, m.kernel_size, m.stride, m.padding, m.dilation, m.groups, bias,
                       m.padding_mode)
    raise TypeError(f"not a linear map: {type(m).__name__}")


@torch.no_grad()
def copy_rows(dst: nn.Module, src: nn.Module, rows: slice | Tensor, scale: Tensor | None = None,
              shift: Tensor | None = None) -> None:
    """``dst`` ← rows ``rows`` of ``src`` (weight and bias), optionally ``scale * (W x + b) + shift`` per row.

    A missing source bias counts as zero; a missing destination bias must then stay zero.
    """
    w = src.weight.detach()[rows].double()
    b = src.bias.detach()[rows].double() if src.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    if scale is not None:
        s = scale.double()
        w = w * s.reshape((-1,) + (1,) * (w.dim() - 1))
        b = b * s
    if shift is not None:
        b = b + shift.double()
    dst.weight.copy_(w.to(dst.weight.dtype))
    if dst.bias is not None:
        dst.bias.copy_(b.to(dst.bias.dtype))
    elif bool((b != 0).any()):
        raise ValueError("destination has no bias but the rows need one")


class MixedQuad(nn.Module):
    """A Fan-type quadratic layer whose first ``k`` output channels are quadratic and the others linear.

    ``y[:, :k] = r_q(x) * g(x) + b(x*x) (+ qbias)`` (``g`` and/or ``b`` may be dropped), ``y[:, k:] = r_l(x)``,
    joined with ``torch.cat`` (``Concat``). The branches are plain torch layers with the configuration of the layer it
    replaces (``template``); weights are set by the compressor or loaded from a checkpoint.

    Args:
        template: the :class:`~quadexport.layers.QuadLayer` it replaces (only its configuration is used).
        k: number of quadratic output channels (``1 <= k <= out``).
        g: keep the gate branch.
        b: keep the power branch (``x*x``).
        qbias: a per-channel bias added to the quadratic channels (needed when ``b`` is dropped and a shift must go
            somewhere, e.g. a folded BatchNorm).
        split: ``"conv"`` (separate ``r_q``/``r_l``) or ``"slice"`` (one ``r`` then ``Slice``) - see :data:`SPLITS`.
    """

    def __init__(self, template: QuadLayer, k: int, g: bool = True, b: bool = True, qbias: bool = False,
                 split: str = "conv") -> None:
        super().__init__()
        out = template.out_features if isinstance(template, QuadLinear) else template.out_channels
        if not 1 <= k <= out:
            raise UsageError(f"k must be in [1, {out}], got {k}")
        if not (g or b):
            raise UsageError("a quadratic slot needs g or b")
        if split not in SPLITS:
            raise UsageError(f"split must be one of {SPLITS}, got {split!r}")
        self.k, self.out_channels, self.split, self.dense = int(k), int(out), split, isinstance(template, QuadLinear)
        self.source_neuron = template.neuron
        r = template.r
        r_bias = r.bias is not None
        if split == "slice" and k < out:
            self.r = like(r, out, bias=True)
            self.r_q = self.r_l = None
        else:
            self.r = None
            self.r_q = like(r, k, bias=r_bias)
            self.r_l = like(r, out - k, bias=True) if k < out else None

        def branch(name: str) -> nn.Module:
            m = getattr(template, name)
            if k == out:  # whole branch (also grouped/depthwise ones)
                new = copy.deepcopy(m)
                if new.bias is None:
                    new.bias = nn.Parameter(torch.zeros(out, dtype=new.weight.dtype))
                return new
            return like(m, k, bias=True)

        self.g = branch("g") if g else None
        self.b = branch("b") if b else None
        self.qbias = nn.Parameter(torch.zeros(k)) if qbias else None

    # -- construction from a (permuted) trained layer -----------------------------------------------------------
    @torch.no_grad()
    def load_from(self, layer: QuadLayer, quad_fit: dict[str, Tensor] | None = None,
                  lin_scale: Tensor | None = None, lin_shift: Tensor | None = None) -> "MixedQuad":
        """Copy weights from ``layer`` (same output order): rows ``[0, k)`` into the quadratic slot, the rest into
        the linear part.

        Args:
            layer: the trained quadratic layer (already permuted so its quadratic channels come first).
            quad_fit: per-slot-channel refits when a branch is dropped (tensors of length ``k``): ``r_scale``,
                ``g_scale``, ``g_weight_zero`` (bool: gate becomes the constant ``g_bias``), ``g_bias``, ``b_scale``,
                ``shift``. Missing keys mean "unchanged".
            lin_scale: ``α`` per linear channel (length ``out - k``): ``y = α·r(x) + β``.
            lin_shift: ``β`` per linear channel.
        """
        k, out = self.k, self.out_channels
        fit = quad_fit or {}
        qs = slice(0, k)
        r_scale = fit.get("r_scale")
        if self.r is not None:  # slice form: one r with a bias for every row
            copy_rows(self.r, layer.r, slice(0, out))
            if r_scale is not None:
                self.r.weight[:k] *= r_scale.reshape((-1,) + (1,) * (self.r.weight.dim() - 1)).to(self.r.weight.dtype)
                self.r.bias[:k] *= r_scale.to(self.r.bias.dtype)
            copy_rows_part(self.r, layer.r, k, out, lin_scale, lin_shift)
        else:
            copy_rows(self.r_q, layer.r, qs, scale=r_scale)
            if self.r_l is not None:
                copy_rows(self.r_l, layer.r, slice(k, out), scale=lin_scale, shift=lin_shift)
        if self.g is not None:
            if k == out and not fit:
                self.g.load_state_dict(_with_bias(layer.g, out))
            else:
                copy_rows(self.g, layer.g, qs, scale=fit.get("g_scale"))
                if "g_weight_zero" in fit:
                    z = fit["g_weight_zero"]
                    self.g.weight[z] = 0
                    self.g.bias[z] = fit["g_bias"][z].to(self.g.bias.dtype)
        if self.b is not None:
            if k == out and not fit:
                self.b.load_state_dict(_with_bias(layer.b, out))
            else:
                copy_rows(self.b, layer.b, qs, scale=fit.get("b_scale"))
        shift = fit.get("shift")
        if shift is not None and bool((shift != 0).any()):
            target = self.b.bias if self.b is not None else (self.qbias if self.qbias is not None else None)
            if target is None:
                raise ValueError("a quadratic-slot shift needs the b branch or qbias")
            target.add_(shift.to(target.dtype))
        return self

    # -- BatchNorm folding -------------------------------------------------------------------------------------
    @torch.no_grad()
    def fold_affine(self, s: Tensor, t: Tensor) -> None:
        """Fold a per-channel affine map ``y ← s*y + t`` (an eval-mode BatchNorm) into the layer."""
        k = self.k
        s, t = s.double(), t.double()

        def scale(m: nn.Module, sl: slice, v: Tensor) -> None:
            w = m.weight
            w[sl] = (w[sl].double() * v.reshape((-1,) + (1,) * (w.dim() - 1))).to(w.dtype)
            if m.bias is not None:
                m.bias[sl] = (m.bias[sl].double() * v).to(m.bias.dtype)

        q = slice(0, k)
        if self.g is not None:
            scale(self.g, q, s[:k])
        else:
            scale(self.r if self.r is not None else self.r_q, q, s[:k])
        if self.b is not None:
            scale(self.b, q, s[:k])
        if self.qbias is not None:
            self.qbias.copy_((self.qbias.double() * s[:k]).to(self.qbias.dtype))
        if self.b is not None:
            self.b.bias.add_(t[:k].to(self.b.bias.dtype))
        else:
            if self.qbias is None:
                self.qbias = nn.Parameter(torch.zeros(k, dtype=self.r_q.weight.dtype if self.r_q is not None
                                                      else self.r.weight.dtype))
            self.qbias.add_(t[:k].to(self.qbias.dtype))
        if k < self.out_channels:
            lin = self.r if self.r is not None else self.r_l
            sl = slice(k, self.out_channels) if self.r is not None else slice(0, self.out_channels - k)
            scale(lin, sl, s[k:])
            lin.bias[sl] += t[k:].to(lin.bias.dtype)

    def forward(self, x: Tensor) -> Tensor:
        k, d = self.k, -1 if self.dense else 1  # a Linear's channels are its last dim (timm's ConvNeXt: NHWC)
        if self.r is not None:
            full = self.r(x)
            q, lin = full.narrow(d, 0, k), full.narrow(d, k, self.out_channels - k)
        else:
            q = self.r_q(x)
            lin = self.r_l(x) if self.r_l is not None else None
        if self.g is not None:
            q = q * self.g(x)
        if self.b is not None:
            q = q + self.b(x * x)
        if self.qbias is not None:
            q = self._add_qbias(q)
        return q if lin is None else torch.cat([q, lin], d)

    def _add_qbias(self, q: Tensor) -> Tensor:
        """``q + qbias`` per channel.

        On 4-D maps outside training (eval, export) it is written as a 1×1 depthwise ``Conv`` with unit weights (the
        same arithmetic: ``q·1 + qbias``). onnxruntime runs that in its NCHWc layout, whereas a broadcast ``Add``
        breaks the layout and un-fuses the residual sums around it. Measured on a ResNet20 whose layer1.0.conv2 is
        wholly gate-only (3 interleaved runs, ``tools/qbias_forms.py``): 1.12–1.13× → 1.07–1.09× the ReLU twin at
        batch 1, 1.20× → 1.08–1.09× at batch 64. A mixed layer's ``Concat`` leaves the layout anyway (no difference
        there)."""
        if self.dense:
            return q + self.qbias
        if q.dim() == 4 and not self.training:
            ones = torch.ones(self.k, 1, 1, 1, dtype=q.dtype, device=q.device)  # a constant kernel for both exporters
            return F.conv2d(q, ones, self.qbias.to(q.dtype), groups=self.k)
        return q + self.qbias.reshape((1, -1) + (1,) * (q.dim() - 2))

    def extra_repr(self) -> str:
        parts = [f"k={self.k}/{self.out_channels}", f"g={self.g is not None}", f"b={self.b is not None}"]
        if self.split != "conv":
            parts.append(f"split={self.split!r}")
        return ", ".join(parts)


def _with_bias(m: nn.Module, out: int) -> dict[str, Tensor]:
    sd = {k: v.detach().clone() for k, v in m.state_dict().items()}
    if "bias" not in sd:
        sd["bias"] = torch.zeros(out, dtype=m.weight.dtype)
    return sd


@torch.no_grad()
def copy_rows_part(dst: nn.Module, src: nn.Module, start: int, stop: int, scale: Tensor | None,
                   shift: Tensor | None) -> None:
    """Rows ``[start, stop)`` of ``dst`` ← the same rows of ``src``, as ``scale*(W x + b) + shift``."""
    w = src.weight.detach()[start:stop].double()
    b = src.bias.detach()[start:stop].double() if src.bias is not None else torch.zeros(stop - start,
                                                                                        dtype=torch.float64)
    if scale is not None:
        w = w * scale.double().reshape((-1,) + (1,) * (w.dim() - 1))
        b = b * scale.double()
    if shift is not None:
        b = b + shift.double()
    dst.weight[start:stop] = w.to(dst.weight.dtype)
    dst.bias[start:stop] = b.to(dst.bias.dtype)


class PermShortcut(nn.Conv2d):
    """Option-A ResNet shortcut (subsample by ``stride`` + zero channel padding) between two residual streams whose
    channels are permuted, as a 1×1 strided ``Conv`` with a fixed 0/1 weight (exact in float arithmetic: every
    output is one input times 1.0 plus zeros). The weight is frozen (``requires_grad=False``).

    Args:
        in_channels: channels of the input stream.
        out_channels: channels of the output stream.
        stride: subsampling stride.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__(in_channels, out_channels, 1, stride=stride, bias=False)
        with torch.no_grad():
            self.weight.zero_()
        self.weight.requires_grad_(False)

    @torch.no_grad()
    def set_mapping(self, pad: int, in_perm: list[int], out_perm: list[int]) -> "PermShortcut":
        """Weights for ``y_orig[j] = x_orig[j - pad]`` (zero outside) with ``x = x_orig[in_perm]``,
        ``y = y_orig[out_perm]``."""
        inv_in = {old: new for new, old in enumerate(in_perm)}
        self.weight.zero_()
        for i, o in enumerate(out_perm):
            src = o - pad
            if 0 <= src < len(in_perm):
                self.weight[i, inv_in[src], 0, 0] = 1.0
        return self

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, None, self.stride)


__all__ = ["MixedQuad", "PermShortcut", "SPLITS", "copy_rows", "copy_rows_part", "like"]
