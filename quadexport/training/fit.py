"""Training on a map-style dataset (in-memory tensors or files streamed through DataLoader workers) with
:func:`quadexport.training.loop.train`'s recipe and NaN handling (used by ``quadexport compress`` to fine-tune a rewritten
model)."""

from __future__ import annotations

import copy
import logging
import math
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, TensorDataset

from quadexport.training.relinear import quadratic_penalty
from quadexport.training.loop import TrainConfig, _all_finite, lr_factor, make_optimizer, roll_back

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
    good = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()))
    hist: list[dict[str, Any]] = []
    epoch, lr_mult, rollbacks = 0, 1.0, 0
    while epoch < cfg.epochs:
        for g, lr0 in zip(opt.param_groups, base_lrs):
            g["lr"] = lr0 * lr_factor(cfg, epoch) * lr_mult
        model.train()
        t0, loss_sum, seen, bad = time.perf_counter(), 0.0, 0, 0
        for xb, yb in (progress(loader, f"fine-tune epoch {epoch + 1}/{cfg.epochs}") if progress else loader):
            loss = F.cross_entropy(model(xb).float(), yb) if loss_fn is None else loss_fn(model(xb), xb, yb)
            total = loss + quadratic_penalty(model, cfg.relinear)
            opt.zero_grad(set_to_none=True)
            if not torch.isfinite(total):
                bad += 1
                continue
            total.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            loss_sum, seen = loss_sum + float(loss.detach()) * len(yb), seen + len(yb)
        if bad >= 5 or not _all_finite(model) or not math.isfinite(loss_sum):
            rollbacks += 1
            lr_mult = roll_back(model, opt, good, rollbacks, cfg.max_rollbacks, lr_mult,
                                f"fine-tuning in epoch {epoch + 1}", "lower --finetune-lr")
            (log_fn or logging.getLogger(__name__).warning)(f"fine-tune epoch {epoch + 1}: NaN/Inf; rolled back to "
                                                            f"the last good state, LR multiplier now {lr_mult:g}")
            continue
        epoch += 1
        hist.append({"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "lr": opt.param_groups[0]["lr"],
                     "seconds": time.perf_counter() - t0, "skipped_steps": bad, "rollbacks": rollbacks})
        good = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()))
    model.eval()
    return hist
