"""What a sequence model takes as input: int64 token ids of shape ``(batch, length)``, not float images.

A model that takes tokens carries a :class:`TokenInput` as ``model.token_input`` (the zoo's ``gpt`` does); export,
check and bench ask :func:`token_input` and build int64 inputs of sequence lengths instead of float images of
image sizes. Everything that treats a model as a classifier of images leaves such a model alone.

Level L1 (zoo): imports only torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
from torch import nn

__all__ = ["TokenInput", "is_token_model", "random_tokens", "token_input", "token_lengths"]


@dataclass(frozen=True)
class TokenInput:
    """Input of a token model.

    Attributes:
        vocab_size: token ids are ``0 .. vocab_size - 1``.
        context: the longest sequence the model takes (its position table).
        name: input name in an exported file.
        dtype: element type of the ids (always ``int64``, ONNX ``tensor(int64)``).
        task: what the output is: ``"lm"`` (next-token logits, ``(batch, length, vocab_size)``).
    """

    vocab_size: int
    context: int
    name: str = "tokens"
    dtype: str = "int64"
    task: str = "lm"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TokenInput":
        return cls(**{k: d[k] for k in ("vocab_size", "context", "name", "dtype", "task") if k in d})

    def describe(self) -> str:
        """One line for ``info`` and reports."""
        return (f"language model: int64 token ids (batch, length <= {self.context}), vocabulary {self.vocab_size}; "
                f"outputs next-token logits (batch, length, {self.vocab_size})")


def token_input(model: nn.Module) -> TokenInput | None:
    """The :class:`TokenInput` of a model that takes tokens, ``None`` for an image model (also through wrappers
    that keep the wrapped model as ``.model`` or ``.module``)."""
    for m in (model, getattr(model, "model", None), getattr(model, "module", None)):
        spec = getattr(m, "token_input", None) if m is not None else None
        if isinstance(spec, TokenInput):
            return spec
    return None


def is_token_model(model: nn.Module) -> bool:
    """Whether ``model`` takes token ids (:func:`token_input` is not ``None``)."""
    return token_input(model) is not None


def token_lengths(spec: TokenInput, n: int = 2) -> list[int]:
    """``n`` distinct sequence lengths to check or time a token model at: the full context, then shorter ones
    (``context``, ``context // 2 + 1``, ...; at least 1)."""
    out = [spec.context]
    cand = spec.context // 2 + 1
    while len(out) < n and cand >= 1:
        if cand not in out:
            out.append(cand)
        cand = max(1, cand // 2) if cand > 1 else 0
    return out


def random_tokens(spec: TokenInput, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """Seeded random token ids, ``(batch, length)`` int64, within the vocabulary."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, spec.vocab_size, (batch, length), generator=g, dtype=torch.int64)
