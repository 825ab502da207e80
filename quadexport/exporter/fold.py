"""Fold eval-mode BatchNorm into the linear or quadratic layer that directly precedes it.

``BN(y) = s*y + t`` with ``s = gamma / sqrt(var + eps)`` and ``t = beta - mean*s`` (per output channel). For a
quadratic layer ``y = combine(branch outputs)`` the scale goes into a set of branches ``S`` for which scaling their
outputs by ``s`` scales ``y`` by ``s`` (Fan: ``S = {g, b}``; compact: ``{r, b}``; T4: ``{g}``; QRes: ``{r}``), and
the shift into the bias of one branch ``A`` whose output enters ``y`` additively (Fan: ``b`` → ``c``). ``S`` and
``A`` are found *generically* by probing each neuron type's ``combine`` with random tensors (smallest set first,
quadratic branches preferred, so the ``r`` weights - the ReLU twin's - stay as they are; a type's own
``fold_scale``, e.g. lowrank's ``(r, b)`` that keeps the gate's bias at 1, is tried first); when no additive branch
exists (T4, QRes) the shift stays as a per-channel ``Add`` (:class:`ChannelShift`), which still removes the
``BatchNormalization`` node. A neuron type with no homogeneous set is left unfolded with a note.

Pairs are found with ``torch.fx`` (a quadratic/conv/linear module call whose only user is a BatchNorm call, each
module called once); when the model cannot be traced, a module-order heuristic (a foldable module immediately
followed by a BatchNorm sibling of matching width) proposes pairs. Each fx pair is verified where it is: the folded
layer against layer + BN in float64 on an input of that layer (random for convs, one receptive field wide; the
real one, from a float32 forward, for dense layers), so a big model is never copied to float64 nor run whole in
it; heuristic pairs, which may not be adjacent in the computation, are verified by comparing the whole folded model
with the original in float64 on the example input. Either way a pair that changes the output is undone.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from quadexport._torchutil import shared_copy
from quadexport.layers.bnfold import bn_scale_shift
from quadexport.layers.neurons import NeuronType
from quadexport.exporter.outputs import flatten
from quadexport.layers.quad import QuadLayer
from quadexport.layers.transposed import scale_out_channels

Tensor = torch.Tensor
_LINEAR = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d)
_BN = nn.modules.batchnorm._BatchNorm
FOLD_RTOL = 1e-5
"""Max relative L2 change of the model output (computed in float64) that folding may cause: the folded weights are
rounded to float32 (relative error ~6e-8 each), a wrong fold changes the output by O(1)."""

__all__ = ["ChannelShift", "FoldReport", "fold_batchnorm", "fold_plan", "find_bn_pairs"]


@dataclass
class FoldReport:
    """What :func:`fold_batchnorm` did.

    Attributes:
        method: how pairs were found: ``"fx"``, ``"module-order"`` or ``"none"``.
        folded: ``(layer, bn)`` qualified names that were folded.
        shifted: layers whose BN shift became a per-channel ``Add`` (no additive branch).
        skipped: ``(layer, bn, reason)`` for pairs left as they were.
        rel_change: relative L2 change of the model output (float64) after folding.
    """

    method: str = "none"
    folded: list[tuple[str, str]] = field(default_factory=list)
    shifted: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    rel_change: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "folded": len(self.folded), "shifted": self.shifted,
                "skipped": [list(s) for s in self.skipped], "rel_change": self.rel_change}


class ChannelShift(nn.Module):
    """``x + t`` along dim 1 (the part of a folded BatchNorm that no branch bias could absorb).

    Args:
        shift: per-channel shift ``t``.
    """

    def __init__(self, shift: Tensor) -> None:
        super().__init__()
        self.register_buffer("shift", shift.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        return x + self.shift.reshape((-1,) + (1,) * (x.dim() - 2))


# ---------------------------------------------------------------------------------------------------------------
# Which branches take the scale and the shift
# ---------------------------------------------------------------------------------------------------------------

_PLAN_CACHE: dict[NeuronType, tuple[tuple[str, ...], str | None] | None] = {}
"""Keyed by the (frozen, hashable) neuron type itself, not its name: a type unregistered and redefined under the
same name gets its own plan."""


def fold_plan(nt: NeuronType) -> tuple[tuple[str, ...], str | None] | None:
    """``(scale branches, shift branch or None)`` for folding a per-channel affine map into neuron type ``nt``, or
    ``None`` if no set of branches scales the output homogeneously. Found by probing ``nt.combine``.
    """
    if nt in _PLAN_CACHE:
        return _PLAN_CACHE[nt]
    g = torch.Generator().manual_seed(1234)
    names = [b.name for b in nt.branches]
    quad = set(nt.quadratic_branches)
    outs = {n: torch.randn(4, 5, generator=g, dtype=torch.float64) for n in names}
    s = torch.rand(5, generator=g, dtype=torch.float64) * 2 + 0.5
    t = torch.randn(5, generator=g, dtype=torch.float64)
    y = nt.combine(outs)

    def close(a: Tensor, b: Tensor) -> bool:
        return bool(torch.allclose(a, b, rtol=1e-10, atol=1e-10))

    scale = None
    subsets = [c for k in range(1, len(names) + 1) for c in itertools.combinations(names, k)]
    subsets.sort(key=lambda c: (len(c), -len(quad & set(c)), c))
    preferred = tuple(getattr(nt, "fold_scale", ()))  # a type may name its scale set (lowrank: r, b); still probed
    if preferred:
        subsets.insert(0, preferred)
    for cand in subsets:
        if close(nt.combine({n: v * s if n in cand else v for n, v in outs.items()}), y * s):
            scale = cand
            break
    shift = None
    if scale is not None:
        for n in sorted(names, key=lambda n: (n not in quad, n)):
            if close(nt.combine({k: v + t if k == n else v for k, v in outs.items()}), y + t):
                shift = n
                break
    plan = None if scale is None else (tuple(scale), shift)
    _PLAN_CACHE[nt] = plan
    return plan


# ---------------------------------------------------------------------------------------------------------------
# Finding (layer, BN) pairs
# ---------------------------------------------------------------------------------------------------------------

class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, QuadLayer) or super().is_leaf_module(m, qualname)


def _foldable(m: nn.Module) -> bool:
    return isinstance(m, QuadLayer) or (isinstance(m, _LINEAR) and type(m) in _LINEAR)


def _out_features(m: nn.Module) -> int:
    if isinstance(m, QuadLayer):
        return m.out_features if hasattr(m, "out_features") else m.out_channels
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels


def _pairs_fx(model: nn.Module) -> list[tuple[str, str]]:
    graph = _Tracer().trace(model)
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    mods = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), _BN) or not node.args:
            continue
        prev = node.args[0]
        if (isinstance(prev, fx.Node) and prev.op == "call_module" and _foldable(mods[prev.target])
                and len(prev.users) == 1 and calls[prev.target] == 1 and calls[node.target] == 1):
            pairs.append((prev.target, node.target))
    return pairs


def _pairs_order(model: nn.Module) -> list[tuple[str, str]]:
    pairs = []
    for pname, parent in model.named_modules():
        kids = list(parent.named_children())
        for (an, a), (bn_name, bn) in zip(kids, kids[1:]):
            if _foldable(a) and isinstance(bn, _BN) and bn.num_features == _out_features(a):
                pre = f"{pname}." if pname else ""
                pairs.append((pre + an, pre + bn_name))
    return pairs


def find_bn_pairs(model: nn.Module) -> tuple[list[tuple[str, str]], str]:
    """``([(layer name, bn name), ...], method)``: BatchNorms that directly follow a foldable layer.

    Args:
        model: the model (not modified).
    """
    try:
        return _pairs_fx(model), "fx"
    except Exception:  # data-dependent control flow etc.: fall back to module order (validated later)
        return _pairs_order(model), "module-order"


# ---------------------------------------------------------------------------------------------------------------
# Folding
# ---------------------------------------------------------------------------------------------------------------

def _rebind(m: nn.Module, name: str, value: Tensor) -> None:
    """Give ``m`` a new parameter ``name`` (never written in place: the work copies share the caller's tensors)."""
    old = getattr(m, name)
    setattr(m, name, nn.Parameter(value, requires_grad=old.requires_grad if old is not None else False))


@torch.no_grad()
def _scale(m: nn.Module, s: Tensor) -> None:
    w = m.weight
    transposed = isinstance(m, nn.modules.conv._ConvTransposeNd)  # [in, out/groups, k...]: per group on dim 1
    _rebind(m, "weight", scale_out_channels(w, s, transposed, getattr(m, "groups", 1)))
    if m.bias is not None:
        _rebind(m, "bias", (m.bias.double() * s).to(m.bias.dtype))


@torch.no_grad()
def _shift(m: nn.Module, t: Tensor) -> None:
    if m.bias is None:
        m.bias = nn.Parameter(t.to(m.weight.dtype).clone(), requires_grad=m.weight.requires_grad)
    else:
        _rebind(m, "bias", (m.bias.double() + t).to(m.bias.dtype))


def _fold_one(model: nn.Module, layer_name: str, bn_name: str) -> str | None:
    """Fold one pair in place; returns ``None`` on success, ``"shifted"`` if a ChannelShift replaced the BN, or a
    reason string (starting with ``"skip:"``) if nothing was changed."""
    mods = dict(model.named_modules())
    layer, bn = mods[layer_name], mods[bn_name]
    affine = bn_scale_shift(bn)
    if affine is None:
        return "skip: BatchNorm has no running statistics (or is in training mode)"
    s, t = affine
    if isinstance(layer, QuadLayer):
        plan = fold_plan(layer.neuron_type)
        if plan is None:
            return f"skip: neuron {layer.neuron!r} has no branch set that scales its output"
        scale_branches, shift_branch = plan
        for n in scale_branches:
            _scale(getattr(layer, n), s)
        if shift_branch is not None:
            _shift(getattr(layer, shift_branch), t)
        replacement: nn.Module = nn.Identity() if shift_branch is not None else ChannelShift(t.float())
    else:
        _scale(layer, s)
        _shift(layer, t)
        replacement = nn.Identity()
    parent_name, _, attr = bn_name.rpartition(".")
    setattr(mods[parent_name] if parent_name else model, attr, replacement)
    return None if isinstance(replacement, nn.Identity) else "shifted"


def _rel(a: Any, b: Any) -> float:
    fa, fb = flatten(a), flatten(b)  # any output structure (dicts too)
    num = sum(float(torch.linalg.vector_norm((x - y).double())) ** 2 for x, y in zip(fa, fb)) ** 0.5
    den = sum(float(torch.linalg.vector_norm(y.double())) ** 2 for y in fb) ** 0.5
    return num / den if den > 0 else num


def _inputs(x: Any) -> tuple[Tensor, ...]:
    """The example input(s) as a tuple (a model whose ``forward`` takes several tensors gets a tuple)."""
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


@torch.no_grad()
def _run64(model: nn.Module, x: Any) -> Any:
    return shared_copy(model).double()(*(t.double() if t.is_floating_point() else t for t in _inputs(x)))


def _finite(out: Any) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in flatten(out))


def _change(ref: Any, candidate: nn.Module, x: Tensor) -> float:
    return _rel(_run64(candidate, x), ref)


def _finite_probe(model: nn.Module, example_input: Tensor) -> tuple[Any, Tensor]:
    """``(float64 output, probe input)``: quadratic nets can overflow on a given input even in float64, so the probe
    (the first sample) is shrunk until the output is finite (the last try is returned either way)."""
    ref, x = None, example_input
    for factor in (1.0, 1e-1, 1e-2, 1e-3):
        x = tuple(t[:1] * factor for t in _inputs(example_input))
        ref = _run64(model, x)
        if _finite(ref):
            break
    return ref, x


def _refold_verified(model: nn.Module, done: list[tuple[str, str, str | None]], ref: Any, x: Tensor,
                     report: FoldReport) -> tuple[nn.Module, list[tuple[str, str, str | None]]]:
    """Some pair was not a true "BN directly after the layer": redo them one at a time on a fresh copy, keeping the
    folds that leave the output unchanged (the others go to ``report.skipped``)."""
    work = shared_copy(model).eval()
    kept = []
    for layer_name, bn_name, _ in done:
        trial = shared_copy(work)
        res = _fold_one(trial, layer_name, bn_name)
        if _change(ref, trial, x) <= FOLD_RTOL:
            work = trial
            kept.append((layer_name, bn_name, res))
        else:
            report.skipped.append((layer_name, bn_name, "folding changed the model output"))
    return work, kept


@torch.no_grad()
def _layer_inputs(model: nn.Module, names: list[str], x: Tensor) -> dict[str, Tensor]:
    """An input for each named layer: convs get a random ``[1, C_in, ...]`` one receptive field wide (BN acts on
    dim 1, the conv's channels, whatever the size); dense layers their real input from one float32 forward of the
    first sample, whose layout (``[N, F]`` or ``[N, T, F]``...) decides which axis a following BN normalises."""
    mods, got = dict(model.named_modules()), {}
    g = torch.Generator().manual_seed(0)
    dense = []
    for n in names:
        ks = getattr(mods[n], "kernel_size", None)
        if ks is None:
            dense.append(n)
            continue
        ks = tuple(ks) if isinstance(ks, (tuple, list)) else (ks,)
        d = mods[n].dilation
        dil = tuple(d) if isinstance(d, (tuple, list)) else (d,) * len(ks)
        size = [d * (k - 1) + 1 for k, d in zip(ks, dil)]  # one receptive field: >= 1 output pixel per channel
        got[n] = torch.randn((1, mods[n].in_channels, *size), generator=g)
    if not dense:
        return got
    hooks = [mods[n].register_forward_pre_hook(lambda m, a, n=n: got.setdefault(n, a[0].detach()))
             for n in dense]
    try:
        model(*(t[:1] for t in _inputs(x)))
    finally:
        for h in hooks:
            h.remove()
    return got


@torch.no_grad()
def _verify_local(model: nn.Module, work: nn.Module, done: list[tuple[str, str, str | None]], x: Tensor,
                  report: FoldReport) -> tuple[list[tuple[str, str, str | None]], float]:
    """Structural (fx) pairs: each folded layer, followed by what replaced its BN, against layer + BN in float64 on
    an input of the layer's own (:func:`_layer_inputs`): as exact as comparing whole-model outputs, at the cost of
    the folded layers on a few pixels instead of two float64 forwards of the model (and no float64 copy of it). A pair that changes its layer's output is undone. Returns the kept pairs and the worst change."""
    inputs = _layer_inputs(model, [a for a, _, _ in done], x)
    orig, new = dict(model.named_modules()), dict(work.named_modules())
    kept, worst = [], 0.0
    for layer_name, bn_name, res in done:
        xin = inputs.get(layer_name)
        change = float("inf")
        if xin is not None:
            xin = xin.double()
            if not bool(torch.isfinite(xin).all()):
                xin = torch.randn(xin.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
            ref = shared_copy(orig[bn_name]).double()(shared_copy(orig[layer_name]).double()(xin))
            out = shared_copy(new[bn_name]).double()(shared_copy(new[layer_name]).double()(xin))
            change = _rel(out, ref)
        if change <= FOLD_RTOL:
            kept.append((layer_name, bn_name, res))
            worst = max(worst, change)
            continue
        for name in (layer_name, bn_name):  # undo: the original modules back (sharing the caller's tensors)
            parent, _, attr = name.rpartition(".")
            setattr(new[parent] if parent else work, attr, shared_copy(orig[name]))
        report.skipped.append((layer_name, bn_name, "folding changed the layer's output" if xin is not None
                               else "layer not reached by the example input"))
    return kept, worst


def fold_batchnorm(model: nn.Module, example_input: Tensor,
                   pairs: list[tuple[str, str]] | None = None) -> tuple[nn.Module, FoldReport]:
    """Fold BatchNorms that directly follow a quadratic, conv or linear layer. The input model is not modified.

    Args:
        model: the model, in eval mode.
        example_input: input used to verify that folding preserves the output (float64 comparison); a tuple of
            tensors for a model whose ``forward`` takes several.
        pairs: ``(layer, bn)`` names to fold; found with :func:`find_bn_pairs` if ``None``.

    Returns:
        ``(folded copy, report)``.
    """
    report = FoldReport()
    if pairs is None:
        pairs, report.method = find_bn_pairs(model)
    else:
        report.method = "given"
    work = shared_copy(model).eval()  # folding rebinds the folded tensors: the rest stays shared with ``model``
    if not pairs:
        return work, report
    done: list[tuple[str, str, str | None]] = []
    for layer_name, bn_name in pairs:
        res = _fold_one(work, layer_name, bn_name)
        if res is not None and res.startswith("skip:"):
            report.skipped.append((layer_name, bn_name, res[5:].strip()))
        else:
            done.append((layer_name, bn_name, res))
    if report.method == "fx":
        done, report.rel_change = _verify_local(model, work, done, example_input, report)
        if report.skipped:
            warnings.warn(f"BatchNorm folding: {len(report.skipped)} pair(s) left unfolded after verification",
                          RuntimeWarning, stacklevel=2)
        report.folded = [(a, b) for a, b, _ in done]
        report.shifted = [a for a, _, r in done if r == "shifted"]
        return work, report
    ref, x = _finite_probe(model, example_input)
    if not _finite(ref):
        report.skipped += [(a, b, "output not finite: cannot verify") for a, b, _ in done]
        return shared_copy(model).eval(), report
    example_input = x
    change = _change(ref, work, example_input)
    if not change <= FOLD_RTOL:
        work, done = _refold_verified(model, done, ref, example_input, report)
        change = _change(ref, work, example_input)
        warnings.warn(f"BatchNorm folding: {len(report.skipped)} pair(s) left unfolded after output verification",
                      RuntimeWarning, stacklevel=2)
    report.folded = [(a, b) for a, b, _ in done]
    report.shifted = [a for a, _, r in done if r == "shifted"]
    report.rel_change = change
    return work, report
