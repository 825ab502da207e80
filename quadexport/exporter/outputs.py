"""Model outputs of any structure: flattening, ONNX output names, their recorded structure, and rebuilding it.

A model may return one tensor, or tensors nested in tuples, lists, dicts and namedtuples. The ONNX file has one
graph output per tensor, in the order of torch's pytree flattening (sequences in order, dicts in key order), so
:func:`flatten` here and :func:`torch.onnx.export` agree. Output names:

- one tensor: ``logits`` when it is a classifier output (2-D ``[N, C>1]``), else ``output``;
- dict entries: their keys (nested: ``outer.inner``);
- sequence elements: ``output_0..n`` (nested: ``output_0.1``, ``aux.0``).

:class:`OutputStructure` records the tree, the names, each output's kind and the model's task in the file's
metadata (``quadexport.output_structure``, ``quadexport.outputs``, ``quadexport.task``) and in a run's meta
(``meta["outputs"]``, ``meta["task"]``); :func:`rebuild_outputs` turns onnxruntime's list back into the dict/tuple
the torch model returns.

Output kinds: ``logits`` (``[N, C>1]``), ``classes`` (a dense map ``[N, C>1, ...]`` with a class channel, judged by
pixel-wise argmax agreement), ``dense`` (``[N, C, ...]`` with as many channels as the input: an image out), ``other``.
A model's ``quadexport_meta["output_kinds"] = {name: kind}`` overrides the guess.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from quadexport._compat import torchvision_ops_missing
from quadexport.errors import UsageError
from quadexport.runmeta import meta_dict

__all__ = ["FlatOutputs", "KINDS", "OutputInfo", "OutputStructure", "TASKS", "describe_outputs", "flatten",
           "model_structure", "rebuild_outputs", "run_meta", "run_structure", "structure_of"]

KINDS = ("logits", "classes", "dense", "other")
TASKS = ("classification", "segmentation", "dense", "multi-output", "detection", "language-model")
INPUT_NAME = "input"
META_STRUCTURE, META_OUTPUTS, META_TASK = "quadexport.output_structure", "quadexport.outputs", "quadexport.task"


@dataclass(frozen=True)
class OutputInfo:
    """One graph output: its name, kind and shape (of the example batch; dynamic axes are recorded apart)."""

    name: str
    kind: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "shape": list(self.shape)}


@dataclass
class OutputStructure:
    """The outputs of a model: the tree (JSON: a leaf is its output name; ``{"tuple": [...]}``, ``{"list": [...]}``,
    ``{"dict": [[key, sub], ...]}``, ``{"namedtuple": name, "fields": [[field, sub], ...]}``, ``{"none": null}``),
    the flat outputs in graph order, and the task."""

    tree: Any
    outputs: list[OutputInfo] = field(default_factory=list)
    task: str = "classification"

    @property
    def names(self) -> list[str]:
        return [o.name for o in self.outputs]

    @property
    def is_classifier(self) -> bool:
        return self.task == "classification"

    def kind(self, name: str) -> str:
        return next((o.kind for o in self.outputs if o.name == name), "other")

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "tree": self.tree, "outputs": [o.to_dict() for o in self.outputs]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OutputStructure:
        outs = [OutputInfo(o["name"], o.get("kind", "other"), tuple(o.get("shape") or ())) for o in d["outputs"]]
        tree = d.get("tree") or (outs[0].name if len(outs) == 1 else {"tuple": [o.name for o in outs]})
        return cls(tree, outs, d.get("task") or "classification")

    def metadata(self) -> dict[str, str]:
        """ONNX ``metadata_props`` entries (strings)."""
        return {META_TASK: self.task, META_STRUCTURE: json.dumps(self.tree),
                META_OUTPUTS: json.dumps([o.to_dict() for o in self.outputs])}

    def summary(self) -> str:
        """``seg Nx5x32x32 classes, cls Nx10 logits`` (one line; N: the batch)."""
        return ", ".join(f"{o.name} {'x'.join(['N', *map(str, o.shape[1:])])} {o.kind}" for o in self.outputs)

    def rebuild(self, values: Sequence[Any]) -> Any:
        """The model's structure (dict/tuple/list/namedtuple) from the flat outputs, in graph order."""
        if len(values) != len(self.outputs):
            raise UsageError(f"got {len(values)} output(s), the structure has {len(self.outputs)}")
        by_name = dict(zip(self.names, values))
        return _build(self.tree, by_name)


def _build(tree: Any, by_name: dict[str, Any]) -> Any:
    import collections

    if isinstance(tree, str):
        return by_name[tree]
    if "none" in tree:
        return None
    if "tuple" in tree:
        return tuple(_build(t, by_name) for t in tree["tuple"])
    if "list" in tree:
        return [_build(t, by_name) for t in tree["list"]]
    if "dict" in tree:
        return {k: _build(t, by_name) for k, t in tree["dict"]}
    fields = tree["fields"]
    cls = collections.namedtuple(tree["namedtuple"], [k for k, _ in fields])  # type: ignore[misc]
    return cls(*(_build(t, by_name) for _, t in fields))


def _is_namedtuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(x, "_fields")


def _walk(out: Any, path: tuple[Any, ...], leaves: list[tuple[tuple[Any, ...], torch.Tensor]]) -> Any:
    """The tree of ``out`` with leaves as placeholders ``("leaf", i)``; collects ``(path, tensor)``."""
    if isinstance(out, torch.Tensor):
        leaves.append((path, out))
        return ("leaf", len(leaves) - 1)
    if out is None:
        return {"none": None}
    if _is_namedtuple(out):
        return {"namedtuple": type(out).__name__,
                "fields": [[f, _walk(getattr(out, f), (*path, f), leaves)] for f in out._fields]}
    if isinstance(out, (tuple, list)):
        return {type(out).__name__ if type(out) in (tuple, list) else "tuple":
                [_walk(v, (*path, i), leaves) for i, v in enumerate(out)]}
    if isinstance(out, Mapping):
        bad = [k for k in out if not isinstance(k, str)]
        if bad:
            raise UsageError(f"model output dict has a key {bad[0]!r} that is not a string; ONNX outputs are named "
                             "by the keys: use string keys")
        return {"dict": [[k, _walk(v, (*path, k), leaves)] for k, v in out.items()]}
    raise UsageError(f"model output{' ' + '.'.join(map(str, path)) if path else ''} is a {type(out).__name__}; "
                     "ONNX outputs are tensors (in tuples, lists, dicts or namedtuples): return tensors")


def flatten(out: Any) -> list[torch.Tensor]:
    """The tensors of a model output in graph order (torch's pytree order: sequences in order, dicts by key order)."""
    leaves: list[tuple[tuple[Any, ...], torch.Tensor]] = []
    _walk(out, (), leaves)
    return [t for _, t in leaves]


def _name(path: tuple[Any, ...]) -> str:
    parts = [f"output_{p}" if (i == 0 and isinstance(p, int)) else str(p) for i, p in enumerate(path)]
    return ".".join(parts)


def _kind(t: torch.Tensor, in_shape: tuple[int, ...] | None) -> str:
    """``logits`` for ``[N, C>1]``; for an output of the input's rank ``[N, C, *spatial]``: ``dense`` with as many
    channels as the input (an image out), ``classes`` otherwise; anything else (``[N, anchors, 4]``...) ``other``."""
    if t.dim() == 2 and t.shape[1] > 1:
        return "logits"
    if in_shape is not None and t.dim() == len(in_shape) >= 3:
        return "classes" if t.shape[1] > 1 and t.shape[1] != in_shape[1] else "dense"
    return "other"


def _task(outs: list[OutputInfo]) -> str:
    if len(outs) == 1:
        return {"logits": "classification", "classes": "segmentation", "dense": "dense"}.get(outs[0].kind,
                                                                                             "multi-output")
    return "multi-output"


def describe_outputs(out: Any, in_shape: Sequence[int] | None = None, kinds: Mapping[str, str] | None = None,
                     task: str | None = None) -> OutputStructure:
    """The :class:`OutputStructure` of one model output (a batch run through the model).

    Args:
        out: what the model returned.
        in_shape: the input batch's shape (an output of its rank is dense; with as many channels, an image out,
            else a class map).
        kinds: ``{name: kind}`` overriding the guessed kinds (``quadexport_meta["output_kinds"]``).
        task: the task to record (default: guessed from the kinds).
    """
    leaves: list[tuple[tuple[Any, ...], torch.Tensor]] = []
    tree = _walk(out, (), leaves)
    if not leaves:
        raise UsageError("the model returns no tensor")
    shape = tuple(int(d) for d in in_shape) if in_shape is not None else None
    if len(leaves) == 1 and not leaves[0][0]:
        lm = task == "language-model"  # next-token logits (batch, length, vocab)
        names = ["logits" if lm or _kind(leaves[0][1], shape) == "logits" else "output"]
    else:
        names = [_name(p) for p, _ in leaves]
    names = [f"{n}_output" if n == INPUT_NAME else n for n in names]
    if len(set(names)) != len(names):
        raise UsageError(f"model outputs get duplicate ONNX names {names}; use distinct dict keys")
    kinds = dict(kinds or {})
    bad = {k: v for k, v in kinds.items() if v not in KINDS}
    if bad:
        raise UsageError(f"output kinds must be one of {', '.join(KINDS)}, got {bad}")
    infos = [OutputInfo(n, kinds.get(n) or _kind(t, shape), tuple(t.shape)) for n, (_, t) in zip(names, leaves)]
    tree = _replace_leaves(tree, names)
    return OutputStructure(tree, infos, task or _task(infos))


def _replace_leaves(tree: Any, names: list[str]) -> Any:
    if isinstance(tree, tuple) and tree and tree[0] == "leaf":
        return names[tree[1]]
    if isinstance(tree, dict):
        return {k: (_replace_leaves(v, names) if k != "namedtuple" else v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_replace_leaves(v, names) for v in tree]
    return tree


def model_structure(model: nn.Module, x: torch.Tensor | tuple[torch.Tensor, ...]) -> OutputStructure:
    """Run ``model`` on ``x`` (no grad; a tuple: one tensor per input) and describe its outputs. ``quadexport_meta``
    may set ``output_kinds`` (``{name: kind}``) and ``task``; a run's recorded ``outputs`` (:func:`run_meta`) give
    the kinds otherwise."""
    meta = meta_dict(model)
    kinds = meta.get("output_kinds")
    if kinds is None and isinstance(meta.get("outputs"), Mapping):
        kinds = {o["name"]: o["kind"] for o in meta["outputs"].get("outputs", []) if o.get("kind") in KINDS}
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(*x) if isinstance(x, tuple) else model(x)
    except RuntimeError as e:
        err = torchvision_ops_missing(e, type(model).__name__)
        if err is None:
            raise
        raise err from None
    finally:
        model.train(was)
    from quadexport.zoo.tokens import token_input

    task = meta.get("task") if meta.get("task") in TASKS else None
    if token_input(model) is not None:  # a language model (quadexport.zoo.tokens): one logits output
        task, kinds = "language-model", {"logits": "logits", **(kinds or {})}
    return describe_outputs(out, tuple((x[0] if isinstance(x, tuple) else x).shape), kinds, task)


def run_meta(model: nn.Module, input_shape: Sequence[int]) -> dict[str, Any]:
    """What a run dir records about its model's outputs (``meta["task"]``, ``meta["outputs"]``): the model is run
    on one random sample of ``input_shape`` (per sample, no batch dimension)."""
    from quadexport.zoo.tokens import random_tokens, token_input

    tok = token_input(model)
    x = (random_tokens(tok, 1, int(input_shape[-1])) if tok else
         torch.randn((1, *[int(s) for s in input_shape]), generator=torch.Generator().manual_seed(0)))
    p = next(model.parameters(), None)
    if p is not None:
        x = x.to(p.device, None if tok or not p.is_floating_point() else p.dtype)
    s = model_structure(model, x)
    return {"task": s.task, "outputs": s.to_dict()}


class FlatOutputs(nn.Module):
    """``model`` whose output is flattened to a tuple of tensors (what the exporters trace for nested outputs)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(flatten(self.model(*x)))


def run_structure(model: nn.Module) -> OutputStructure | None:
    """A run's model outputs: as recorded (``meta["outputs"]``, :func:`run_meta`), else computed on one random
    sample of ``meta["input_shape"]``; ``None`` when neither is there."""
    meta = meta_dict(model)
    rec = meta.get("outputs")
    if isinstance(rec, Mapping) and rec.get("outputs"):
        return OutputStructure.from_dict(rec)
    if meta.get("input_shape"):
        return OutputStructure.from_dict(run_meta(model, meta["input_shape"])["outputs"])
    return None


def structure_of(source: Any) -> OutputStructure:
    """The recorded :class:`OutputStructure` of an ONNX file (a path, ``ModelProto`` or onnxruntime session).

    Files written before structures were recorded read as one tuple of their graph outputs (one output: itself)."""
    import onnx

    if isinstance(source, (str, os.PathLike)):
        source = onnx.load(str(source), load_external_data=False)
    if isinstance(source, onnx.ModelProto):
        props = {p.key: p.value for p in source.metadata_props}
        names = [o.name for o in source.graph.output]
    else:  # an onnxruntime session
        props = dict(source.get_modelmeta().custom_metadata_map)
        names = [o.name for o in source.get_outputs()]
    if META_OUTPUTS in props:
        outs = json.loads(props[META_OUTPUTS])
        return OutputStructure.from_dict({"task": props.get(META_TASK), "outputs": outs,
                                          "tree": json.loads(props.get(META_STRUCTURE, "null"))})
    outs = [{"name": n, "kind": "other"} for n in names]
    return OutputStructure.from_dict({"outputs": outs, "task": "classification" if names == ["logits"] else
                                      "multi-output"})


def rebuild_outputs(source: Any, values: Sequence[Any]) -> Any:
    """onnxruntime's output list → the structure the torch model returns (dict, tuple, ... or one array).

    ``source``: the ONNX file, its ``ModelProto`` or the onnxruntime session that produced ``values``.
    """
    return structure_of(source).rebuild(values)
