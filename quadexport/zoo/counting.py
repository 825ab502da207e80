"""Parameter and MAC counts (multiply-accumulates of conv/linear layers, every quadratic branch included)."""

from __future__ import annotations

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    """Number of learnable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """MACs of one sample: every ``nn.Linear``/``nn.Conv1d``/``nn.Conv2d`` (so every branch of a quadratic layer),
    counted with forward hooks on a zero input of ``(1, *input_shape)``. Elementwise ops (square, product, add,
    BN, ReLU) are not counted.

    Args:
        model: the model.
        input_shape: one sample's shape, e.g. ``(1, 28, 28)``.
    """
    total = 0

    def hook(m: nn.Module, inp, out) -> None:
        nonlocal total
        if isinstance(m, nn.Linear):
            total += m.in_features * m.out_features * (out.numel() // out.shape[-1])
        else:
            k = 1
            for s in m.kernel_size:
                k *= s
            total += out.numel() * (m.in_channels // m.groups) * k

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
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
