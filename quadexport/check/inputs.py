"""The random inputs :func:`quadexport.check.check` feeds beyond one N(0, 1) tensor (issue #30): a run's recorded
input range (``meta["input_range"]``, uniform draws, lines labelled ``random U[0,1]``) and files with several inputs
(one array per input, named and shaped as the file says, ranged as the run records)."""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
from torch import nn

from quadexport.data.inputs import InputSpec, ModelInputs, parse_ranges
from quadexport.errors import UsageError
from quadexport.runmeta import RunMeta

__all__ = ["input_range", "random_label", "several_batches", "several_inputs"]


def input_range(model: nn.Module) -> tuple[float, float] | None:
    """The range a one-input run draws its random inputs from (``meta["input_range"]``), or None."""
    rng = RunMeta.of(model).input_range
    if isinstance(rng, list) and len(rng) == 1 and rng[0] is not None:
        return float(rng[0][0]), float(rng[0][1])
    return None


def random_label(model: nn.Module) -> str:
    """``random`` (N(0, 1)), or ``random U[lo,hi]`` for a run with a recorded range."""
    r = input_range(model)
    return "random" if r is None else f"random U[{r[0]:g},{r[1]:g}]"


def several_inputs(onnx_path: str | os.PathLike, model: nn.Module) -> ModelInputs | None:
    """A file with several inputs: their specs (names and per-sample shapes from the file, else the run's
    ``meta["inputs"]``; ranges from the run's ``meta["input_range"]``); ``None`` for one input (checked as it always
    was)."""
    from quadexport.exporter.session import read_onnx

    proto = read_onnx(onnx_path)
    inits = {i.name for i in proto.graph.initializer}
    ins = [i for i in proto.graph.input if i.name not in inits]
    if len(ins) < 2:
        return None
    meta = RunMeta.of(model)
    rec = {i["name"]: i["shape"] for i in meta.inputs or []}
    shapes = []
    for i in ins:
        dims = [d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim][1:]
        if not dims or not all(dims):
            dims = rec.get(i.name)
        if dims is None:
            raise UsageError(f"cannot tell the per-sample shape of input {i.name!r} of {onnx_path}; the run records "
                             "no meta['inputs']")
        shapes.append(tuple(int(d) for d in dims))
    rng = meta.input_range
    ranges = parse_ranges(rng, len(ins)) if isinstance(rng, list) and len(rng) == len(ins) else [None] * len(ins)
    return ModelInputs(tuple(InputSpec(i.name, s, r) for i, s, r in zip(ins, shapes, ranges)))


def several_batches(inputs: ModelInputs, batches: Sequence[int], seed: int, dataset: Any
                    ) -> list[tuple[str, int, tuple[np.ndarray, ...]]]:
    """``(label, batch, one array per input)`` for every batch size: random inputs of a file with several inputs.

    Raises:
        UsageError: a dataset was asked for (it feeds one input).
    """
    if dataset:
        raise UsageError(f"the model takes {len(inputs)} inputs ({', '.join(inputs.names)}); a dataset feeds one: "
                         "check it without --dataset (random inputs)")
    rng = np.random.default_rng(seed)
    label = "random" + ("" if all(r is None for r in inputs.ranges) else " " + ",".join(
        "N(0,1)" if r is None else f"U[{r[0]:g},{r[1]:g}]" for r in inputs.ranges))
    return [(label, int(b), inputs.numpy(int(b), rng)) for b in batches]
