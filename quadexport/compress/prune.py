"""Quadratic-term pruning (issue #5, technique 1).

1. **Calibration** (:func:`collect_stats`): on real training images, every Fan-form quadratic layer's branch outputs
   ``R = r(x)``, ``P = r(x)·g(x)`` and ``B = b(x·x)`` are recorded per output channel as means and covariances
   (float64). The layer output is ``Y = P + B``; its linear twin would output ``R``.
2. **Scores** (:func:`channel_scores`): for a channel, the best least-squares refit ``Y ≈ Σ a_i X_i + c`` with a
   reduced set of terms leaves a residual; its RMS relative to ``std(Y)`` is the score. ``lin``: ``{R}`` (the channel
   becomes linear, ``y = α·r(x) + β``); ``no_b``: ``{P}`` (drop ``W_b``); ``no_g``: ``{R, B}`` (drop the gate).
   Because a BatchNorm (or the next layer) normalises the channel by its std, a score of 0.05 means the channel's
   normalised output moves by 5 % RMS.
3. **Decisions** (:func:`plan`): a channel is quadratic if its ``lin`` score is ≥ the threshold (so threshold 0
   changes nothing). Quadratic channels are moved to the front of their channel group by a permutation, and their
   count ``k`` is rounded up to the NCHWc block (:func:`nchwc_block`) so onnxruntime keeps the blocked layout.
   In a residual stream every producer must use the same order: the quadratic prefix is the union over the stream's
   partially quadratic ``conv2`` layers (layers that are wholly linear or wholly quadratic need no order). A layer
   also drops its ``b`` (or ``g``) branch when no channel of its prefix needs it.
4. **Rewrite** (:func:`compress_model`): layers with ``k = 0`` become a plain ``nn.Conv2d``/``nn.Linear`` (the
   ``α``/``β`` refit goes into the weights and the following BatchNorm's mean); partial layers become
   :class:`~quadexport.compress.layers.MixedQuad`; option-A shortcuts between permuted streams become
   :class:`~quadexport.compress.layers.PermShortcut`. The rewrite is described by a JSON *spec* stored in the model's
   ``quadexport_config["compress"]`` so ``create_model`` (and so :func:`quadexport.checkpoint.load`) rebuilds the
   architecture (:func:`apply_spec`).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import nn

from quadexport.compress.layers import MixedQuad, PermShortcut, like
from quadexport.compress.structure import Group, Structure, describe, permutable
from quadexport.layers.quad import QuadLayer

Tensor = torch.Tensor
SPEC_VERSION = 1
TERMS = ("R", "P", "B")
FIT_SETS = {"lin": ("R",), "no_b": ("P",), "no_g": ("R", "B")}
SHORTCUTS = ("auto", "conv")


def nchwc_block() -> int:
    """onnxruntime's NCHWc channel block on this CPU: 16 with AVX-512, 8 otherwise (MlasNchwcGetBlockSize)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return 8
    return 16 if " avx512f" in flags else 8


def is_fan_form(layer: nn.Module) -> bool:
    """A quadratic layer whose output is ``r*g + b(x*x)`` (``fan``, ``fan_pw``, ``fan_dw``): the layers we prune."""
    if not isinstance(layer, QuadLayer):
        return False
    nt = layer.neuron_type
    names = {b.name: b for b in nt.branches}
    if set(names) != {"r", "g", "b"} or names["b"].input != "x2" or names["r"].input != "x" or names["g"].input != "x":
        return False
    gen = torch.Generator().manual_seed(0)
    o = {n: torch.randn(3, 4, generator=gen, dtype=torch.float64) for n in names}
    return bool(torch.allclose(nt.combine(o), o["r"] * o["g"] + o["b"]))


def splittable(layer: QuadLayer) -> bool:
    """Output channels can be split between a quadratic prefix and a linear rest (no grouped branch)."""
    return all(getattr(getattr(layer, b.name), "groups", 1) == 1 for b in layer.neuron_type.branches)


# ---------------------------------------------------------------------------------------------------------------
# Calibration statistics
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class LayerStats:
    """Per-channel first and second moments of ``R, P, B`` (float64), over batch and spatial positions."""

    n: int
    s1: Tensor  # (3, C)
    s2: Tensor  # (3, 3, C)

    @property
    def mean(self) -> Tensor:
        return self.s1 / self.n

    @property
    def cov(self) -> Tensor:
        m = self.mean
        return self.s2 / self.n - m[:, None, :] * m[None, :, :]


@torch.no_grad()
def collect_stats(model: nn.Module, x: Tensor, batch_size: int = 256,
                  layers: Iterable[str] | None = None) -> dict[str, LayerStats]:
    """Per-channel moments of ``R = r(x)``, ``P = r·g``, ``B = b(x·x)`` of every Fan-form quadratic layer (or
    ``layers``) on the calibration inputs ``x`` (model in eval mode; its mode is restored)."""
    mods = dict(model.named_modules())
    names = [n for n, m in mods.items() if is_fan_form(m)] if layers is None else list(layers)
    acc: dict[str, list] = {}

    def make_hook(name: str):
        def hook(m: QuadLayer, inp, out) -> None:
            xin = inp[0]
            r, g, b = m.r(xin), m.g(xin), m.b(xin * xin)
            p = r * g
            c = r.shape[1]
            t = torch.stack([v.transpose(0, 1).reshape(c, -1) for v in (r, p, b)]).double()  # (3, C, M)
            s1 = t.sum(-1)
            s2 = torch.einsum("icm,jcm->ijc", t, t)
            if name not in acc:
                acc[name] = [0, torch.zeros_like(s1), torch.zeros_like(s2)]
            a = acc[name]
            a[0] += t.shape[-1]
            a[1] += s1
            a[2] += s2
        return hook

    handles = [mods[n].register_forward_hook(make_hook(n)) for n in names]
    was = model.training
    model.eval()
    try:
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size])
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return {n: LayerStats(*acc[n]) for n in names if n in acc}


@dataclass
class Fit:
    """Least-squares refit of one layer's channels with a reduced set of terms."""

    terms: tuple[str, ...]
    coef: Tensor  # (C, len(terms))
    shift: Tensor  # (C,)
    score: Tensor  # (C,) residual RMS / std(Y)


def fit_terms(st: LayerStats, terms: tuple[str, ...]) -> Fit:
    """Refit ``Y = P + B`` per channel as ``Σ coef_i · X_i + shift`` with ``X ∈ terms`` (subset of R, P, B)."""
    idx = [TERMS.index(t) for t in terms]
    cov, mean = st.cov, st.mean  # (3,3,C), (3,C)
    c = cov.shape[-1]
    cov_xy = cov[:, 1, :] + cov[:, 2, :]  # Cov(X_i, Y), (3, C)
    var_y = (cov[1, 1] + 2 * cov[1, 2] + cov[2, 2]).clamp_min(0)
    mean_y = mean[1] + mean[2]
    sxx = cov[idx][:, idx].permute(2, 0, 1)  # (C, k, k)
    sxy = cov_xy[idx].T  # (C, k)
    eps = 1e-12 * sxx.diagonal(dim1=1, dim2=2).sum(-1).clamp_min(1e-300)
    sxx = sxx + eps[:, None, None] * torch.eye(len(idx), dtype=sxx.dtype)
    coef = torch.linalg.solve(sxx, sxy.unsqueeze(-1)).squeeze(-1)  # (C, k)
    explained = (coef * sxy).sum(-1)
    resid = (var_y - explained).clamp_min(0)
    score = torch.where(var_y > 0, torch.sqrt(resid / var_y.clamp_min(1e-300)), torch.zeros(c, dtype=var_y.dtype))
    shift = mean_y - (coef * mean[idx].T).sum(-1)
    return Fit(terms, coef, shift, score)


def channel_scores(stats: dict[str, LayerStats]) -> dict[str, dict[str, Fit]]:
    """``{layer: {"lin": Fit, "no_b": Fit, "no_g": Fit}}``."""
    return {n: {k: fit_terms(st, t) for k, t in FIT_SETS.items()} for n, st in stats.items()}


# ---------------------------------------------------------------------------------------------------------------
# Decisions
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class LayerPlan:
    """What happens to one quadratic layer.

    Attributes:
        name: module name.
        channels: output channels.
        own: channels whose own score asks for the quadratic terms (original indices).
        k: quadratic prefix after grouping/alignment (0: linear layer; ``channels``: fully quadratic).
        g, b: branches kept in the prefix.
        slot_fit: per prefix channel, which refit ("exact", "no_b", "lin", "no_g").
        error: worst score over the channels made (partly) linear.
    """

    name: str
    channels: int
    own: list[int]
    k: int
    g: bool = True
    b: bool = True
    slot_fit: list[str] = field(default_factory=list)
    error: float = 0.0

    @property
    def unchanged(self) -> bool:
        return self.k == self.channels and self.g and self.b

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.name, "channels": self.channels, "quadratic_own": len(self.own), "k": self.k,
                "g": self.g and self.k > 0, "b": self.b and self.k > 0, "max_error": self.error}


@dataclass
class Plan:
    """A pruning plan: per-layer decisions and per-group permutations (``perm[i]`` = original channel at new
    position ``i``)."""

    threshold: float
    align: int
    layers: dict[str, LayerPlan]
    perms: dict[str, list[int]]
    structure: Structure | None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "align": self.align,
                "layers": [p.to_dict() for p in self.layers.values()],
                "permuted_groups": sorted(g for g, p in self.perms.items() if p != list(range(len(p)))),
                "notes": self.notes}


def _round_up(n: int, align: int, cap: int) -> int:
    return min(cap, int(math.ceil(n / align) * align)) if n > 0 else 0


def plan(model: nn.Module, scores: dict[str, dict[str, Fit]], threshold: float, align: int | None = None,
         drop_branches: bool = True) -> Plan:
    """Decide per layer and group (see the module docstring).

    Args:
        model: the (uncompressed) model.
        scores: :func:`channel_scores` of its calibration statistics.
        threshold: a channel is quadratic when its ``lin`` score is ≥ this (0: nothing changes).
        align: round the quadratic prefix of conv layers up to a multiple of this (default: :func:`nchwc_block`);
            dense layers use 1.
        drop_branches: drop ``b``/``g`` from a layer's prefix when no prefix channel needs it.
    """
    align = nchwc_block() if align is None else int(align)
    mods = dict(model.named_modules())
    structure = describe(model)
    notes: list[str] = []
    layers: dict[str, LayerPlan] = {}
    for name, sc in scores.items():
        lin = sc["lin"].score
        own = [int(i) for i in torch.nonzero(lin >= threshold).flatten()]
        layers[name] = LayerPlan(name, len(lin), own, k=len(own))

    def al(name: str) -> int:
        return 1 if isinstance(mods[name], nn.Linear) or hasattr(mods[name], "in_features") else align

    perms: dict[str, list[int]] = {}
    in_group: set[str] = set()
    groups = structure.groups if structure is not None else []
    for grp in groups:
        n = grp.channels
        ident = list(range(n))
        perms[grp.name] = ident
        prods = [p for p, _ in grp.producers if p in layers]
        in_group.update(prods)
        partial = []
        for p in prods:
            lp = layers[p]
            if not splittable(mods[p]):
                lp.k = n if lp.own else 0
            elif 0 < len(lp.own) < n:
                partial.append(p)
            else:
                lp.k = len(lp.own)
        if not partial:
            continue
        if permutable(model, grp):
            union = sorted(set().union(*(layers[p].own for p in partial)))
            k = _round_up(len(union), max(al(p) for p in partial), n)
            if k < n:
                best = torch.stack([scores[p]["lin"].score for p in partial]).max(0).values
                rest = sorted((i for i in range(n) if i not in set(union)), key=lambda i: -float(best[i]))
                extra = sorted(rest[:k - len(union)])
                front = sorted(union + extra)
                perm = front + [i for i in range(n) if i not in set(front)]
                perms[grp.name] = perm
            for p in partial:
                layers[p].k = k
        else:
            notes.append(f"group {grp.name} cannot be permuted (grouped branches): quadratic prefixes cover the "
                         f"highest quadratic channel index")
            for p in partial:
                lp = layers[p]
                lp.k = _round_up(max(lp.own) + 1, al(p), n)
    for name, lp in layers.items():
        if name in in_group:
            continue
        if structure is None or not splittable(mods[name]):
            lp.k = lp.channels if lp.own else 0
        else:  # not produced into a known group (should not happen for zoo models)
            lp.k = lp.channels if lp.own else 0
        if structure is None and 0 < len(lp.own) < lp.channels:
            notes.append(f"{name}: unknown model structure, layer kept whole")

    # branch drops and refit choices for the prefix; errors for the linear rest
    for name, lp in layers.items():
        sc = scores[name]
        perm = _perm_of(structure, perms, name) or list(range(lp.channels))
        front = torch.tensor(perm[:lp.k], dtype=torch.long)
        rest = torch.tensor(perm[lp.k:], dtype=torch.long)
        lin_err = float(sc["lin"].score[rest].max()) if len(rest) else 0.0
        lp.slot_fit = ["exact"] * lp.k
        if lp.k and drop_branches:
            err_nob = torch.minimum(sc["no_b"].score[front], sc["lin"].score[front])
            err_nog = sc["no_g"].score[front]
            if float(err_nob.max()) < threshold:
                lp.b = False
                lp.slot_fit = ["no_b" if float(sc["no_b"].score[i]) <= float(sc["lin"].score[i]) else "lin"
                               for i in perm[:lp.k]]
                lin_err = max(lin_err, float(err_nob.max()))
            elif float(err_nog.max()) < threshold:
                lp.g = False
                lp.slot_fit = ["no_g"] * lp.k
                lin_err = max(lin_err, float(err_nog.max()))
        lp.error = lin_err
    return Plan(float(threshold), align, layers, perms, structure, notes)


def _perm_of(structure: Structure | None, perms: dict[str, list[int]], layer: str) -> list[int]:
    if structure is not None:
        for g in structure.groups:
            if any(p == layer for p, _ in g.producers):
                return perms.get(g.name, list(range(g.channels)))
    return []  # filled by caller with identity


# ---------------------------------------------------------------------------------------------------------------
# Permutation
# ---------------------------------------------------------------------------------------------------------------

def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


@torch.no_grad()
def _permute_out(m: nn.Module, perm: Tensor) -> None:
    mods = [getattr(m, b.name) for b in m.neuron_type.branches] if isinstance(m, QuadLayer) else [m]
    for lin in mods:
        lin.weight.copy_(lin.weight[perm])
        if lin.bias is not None:
            lin.bias.copy_(lin.bias[perm])


@torch.no_grad()
def _permute_in(m: nn.Module, perm: Tensor) -> None:
    mods = [getattr(m, b.name) for b in m.neuron_type.branches] if isinstance(m, QuadLayer) else [m]
    for lin in mods:
        lin.weight.copy_(lin.weight[:, perm])


@torch.no_grad()
def _permute_bn(bn: nn.Module, perm: Tensor) -> None:
    for key in ("weight", "bias", "running_mean", "running_var"):
        t = getattr(bn, key, None)
        if t is not None:
            t.copy_(t[perm])


def permute_model(model: nn.Module, perms: dict[str, list[int]], structure: Structure | None = None) -> nn.Module:
    """Permute channel groups in place (``perms[group] = [original channel at each new position]``); the model
    computes the same function. Option-A shortcuts touching a permuted stream become :class:`PermShortcut`.

    Returns:
        ``model``.
    """
    structure = structure or describe(model)
    if structure is None:
        raise ValueError("channel permutation needs a model of known structure (CIFAR ResNet, cnn, mlp)")
    ident = {g.name: list(range(g.channels)) for g in structure.groups}
    full = {**ident, **perms}
    for grp in structure.groups:
        perm = full[grp.name]
        if perm == ident[grp.name]:
            continue
        if sorted(perm) != ident[grp.name]:
            raise ValueError(f"perms[{grp.name!r}] is not a permutation of range({grp.channels})")
        if not permutable(model, grp):
            raise ValueError(f"group {grp.name} has grouped/depthwise layers and cannot be permuted")
        p = torch.tensor(perm, dtype=torch.long)
        for layer, bn in grp.producers:
            _permute_out(model.get_submodule(layer), p)
            if bn is not None:
                _permute_bn(model.get_submodule(bn), p)
        for layer in grp.consumers:
            _permute_in(model.get_submodule(layer), p)
    for sc in structure.shortcuts:
        if full[sc.src] == ident[sc.src] and full[sc.dst] == ident[sc.dst]:
            continue
        _set(model, sc.name, PermShortcut(sc.in_channels, sc.out_channels, sc.stride)
             .set_mapping(sc.pad, full[sc.src], full[sc.dst]))
    return model


def conv_shortcuts(model: nn.Module, structure: Structure | None = None) -> nn.Module:
    """Replace every option-A shortcut (``Slice`` + ``Pad`` in ONNX) of a CIFAR ResNet by the equivalent fixed 1×1
    strided conv (:class:`PermShortcut` with identity channel order), in place. Exact; works on ReLU models too."""
    structure = structure or describe(model)
    if structure is None:
        raise ValueError("conv shortcuts need a model of known structure (CIFAR ResNet)")
    for sc in structure.shortcuts:
        if not isinstance(model.get_submodule(sc.name), PermShortcut):
            _set(model, sc.name, PermShortcut(sc.in_channels, sc.out_channels, sc.stride)
                 .set_mapping(sc.pad, list(range(sc.in_channels)), list(range(sc.out_channels))))
    return model


# ---------------------------------------------------------------------------------------------------------------
# Rewrite
# ---------------------------------------------------------------------------------------------------------------

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
        raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {shortcut!r}")
    work = copy.deepcopy(model).eval()
    structure = pl.structure
    perms = {g: p for g, p in pl.perms.items() if p != list(range(len(p)))}
    if perms:
        permute_model(work, perms, structure)
    if shortcut == "conv" and structure is not None:
        conv_shortcuts(work, structure)
    bn_of = structure.group_of_producer() if structure is not None else {}
    spec: dict[str, Any] = {"version": SPEC_VERSION, "layers": {}, "shortcuts": {}, "folded_bn": [],
                            "split": split}
    for sc in (structure.shortcuts if structure is not None else []):
        if isinstance(work.get_submodule(sc.name), PermShortcut):
            spec["shortcuts"][sc.name] = {"in": sc.in_channels, "out": sc.out_channels, "stride": sc.stride}
    for name, lp in pl.layers.items():
        if lp.unchanged:
            continue
        layer = work.get_submodule(name)
        perm = pl.perms.get(bn_of[name][0].name) if name in bn_of else None
        perm = perm if perm is not None else list(range(lp.channels))
        bn_name = bn_of[name][1] if name in bn_of else None
        sc = scores[name]
        lin = _fit_after_perm(sc["lin"], perm, slice(lp.k, None))
        alpha, beta = lin.coef[:, 0], lin.shift
        if lp.k == 0:
            new = like(layer.r, lp.channels, bias=layer.r.bias is not None or bn_name is None)
            if bn_name is not None:  # β goes into the BatchNorm's mean: BN(αr + β) = BN'(αr), μ' = μ - β
                copy_scaled(new, layer.r, alpha, None)
                bn = work.get_submodule(bn_name)
                bn.running_mean.sub_(beta.to(bn.running_mean.dtype))
            else:
                copy_scaled(new, layer.r, alpha, beta)
            _set(work, name, new)
            spec["layers"][name] = {"type": "linear", "bias": new.bias is not None}
            continue
        fit: dict[str, Tensor] = {}
        if not (lp.g and lp.b):
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
        qbias = not lp.b
        new = MixedQuad(layer, lp.k, g=lp.g, b=lp.b, qbias=qbias, split=split)
        new.load_from(layer, fit or None, alpha if lp.k < lp.channels else None,
                      beta if lp.k < lp.channels else None)
        _set(work, name, new)
        spec["layers"][name] = {"type": "mixed", "k": lp.k, "g": lp.g, "b": lp.b, "qbias": qbias, "split": split}
    set_spec(work, spec)
    return work, spec


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


def set_spec(model: nn.Module, spec: dict[str, Any]) -> None:
    """Record ``spec`` in ``model.quadexport_config["compress"]`` (as a JSON string, so configs stay hashable)."""
    cfg = dict(getattr(model, "quadexport_config", {}) or {})
    cfg["compress"] = json.dumps(spec, sort_keys=True)
    model.quadexport_config = cfg


def get_spec(model_or_config: Any) -> dict[str, Any] | None:
    """The compression spec of a model or config dict (``None`` if uncompressed)."""
    cfg = model_or_config if isinstance(model_or_config, dict) else getattr(model_or_config, "quadexport_config", {})
    s = (cfg or {}).get("compress")
    if s is None:
        return None
    return json.loads(s) if isinstance(s, str) else dict(s)


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
def fold_mixed_bn(model: nn.Module, spec: dict[str, Any]) -> list[str]:
    """Fold the BatchNorm after every :class:`MixedQuad` into it and replace the BN by ``nn.Identity`` (the
    exporter folds BN only into plain and quadratic layers). Updates ``spec["folded_bn"]`` and the ``qbias`` flags.
    Returns the folded BN names."""
    structure = describe(model)
    if structure is None:
        return []
    from quadexport.exporter.fold import _bn_affine

    done = []
    for layer, (grp, bn_name) in structure.group_of_producer().items():
        m = model.get_submodule(layer)
        if not isinstance(m, MixedQuad) or bn_name is None:
            continue
        bn = model.get_submodule(bn_name)
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
            continue
        was = bn.training
        bn.eval()
        s, t = _bn_affine(bn)
        bn.train(was)
        m.fold_affine(s, t)
        _set(model, bn_name, nn.Identity())
        done.append(bn_name)
        spec["layers"][layer]["qbias"] = m.qbias is not None
    spec["folded_bn"] = sorted(set(spec.get("folded_bn", [])) | set(done))
    set_spec(model, spec)
    return done


# ---------------------------------------------------------------------------------------------------------------
# Rebuild from a spec (create_model / checkpoint loading)
# ---------------------------------------------------------------------------------------------------------------

def apply_spec(model: nn.Module, spec: dict[str, Any] | str) -> nn.Module:
    """Rebuild the compressed architecture on a freshly built zoo model (weights are then loaded from the
    checkpoint). Called by :func:`quadexport.zoo.create_model` when its config has ``compress``."""
    if isinstance(spec, str):
        spec = json.loads(spec)
    if int(spec.get("version", 0)) != SPEC_VERSION:
        raise ValueError(f"compression spec version {spec.get('version')} is not supported (this quadexport reads "
                         f"{SPEC_VERSION})")
    for name, d in spec.get("layers", {}).items():
        layer = model.get_submodule(name)
        if not isinstance(layer, QuadLayer):
            raise ValueError(f"compression spec names {name}, which is not a quadratic layer of this model")
        if d["type"] == "linear":
            new = like(layer.r, layer.r.weight.shape[0], bias=bool(d.get("bias", True)))
        elif d["type"] == "mixed":
            new = MixedQuad(layer, int(d["k"]), g=bool(d["g"]), b=bool(d["b"]), qbias=bool(d.get("qbias")),
                            split=d.get("split", "conv"))
        else:
            raise ValueError(f"unknown layer type {d['type']!r} in compression spec")
        _set(model, name, new)
    for name, d in spec.get("shortcuts", {}).items():
        _set(model, name, PermShortcut(int(d["in"]), int(d["out"]), int(d["stride"])))
    for name in spec.get("folded_bn", []):
        _set(model, name, nn.Identity())
    return model


__all__ = ["Fit", "LayerPlan", "LayerStats", "Plan", "SPEC_VERSION", "apply_spec", "channel_scores",
           "collect_stats", "compress_model", "conv_shortcuts", "fit_terms", "fold_mixed_bn", "get_spec", "is_fan_form",
           "nchwc_block", "permute_model", "plan", "recalibrate_bn", "set_spec", "splittable"]
