"""``train --from RUN``: fine-tune the trained model of any run (zoo, ``torchvision:``/``timm:``, quadratized) with a
fresh schedule. The model is rebuilt from the run's checkpoint (``create_model(**config)`` + its weights); the new
run records where it started in ``meta["source"]``."""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from quadexport.runs.checkpoint import build_from_checkpoint, read_checkpoint
from quadexport.errors import UsageError

__all__ = ["from_run_model", "from_run_overrides", "source_meta"]

_NOT_BUILDER_ARGS = {"name", "neuron", "num_classes", "in_channels", "input_size", "width", "quadratize", "compress"}


def from_run_model(path: str | os.PathLike, num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """The trained model of run dir ``path``, checked against the dataset's classes and channels.

    Raises:
        UsageError: the model was built for other classes or channels.
    """
    model = build_from_checkpoint(read_checkpoint(path))
    cfg = model.quadexport_config
    if cfg.get("num_classes") != num_classes or cfg.get("in_channels") != input_shape[0]:
        raise UsageError(f"--from {path}: its model takes {cfg.get('in_channels')} channel(s) and has "
                         f"{cfg.get('num_classes')} classes, the dataset {input_shape[0]} and {num_classes}; "
                         f"train --from on the source run's data (drop --dataset)")
    return model


def from_run_overrides(path: str | os.PathLike) -> dict[str, Any]:
    """The training-config fields the run at ``path`` fixes: ``model``, ``neuron``, ``width``, ``model_args``."""
    src = dict(read_checkpoint(path)["config"])
    return {"model": src["name"], "neuron": src.get("neuron", "relu"), "width": src.get("width"),
            "model_args": {k: v for k, v in src.items() if k not in _NOT_BUILDER_ARGS}}


def source_meta(path: str | os.PathLike | None) -> dict[str, Any]:
    """``{"source": {...}}`` for the checkpoint meta of a run started ``--from path`` (empty without)."""
    if not path:
        return {}
    src = read_checkpoint(path)
    return {"source": {"run": str(path), "config": src["config"], "test_acc": src["meta"].get("test_acc")}}
