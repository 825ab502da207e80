"""The training objective of a run: cross-entropy over classes (classifiers) or over every position of a sequence
(language models, ``(batch, length, vocab)`` logits against ``(batch, length)`` next tokens), and the language
model's metric, validation bits per byte."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["bits_per_byte", "lm_metrics", "task_loss"]


def task_loss(out: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of logits ``(..., classes)`` against integer targets ``(...)``: a classifier's ``(N, C)``
    and ``(N,)``, or a sequence model's ``(B, T, V)`` and ``(B, T)`` (mean over every position)."""
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), target.reshape(-1), reduction=reduction)


def bits_per_byte(loss_nats: float) -> float:
    """A mean per-byte cross-entropy in nats as bits per byte (tokens are bytes)."""
    return loss_nats / math.log(2)


def lm_metrics(test_loss: float, steps: int) -> dict[str, Any]:
    """The per-epoch metrics a language model adds: ``val_bpb`` and the optimizer ``steps`` of the epoch."""
    return {"val_bpb": bits_per_byte(test_loss), "steps": int(steps)}
