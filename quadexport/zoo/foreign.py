"""Foreign architectures by name: ``torchvision:<name>`` and ``timm:<name>`` in :func:`quadexport.create_model`.

The architecture is built untrained (``weights=None`` / ``pretrained=False``: nothing is ever downloaded; load a
state dict with ``--weights FILE`` / :func:`quadexport.transforms.weights.load_weights`), its head sized to
``num_classes`` and its stem to ``in_channels``; the input size is passed to builders that take one (timm
``img_size``, torchvision ViT ``image_size``) unless given. With a quadratic ``neuron``,
:func:`quadexport.transforms.build.create_model` then quadratizes it with the default selection (every conv/linear
layer except the stem and the classifier head, :mod:`quadexport.transforms.convert`).
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from quadexport._compat import import_timm, import_torchvision
from quadexport.errors import UsageError, did_you_mean


SOURCES = ("torchvision", "timm")
"""Prefixes of foreign model names (``torchvision:resnet18``, ``timm:vit_tiny_patch16_224``)."""
_NO_DOWNLOAD = ("weights", "weights_backbone", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path")

__all__ = ["SOURCES", "build_foreign", "check_foreign_name", "is_foreign"]


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
    name, conv = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)),
                      (None, None))
    if conv is None or conv.groups != 1:
        raise UsageError(f"cannot adapt {type(model).__name__}'s stem to in_channels={in_channels}")
    new = type(conv)(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                     conv.groups, conv.bias is not None, conv.padding_mode)
    model.set_submodule(name, new.to(conv.weight.device, conv.weight.dtype))


def build_foreign(name: str, num_classes: int, in_channels: int, input_size: tuple[int, int],
                  **kwargs: Any) -> nn.Module:
    """Build ``torchvision:<arch>`` / ``timm:<arch>`` untrained, the plain architecture (the quadratic form is
    :func:`quadexport.transforms.build.create_model`'s: this one, quadratized with the default selection).

    Args:
        name: ``<source>:<arch>``.
        num_classes: classifier outputs.
        in_channels: input channels (the stem is adapted).
        input_size: ``(H, W)``, passed as ``img_size`` / ``image_size`` to builders that take it.
        **kwargs: builder options (``drop_path_rate=0.1``, ``patch_size=8``...).
    """
    source, _, arch = name.partition(":")
    bad = [k for k in _NO_DOWNLOAD if k in kwargs]
    if bad:
        raise UsageError(f"{name}: {bad[0]}= is not accepted (nothing is downloaded); build the model untrained "
                         f"and load a state dict with --weights FILE")
    build = _torchvision if source == "torchvision" else _timm
    try:
        model = build(arch, num_classes, in_channels, tuple(input_size), dict(kwargs))
    except TypeError as e:
        raise UsageError(f"{name} does not take these options ({e})") from None
    return model
