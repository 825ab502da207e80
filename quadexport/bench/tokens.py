"""Benchmark inputs of token models (:mod:`quadexport.zoo.tokens`): int64 token ids ``(batch, length)`` instead of
N(0, 1) images; a token model's "input shape" is its sequence length (``--input-shape L``; default: the context)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from quadexport.zoo.tokens import token_input

__all__ = ["default_shape", "numpy_input", "torch_input"]


def default_shape(module_or_info: Any) -> tuple[int, ...] | None:
    """``(context,)`` of a token model (a module, or a zoo ``ModelInfo`` whose input shape is one length)."""
    tok = token_input(module_or_info) if isinstance(module_or_info, nn.Module) else None
    if tok is not None:
        return (tok.context,)
    shape = getattr(module_or_info, "input_shape", None)
    return tuple(shape) if shape is not None and len(shape) == 1 else None


def torch_input(module: nn.Module, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """A batch of ``shape`` (batch first): random token ids for a token model, N(0, 1) otherwise."""
    tok = token_input(module)
    if tok is not None:
        return torch.randint(0, tok.vocab_size, shape, generator=gen, dtype=torch.int64)
    return torch.randn(shape, generator=gen)


def numpy_input(module: nn.Module, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """The numpy form of :func:`torch_input` (what onnxruntime is fed)."""
    tok = token_input(module)
    if tok is not None:
        return rng.integers(0, tok.vocab_size, shape, dtype=np.int64)
    return rng.standard_normal(shape).astype(np.float32)
