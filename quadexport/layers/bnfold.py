"""BatchNorm folding arithmetic, shared by adopt (a BN per branch folded into that branch) and export (a BN after
a layer folded into it). Computed in float64 and cast back, so a fold adds one float32 rounding at most; the
weight/bias fold itself is torch's ``fuse_conv_bn_weights``."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

__all__ = ["bn_scale_shift", "fold_bn"]


@torch.no_grad()
def bn_scale_shift(bn: nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor] | None:
    """``(s, t)`` in float64 with ``bn(x) == s * x + t`` per channel (eval mode), or ``None`` when the BatchNorm
    has no running statistics or is in training mode (it is then not an affine map)."""
    if bn.running_mean is None or bn.running_var is None or bn.training:
        return None
    mean = bn.running_mean.detach().double()
    s = 1.0 / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    if bn.weight is not None:
        s = s * bn.weight.detach().double()
    t = (bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(s)) - mean * s
    return s, t


@torch.no_grad()
def fold_bn(weight: Tensor, bias: Tensor | None, bn: nn.modules.batchnorm._BatchNorm,
            transpose: bool = False) -> tuple[Tensor, Tensor]:
    """``(weight, bias)`` of a conv/linear map followed by ``bn``, as one map (float64 inside, the weight's dtype
    out). ``transpose``: the weight is a transposed convolution's (output channels on dim 1)."""
    d = torch.float64
    w, b = fuse_conv_bn_weights(weight.detach().to(d), None if bias is None else bias.detach().to(d),
                                bn.running_mean.detach().to(d), bn.running_var.detach().to(d), bn.eps,
                                None if bn.weight is None else bn.weight.detach().to(d),
                                None if bn.bias is None else bn.bias.detach().to(d), transpose=transpose)
    return w.detach().to(weight.dtype), b.detach().to(weight.dtype)
