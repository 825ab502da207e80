"""The full input preprocessing of a run, and a model wrapper that applies it to raw pixels.

A model is trained on ``(raw * scale - mean) / std`` (per channel, NCHW). :class:`Preprocessing` records every step
of that (layout, size, channels, scale, mean, std, how images of another size were resized, the class names and how
the test split was drawn); ``quadexport train`` stores it in the run (``config.json`` and the checkpoint's meta).

* :class:`RawInput` wraps a trained model so that it takes the raw pixel values (``uint8`` or float, the dataset's
  own range: 0–255, digits 0–16) and applies the training arithmetic as its first two ops, bit for bit.
* :func:`preprocessing_metadata` renders a :class:`Preprocessing` as ONNX ``metadata_props``.

Level L1 (beside :mod:`quadexport.data`): imports only torch and :mod:`quadexport.errors`.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
from torch import nn

from quadexport.errors import UsageError
from quadexport.runmeta import config_dict, meta_dict

__all__ = ["Preprocessing", "RawInput", "affine", "denormalise", "normalise", "preprocessing_metadata"]

log = logging.getLogger(__name__)

LAYOUT = "NCHW"


def _floats(v: Any) -> tuple[float, ...]:
    return tuple(float(x) for x in (v if isinstance(v, (list, tuple)) else [v]))


@dataclass(frozen=True)
class Preprocessing:
    """How raw images become model inputs: ``input = (raw * scale - mean) / std`` per channel, NCHW.

    Attributes:
        channels: 1 (grey, PIL mode ``L``) or 3 (colour, PIL mode ``RGB``).
        size: ``(height, width)`` of the model input.
        scale: multiplier that maps raw values to ``[0, 1]`` (``1/255``; digits ``1/16``; ``1.0`` for float arrays).
        mean: per-channel mean, subtracted after scaling (one value per channel).
        std: per-channel standard deviation, divided by after subtracting the mean.
        class_names: output index -> class name.
        test_split: how the test split was drawn (files or folder, subset size and seed).
        source: the dataset spec the run was trained on (``digits``, ``imagefolder:PATH``, ``npz:FILE``).
        resize: how images of another size are brought to ``size`` (``"PIL bilinear"``), or ``None`` when the
            images were used at their own size.
        layout: always ``"NCHW"``.
    """

    channels: int
    size: tuple[int, int]
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] = ()
    test_split: str = ""
    source: str = ""
    resize: str | None = None
    layout: str = LAYOUT

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))
        object.__setattr__(self, "mean", _floats(self.mean))
        object.__setattr__(self, "std", _floats(self.std))
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        if self.channels not in (1, 3):
            raise UsageError(f"preprocessing: channels must be 1 (grey) or 3 (colour), got {self.channels}")
        if len(self.size) != 2 or min(self.size) < 1:
            raise UsageError(f"preprocessing: size must be (height, width) >= 1, got {self.size}")
        for name, v in (("mean", self.mean), ("std", self.std)):
            if len(v) != self.channels:
                raise UsageError(f"--{name} needs {self.channels} value(s), one per channel, got {len(v)}: {v}")
            if not all(math.isfinite(x) for x in v):
                raise UsageError(f"--{name} values must be finite, got {v}")
        if min(self.std) <= 0:
            raise UsageError(f"--std values must be > 0, got {self.std} (are all images one flat colour?)")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise UsageError(f"preprocessing: scale must be a finite number > 0, got {self.scale}")
        if self.layout != LAYOUT:
            raise UsageError(f"preprocessing: only layout {LAYOUT} is supported, got {self.layout!r}")

    @property
    def color_mode(self) -> str:
        """The PIL mode images are converted to before use: ``"L"`` or ``"RGB"``."""
        return "L" if self.channels == 1 else "RGB"

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        return (self.channels, *self.size)

    def normalization(self) -> dict[str, Any]:
        """``{"scale", "mean", "std"}`` as a run's meta has always stored it (plain floats for one channel)."""
        def one(v: tuple[float, ...]) -> float | list[float]:
            return v[0] if len(v) == 1 else list(v)

        return {"scale": self.scale, "mean": one(self.mean), "std": one(self.std)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (lists for tuples); :meth:`from_dict` reads it back."""
        d = asdict(self)
        for k in ("size", "mean", "std", "class_names"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocessing:
        """Inverse of :meth:`to_dict` (unknown keys are refused with a one-line error)."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise UsageError(f"preprocessing: unknown field(s) {', '.join(unknown)}; is this run from a newer "
                             "quadexport?")
        return cls(**dict(d))


def affine(p: Preprocessing) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, b)`` float32 per-channel ``(C, 1, 1)`` with ``input = raw * a - b``.

    The exact arithmetic of training (:func:`quadexport.data.builtin._normalise`): ``a = 1 / ((1/scale) * std)`` and
    ``b = mean / std``, each rounded to float32 in that order, so data loading and :class:`RawInput` agree bit for bit.
    """
    mean = torch.tensor(p.mean, dtype=torch.float32).reshape(-1, 1, 1)
    std = torch.tensor(p.std, dtype=torch.float32).reshape(-1, 1, 1)
    return 1.0 / ((1.0 / p.scale) * std), mean / std


def normalise(raw: torch.Tensor, p: Preprocessing) -> torch.Tensor:
    """Float32 model input from raw pixels ``(..., C, H, W)`` (the arithmetic of :class:`RawInput`)."""
    a, b = affine(p)
    return raw.to(torch.float32).mul(a).sub(b)


def denormalise(x: torch.Tensor, p: Preprocessing) -> torch.Tensor:
    """Raw pixel values (float32) from model inputs: the inverse of :func:`normalise`, up to float32 rounding.

    For feeding a :class:`RawInput` model the test split of a run whose data loaders yield normalised tensors.
    """
    a, b = affine(p)
    return x.to(torch.float32).add(b).div(a)


class RawInput(nn.Module):
    """``model`` preceded by its training preprocessing: takes raw NCHW pixels, ``uint8`` or float.

    ``forward(x) = model(float32(x) * a - b)`` with ``(a, b) = affine(preprocessing)``. Exported to ONNX this is a
    ``Cast``/``Mul``/``Sub`` in front of the graph, so a deployer feeds decoded pixels (0–255; digits 0–16) as they
    are. It carries the wrapped model's ``quadexport_config`` and a ``quadexport_meta`` marked ``input: raw``.
    """

    def __init__(self, model: nn.Module, preprocessing: Preprocessing):
        super().__init__()
        self.model = model
        self.preprocessing = preprocessing
        a, b = affine(preprocessing)
        self.register_buffer("a", a, persistent=False)
        self.register_buffer("b", b, persistent=False)
        self.quadexport_config = config_dict(model)
        meta = meta_dict(model)
        meta.update(input="raw", input_shape=list(preprocessing.input_shape), preprocessing=preprocessing.to_dict())
        self.quadexport_meta = meta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(torch.float32).mul(self.a).sub(self.b))


def _fmt(values: tuple[float, ...]) -> str:
    return json.dumps([float(f"{v:.9g}") for v in values])


def preprocessing_metadata(p: Preprocessing, *, raw_input: bool = False) -> dict[str, str]:
    """ONNX ``metadata_props`` describing ``p`` (all values are strings).

    Keys: ``quadexport.preprocessing`` (the whole :meth:`Preprocessing.to_dict` as JSON), ``quadexport.input``
    (``raw`` when the graph starts with :class:`RawInput`, else ``normalized``), ``quadexport.input_layout``,
    ``quadexport.input_size`` (``HxW``), ``quadexport.input_color`` (PIL mode), ``quadexport.input_scale``,
    ``quadexport.input_mean``, ``quadexport.input_std``, ``quadexport.class_names`` (JSON list) and
    ``quadexport.input_formula`` (one line saying what to feed).

    Args:
        p: the run's preprocessing.
        raw_input: the exported graph is a :class:`RawInput` (takes raw pixels).
    """
    h, w = p.size
    pixels = f"{p.layout} float32 {p.channels}x{h}x{w}, PIL mode {p.color_mode}"
    if p.resize:
        pixels += f" (resize other sizes with {p.resize})"
    if raw_input:
        formula = f"feed raw pixel values ({pixels}) as decoded; scale, mean and std are applied inside the graph"
    else:
        formula = (f"feed (pixels * {p.scale:.9g} - mean) / std per channel ({pixels}), mean {_fmt(p.mean)}, "
                   f"std {_fmt(p.std)}")
    return {
        "quadexport.preprocessing": json.dumps(p.to_dict(), sort_keys=True),
        "quadexport.input": "raw" if raw_input else "normalized",
        "quadexport.input_layout": p.layout,
        "quadexport.input_size": f"{h}x{w}",
        "quadexport.input_color": p.color_mode,
        "quadexport.input_scale": f"{p.scale:.17g}",
        "quadexport.input_mean": _fmt(p.mean),
        "quadexport.input_std": _fmt(p.std),
        "quadexport.class_names": json.dumps(list(p.class_names)),
        "quadexport.input_formula": formula,
    }
