"""Parameter and MAC counts (multiply-accumulates of conv/linear layers, every quadratic branch included)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    """Number of learnable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, ...], within: Sequence[str] | None = None) -> int:
    """MACs of one sample: every ``nn.Linear``/``nn.Conv1d``/``nn.Conv2d``/``nn.ConvTranspose1d``/``2d`` (so every
    branch of a quadratic layer; a transposed conv costs ``in·(out/groups)·k`` per input position),
    counted with forward hooks on a zero input of ``(1, *input_shape)``. Elementwise ops (square, product, add,
    BN, ReLU) are not counted.

    Args:
        model: the model.
        input_shape: one sample's shape, e.g. ``(1, 28, 28)``.
        within: count only the layers inside these modules (qualified names); ``None``: all.
    """
    total = 0

    def hook(m: nn.Module, inp, out) -> None:
        nonlocal total
        if isinstance(m, nn.Linear):
            total += m.in_features * m.out_features * (out.numel() // out.shape[-1])
        elif isinstance(m, nn.modules.conv._ConvTransposeNd):
            k = 1
            for s in m.kernel_size:
                k *= s
            total += inp[0].numel() * (m.out_channels // m.groups) * k
        else:
            k = 1
            for s in m.kernel_size:
                k *= s
            total += out.numel() * (m.in_channels // m.groups) * k

    inside = (lambda n: True) if within is None else (  # noqa: E731
        lambda n: any(n == w or n.startswith(w + ".") for w in within))
    handles = [m.register_forward_hook(hook) for n, m in model.named_modules()
               if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d))
               and inside(n)]
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        from quadexport.zoo.tokens import token_input

        tok = token_input(model)  # a token model: int64 ids of one sequence (input_shape: its length)
        shape = (1, int(input_shape[-1]) if len(input_shape) == 1 else tok.context) if tok else (1, *input_shape)
        model(torch.zeros(shape, dtype=torch.int64 if tok else p.dtype, device=p.device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return int(total)
