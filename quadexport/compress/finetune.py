"""Short fine-tuning of a compressed model with its run's recipe (batch size, weight decay, optimizer, ReLinear
learning-rate ratios for the quadratic branches), cosine schedule over the fine-tuning epochs."""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from quadexport.layers.mixed import MixedQuad
from quadexport.layers.quad import QuadLayer

_log = logging.getLogger(__name__)


def param_groups(model: nn.Module, lr: float, relinear: dict[str, Any], weight_decay: float) -> list[dict[str, Any]]:
    """Base parameters at ``lr``; gate/power-branch parameters of quadratic and :class:`MixedQuad` layers at the
    run's ReLinear ratios when it used ``sg``."""
    sg = relinear.get("mode", "none") in ("sg", "sg+sw")
    rg = float(relinear.get("lr_ratio_g", 1.0)) if sg else 1.0
    rb = float(relinear.get("lr_ratio_b", 1.0)) if sg else 1.0
    g, b = [], []
    for m in model.modules():
        if isinstance(m, QuadLayer):
            if "g" in m.neuron_type.quadratic_branches:
                g += list(m.g.parameters())
            if "b" in m.neuron_type.quadratic_branches:
                b += list(m.b.parameters())
        elif isinstance(m, MixedQuad):
            g += list(m.g.parameters()) if m.g is not None else []
            b += list(m.b.parameters()) if m.b is not None else []
    special = {id(p) for p in g + b}
    base = [p for p in model.parameters() if id(p) not in special and p.requires_grad]
    groups = [{"params": base, "lr": lr, "base_lr": lr, "name": "base", "weight_decay": weight_decay}]
    for name, ps, r in (("g", g, rg), ("b", b, rb)):
        ps = [p for p in ps if p.requires_grad]
        if ps:
            groups.append({"params": ps, "lr": lr * r, "base_lr": lr * r, "name": name, "weight_decay": weight_decay})
    return groups


def finetune(model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
             y_test: torch.Tensor, train_config: dict[str, Any], epochs: int, lr: float | None = None,
             lr_scale: float = 0.1, seed: int = 0, log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Train ``model`` in place for ``epochs`` epochs; returns per-epoch metrics.

    Args:
        model: the compressed model (BatchNorms still in place).
        x_train, y_train: training data (the run's training subset).
        x_test, y_test: test data (accuracy after each epoch).
        train_config: the run's ``TrainConfig`` dict (``meta["train_config"]``).
        epochs: fine-tuning epochs.
        lr: base learning rate (default: the run's ``lr × lr_scale``).
        lr_scale: see ``lr``.
        seed: shuffling seed.
        log: progress callback (default: this module's logger at INFO).
    """
    log = log or _log.info
    from quadexport.train import evaluate

    tc = train_config or {}
    base_lr = float(lr) if lr is not None else float(tc.get("lr", 0.05)) * lr_scale
    bs = int(tc.get("batch_size", 64))
    wd = float(tc.get("weight_decay", 1e-4))
    groups = param_groups(model, base_lr, tc.get("relinear", {}) or {}, wd)
    if tc.get("optimizer", "sgd") == "adam":
        opt = torch.optim.Adam(groups, lr=base_lr)
    else:
        opt = torch.optim.SGD(groups, lr=base_lr, momentum=0.9)
    gen = torch.Generator().manual_seed(int(seed))
    hist = []
    for ep in range(int(epochs)):
        f = 0.5 * (1.0 + math.cos(math.pi * ep / epochs)) if tc.get("schedule", "cosine") == "cosine" else 1.0
        for gr in opt.param_groups:
            gr["lr"] = gr["base_lr"] * f
        model.train()
        t0, loss_sum, seen = time.perf_counter(), 0.0, 0
        order = torch.randperm(len(x_train), generator=gen)
        for i in range(0, len(order), bs):
            idx = order[i:i + bs]
            out = model(x_train[idx])
            loss = F.cross_entropy(out, y_train[idx])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"fine-tuning loss is not finite in epoch {ep + 1}; lower --finetune-lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * len(idx)
            seen += len(idx)
        test_loss, test_acc = evaluate(model, x_test, y_test, torch.device("cpu"))
        row = {"epoch": ep + 1, "train_loss": loss_sum / max(seen, 1), "test_loss": test_loss, "test_acc": test_acc,
               "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
        hist.append(row)
        log(f"fine-tune epoch {ep + 1}/{epochs}: train_loss {row['train_loss']:.4f} test_acc {100 * test_acc:.2f}% "
            f"({row['seconds']:.0f} s)")
    model.eval()
    return hist


__all__ = ["finetune", "param_groups"]
