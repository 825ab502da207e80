"""What a run records about its model, typed: :class:`RunMeta`, read and written here only.

A run's checkpoint stores it as a plain dict (``meta``), and a loaded model carries that dict as
``model.quadexport_meta`` (its build arguments as ``model.quadexport_config``). The dict layout is the file format
and does not change: :meth:`RunMeta.to_dict` writes the same flat keys, :meth:`RunMeta.from_dict` reads any run
written before, and keys this class does not name are kept in :attr:`RunMeta.extra` and written back unchanged.
Code that needs a run's task, inputs or outputs asks :meth:`RunMeta.of` (or :func:`input_shape_of`) rather than
reading the dicts itself.

Level 0: imports nothing of quadexport (every level reads run metadata).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

__all__ = ["RunMeta", "config_dict", "input_shape_of", "meta_dict"]

_TYPED = ("task", "input_shape", "inputs", "input_range", "input_stats", "outputs", "preprocessing", "source",
          "dataset", "num_classes", "test_acc")


def _ints(v: Any) -> tuple[int, ...] | None:
    return None if not v else tuple(int(d) for d in v)


@dataclass
class RunMeta:
    """A run's metadata.

    Attributes:
        task: ``classification``, ``language-model``, ... (what the outputs mean); ``None`` when not recorded.
        input_shape: per-sample shape of the (first) input, without the batch dimension.
        inputs: one entry per ``forward`` input for models that take several (``name``, ``shape``, ``dtype``);
            ``None`` for single-input runs.
        input_range: ``[[lo, hi], ...]`` one pair per input, the range random verification inputs are drawn in.
        input_stats: per-channel statistics of the training inputs (``mean``/``std``), when recorded.
        outputs: the output structure (names, kinds), as :mod:`quadexport.exporter.outputs` records it.
        preprocessing: what the exported file expects as input (:mod:`quadexport.data.preprocess`).
        source: what the model was made from (``--from`` run, quadratized/adopted source).
        neuron: the model's neuron type (from the build arguments).
        dataset: the training dataset's name.
        num_classes: classifier outputs.
        test_acc: test accuracy as a fraction, for classifiers.
        extra: every other key the run recorded (``relinear``, ``train_config``, ``compression`` ...), kept as is.
    """

    task: str | None = None
    input_shape: tuple[int, ...] | None = None
    inputs: list[dict[str, Any]] | None = None
    input_range: list[list[float]] | None = None
    input_stats: dict[str, Any] | None = None
    outputs: dict[str, Any] | None = None
    preprocessing: dict[str, Any] | None = None
    source: dict[str, Any] | None = None
    neuron: str | None = None
    dataset: str | None = None
    num_classes: int | None = None
    test_acc: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, meta: Mapping[str, Any] | None, config: Mapping[str, Any] | None = None) -> "RunMeta":
        """Read a checkpoint's ``meta`` dict (any layout written so far) and, optionally, the model's build
        ``config`` (it gives the neuron, and the input shape of runs that did not record one)."""
        d, cfg = dict(meta or {}), dict(config or {})
        known = {k: copy.deepcopy(d.pop(k)) for k in _TYPED if k in d}
        shape = _ints(known.pop("input_shape", None))
        if shape is None and cfg.get("in_channels") is not None and cfg.get("input_size") is not None:
            size = cfg["input_size"]
            shape = (int(cfg["in_channels"]), *((size, size) if isinstance(size, int) else (int(s) for s in size)))
        return cls(input_shape=shape, neuron=cfg.get("neuron"), extra=d, **known)

    @classmethod
    def of(cls, model: Any) -> "RunMeta":
        """The metadata a model carries (``quadexport_meta`` / ``quadexport_config``; empty for a plain model)."""
        return cls.from_dict(getattr(model, "quadexport_meta", None), getattr(model, "quadexport_config", None))

    def to_dict(self) -> dict[str, Any]:
        """The flat dict a checkpoint stores (the layout of every run written so far; unset fields are left out,
        ``neuron`` stays in the build config)."""
        out = copy.deepcopy(self.extra)
        for f in fields(self):
            if f.name in ("extra", "neuron"):
                continue
            v = getattr(self, f.name)
            if v is not None:
                out[f.name] = list(v) if f.name == "input_shape" else copy.deepcopy(v)
        return out

    def input_shapes(self) -> list[tuple[int, ...]]:
        """The per-sample shape of each input (one for single-input runs; empty when none is recorded)."""
        if self.inputs:
            return [tuple(int(d) for d in i["shape"]) for i in self.inputs]
        return [self.input_shape] if self.input_shape else []

    @property
    def is_classifier(self) -> bool:
        """Whether the run is a classifier (the default for runs that did not record a task)."""
        return self.task in (None, "classification")


def input_shape_of(model: Any, given: Any = None) -> tuple[int, ...] | None:
    """The per-sample input shape: ``given`` when not ``None``, else what the model's run recorded, else what its
    build arguments imply (``in_channels`` × ``input_size``); ``None`` when nothing tells."""
    if given is not None:
        return tuple(int(d) for d in given)
    return RunMeta.of(model).input_shape


def meta_dict(model: Any) -> dict[str, Any]:
    """A copy of the model's metadata dict (empty for a model without one)."""
    return dict(getattr(model, "quadexport_meta", None) or {})


def config_dict(model: Any) -> dict[str, Any]:
    """A copy of the model's build arguments (``quadexport_config``; empty for a plain model)."""
    return dict(getattr(model, "quadexport_config", None) or {})
