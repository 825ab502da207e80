"""Foreign architectures by name: ``torchvision:<name>`` and ``timm:<name>`` in :func:`quadexport.create_model`.

The architecture is built untrained (``weights=None`` / ``pretrained=False``: nothing is ever downloaded; load a
state dict with ``--weights FILE`` / :func:`load_weights`), its head sized to ``num_classes`` and its stem to
``in_channels``; the input size is passed to builders that take one (timm ``img_size``, torchvision ViT
``image_size``) unless given. With a quadratic ``neuron`` the model is then quadratized with the default selection
(every conv/linear layer except the stem and the classifier head, :mod:`quadexport.zoo.convert`).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

from torch import nn

from quadexport._compat import import_timm, import_torchvision
from quadexport._torchutil import load_state
from quadexport.errors import UsageError, did_you_mean
from quadexport.layers.convert import primary_branch
from quadexport.layers.quad import QuadLayer
from quadexport.zoo._prune import set_module
from quadexport.zoo.convert import convert_layers, linear_maps, select_layers
from quadexport.zoo.statedict import WeightsError, read_state_dict, strip_prefixes

log = logging.getLogger(__name__)

SOURCES = ("torchvision", "timm")
"""Prefixes of foreign model names (``torchvision:resnet18``, ``timm:vit_tiny_patch16_224``)."""
_NO_DOWNLOAD = ("weights", "weights_backbone", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path")

__all__ = ["SOURCES", "WeightsError", "build_foreign", "check_foreign_name", "is_foreign", "load_weights"]


def is_foreign(name: str) -> bool:
    """Whether ``name`` names a foreign architecture (``<source>:<arch>``)."""
    return isinstance(name, str) and name.partition(":")[0] in SOURCES and ":" in name


def _call_with_size(fn: Callable[..., nn.Module], key: str, size: tuple[int, int], kwargs: dict[str, Any]
                    ) -> nn.Module:
    """``fn(**kwargs)`` with ``key=size`` added when the builder takes it (retried without on TypeError)."""
    if key in kwargs:
        return fn(**kwargs)
    try:
        return fn(**kwargs, **{key: size if size[0] != size[1] else size[0]})
    except TypeError as e:
        if key not in str(e):
            raise
    return fn(**kwargs)


def check_foreign_name(name: str) -> None:
    """Raise ``UsageError`` (with a suggestion) unless ``<source>:<arch>`` names an architecture the source has."""
    source, _, arch = name.partition(":")
    if source == "torchvision":
        known = import_torchvision().models.list_models()
        ok = arch in known
    else:
        timm = import_timm()
        ok, known = timm.is_model(arch), None
    if not ok:
        known = known if known is not None else timm.list_models()
        raise UsageError(f"unknown {source} model {arch!r}{did_you_mean(arch, known)} "
                         f"({source}{'.models' if source == 'torchvision' else ''}.list_models() names them)")


def _torchvision(arch: str, num_classes: int, in_channels: int, size: tuple[int, int], kwargs: dict[str, Any]
                 ) -> nn.Module:
    tv = import_torchvision()
    check_foreign_name(f"torchvision:{arch}")
    import inspect

    params = inspect.signature(tv.models.get_model_builder(arch)).parameters
    if "weights_backbone" in params:  # segmentation/detection: an ImageNet backbone would be downloaded by default
        kwargs = {**kwargs, "weights_backbone": None}
    model = _call_with_size(lambda **kw: tv.models.get_model(arch, weights=None, num_classes=num_classes, **kw),
                            "image_size", size, kwargs)
    if in_channels != 3:
        _adapt_stem(model, in_channels)
    return model


def _timm(arch: str, num_classes: int, in_channels: int, size: tuple[int, int], kwargs: dict[str, Any]
          ) -> nn.Module:
    timm = import_timm()
    check_foreign_name(f"timm:{arch}")
    return _call_with_size(lambda **kw: timm.create_model(arch, pretrained=False, num_classes=num_classes,
                                                          in_chans=in_channels, **kw), "img_size", size, kwargs)


def _adapt_stem(model: nn.Module, in_channels: int) -> None:
    """Replace the first conv (registration order) by one taking ``in_channels`` inputs (fresh init)."""
    name, conv = next(((n, m) for n, m in linear_maps(model) if isinstance(m, nn.modules.conv._ConvNd)),
                      (None, None))
    if conv is None or conv.groups != 1:
        raise UsageError(f"cannot adapt {type(model).__name__}'s stem to in_channels={in_channels}")
    new = type(conv)(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                     conv.groups, conv.bias is not None, conv.padding_mode)
    set_module(model, name, new.to(conv.weight.device, conv.weight.dtype))


def build_foreign(name: str, neuron: str, num_classes: int, in_channels: int, input_size: tuple[int, int],
                  **kwargs: Any) -> nn.Module:
    """Build ``torchvision:<arch>`` / ``timm:<arch>`` untrained, quadratized with ``neuron`` unless ``"relu"``.

    Args:
        name: ``<source>:<arch>``.
        neuron: quadratic neuron type, or ``"relu"`` for the plain architecture.
        num_classes: classifier outputs.
        in_channels: input channels (the stem is adapted).
        input_size: ``(H, W)``, passed as ``img_size`` / ``image_size`` to builders that take it.
        **kwargs: builder options (``drop_path_rate=0.1``, ``patch_size=8``...); ``rank`` goes to the neuron.
    """
    source, _, arch = name.partition(":")
    rank = kwargs.pop("rank", None)
    bad = [k for k in _NO_DOWNLOAD if k in kwargs]
    if bad:
        raise UsageError(f"{name}: {bad[0]}= is not accepted (nothing is downloaded); build the model untrained "
                         f"and load a state dict with --weights FILE")
    build = _torchvision if source == "torchvision" else _timm
    try:
        model = build(arch, num_classes, in_channels, tuple(input_size), dict(kwargs))
    except TypeError as e:
        raise UsageError(f"{name} does not take these options ({e})") from None
    if neuron != "relu":
        sel = select_layers(model)
        convert_layers(model, {n: {"neuron": neuron, "rank": rank} for n in sel.convert})
        log.debug("%s: %d layers quadratic (%s), %d left alone", name, len(sel.convert), neuron, len(sel.skipped))
    return model


def load_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> nn.Module:
    """Load a state dict file into ``model`` (``torch.load(weights_only=True)``: no code runs, nothing downloads).

    The checkpoint layouts of :mod:`quadexport.zoo.statedict` are read (a bare state dict or one under
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
