"""Export of token models (:mod:`quadexport.zoo.tokens`): int64 ``(batch, length)`` inputs instead of float images.

With ``dynamic_size`` the sequence length (axis 1, ``"length"``) is dynamic beside the batch; the model is first
run at a shorter length than the example (the position table bounds the longest), and the file records the lengths
it is checked at (the context and about half of it).
"""

from __future__ import annotations

import torch
from torch import nn

from quadexport.errors import UsageError
from quadexport.zoo.tokens import TokenInput, random_tokens, token_lengths

__all__ = ["AXES", "check_lengths", "example_tokens", "probe_tokens", "refuse"]

AXES = {1: "length"}
"""The dynamic axis of a token input besides the batch."""


def example_tokens(spec: TokenInput, example: torch.Tensor | None = None,
                   input_shape: tuple[int, ...] | list[int] | None = None) -> torch.Tensor:
    """A batch of 2 int64 token sequences of the full context, or of length ``input_shape[-1]`` (``(L,)``), or
    ``example`` as int64 (doubled if batch 1)."""
    if example is not None:
        x = example.detach().cpu().to(torch.int64)
        return torch.cat([x, x]) if x.shape[0] == 1 else x
    n = int(input_shape[-1]) if input_shape is not None and len(input_shape) == 1 else spec.context
    if not 1 <= n <= spec.context:
        raise UsageError(f"a token model takes sequences of 1 to {spec.context} tokens, not {n}")
    return random_tokens(spec, 2, n)


def check_lengths(spec: TokenInput) -> list[list[int]]:
    """The sequence lengths a dynamic token file is checked at, as the ``sizes`` entry of its metadata."""
    return [[n] for n in token_lengths(spec, 2)]


def probe_tokens(model: nn.Module, spec: TokenInput) -> None:
    """Run ``model`` at a second length; a model that bakes its length in is refused in one line."""
    n = check_lengths(spec)[-1][0]
    try:
        with torch.no_grad():
            model(random_tokens(spec, 1, n, seed=1))
    except Exception as e:  # noqa: BLE001 - any failure at another length is the answer
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UsageError(f"cannot export with a dynamic sequence length: the model fails at length {n} ({reason}); "
                         "export without --dynamic-size") from None


def refuse(what: str) -> None:
    """One line for an export option a token model cannot take."""
    raise UsageError(f"{what} is not available for token models (int64 token inputs)")
