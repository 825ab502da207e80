"""Quadratize any model: turn the conv/linear layers of a (trained) network into quadratic layers that compute
exactly what they computed before, ready for fine-tuning (:func:`quadratize`).

Every selected ``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.Linear`` (subclasses too, when they keep the base class's
``forward``) becomes a :class:`~quadexport.layers.QuadConv2d` / ... whose primary branch ``r`` holds the trained
weight and bias, with the quadratic terms at zero (gate ``W_g = 0, b_g = 1``, power branch ``W_b = 0, c = 0``), so
the network is unchanged until training moves them. Which layers: see :mod:`quadexport.transforms.convert` (default:
all but the stem and the classifier head). When the input shape is known (``input_shape=``, or the model's
``quadexport_meta``/``quadexport_config``) the result is verified on a random batch: a converted layer the forward
pass never calls (its parent reads its weights directly) or whose output differs is put back and reported, and the
model's output must equal the original's (max relative difference ≤ :data:`TOLERANCE`).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from quadexport.runmeta import config_dict, input_shape_of
from quadexport._compat import torchvision_ops_missing
from quadexport._torchutil import one_thread
from quadexport.errors import QuadexportError, UsageError
from quadexport.layers.neurons import get_neuron
from quadexport.zoo import count_macs, count_params
from quadexport.transforms.adopted import scan
from quadexport.transforms.convert import (LayerSelector, SkippedLayer, convert_layers, make_spec, select_layers)

log = logging.getLogger(__name__)

TOLERANCE = 1e-6
"""Max relative difference (``max|new − old| / max|old|``) between the outputs before and after quadratizing."""
OUTCOME_KEYS = ("test_acc", "test_loss", "relinear", "epochs_done", "run_id")
"""``quadexport_meta`` entries that describe the *source* model's training outcome: moved under ``meta["source"]`` so
the quadratized model (and its ONNX export) does not claim them. The data recipe (``dataset``, ``input_shape``,
``normalization``, ``preprocessing``, ``train_config``) stays: it is the data the quadratized model takes."""

__all__ = ["OUTCOME_KEYS", "QuadratizeError", "QuadratizeReport", "SkippedLayer", "TOLERANCE", "quadratize"]


class QuadratizeError(QuadexportError, RuntimeError):
    """The quadratized model does not compute what the original computed (a bug or an unsupported pattern)."""


@dataclass
class QuadratizeReport:
    """What :func:`quadratize` did.

    Attributes:
        neuron: neuron type of the converted layers.
        rank: rank given for low-rank neuron types (``None``: the type's default).
        converted: names of the layers now quadratic, in model order.
        skipped: conv/linear layers left as they are, each with its reason.
        params_before: learnable parameters before.
        params_after: learnable parameters after.
        macs_before: MACs of one sample before (``None`` when the input shape is unknown).
        macs_after: MACs after (every branch counted).
        input_shape: the per-sample shape used for MACs and verification (``None``: not verified).
        max_rel_diff: measured output difference after/before on a random batch (``None``: not verified).
    """

    neuron: str
    rank: int | None
    converted: list[str] = field(default_factory=list)
    skipped: list[SkippedLayer] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    macs_before: int | None = None
    macs_after: int | None = None
    input_shape: tuple[int, ...] | None = None
    max_rel_diff: float | None = None

    def summary(self) -> str:
        """One line: counts, parameter and MAC growth, verification."""
        s = (f"quadratize ({self.neuron}{f', rank {self.rank}' if self.rank else ''}): {len(self.converted)} "
             f"layer(s) quadratic, {len(self.skipped)} left alone; params {self.params_before:,} -> "
             f"{self.params_after:,}")
        if self.macs_before is not None:
            s += f", MACs {self.macs_before:,} -> {self.macs_after:,}"
        s += (f"; output unchanged (max rel diff {self.max_rel_diff:.1e})" if self.max_rel_diff is not None
              else "; not verified (input shape unknown: pass input_shape=)")
        return s

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape) if self.input_shape else None
        return d




def _input_shape(model: nn.Module, given: Any) -> tuple[int, ...] | None:
    return input_shape_of(model, given)


def _tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    return []


def _rel_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return float("inf")
    worst = 0.0
    for x, y in zip(a, b):
        scale = float(x.detach().abs().max()) if x.numel() else 0.0
        diff = float((x.detach().double() - y.detach().double()).abs().max()) if x.numel() else 0.0
        worst = max(worst, diff / scale if scale > 0 else diff)
    return worst


@torch.no_grad()
def _probe(model: nn.Module, x: torch.Tensor, originals: dict[str, nn.Module]) -> tuple[list[torch.Tensor],
                                                                                       dict[str, str]]:
    """Outputs of ``model(x)`` in eval mode, and the converted layers that misbehaved (name → reason): never called
    by the forward pass, or output different from the original layer's on the same input."""
    bad = {name: "never called by the model's forward (its parent reads the weights directly), put back"
           for name in originals}

    def hook(name: str):
        def fn(_m: nn.Module, inp: tuple, out: torch.Tensor) -> None:
            ref = originals[name](inp[0])
            d = _rel_diff([ref], [out])
            bad.pop(name, None)
            if d > TOLERANCE:
                bad[name] = f"output differs from the original layer's (rel {d:.1e}), put back"
        return fn

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in originals]
    was = model.training
    model.eval()
    try:
        return _tensors(model(x)), bad
    finally:
        model.train(was)
        for h in handles:
            h.remove()


def _verify(model: nn.Module, x: torch.Tensor, reference: list[torch.Tensor], originals: dict[str, nn.Module],
            report: QuadratizeReport) -> None:
    """Put back the layers that misbehave, then check the whole output."""
    _, bad = _probe(model, x, originals)
    for name, reason in bad.items():
        model.set_submodule(name, originals[name])
        report.converted.remove(name)
        report.skipped.append(SkippedLayer(name, type(originals[name]).__name__, reason))
        log.warning("quadratize: %s %s", name, reason)
    out, _ = _probe(model, x, {})
    report.max_rel_diff = _rel_diff(reference, out)
    if report.max_rel_diff > TOLERANCE:
        raise QuadratizeError(f"the quadratized model's output differs from the original's (max rel diff "
                              f"{report.max_rel_diff:.1e} > {TOLERANCE:g}); please report this model")


def _retag(model: nn.Module, neuron: str, rank: int | None, converted: list[str]) -> None:
    """Record the new neuron and the converted layers in ``quadexport_config``; move the source's training outcome
    (test accuracy, ReLinear settings...) from ``quadexport_meta`` to ``quadexport_meta["source"]``."""
    cfg = copy.deepcopy(config_dict(model))
    old = dict(cfg.get("quadratize") or {})
    base = old.get("base_neuron", cfg.get("neuron", "relu"))
    layers = {**old.get("layers", {}), **{n: {"neuron": neuron, "rank": rank} for n in converted}}
    source = {k: v for k, v in cfg.items() if k != "quadratize"}
    cfg.update(neuron=neuron, quadratize=make_spec(base, layers))
    model.quadexport_config = cfg
    meta = copy.deepcopy(getattr(model, "quadexport_meta", None))
    if meta is not None:
        outcome = {k: meta.pop(k) for k in OUTCOME_KEYS if k in meta}
        if outcome:
            meta["source"] = {"config": source, **outcome}
        model.quadexport_meta = meta


def _refuse_plain_neurons(model: nn.Module) -> None:
    """Quadratizing the branches of a quadratic neuron written as plain layers would square them again (a QResNet20
    in the ReLinear authors' style: 54 branch convs, MACs x3): refuse in one line naming :func:`quadexport.adopt`."""
    found = scan(model)
    if found.neurons:
        kind, mods = found.neurons[0]
        raise UsageError(f"the model already holds {len(found.neurons)} quadratic neuron(s) written as plain layers "
                         f"(e.g. {kind}: {', '.join(mods)}); quadratize would square their branches: run "
                         f"quadexport.adopt(model) (CLI: quadexport adopt) first, then quadratize the adopted model")


def quadratize(model: nn.Module, neuron: str = "fan", *, include: LayerSelector = None,
               exclude: LayerSelector = None, rank: int | None = None, inplace: bool = False,
               input_shape: tuple[int, ...] | None = None, return_report: bool = False) -> Any:
    """Turn a model's conv/linear layers into quadratic layers that compute exactly what they did.

    Each selected layer's trained weight and bias go into the primary branch ``r``; the quadratic terms start at
    zero (``W_g = 0, b_g = 1, W_b = 0, c = 0``), so the result computes what ``model`` computes until fine-tuning
    moves them (``quadexport train --from``; ``--train-only quadratic`` trains only those terms).

    By default the **stem** (the first conv/linear layer in *module-registration order*, ``named_modules()``) and
    the **classifier head** (the last ``nn.Linear``) stay conventional, as in the zoo's QResNet. Layers that
    cannot be converted (``Conv3d``, ``ConvTranspose*``, uninitialised lazy layers, subclasses overriding
    ``forward``, the ``out_proj`` of ``nn.MultiheadAttention``, which reads its weights directly) are left alone
    and named in the report.

    Args:
        model: any ``nn.Module`` (a zoo model, a ``torchvision:``/``timm:`` model, your own network).
        neuron: quadratic neuron type whose ReLinear init reduces to its linear branch (``fan``, ``compact``,
            ``t4``, ``qres``, ``quadralib``, ``lowrank``...).
        include: layers to convert: glob(s) over qualified module names (``"layer*.*"``, ``["features.*"]``) or a
            predicate ``(name, module) -> bool``; ``None`` = the default above (an explicit ``include`` may name
            the stem or head).
        exclude: layers to leave alone (same forms), applied after ``include``.
        rank: rank of the quadratic terms for low-rank neuron types (``neuron="lowrank"``).
        inplace: convert ``model`` itself instead of a deep copy.
        input_shape: one sample's shape for the MAC counts and the verification forward pass; default: from
            ``quadexport_meta["input_shape"]`` or ``quadexport_config`` (else neither is done).
        return_report: return ``(model, QuadratizeReport)`` instead of the model.

    Returns:
        The quadratized model (same device and dtype; ``quadexport_config["neuron"]`` is ``neuron`` and
        ``quadexport_config["quadratize"]`` lists the converted layers, so :func:`quadexport.create_model` rebuilds
        it; a model of your own, without a ``quadexport_config``, gets one without ``name``: keep its class and
        ``state_dict()`` yourself; the source's test accuracy and ReLinear settings move to
        ``quadexport_meta["source"]``), or
        ``(model, report)`` with ``return_report=True``. A one-line summary is logged at DEBUG (the CLI prints it).

    Raises:
        UsageError: unknown neuron, a neuron without a linear branch (``t2``), a glob that matches nothing, or a
            model that already holds quadratic neurons written as plain layers (adopt it first:
            :func:`quadexport.adopt`).
        QuadratizeError: the verified output differs (please report).
    """
    get_neuron(neuron)
    if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool) or rank < 1):
        raise UsageError(f"rank must be an integer >= 1, got {rank!r}")
    _refuse_plain_neurons(model)
    work = model if inplace else copy.deepcopy(model)
    sel = select_layers(work, include, exclude)
    shape = _input_shape(work, input_shape)
    report = QuadratizeReport(neuron, rank, list(sel.convert), list(sel.skipped), params_before=count_params(work))
    x, reference = None, None
    if shape is not None:
        p = next(work.parameters(), None)
        x = torch.randn((2, *shape), generator=torch.Generator().manual_seed(0)).to(
            p.device if p is not None else "cpu", p.dtype if p is not None and p.is_floating_point() else None)
        try:
            with one_thread():
                report.input_shape, report.macs_before = shape, count_macs(work, shape)
                reference, _ = _probe(work, x, {})
        except RuntimeError as e:
            err = torchvision_ops_missing(e, type(work).__name__)
            if err is None:
                raise
            raise err from None
    originals = convert_layers(work, {n: {"neuron": neuron, "rank": rank} for n in sel.convert})
    if x is not None:
        with one_thread():
            _verify(work, x, reference, originals, report)
            report.macs_after = count_macs(work, shape)
    report.params_after = count_params(work)
    if report.converted:
        _retag(work, neuron, rank, report.converted)
    else:
        log.warning("quadratize: no layer was converted (%d conv/linear layers left alone)", len(report.skipped))
    log.debug("%s", report.summary())
    return (work, report) if return_report else work

