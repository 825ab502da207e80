"""Run directories and checkpoints.

A run dir holds ``checkpoint.pt`` (model and optimizer state plus everything needed to rebuild the model),
``config.json`` (the training configuration), ``metrics.json`` and ``curves.png``. Checkpoints contain only tensors
and plain Python values, are loaded with ``torch.load(weights_only=True)`` (a pickle that tries to run code is
refused) and are written atomically (temporary file + rename), so a crash never leaves a half-written file.
"""

from __future__ import annotations

import io
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quadexport._torchutil import load_state
from quadexport.runs.atomicfile import atomic_write
from quadexport.runs.rundir import read_consistent
from quadexport.errors import QuadexportError

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
FORMAT = "quadexport-run"
FORMAT_VERSION = 1


class CheckpointError(QuadexportError, ValueError):
    """A checkpoint or run dir that cannot be used (missing, corrupt, unsafe or from another format/version)."""


def _finite_state(state: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


def save_checkpoint(run_dir: str | os.PathLike, model: nn.Module, meta: dict[str, Any],
                    optimizer_state: dict | None = None, epoch: int = 0, extra: dict | None = None,
                    run_id: str | None = None) -> Path:
    """Save a model (and optionally the optimizer) to ``run_dir/checkpoint.pt`` atomically.

    Args:
        run_dir: run directory (created if needed).
        model: a zoo model (it must carry ``quadexport_config``).
        meta: run metadata: dataset, input_shape, test_acc, relinear settings, ...
        optimizer_state: ``optimizer.state_dict()`` for ``--resume``.
        epoch: number of completed epochs.
        extra: further plain values (e.g. the LR multiplier after a rollback).
        run_id: the run's id (``quadexport.runs.rundir``); config.json and metrics.json carry the same one.

    Raises:
        CheckpointError: if the model has NaN/Inf parameters (a NaN checkpoint is never written).
    """
    from quadexport._version import __version__

    config = getattr(model, "quadexport_config", None)
    if config is None:
        raise CheckpointError("model has no quadexport_config; build it with quadexport.create_model")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if not _finite_state(state):
        raise CheckpointError("refusing to save a checkpoint with NaN/Inf parameters")
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "quadexport_version": __version__,
               "config": config, "meta": meta, "model": state, "epoch": int(epoch),
               "optimizer": optimizer_state, "extra": extra or {}}
    if run_id is not None:
        payload["run_id"] = run_id
    buf = io.BytesIO()  # serialise first: a full disk then fails as a plain OSError, not inside torch's zip writer
    torch.save(payload, buf)
    path = atomic_write(Path(run_dir) / CHECKPOINT, lambda f: f.write(buf.getbuffer()))
    log.debug("saved %s (epoch %d)", path, epoch)
    return path


def read_checkpoint(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Load and validate ``run_dir/checkpoint.pt`` (``weights_only=True``: no code runs while loading).

    Args:
        run_dir: a run directory or a checkpoint file.

    Raises:
        CheckpointError: missing, truncated, corrupt, unsafe, or not a quadexport checkpoint of a known version.
    """
    p = Path(run_dir)
    path = p / CHECKPOINT if p.is_dir() else p
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path} (is {run_dir} a run dir made by 'quadexport train'?)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "Weights only load failed" in str(e) or "Unsupported global" in str(e):
            raise CheckpointError(f"{path} is not a safe quadexport checkpoint (it contains code or unsupported "
                                  f"objects; refused to load it): {msg}") from None
        raise CheckpointError(f"{path} is truncated or corrupt: {msg}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a quadexport run checkpoint")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {ckpt.get('format_version')}, this quadexport "
                              f"reads version {FORMAT_VERSION}")
    for key in ("config", "meta", "model"):
        if not isinstance(ckpt.get(key), dict):
            raise CheckpointError(f"{path} lacks its {key!r} section")
    return ckpt


def build_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """Rebuild the model described by a checkpoint and load its weights (strict)."""
    from quadexport.transforms import create_model

    cfg = dict(ckpt["config"])
    try:
        model = create_model(cfg.pop("name"), **cfg)
    except (TypeError, KeyError, ValueError) as e:
        raise CheckpointError(f"checkpoint describes a model this quadexport cannot build: {e}") from None
    try:
        load_state(model, ckpt["model"], strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint weights do not fit model {ckpt['config'].get('name')}: "
                              f"{str(e).splitlines()[0]}") from None
    model.quadexport_meta = dict(ckpt["meta"])
    return model


def load(run_dir: str | os.PathLike) -> nn.Module:
    """Load the trained model of a run dir, in eval mode.

    The model carries ``quadexport_config`` (name, neuron, num_classes, in_channels, input_size) and
    ``quadexport_meta`` (dataset, input_shape, test_acc, relinear, ...).

    Args:
        run_dir: a run directory made by ``quadexport train`` (or its ``checkpoint.pt``).

    Raises:
        RunDirError: the run dir's config.json / metrics.json belong to another run than its checkpoint.
    """
    model = build_from_checkpoint(read_run(run_dir))
    return model.eval()


def read_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """:func:`read_checkpoint` of a run dir whose parts are verified to be one run (``rundir.read_consistent``)."""
    return read_consistent(run_dir, read_checkpoint)


def metric_is_finite(x: float) -> bool:
    """True for a finite float (used to keep NaN out of metrics and checkpoints)."""
    return isinstance(x, (int, float)) and math.isfinite(x)
