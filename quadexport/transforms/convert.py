"""Which conv/linear layers of a built model become quadratic, and the swap itself, replayable from a spec.

:func:`select_layers` walks the model's conv/linear layers in **module-registration order** (``named_modules()``,
which needs no input and, for the torchvision/timm/zoo models, is also forward order) and decides for each one:
convert, or leave it alone with a reason. By default the *stem* (the first conv/linear layer) and the *classifier
head* (the last ``nn.Linear``) stay conventional, as in the zoo's QResNet. :func:`convert_layers` swaps the chosen
layers for quadratic ones (:func:`quadexport.layers.convert.to_quadratic`). The spec a quadratized model records
in ``quadexport_config["quadratize"]`` (:func:`make_spec`) lets :func:`quadexport.transforms.create_model` rebuild it:
build the source architecture, then :func:`apply_spec` converts the same layers again.

Spec: ``{"base_neuron": "relu", "layers": {"layer1.0.conv1": {"neuron": "fan"}, ...}}`` (``"rank"`` beside
``"neuron"`` for low-rank types).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, Union

from torch import nn

from quadexport.errors import UsageError, did_you_mean
from quadexport.layers.convert import is_linear_map, to_quadratic, unsupported_reason
from quadexport.layers.mixed import MixedQuad
from quadexport.layers.quad import QuadLayer

__all__ = ["LayerSelector", "Selection", "SkippedLayer", "apply_spec", "convert_layers", "linear_maps",
           "make_spec", "select_layers"]

LayerSelector = Union[str, Sequence[str], Callable[[str, nn.Module], bool], None]
"""Glob pattern(s) over qualified module names (``"layer1.*"``, ``["*.conv1", "fc"]``) or a predicate
``(name, module) -> bool``."""


@dataclass(frozen=True)
class SkippedLayer:
    """A conv/linear layer left as it is, and why."""

    name: str
    kind: str
    reason: str


@dataclass
class Selection:
    """Result of :func:`select_layers`: the layers to convert and the ones left alone (both in model order)."""

    convert: list[str]
    skipped: list[SkippedLayer]


def linear_maps(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every torch conv/linear layer of ``model`` in registration order, except the branches
    inside layers that are quadratic already (:class:`QuadLayer`, :class:`MixedQuad`)."""
    out, inside = [], set()
    for name, m in model.named_modules():
        if id(m) in inside:
            continue
        if isinstance(m, (QuadLayer, MixedQuad)):
            inside.update(id(c) for c in m.modules())
        elif is_linear_map(m):
            out.append((name, m))
    return out


def _defaults(maps: list[tuple[str, nn.Module]]) -> dict[str, str]:
    """The layers the default selection keeps conventional: the stem and the classifier head."""
    keep: dict[str, str] = {}
    linears = [n for n, m in maps if isinstance(m, nn.Linear)]
    if linears:
        keep[linears[-1]] = "classifier head (last nn.Linear), kept conventional by default"
    if maps:
        keep[maps[0][0]] = "stem (first conv/linear layer), kept conventional by default"
    return keep


def _read_directly(model: nn.Module) -> dict[str, str]:
    """Layers whose parent reads their weights instead of calling them (converting them would be ignored)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention):
            out[f"{name}.out_proj" if name else "out_proj"] = (
                "nn.MultiheadAttention reads out_proj.weight/bias directly (F.multi_head_attention_forward), "
                "so a quadratic out_proj would be ignored")
    return out


def _matcher(sel: LayerSelector, what: str, names: list[str]) -> Callable[[str, nn.Module], bool]:
    if callable(sel):
        return sel
    patterns = [sel] if isinstance(sel, str) else list(sel or [])
    for p in patterns:
        if not any(fnmatch.fnmatchcase(n, p) for n in names):
            hint = did_you_mean(p, names) or f"; layer names look like {', '.join(names[:3])}"
            raise UsageError(f"{what} pattern {p!r} matches no conv/linear layer{hint}")
    return lambda name, _m: any(fnmatch.fnmatchcase(name, p) for p in patterns)


def select_layers(model: nn.Module, include: LayerSelector = None, exclude: LayerSelector = None) -> Selection:
    """Decide which conv/linear layers of ``model`` become quadratic.

    Args:
        model: the model.
        include: layers to convert (globs over qualified names, or a predicate ``(name, module) -> bool``);
            ``None`` = every conv/linear layer except the stem (first conv/linear in registration order) and the
            classifier head (last ``nn.Linear``).
        exclude: layers to leave alone (same forms), applied after ``include``.

    Raises:
        UsageError: a glob matches no conv/linear layer (a typo).
    """
    maps = linear_maps(model)
    names = [n for n, _ in maps]
    defaults = _defaults(maps) if include is None else {}
    inc = _matcher(include, "include", names) if include is not None else None
    exc = _matcher(exclude, "exclude", names) if exclude is not None else None
    direct = _read_directly(model)
    sel = Selection([], [])
    for name, m in maps:
        if name in defaults:
            reason = defaults[name]
        elif inc is not None and not inc(name, m):
            reason = "not selected by include"
        elif exc is not None and exc(name, m):
            reason = "excluded"
        else:
            reason = direct.get(name) or unsupported_reason(m)
        if reason is None:
            sel.convert.append(name)
        else:
            sel.skipped.append(SkippedLayer(name, type(m).__name__, reason))
    return sel


def convert_layers(model: nn.Module, layers: Mapping[str, Mapping[str, Any]]) -> dict[str, nn.Module]:
    """Swap ``layers`` (name → ``{"neuron": ..., "rank": ...}``) of ``model`` for quadratic ones, in place.

    Returns:
        name → the original module (so a caller can put it back).
    """
    originals = {}
    for name, opts in layers.items():
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise UsageError(f"model has no layer {name!r} to quadratize (does the spec belong to this "
                             f"architecture?)") from None
        model.set_submodule(name, to_quadratic(old, opts["neuron"], opts.get("rank")))
        originals[name] = old
    return originals


def make_spec(base_neuron: str, layers: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The ``quadexport_config["quadratize"]`` entry (plain JSON values)."""
    return {"base_neuron": base_neuron,
            "layers": {n: {k: v for k, v in o.items() if v is not None} for n, o in layers.items()}}


def apply_spec(model: nn.Module, spec: Mapping[str, Any]) -> nn.Module:
    """Convert the layers a quadratize spec names (rebuilding a quadratized model); returns ``model``."""
    if not isinstance(spec, Mapping) or not isinstance(spec.get("layers"), Mapping):
        raise UsageError("quadratize spec must be a mapping with a 'layers' mapping")
    convert_layers(model, spec["layers"])
    return model
