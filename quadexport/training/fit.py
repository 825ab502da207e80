"""Training on a map-style dataset (in-memory tensors or files streamed through DataLoader workers) with
:func:`quadexport.training.loop.train`'s recipe and NaN handling (used by ``quadexport compress`` to fine-tune a rewritten
model)."""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, TensorDataset

from quadexport.training.config import TrainConfig
from quadexport.training.loop import make_optimizer
from quadexport.training.steps import Progressed, epoch_loop, train_pass

log = logging.getLogger(__name__)

__all__ = ["fit_dataset", "fit_tensors"]


def fit_tensors(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, *,
                optimizer: torch.optim.Optimizer | None = None, progress: Callable[[Any, str], Any] | None = None,
                log_fn: Callable[[str], None] | None = None,
                loss_fn: Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
                ) -> list[dict[str, Any]]:
    """:func:`fit_dataset` on in-memory ``x, y``."""
    return fit_dataset(model, TensorDataset(x, y), cfg, optimizer=optimizer, progress=progress, log_fn=log_fn,
                       loss_fn=loss_fn)


def fit_dataset(model: nn.Module, data: Dataset, cfg: TrainConfig, *, workers: int = 0,
                optimizer: torch.optim.Optimizer | None = None, progress: Callable[[Any, str], Any] | None = None,
                log_fn: Callable[[str], None] | None = None,
                loss_fn: Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
                ) -> list[dict[str, Any]]:
    """Train ``model`` in place on ``data`` (map-style ``(image, label)``: a ``TensorDataset``, or a ``Subset`` of an
    image folder read by ``workers`` DataLoader processes) for ``cfg.epochs`` epochs (CPU, one process) with the
    recipe of ``cfg`` - optimizer (or ``optimizer``), schedule, ``sw`` penalty, gradient clipping - and
    :func:`train`'s NaN handling: non-finite steps are skipped, and an epoch that leaves NaN/Inf weights rolls back
    to the last good state with the LR halved (at most ``cfg.max_rollbacks`` times, then :class:`TrainingDiverged`).
    Each epoch visits ``data`` in a seeded random order (``RandomSampler``, generator seeded with ``cfg.seed``).
    Used by ``quadexport compress`` to fine-tune. ``progress(iterable, desc)`` wraps the batches (e.g. a tqdm bar).
    ``loss_fn(outputs, x, y)`` replaces cross-entropy on the labels (a task loss of any output structure).
    Returns per-epoch ``{"epoch", "train_loss", "lr", "seconds", "skipped_steps", "rollbacks"}``."""
    opt = optimizer or make_optimizer(model, cfg)
    base_lrs = [g["lr"] for g in opt.param_groups]
    gen = torch.Generator().manual_seed(cfg.seed)
    # the loader's own generator (worker seeds) leaves the global RNG alone
    loader = DataLoader(data, batch_size=cfg.batch_size, sampler=RandomSampler(data, generator=gen),
                        num_workers=workers, persistent_workers=workers > 0,
                        generator=torch.Generator().manual_seed(cfg.seed))
    st = Progressed()

    def run_epoch(epoch: int) -> dict[str, Any] | None:
        model.train()
        batches = progress(loader, f"fine-tune epoch {epoch + 1}/{cfg.epochs}") if progress else loader
        r = train_pass(model, model, opt, batches, cfg, loss_fn=loss_fn)
        if r.diverged or not math.isfinite(r.loss_sum):
            return None
        return {"epoch": epoch + 1, "train_loss": r.loss_sum / max(r.seen, 1), "lr": opt.param_groups[0]["lr"],
                "seconds": r.seconds, "skipped_steps": r.bad_steps, "rollbacks": st.rollbacks}

    def on_rollback(epoch: int, lr_mult: float) -> None:
        (log_fn or log.warning)(f"fine-tune epoch {epoch}: NaN/Inf; rolled back to the last good state, LR "
                                f"multiplier now {lr_mult:g}")

    epoch_loop(model, opt, cfg, st, cfg.epochs, run_epoch, base_lrs=base_lrs, what="fine-tuning",
               hint="lower --finetune-lr", on_rollback=on_rollback)
    model.eval()
    return st.history
