"""The rewrite of a planned model (step 4 of :mod:`quadexport.compress.prune`): linear layers, :class:`MixedQuad`
layers and :class:`PermShortcut` shortcuts, the spec that rebuilds it, BatchNorm folding into mixed layers and
BatchNorm recalibration."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from quadexport.compress.permute import conv_shortcuts, permute_model
from quadexport.compress.plan import LayerPlan, Plan
from quadexport.compress.stats import Fit
from quadexport.compress.structure import Structure, describe
from quadexport.errors import UsageError
from quadexport.layers.bnfold import bn_scale_shift
from quadexport.layers.mixed import MixedQuad, PermShortcut, like
from quadexport.transforms.prune_spec import SPEC_VERSION, set_spec

Tensor = torch.Tensor
SHORTCUTS = ("auto", "conv")

__all__ = ["SHORTCUTS", "compress_model", "copy_scaled", "fold_mixed_bn", "recalibrate_bn"]


def _fit_after_perm(fit: Fit, perm: list[int], rows: slice) -> Fit:
    idx = torch.tensor(perm, dtype=torch.long)[rows]
    return Fit(fit.terms, fit.coef[idx], fit.shift[idx], fit.score[idx])


@torch.no_grad()
def compress_model(model: nn.Module, pl: Plan, scores: dict[str, dict[str, Fit]], split: str = "conv",
                   shortcut: str = "auto") -> tuple[nn.Module, dict[str, Any]]:
    """Apply a plan to a copy of ``model``. Returns ``(compressed model, spec)``; the model's
    ``quadexport_config["compress"]`` holds the spec (JSON string).

    Args:
        model: the uncompressed model.
        pl: the plan.
        scores: the channel scores the plan was made from (for the refits).
        split: :class:`MixedQuad` form (``"conv"`` or ``"slice"``).
        shortcut: ``"auto"``: option-A shortcuts become :class:`PermShortcut` only where a stream is permuted;
            ``"conv"``: every option-A shortcut becomes the (exact) 1×1 conv, which keeps onnxruntime's NCHWc layout
            through the residual streams (``Slice``/``Pad`` force reorders); a graph rewrite that would speed up the
            ReLU twin as much, reported separately.
    """
    if shortcut not in SHORTCUTS:
        raise UsageError(f"shortcut must be one of {SHORTCUTS}, got {shortcut!r}")
    work = copy.deepcopy(model).eval()
    structure = pl.structure
    perms = {g: p for g, p in pl.perms.items() if p != list(range(len(p)))}
    if perms:
        permute_model(work, perms, structure)
    if shortcut == "conv":
        conv_shortcuts(work, structure)
    bn_of = structure.group_of_producer()
    spec: dict[str, Any] = {"version": SPEC_VERSION, "layers": {}, "shortcuts": {}, "folded_bn": [],
                            "split": split}
    for sc in structure.shortcuts:
        if isinstance(work.get_submodule(sc.name), PermShortcut):
            spec["shortcuts"][sc.name] = {"in": sc.in_channels, "out": sc.out_channels, "stride": sc.stride}
    for name, lp in pl.layers.items():
        if lp.unchanged:
            continue
        perm = pl.perms.get(bn_of[name][0].name) if name in bn_of else None
        perm = perm if perm is not None else list(range(lp.channels))
        bn_name = bn_of[name][1] if name in bn_of else None
        if lp.k == 0:
            spec["layers"][name] = _to_linear(work, name, lp, scores[name], perm, bn_name)
        else:
            spec["layers"][name] = _to_mixed(work, name, lp, scores[name], perm, split)
            spec["layers"][name]["bn"] = bn_name  # fold_mixed_bn folds it without re-tracing the model
    set_spec(work, spec)
    return work, spec


def _to_linear(work: nn.Module, name: str, lp: LayerPlan, sc: dict[str, Fit], perm: list[int],
               bn_name: str | None) -> dict[str, Any]:
    """Replace a wholly linear layer by its ``α·r + β`` refit; returns its spec entry."""
    layer = work.get_submodule(name)
    lin = _fit_after_perm(sc["lin"], perm, slice(lp.k, None))
    alpha, beta = lin.coef[:, 0], lin.shift
    new = like(layer.r, lp.channels, bias=layer.r.bias is not None or bn_name is None)
    if bn_name is not None:  # β goes into the BatchNorm's mean: BN(αr + β) = BN'(αr), μ' = μ - β
        copy_scaled(new, layer.r, alpha, None)
        bn = work.get_submodule(bn_name)
        bn.running_mean.sub_(beta.to(bn.running_mean.dtype))
    else:
        copy_scaled(new, layer.r, alpha, beta)
    work.set_submodule(name, new)
    return {"type": "linear", "bias": new.bias is not None}


def _prefix_refit(lp: LayerPlan, sc: dict[str, Fit], perm: list[int]) -> dict[str, Tensor]:
    """Per-prefix-channel refits when the plan drops the ``b`` or ``g`` branch (see :meth:`MixedQuad.load_from`)."""
    fit: dict[str, Tensor] = {}
    if lp.g and lp.b:
        return fit
    front = torch.tensor(perm[:lp.k], dtype=torch.long)
    if not lp.b:
        f_p, f_l = sc["no_b"], sc["lin"]
        use_lin = torch.tensor([s == "lin" for s in lp.slot_fit])
        fit["g_scale"] = torch.where(use_lin, torch.ones(lp.k, dtype=torch.float64), f_p.coef[front, 0])
        fit["g_weight_zero"] = use_lin
        fit["g_bias"] = f_l.coef[front, 0]
        fit["shift"] = torch.where(use_lin, f_l.shift[front], f_p.shift[front])
    else:
        f = sc["no_g"]
        fit["r_scale"] = f.coef[front, 0]
        fit["b_scale"] = f.coef[front, 1]
        fit["shift"] = f.shift[front]
    return fit


def _to_mixed(work: nn.Module, name: str, lp: LayerPlan, sc: dict[str, Fit], perm: list[int],
              split: str) -> dict[str, Any]:
    """Replace a partly quadratic layer by a :class:`MixedQuad`; returns its spec entry."""
    layer = work.get_submodule(name)
    lin = _fit_after_perm(sc["lin"], perm, slice(lp.k, None))
    alpha, beta = lin.coef[:, 0], lin.shift
    fit = _prefix_refit(lp, sc, perm)
    qbias = not lp.b
    new = MixedQuad(layer, lp.k, g=lp.g, b=lp.b, qbias=qbias, split=split)
    new.load_from(layer, fit or None, alpha if lp.k < lp.channels else None,
                  beta if lp.k < lp.channels else None)
    work.set_submodule(name, new)
    return {"type": "mixed", "k": lp.k, "g": lp.g, "b": lp.b, "qbias": qbias, "split": split}


@torch.no_grad()
def copy_scaled(dst: nn.Module, src: nn.Module, alpha: Tensor, beta: Tensor | None) -> None:
    """``dst`` ← ``alpha * src + beta`` row-wise (``beta`` into ``dst``'s bias)."""
    w = src.weight.detach().double() * alpha.double().reshape((-1,) + (1,) * (src.weight.dim() - 1))
    dst.weight.copy_(w.to(dst.weight.dtype))
    b = src.bias.detach().double() * alpha.double() if src.bias is not None else None
    if beta is not None:
        b = beta.double() if b is None else b + beta.double()
    if b is not None:
        if dst.bias is None:
            raise ValueError("a linear refit needs a bias")
        dst.bias.copy_(b.to(dst.bias.dtype))


@torch.no_grad()
def recalibrate_bn(model: nn.Module, x: Tensor, batch_size: int = 256) -> int:
    """Re-estimate every BatchNorm's running mean/variance on ``x`` (cumulative average, train-mode forward without
    gradients), so the layers after a pruned one see normalised inputs again. Returns the number of BNs."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.training) for m in bns]
    was = model.training
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size])
    finally:
        for m, (mom, tr) in zip(bns, saved):
            m.momentum = mom
            m.train(tr)
        model.train(was)
    return len(bns)


# ---------------------------------------------------------------------------------------------------------------
# BatchNorm folding into MixedQuad
# ---------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def fold_mixed_bn(model: nn.Module, spec: dict[str, Any], structure: Structure | None = None) -> list[str]:
    """Fold the BatchNorm after every :class:`MixedQuad` into it and replace the BN by ``nn.Identity`` (the
    exporter folds BN only into plain and quadratic layers). Updates ``spec["folded_bn"]`` and the ``qbias`` flags.
    ``structure``: the channel groups of the model it was compressed from (default: traced on ``model``).
    Returns the folded BN names."""
    if structure is None and all("bn" in d for d in spec["layers"].values() if d.get("type") == "mixed"):
        pairs = {n: d["bn"] for n, d in spec["layers"].items() if d.get("type") == "mixed"}
    else:
        structure = describe(model) if structure is None else structure
        pairs = {layer: bn for layer, (_, bn) in structure.group_of_producer().items()}
    done = []
    for layer, bn_name in pairs.items():
        m = model.get_submodule(layer)
        if not isinstance(m, MixedQuad) or bn_name is None:
            continue
        bn = model.get_submodule(bn_name)
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
            continue
        was = bn.training
        bn.eval()
        s, t = bn_scale_shift(bn)
        bn.train(was)
        m.fold_affine(s, t)
        model.set_submodule(bn_name, nn.Identity())
        done.append(bn_name)
        spec["layers"][layer]["qbias"] = m.qbias is not None
    spec["folded_bn"] = sorted(set(spec.get("folded_bn", [])) | set(done))
    set_spec(model, spec)
    return done
