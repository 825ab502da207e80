"""Weights of a plain network's state dict file loaded into its (quadratized) form: ``--weights FILE``."""

from __future__ import annotations

import os

from torch import nn

from quadexport._torchutil import load_state
from quadexport.errors import UsageError
from quadexport.layers.convert import primary_branch
from quadexport.layers.quad import QuadLayer
from quadexport.transforms.statedict import WeightsError, read_state_dict, strip_prefixes

__all__ = ["WeightsError", "load_weights"]


def load_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> nn.Module:
    """Load a state dict file into ``model`` (``torch.load(weights_only=True)``: no code runs, nothing downloads).

    The checkpoint layouts of :mod:`quadexport.transforms.statedict` are read (a bare state dict or one under
    ``state_dict`` / ``model`` / ``model_state_dict`` / ``net``, ``module.`` / ``_orig_mod.`` prefixes; numpy
    scalars and an ``argparse.Namespace`` beside it are allowed, other pickled types refused). Keys of plain
    conv/linear layers that the model holds as quadratic layers (``conv.weight`` → ``conv.r.weight``) are mapped,
    so the weights of a plain network load into its quadratized form.

    Raises:
        WeightsError: unreadable file, or keys/shapes that do not fit (a few are named).
    """
    own = model.state_dict()
    state, _ = strip_prefixes(read_state_dict(path, trust_option=None).state, set(own))
    prim = {n: _primary(m) for n, m in model.named_modules() if isinstance(m, QuadLayer)}
    mapped, unexpected, wrong = {}, [], []
    for k, v in state.items():
        head, _, leaf = k.rpartition(".")
        qk = k if k in own or head not in prim else ".".join(p for p in (head, prim[head], leaf) if p)
        if qk not in own:
            unexpected.append(k)
        elif own[qk].shape != v.shape:
            wrong.append(f"{k} {tuple(v.shape)} vs {tuple(own[qk].shape)}")
        else:
            mapped[qk] = v
    extra = _quadratic_keys(model)
    missing = [k for k in own if k not in mapped and k not in extra] if strict else []
    if unexpected or wrong or missing:
        parts = [f"{len(x)} {what}: {', '.join(x[:3])}{' ...' if len(x) > 3 else ''}"
                 for x, what in ((missing, "missing"), (unexpected, "unexpected"), (wrong, "of another shape")) if x]
        raise WeightsError(f"{path} does not fit the model ({'; '.join(parts)}); is it the same architecture, "
                           f"num_classes and in_channels?")
    load_state(model, mapped, strict=False)
    return model


def _primary(layer: QuadLayer) -> str:
    try:
        return primary_branch(layer.neuron_type)
    except UsageError:  # no branch carries plain weights (t2): keys keep their own names
        return layer.neuron_type.branches[0].name


def _quadratic_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the branches beside the primary one of every quadratic layer: a plain network's state
    dict cannot hold them (they keep their ReLinear init)."""
    out = set()
    for lname, layer in model.named_modules():
        if isinstance(layer, QuadLayer):
            primary = _primary(layer)
            for br in layer.neuron_type.branches:
                if br.name != primary:
                    out.update(f"{lname}.{br.name}.{k}" if lname else f"{br.name}.{k}"
                               for k in getattr(layer, br.name).state_dict())
    return out
