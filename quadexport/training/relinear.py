"""ReLinear (Fan et al., TNNLS 2023): referenced linear initialisation and regularisation of quadratic terms.

- :func:`relinear_init_layer` / :func:`relinear_init` / :func:`plain_init`: re-exported from
  :mod:`quadexport.layers.init` (the initialisation lives with the neuron types).
- :func:`param_groups` (``sg``): optimizer groups with learning-rate ratios for the ``g`` and ``b`` parameters.
- :func:`quadratic_penalty` (``sw``): L1 or L2 penalty on the quadratic weights with coefficients (α for g, β for b).
- :func:`warm_start`: copy ``W_r`` (and BN, stem, head) from a trained ReLU twin.
- :func:`quadratic_norms`: ‖W_g‖ and ‖W_b‖ for logging.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
from torch import nn

from quadexport.errors import UsageError
from quadexport.layers.init import plain_init, quad_layers, relinear_init, relinear_init_layer

Tensor = torch.Tensor

GATE_BRANCHES = ("g",)
POWER_BRANCHES = ("b",)


@dataclass
class ReLinearConfig:
    """ReLinear settings of a training run.

    Args:
        mode: ``"none"`` (plain training, the control), ``"sg"`` (shrink gradients: LR ratios),
            ``"sw"`` (shrink weights: penalty) or ``"sg+sw"``.
        lr_ratio_g: learning-rate ratio of gate (``g``) parameters to the base LR (``sg``; 0 freezes them).
        lr_ratio_b: learning-rate ratio of power-branch (``b``) parameters (``sg``).
        penalty: ``"l1"`` or ``"l2"`` (``sw``).
        alpha: penalty coefficient on ``W_g`` (``sw``).
        beta: penalty coefficient on ``W_b`` (``sw``).
        init: ``"relinear"`` (default) or ``"kaiming"`` (every branch Kaiming-normal; control experiments).
    """

    mode: str = "sg"
    lr_ratio_g: float = 1e-2
    lr_ratio_b: float = 1e-2
    penalty: str = "l2"
    alpha: float = 1e-4
    beta: float = 1e-4
    init: str = "relinear"

    def __post_init__(self) -> None:
        if self.mode not in ("none", "sg", "sw", "sg+sw"):
            raise UsageError(f"relinear mode must be none, sg, sw or sg+sw, got {self.mode!r}")
        if self.penalty not in ("l1", "l2"):
            raise UsageError(f"penalty must be l1 or l2, got {self.penalty!r}")
        if self.init not in ("relinear", "kaiming"):
            raise UsageError(f"init must be relinear or kaiming, got {self.init!r}")
        for k in ("lr_ratio_g", "lr_ratio_b", "alpha", "beta"):
            v = float(getattr(self, k))
            if not math.isfinite(v) or v < 0:
                raise UsageError(f"{k} must be a finite number >= 0, got {v}")
            setattr(self, k, v)

    @property
    def uses_sg(self) -> bool:
        return self.mode in ("sg", "sg+sw")

    @property
    def uses_sw(self) -> bool:
        return self.mode in ("sw", "sg+sw")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _branch_params(model: nn.Module, branches: tuple[str, ...]) -> list[tuple[str, nn.Parameter]]:
    out = []
    for lname, layer in quad_layers(model):
        for bname in branches:
            if bname in layer.neuron_type.quadratic_branches:
                for pname, p in getattr(layer, bname).named_parameters():
                    out.append((f"{lname}.{bname}.{pname}" if lname else f"{bname}.{pname}", p))
    return out


def param_groups(model: nn.Module, lr: float, cfg: ReLinearConfig, weight_decay: float = 0.0) -> list[dict[str, Any]]:
    """Optimizer parameter groups: base parameters at ``lr``; gate and power-branch parameters at ``lr * ratio``
    when ``cfg`` uses ``sg`` (else everything at ``lr``). Groups carry a ``"name"`` key (``base``, ``g``, ``b``)
    and the ``"lr_ratio"`` they were given. The quadratic groups are found by module type, not by name matching.
    Frozen parameters (``requires_grad=False``, e.g. ``--train-only quadratic``) are left out.

    Args:
        model: the model (may be wrapped, e.g. in DDP: parameters are matched by identity).
        lr: base learning rate.
        cfg: ReLinear settings.
        weight_decay: weight decay applied to all groups.
    """
    g = [p for _, p in _branch_params(model, GATE_BRANCHES) if p.requires_grad]
    b = [p for _, p in _branch_params(model, POWER_BRANCHES) if p.requires_grad]
    special = {id(p) for p in g + b}
    base = [p for p in model.parameters() if id(p) not in special and p.requires_grad]
    rg = cfg.lr_ratio_g if cfg.uses_sg else 1.0
    rb = cfg.lr_ratio_b if cfg.uses_sg else 1.0
    groups = [{"params": base, "lr": lr, "lr_ratio": 1.0, "name": "base", "weight_decay": weight_decay}]
    if g:
        groups.append({"params": g, "lr": lr * rg, "lr_ratio": rg, "name": "g", "weight_decay": weight_decay})
    if b:
        groups.append({"params": b, "lr": lr * rb, "lr_ratio": rb, "name": "b", "weight_decay": weight_decay})
    return groups


def quadratic_penalty(model: nn.Module, cfg: ReLinearConfig) -> Tensor:
    """The ``sw`` penalty ``α·‖W_g‖ + β·‖W_b‖`` (L1: sum of |w|; L2: sum of w²) over quadratic *weights* only.

    Returns a zero tensor when ``cfg`` does not use ``sw``.
    """
    device = next(model.parameters()).device
    total = torch.zeros((), device=device)
    if not cfg.uses_sw:
        return total
    for coef, branches in ((cfg.alpha, GATE_BRANCHES), (cfg.beta, POWER_BRANCHES)):
        if coef == 0:
            continue
        for name, p in _branch_params(model, branches):
            if name.endswith("weight"):
                total = total + coef * (p.abs().sum() if cfg.penalty == "l1" else (p * p).sum())
    return total


@torch.no_grad()
def quadratic_norms(model: nn.Module) -> dict[str, float]:
    """Global L2 norms of the gate weights ``W_g`` and power weights ``W_b`` (``norm_wg``, ``norm_wb``)."""
    out = {}
    for key, branches in (("norm_wg", GATE_BRANCHES), ("norm_wb", POWER_BRANCHES)):
        sq = sum(float((p.detach().double() ** 2).sum()) for n, p in _branch_params(model, branches)
                 if n.endswith("weight"))
        out[key] = math.sqrt(sq)
    return out


def relu_to_quad_key(key: str, quad_keys: set[str]) -> str | None:
    """Map a ReLU-twin state-dict key onto the quadratic model: ``conv.weight`` → ``conv.r.weight`` where the
    quadratic model has a quadratic layer at ``conv`` (else the key itself if present)."""
    if key in quad_keys:
        return key
    head, _, leaf = key.rpartition(".")
    cand = f"{head}.r.{leaf}" if head else f"r.{leaf}"
    return cand if cand in quad_keys else None


@torch.no_grad()
def warm_start(quad_model: nn.Module, relu_state: Mapping[str, Tensor], strict: bool = True) -> list[str]:
    """Copy a trained ReLU twin's weights into a quadratic model: every conv/linear of the twin lands in the ``r``
    branch of the matching quadratic layer; BN, stem and head are copied as they are. Gate and power branches keep
    their ReLinear init, so right after this the quadratic model computes exactly what the ReLU model computes.

    Args:
        quad_model: quadratic model of the twin architecture (same builder, quadratic neuron).
        relu_state: state dict of the ReLU twin.
        strict: raise if a ReLU key has no place in the quadratic model or shapes differ.

    Returns:
        The quadratic-model keys that were filled.
    """
    qstate = quad_model.state_dict()
    keys = set(qstate)
    filled = []
    for k, v in relu_state.items():
        qk = relu_to_quad_key(k, keys)
        if qk is None or qstate[qk].shape != v.shape:
            if strict:
                raise UsageError(f"ReLU checkpoint key {k!r} (shape {tuple(v.shape)}) has no match in the quadratic "
                                 f"model; is it the twin architecture?")
            continue
        qstate[qk].copy_(v)
        filled.append(qk)
    return filled


__all__ = ["GATE_BRANCHES", "POWER_BRANCHES", "ReLinearConfig", "param_groups", "plain_init", "quadratic_norms",
           "quadratic_penalty", "relinear_init", "relinear_init_layer", "relu_to_quad_key", "warm_start"]
