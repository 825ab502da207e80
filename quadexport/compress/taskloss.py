"""Task losses: what ``compress`` measures and fine-tunes with on a run that is not a classifier
(``compress RUN --task-loss NAME``, ``CompressConfig(task_loss=NAME)``).

A classifier run is compressed against its labels (top-1 accuracy, cross-entropy). Any other run (a dense map, an
image out, a dict of heads) has no accuracy, so compress needs to be told what to minimise. A task loss is a function
of the compressed model's outputs (any structure: tensors nested in tuples, lists and dicts), the uncompressed
model's outputs on the same inputs and the dataset's labels (when it has them). Built in:

- ``next-token``: a language model's own objective (``gpt`` runs on text), cross-entropy of its next-token
  logits against the next bytes.
- ``distill-mse``: the mean squared error of every output against the uncompressed model's, averaged over the
  outputs. It needs no labels, so it works for runs without a dataset (inputs then random at the run's recorded
  input statistics, :func:`quadexport.compress.rundata.random_data`).

Register another with :func:`register_task_loss` (a duplicate name raises).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from quadexport.compress.errors import CompressError
from quadexport.errors import UsageError
from quadexport.exporter.outputs import flatten

__all__ = ["TaskLoss", "get_task_loss", "list_task_losses", "outputs_rel", "register_task_loss"]

LossFn = Callable[[Any, Any, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TaskLoss:
    """A named loss over model outputs.

    Attributes:
        name: the ``--task-loss`` name.
        fn: ``fn(outputs, reference_outputs, labels) -> scalar tensor`` (``outputs`` as the model returns them).
        needs_labels: the loss reads the dataset's labels (a run without a dataset is refused).
        description: one line for ``--help`` and the docs.
    """

    name: str
    fn: LossFn
    needs_labels: bool
    description: str

    def __call__(self, out: Any, ref: Any, y: torch.Tensor) -> torch.Tensor:
        return self.fn(out, ref, y)


_REGISTRY: dict[str, TaskLoss] = {}


def register_task_loss(loss: TaskLoss) -> TaskLoss:
    """Add ``loss`` to the registry (raises on a duplicate name)."""
    if loss.name in _REGISTRY:
        raise UsageError(f"task loss {loss.name!r} is already registered")
    _REGISTRY[loss.name] = loss
    return loss


def list_task_losses() -> list[str]:
    return sorted(_REGISTRY)


def get_task_loss(name: str) -> TaskLoss:
    """The registered task loss ``name`` (a one-line :class:`CompressError` naming the choices otherwise)."""
    if name not in _REGISTRY:
        raise CompressError(f"unknown --task-loss {name!r}; choose one of {', '.join(list_task_losses())}")
    return _REGISTRY[name]


def _distill_mse(out: Any, ref: Any, y: torch.Tensor) -> torch.Tensor:
    a, b = flatten(out), flatten(ref)
    if len(a) != len(b):
        raise CompressError(f"the compressed model returns {len(a)} outputs, the original {len(b)}")
    return torch.stack([F.mse_loss(p.float(), r.float()) for p, r in zip(a, b)]).mean()


register_task_loss(TaskLoss("distill-mse", _distill_mse, False,
                            "mean squared error of every output against the uncompressed model's outputs on the "
                            "same inputs (no labels needed)"))


def _next_token(out: Any, ref: Any, y: torch.Tensor) -> torch.Tensor:
    from quadexport.data.lm import task_loss

    return task_loss(out.float(), y)


register_task_loss(TaskLoss("next-token", _next_token, True,
                            "a language model's loss: cross-entropy of its next-token logits against the text's "
                            "next bytes (the run's own training objective)"))


def outputs_rel(out: Any, ref: Any) -> float:
    """Relative L2 change of ``out`` from ``ref`` over all their tensors (any output structure)."""
    a = torch.cat([t.detach().float().reshape(-1) for t in flatten(out)])
    b = torch.cat([t.detach().float().reshape(-1) for t in flatten(ref)])
    return float((a - b).norm() / b.norm().clamp_min(1e-30))
