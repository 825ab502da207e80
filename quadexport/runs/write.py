""":func:`write_run`: the one writer of a run dir's files, used by every command that makes a run (``train``,
``quadratize``, ``adopt``, ``compress``).

The order is the one :mod:`quadexport.runs.rundir` documents and :func:`quadexport.runs.rundir.read_consistent`
relies on: extra files, ``metrics.json``, ``config.json``, then ``checkpoint.pt`` (the commit point: a reader that
finds a checkpoint finds the config and metrics of the same run id beside it). Signals are held back while the parts
are written, so they land together or not at all.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from quadexport.runs.atomicfile import atomic_write, write_json
from quadexport.runs.checkpoint import save_checkpoint
from quadexport.runs.rundir import CONFIG, METRICS, RunDir

__all__ = ["write_run"]


def write_run(run: RunDir | str | os.PathLike, model: nn.Module, meta: dict[str, Any], *,
              config: Mapping[str, Any], metrics: Mapping[str, Any], optimizer_state: dict | None = None,
              epoch: int = 0, extra: dict | None = None, files: Mapping[str, str] | None = None,
              commit: bool = True) -> Path:
    """Write a run's files in the documented order and return the checkpoint's path.

    Args:
        run: an open :class:`RunDir` (its files are stamped with its run id, and it is committed when ``commit``),
            or a plain directory (no run id, nothing to commit).
        model: the model to save (it carries ``quadexport_config``).
        meta: the run's metadata (``checkpoint.pt``'s ``meta``).
        config: ``config.json``'s content.
        metrics: ``metrics.json``'s content.
        optimizer_state, epoch, extra: as :func:`quadexport.runs.checkpoint.save_checkpoint` takes them.
        files: further text files to write first (name -> text), e.g. the user's model file of an adopted run.
        commit: put a staged run in place once the checkpoint is written (compress commits later itself).
    """
    is_run = isinstance(run, RunDir)
    path = run.path if is_run else Path(run)
    stamp = run.stamp if is_run else (lambda d: dict(d))
    path.mkdir(parents=True, exist_ok=True)
    with run.saving() if is_run else nullcontext():
        for name, text in (files or {}).items():
            atomic_write(path / name, lambda f, t=text: f.write(t), mode="w")
        write_json(path / METRICS, stamp(dict(metrics)))
        write_json(path / CONFIG, stamp(dict(config)))
        ckpt = save_checkpoint(path, model, meta, optimizer_state, epoch, extra or {},
                               run_id=run.run_id if is_run else None)
        if is_run and commit:
            run.commit()
    return ckpt
