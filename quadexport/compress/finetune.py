"""Short fine-tuning of a compressed model with its run's recipe (batch size, weight decay, optimizer, ReLinear
learning-rate ratios for the quadratic branches), cosine schedule over the fine-tuning epochs."""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import Dataset

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


def recipe(train_config: dict[str, Any], epochs: int, lr: float | None = None, lr_scale: float = 0.1):
    """The run's :class:`~quadexport.training.loop.TrainConfig` for fine-tuning: its optimizer, batch size, weight decay,
    schedule and ReLinear settings, ``epochs`` epochs at ``lr`` (default: the run's LR × ``lr_scale``)."""
    from dataclasses import fields

    from quadexport.training.loop import TrainConfig

    known = {f.name for f in fields(TrainConfig)}
    tc = {k: v for k, v in (train_config or {}).items() if k in known}
    base = float(tc.get("lr", 0.05))
    tc.update(epochs=int(epochs), lr=float(lr) if lr is not None else base * lr_scale, device="cpu", amp="none")
    tc.pop("warm_start", None)
    return TrainConfig(**tc)


def finetune(model: nn.Module, data: Dataset, train_config: dict[str, Any], epochs: int, lr: float | None = None,
             progress: Callable[[Any, str], Any] | None = None, log: Callable[[str], None] | None = None,
             workers: int = 0, loss_fn: Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
             ) -> list[dict[str, Any]]:
    """Fine-tune ``model`` in place on ``data`` (map-style ``(image, label)``: in-memory tensors, or image files read
    by ``workers`` DataLoader processes) with the run's recipe through the training loop of :mod:`quadexport.training.loop`
    (:func:`~quadexport.training.fit.fit_dataset`: NaN steps skipped, NaN epochs rolled back with the LR halved); gate and
    power branches of quadratic and mixed layers at the run's ReLinear LR ratios (:func:`param_groups`).
    ``loss_fn(outputs, x, y)`` (a task loss) replaces cross-entropy on the labels. Returns per-epoch metrics."""
    from quadexport.training.fit import fit_dataset

    cfg = recipe(train_config, epochs, lr)
    groups = param_groups(model, cfg.lr, cfg.relinear.to_dict(), cfg.weight_decay)
    opt = (torch.optim.Adam(groups, lr=cfg.lr) if cfg.optimizer == "adam"
           else torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9))
    hist = fit_dataset(model, data, cfg, workers=workers, optimizer=opt, progress=progress, log_fn=log,
                       loss_fn=loss_fn)
    for row in hist:
        (log or _log.info)(f"   fine-tune epoch {row['epoch']}/{epochs}: train_loss {row['train_loss']:.4f} "
                           f"({row['seconds']:.0f} s)")
    return hist


__all__ = ["finetune", "param_groups", "recipe"]
