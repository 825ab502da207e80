"""Adapter-only fine-tuning (LoRA-style): freeze a quadratized model's primary weights, train its quadratic terms.

``--train-only PARTS`` (``TrainConfig.train_only``) names what stays trainable, ``+``-joined:

- ``quadratic``: every parameter of every quadratic layer except its primary branch ``r`` (which holds the trained
  weights): the gate ``g``, the power branch ``b``, any other added branch (``lowrank``'s bottleneck maps);
- ``bn``: normalisation layers (BatchNorm, LayerNorm, GroupNorm; their affine parameters);
- ``head``: the classifier head (the last ``nn.Linear`` that is not inside a quadratic layer).

``all`` (the default) trains everything. ``quadratic+bn+head`` is what ``--train-only`` alone means. Parts without
``quadratic`` (``bn+head``) work on any model, a ReLU one included: the same parts trained without quadratic terms,
the control that tells what adapter-only fine-tuning owes to its quadratic terms. ReLinear's
``sg`` learning-rate ratios and ``sw`` penalty apply to the quadratic terms as before
(:func:`quadexport.training.relinear.param_groups` leaves frozen parameters out of the optimizer). BatchNorm running
statistics still follow the data in train mode, also when ``bn`` is frozen.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from torch import nn

from quadexport.errors import UsageError
from quadexport.layers.convert import primary_branch
from quadexport.layers.quad import QuadLayer

log = logging.getLogger(__name__)

PARTS = ("quadratic", "bn", "head")
ADAPTER_DEFAULT = "quadratic+bn+head"
"""What ``--train-only`` without a value trains."""
NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)

__all__ = ["ADAPTER_DEFAULT", "PARTS", "TrainableSummary", "parse_train_only", "set_trainable"]


@dataclass(frozen=True)
class TrainableSummary:
    """What :func:`set_trainable` left trainable: parameter counts, and the head's name (if any)."""

    trainable: int
    frozen: int
    head: str | None

    def line(self) -> str:
        total = self.trainable + self.frozen
        return (f"training {self.trainable:,} of {total:,} parameters ({100 * self.trainable / max(total, 1):.1f}%)"
                + (f", head {self.head}" if self.head else ""))


def parse_train_only(spec: str) -> tuple[str, ...]:
    """``"quadratic+bn"`` → ``("quadratic", "bn")``; ``"all"`` → ``()``.

    Raises:
        UsageError: an unknown or repeated part.
    """
    if spec == "all":
        return ()
    parts = tuple(p.strip() for p in str(spec).split("+"))
    bad = [p for p in parts if p not in PARTS]
    if bad or len(set(parts)) != len(parts):
        raise UsageError(f"--train-only must be 'all' or '+'-joined parts of {', '.join(PARTS)}, e.g. "
                         f"{ADAPTER_DEFAULT}; got {spec!r}")
    return parts


def _quadratic_params(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter of every quadratic layer except its primary branch's (the trained linear weights)."""
    out = []
    for layer in model.modules():
        if isinstance(layer, QuadLayer):
            try:
                primary = {id(p) for p in getattr(layer, primary_branch(layer.neuron_type)).parameters()}
            except UsageError:  # no linear branch (t2): every parameter is a quadratic term
                primary = set()
            out.extend(p for p in layer.parameters() if id(p) not in primary)
    return out


def _head(model: nn.Module) -> tuple[str | None, nn.Module | None]:
    inside = {id(m) for q in model.modules() if isinstance(q, QuadLayer) for m in q.modules()}
    heads = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and id(m) not in inside]
    return heads[-1] if heads else (None, None)


def set_trainable(model: nn.Module, spec: str) -> TrainableSummary:
    """Freeze every parameter of ``model`` except the parts ``spec`` names (in place; ``"all"`` unfreezes all).

    Raises:
        UsageError: ``spec`` is invalid, or it asks for quadratic terms the model does not have.
    """
    parts = parse_train_only(spec)
    keep: set[int] = set()
    head_name = None
    if "quadratic" in parts:
        quad = _quadratic_params(model)
        if not quad:
            raise UsageError("--train-only quadratic needs a model with quadratic layers (quadratize it first: "
                             "quadexport quadratize RUN --out RUN2)")
        keep.update(id(p) for p in quad)
    if "bn" in parts:
        keep.update(id(p) for m in model.modules() if isinstance(m, NORMS) for p in m.parameters())
    if "head" in parts:
        head_name, head = _head(model)
        if head is not None:
            keep.update(id(p) for p in head.parameters())
    trainable = frozen = 0
    for p in model.parameters():
        on = not parts or id(p) in keep
        p.requires_grad_(on)
        trainable, frozen = trainable + on * p.numel(), frozen + (not on) * p.numel()
    summary = TrainableSummary(trainable, frozen, head_name)
    log.log(logging.INFO if parts else logging.DEBUG, "--train-only %s: %s", spec, summary.line())
    return summary
