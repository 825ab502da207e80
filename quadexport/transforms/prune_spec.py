"""Rebuild a compressed architecture from its spec (timm ``models/_prune.py`` pattern): the compressor
(:mod:`quadexport.compress`) records what it rewrote in ``model.quadexport_config["compress"]``; :func:`apply_spec`
applies that rewrite to a freshly built zoo model so :func:`quadexport.transforms.create_model` (and so
:func:`quadexport.runs.checkpoint.load`) rebuilds the architecture before the weights are loaded.

Spec (JSON, version :data:`SPEC_VERSION`): ``layers`` maps a quadratic layer's name to ``{"type": "linear",
"bias": bool}`` or ``{"type": "mixed", "k", "g", "b", "qbias", "split"}``; ``shortcuts`` maps an option-A shortcut
to ``{"in", "out", "stride"}`` (a :class:`~quadexport.layers.mixed.PermShortcut`); ``folded_bn`` lists BatchNorms
replaced by ``nn.Identity``.
"""

from __future__ import annotations

import json
from typing import Any

from torch import nn

from quadexport.runmeta import config_dict
from quadexport.errors import UsageError
from quadexport.layers.mixed import MixedQuad, PermShortcut, like
from quadexport.layers.quad import QuadLayer

SPEC_VERSION = 1

__all__ = ["SPEC_VERSION", "apply_spec", "get_spec", "set_spec"]


def set_spec(model: nn.Module, spec: dict[str, Any]) -> None:
    """Record ``spec`` in ``model.quadexport_config["compress"]`` (as a JSON string, so configs stay hashable)."""
    cfg = config_dict(model)
    cfg["compress"] = json.dumps(spec, sort_keys=True)
    model.quadexport_config = cfg


def get_spec(model_or_config: Any) -> dict[str, Any] | None:
    """The compression spec of a model or config dict (``None`` if uncompressed)."""
    cfg = model_or_config if isinstance(model_or_config, dict) else getattr(model_or_config, "quadexport_config", {})
    s = (cfg or {}).get("compress")
    if s is None:
        return None
    return json.loads(s) if isinstance(s, str) else dict(s)


def _layer_from_spec(layer: QuadLayer, d: dict[str, Any]) -> nn.Module:
    if d["type"] == "linear":
        return like(layer.r, layer.r.weight.shape[0], bias=bool(d.get("bias", True)))
    if d["type"] == "mixed":
        return MixedQuad(layer, int(d["k"]), g=bool(d["g"]), b=bool(d["b"]), qbias=bool(d.get("qbias")),
                         split=d.get("split", "conv"))
    raise UsageError(f"unknown layer type {d['type']!r} in compression spec; was it written by a newer quadexport?")


def apply_spec(model: nn.Module, spec: dict[str, Any] | str) -> nn.Module:
    """Rebuild the compressed architecture on a freshly built zoo model (weights are then loaded from the
    checkpoint). Called by :func:`quadexport.transforms.create_model` when its config has ``compress``."""
    if isinstance(spec, str):
        spec = json.loads(spec)
    if int(spec.get("version", 0)) != SPEC_VERSION:
        raise UsageError(f"compression spec version {spec.get('version')} is not supported (this quadexport reads "
                         f"{SPEC_VERSION}); use the quadexport version that wrote the run")
    for name, d in spec.get("layers", {}).items():
        layer = model.get_submodule(name)
        if not isinstance(layer, QuadLayer):
            raise UsageError(f"compression spec names {name}, which is not a quadratic layer of this model; "
                             f"is the spec from another model?")
        model.set_submodule(name, _layer_from_spec(layer, d))
    for name, d in spec.get("shortcuts", {}).items():
        model.set_submodule(name, PermShortcut(int(d["in"]), int(d["out"]), int(d["stride"])))
    for name in spec.get("folded_bn", []):
        model.set_submodule(name, nn.Identity())
    return model
