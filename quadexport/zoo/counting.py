"""Parameter and MAC counts (multiply-accumulates of conv/linear layers, every quadratic branch included)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    """Number of learnable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, ...] | Sequence[tuple[int, ...]],
               within: Sequence[str] | None = None) -> int:
    """MACs of one sample: every ``nn.Linear``/``nn.Conv1d``/``nn.Conv2d``/``nn.ConvTranspose1d``/``2d`` (so every
    branch of a quadratic layer; a transposed conv costs ``in·(out/groups)·k`` per input position),
    counted with forward hooks on a zero input of ``(1, *input_shape)``. Elementwise ops (square, product, add,
    BN, ReLU) are not counted.

    Args:
        model: the model.
        input_shape: one sample's shape, e.g. ``(1, 28, 28)``; one shape per input for a model whose ``forward``
            takes several tensors (``[(1,), (1,)]``).
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
        if tok is not None:
            n = int(input_shape[-1]) if len(input_shape) == 1 else tok.context
            model(torch.zeros((1, n), dtype=torch.int64, device=p.device))
            return int(total)
        several = len(input_shape) > 0 and all(isinstance(s, (tuple, list)) for s in input_shape)
        shapes = list(input_shape) if several else [input_shape]
        model(*[torch.zeros((1, *s), dtype=p.dtype, device=p.device) for s in shapes])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return int(total)
