"""One training step, one pass over a loader and one epoch loop with NaN rollback: shared by the training run
(:func:`quadexport.training.loop.train`) and fine-tuning on tensors or a dataset (:mod:`quadexport.training.fit`).

NaN handling: a step whose loss (plus the ``sw`` penalty) is not finite is skipped; five of them end the pass as
diverged. A diverged pass, or one that leaves NaN/Inf weights or buffers, rolls the model and optimizer back to the
last good epoch with the learning rate halved, at most ``cfg.max_rollbacks`` times (then :class:`TrainingDiverged`).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn

from quadexport.training.config import TrainConfig, TrainingDiverged
from quadexport.training.relinear import quadratic_penalty
from quadexport.data.lm import task_loss

__all__ = ["Pass", "Progressed", "all_finite", "epoch_loop", "lr_factor", "roll_back", "train_pass"]

MAX_BAD_STEPS = 5
"""Skipped (non-finite) steps that end a pass as diverged."""

LossFn = Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss_fn(outputs, x, y)``: a task loss of any output structure (default: cross-entropy on the labels)."""


@dataclass
class Pass:
    """One pass over the training loader (this rank's sums)."""

    loss_sum: float = 0.0
    seen: int = 0
    correct: int = 0
    bad_steps: int = 0
    diverged: bool = False
    seconds: float = 0.0


@dataclass
class Progressed:
    """Where a run stands: the next epoch to train, the NaN-rollback state and the metrics of the epochs done."""

    epoch: int = 0
    lr_mult: float = 1.0
    rollbacks: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def lr_factor(cfg: TrainConfig, epoch: int) -> float:
    """Schedule multiplier for a (0-based) epoch."""
    if cfg.schedule == "constant":
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs))


def all_finite(model: nn.Module) -> bool:
    """Parameters *and* buffers (BN running statistics) are finite."""
    return all(bool(torch.isfinite(v).all()) for v in model.state_dict().values() if v.is_floating_point())


def roll_back(model: nn.Module, opt: torch.optim.Optimizer, good: tuple[dict, dict], rollbacks: int,
              max_rollbacks: int, lr_mult: float, what: str, hint: str) -> float:
    """Restore the last good ``(model, optimizer)`` state after a NaN/Inf epoch and return the halved LR multiplier;
    after ``max_rollbacks`` rollbacks raise :class:`TrainingDiverged` (``what``: "training"/"fine-tuning")."""
    if rollbacks > max_rollbacks:
        raise TrainingDiverged(f"{what} diverged (NaN/Inf) after {rollbacks - 1} rollbacks with LR ×{lr_mult:g}; "
                               f"{hint}")
    model.load_state_dict(good[0])
    opt.load_state_dict(good[1])
    return lr_mult * 0.5


def _agree_finite(loss: torch.Tensor, world: int) -> bool:
    """Whether the loss is finite on every rank (all ranks must skip a step together, or DDP would hang)."""
    ok = torch.isfinite(loss.detach()).to(torch.int32).reshape(1)
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


def train_pass(net: nn.Module, model: nn.Module, opt: torch.optim.Optimizer, batches: Iterable, cfg: TrainConfig,
               device: torch.device | None = None, world: int = 1, loss_fn: LossFn | None = None,
               on_loss: Callable[[float], None] | None = None) -> Pass:
    """One epoch of steps over ``batches`` of ``(x, y)`` (``net``: ``model`` or its DDP wrapper); a non-finite loss
    skips its step, and :data:`MAX_BAD_STEPS` of them end the pass as diverged. ``on_loss(mean_loss)`` hears the
    running loss after each step (a progress bar). Accuracy is counted for the default cross-entropy loss only."""
    r, t0 = Pass(), time.perf_counter()
    amp = cfg.amp == "bf16"
    for xb, yb in batches:
        if device is not None:
            xb, yb = xb.to(device), yb.to(device)
        with torch.autocast(xb.device.type, dtype=torch.bfloat16, enabled=amp):
            out = net(xb)
        loss = task_loss(out.float(), yb) if loss_fn is None else loss_fn(out, xb, yb)  # classes or next tokens
        total = loss + quadratic_penalty(model, cfg.relinear)
        opt.zero_grad(set_to_none=True)
        if not _agree_finite(total, world):
            r.bad_steps += 1
            if r.bad_steps >= MAX_BAD_STEPS:
                r.diverged = True
                break
            continue
        total.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        n = yb.numel() if loss_fn is None else len(xb)  # a language model: every position counts
        r.loss_sum += float(loss.detach()) * n
        r.seen += n
        if loss_fn is None:
            r.correct += int((out.argmax(-1) == yb).sum())
        if on_loss is not None:
            on_loss(r.loss_sum / max(r.seen, 1))
    r.seconds = time.perf_counter() - t0
    return r


def _snapshot(model: nn.Module, opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    return copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())


def epoch_loop(model: nn.Module, opt: torch.optim.Optimizer, cfg: TrainConfig, st: Progressed, last: int,
               run_epoch: Callable[[int], dict[str, Any] | None], *, base_lrs: list[float], what: str, hint: str,
               on_epoch: Callable[[Progressed], None] | None = None,
               on_rollback: Callable[[int, float], None] | None = None) -> Progressed:
    """Train epochs ``st.epoch .. last - 1``: set each epoch's learning rate (schedule × rollback multiplier), call
    ``run_epoch(epoch)`` (the epoch's metrics row, or ``None`` when it diverged), and roll back a diverged epoch or
    one that left NaN/Inf weights. Good epochs are appended to ``st.history`` and passed to ``on_epoch``
    (e.g. to save the run); ``on_rollback(epoch, lr_mult)`` hears of each rollback (1-based epoch). ``what`` and
    ``hint`` name the work and the fix in the divergence error."""
    good = _snapshot(model, opt)
    while st.epoch < last:
        for g, lr0 in zip(opt.param_groups, base_lrs):
            g["lr"] = lr0 * lr_factor(cfg, st.epoch) * st.lr_mult
        row = run_epoch(st.epoch)
        if row is None or not all_finite(model):
            st.rollbacks += 1
            st.lr_mult = roll_back(model, opt, good, st.rollbacks, cfg.max_rollbacks, st.lr_mult,
                                   f"{what} in epoch {st.epoch + 1}", hint)
            if on_rollback is not None:
                on_rollback(st.epoch + 1, st.lr_mult)
            continue
        st.history.append(row)
        st.epoch += 1
        good = _snapshot(model, opt)
        if on_epoch is not None:
            on_epoch(st)
    return st
