"""Self-check files for any client: a sample batch, the torch outputs for it, and what "equal" means.

:func:`save_io` writes into a directory::

    input.npy      float32 [batch, *sample_shape]: real data when given, else standard-normal (seeded)
    expected.npy   float32 torch outputs for input.npy (first output; further outputs expected_1.npy, ...)
    io.json        names, shapes, dtypes, the metric (rel_l2 = ‖out − expected‖ / ‖expected‖) and its tolerance

A client in any language runs input.npy through the ONNX file and compares with expected.npy; in Python,
:func:`verify_io` does the comparison (the C++ example writes its outputs as .npy for it).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
import torch
from torch import nn

from quadexport.runmeta import input_shape_of
from quadexport.runs.atomicfile import write_json
from quadexport.deploy.parity import ParityRow, parity_row, tolerance
from quadexport.errors import QuadexportError, UsageError
from quadexport.exporter.dynamic import recorded
from quadexport.exporter.outputs import flatten

log = logging.getLogger(__name__)

__all__ = ["IO_FORMAT", "SavedIO", "load_io", "save_io", "verify_io"]

IO_FORMAT = "quadexport-io/1"
INPUT_FILE, EXPECTED_FILE, JSON_FILE = "input.npy", "expected.npy", "io.json"


@dataclass
class SavedIO:
    """What :func:`save_io` wrote (and :func:`load_io` reads back).

    Attributes:
        directory: the folder holding the files.
        onnx_path: the ONNX file the outputs are for.
        input_name: the graph input the batch feeds.
        input_shape: shape of ``input.npy``.
        output_names: graph outputs, in order; ``expected_files[i]`` holds output ``i``.
        output_shapes: their shapes.
        expected_files: ``expected.npy`` (then ``expected_1.npy``, ...), relative to ``directory``.
        model_dtype: exported dtype (metadata ``quadexport.dtype``); I/O is float32 either way.
        rtol: max relative L2 error a client's output may have.
        source: where the batch came from (``"random (seed 0)"``, ``"data"``, ``"dataset digits"``).
        onnxruntime_rel_l2: worst rel_l2 of onnxruntime (Python) on the batch, when verified at save time.
    """

    directory: Path
    onnx_path: str
    input_name: str
    input_shape: list[int]
    output_names: list[str]
    output_shapes: list[list[int]]
    expected_files: list[str]
    model_dtype: str
    rtol: float
    source: str
    onnxruntime_rel_l2: float | None = None

    @property
    def input_path(self) -> Path:
        return self.directory / INPUT_FILE

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": IO_FORMAT, "onnx": self.onnx_path, "metric": "rel_l2", "rtol": self.rtol,
            "model_dtype": self.model_dtype, "source": self.source, "onnxruntime_rel_l2": self.onnxruntime_rel_l2,
            "input": {"name": self.input_name, "file": INPUT_FILE, "shape": self.input_shape, "dtype": "float32"},
            "outputs": [{"name": n, "file": f, "shape": s, "dtype": "float32"}
                        for n, f, s in zip(self.output_names, self.expected_files, self.output_shapes)],
        }


def _graph_io(proto: onnx.ModelProto) -> tuple[str, list[int | None], list[str]]:
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise UsageError(f"save_io needs a model with one input, this one has {len(inputs)}")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    return inputs[0].name, dims[1:], [o.name for o in proto.graph.output]


def _sample_shape(onnx_dims: list[int | None], model: nn.Module, props: dict[str, str]) -> list[int]:
    if onnx_dims and all(d for d in onnx_dims):
        return [int(d) for d in onnx_dims]
    dyn = recorded(props)  # a dynamic-size file: the size it was traced at
    if dyn and onnx_dims and onnx_dims[0]:
        return [int(onnx_dims[0]), *[int(v) for v in dyn["sizes"][0]]]
    shape = input_shape_of(model)
    if shape is not None:
        return list(shape)
    raise UsageError(f"cannot tell the per-sample input shape (ONNX input dims {onnx_dims}): pass data=")


def _batch(shape: list[int], batch: int, data: Any, dataset: str | None, data_dir: Any,
           seed: int) -> tuple[np.ndarray, str]:
    if data is None and dataset:
        from quadexport.data import load_dataset

        data, source = load_dataset(dataset, data_dir=data_dir).x_test, f"dataset {dataset}"
    else:
        source = "data"
    if data is None:
        g = np.random.default_rng(seed)
        return g.standard_normal((batch, *shape), dtype=np.float32), f"random (seed {seed})"
    x = data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    if list(x.shape[1:]) != shape:
        raise UsageError(f"data has samples of shape {list(x.shape[1:])}, the model takes {shape}: pass matching data")
    return np.ascontiguousarray(x[:batch], dtype=np.float32), source


def _ort_rel_l2(onnx_path: Path, input_name: str, x: np.ndarray, expected: list[np.ndarray], rtol: float) -> float:
    from quadexport.runtimes import get_runtime

    outs = get_runtime("onnxruntime").open(onnx_path).run({input_name: x})
    rows = [parity_row("onnxruntime", "f32", o, e, rtol) for o, e in zip(outs, expected)]
    bad = [r for r in rows if not r.ok]
    if bad:
        raise UsageError(f"{onnx_path} does not reproduce the model's outputs under onnxruntime ({bad[0].reason}, "
                         f"rel_l2 {bad[0].rel_l2:.1e}): pass the model the file was exported from")
    return max(r.rel_l2 for r in rows)


def save_io(model: nn.Module, onnx_path: str | os.PathLike, out_dir: str | os.PathLike, *, batch: int = 4,
            data: np.ndarray | torch.Tensor | None = None, dataset: str | None = None,
            data_dir: str | os.PathLike | None = None, seed: int = 0, verify: bool = True) -> SavedIO:
    """Write ``input.npy``, ``expected.npy`` and ``io.json`` for ``onnx_path`` into ``out_dir``.

    Args:
        model: the torch model the file was exported from (run in eval mode; its train/eval state is restored).
        onnx_path: the exported ``.onnx`` file (names, shapes and dtype are read from it).
        out_dir: output folder (created).
        batch: samples in ``input.npy`` (fewer when ``data`` has fewer).
        data: real inputs ``[N, *sample_shape]``; the first ``batch`` are used.
        dataset: when ``data`` is not given, take the first test samples of this dataset (``quadexport.data``).
        data_dir: the dataset's folder (default: the usual lookup).
        seed: seed of the random batch (no data).
        verify: run the batch under onnxruntime first and refuse a file that does not match the model.

    Raises:
        UsageError: bad batch or data shape, or (``verify``) the file does not reproduce the model.
    """
    if int(batch) < 1:
        raise UsageError(f"batch must be >= 1, got {batch}")
    onnx_path, out = Path(onnx_path), Path(out_dir)
    if not onnx_path.is_file():
        raise UsageError(f"no ONNX file at {onnx_path}: export the model first")
    proto = onnx.load(str(onnx_path), load_external_data=False)
    input_name, dims, output_names = _graph_io(proto)
    props = {p.key: p.value for p in proto.metadata_props}
    model_dtype = props.get("quadexport.dtype", "float32")
    x, source = _batch(_sample_shape(dims, model, props), int(batch), data, dataset, data_dir, seed)
    was_training = model.training
    try:
        with torch.no_grad():
            y = model.eval()(torch.from_numpy(x))
    finally:
        model.train(was_training)
    expected = [np.ascontiguousarray(t.detach().float().cpu().numpy()) for t in flatten(y)]
    if len(expected) != len(output_names):
        raise UsageError(f"the model returns {len(expected)} outputs, {onnx_path} has {len(output_names)}: pass the "
                         f"model the file was exported from")
    rtol = tolerance(model_dtype)
    ort_rel = _ort_rel_l2(onnx_path, input_name, x, expected, rtol) if verify else None
    files = [EXPECTED_FILE] + [f"expected_{i}.npy" for i in range(1, len(expected))]
    saved = SavedIO(out, str(onnx_path), input_name, list(x.shape), output_names, [list(e.shape) for e in expected],
                    files, model_dtype, rtol, source, ort_rel)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / INPUT_FILE, x)
    for f, e in zip(files, expected):
        np.save(out / f, e)
    write_json(out / JSON_FILE, saved.to_dict())
    log.info("saved %s batch %s (%s) and %d expected output(s) to %s", input_name, list(x.shape), source,
             len(files), out)
    return saved


def load_io(io_dir: str | os.PathLike) -> tuple[SavedIO, np.ndarray, list[np.ndarray]]:
    """Read a :func:`save_io` folder: its description, the input batch and the expected outputs."""
    import json

    d = Path(io_dir)
    if not (d / JSON_FILE).is_file():
        raise UsageError(f"{d} has no {JSON_FILE}: write it with save_io (quadexport export ... --save-io DIR)")
    j = json.loads((d / JSON_FILE).read_text())
    if j.get("format") != IO_FORMAT:
        raise QuadexportError(f"{d / JSON_FILE}: format {j.get('format')!r}, expected {IO_FORMAT!r}")
    outs = j["outputs"]
    saved = SavedIO(d, j["onnx"], j["input"]["name"], j["input"]["shape"], [o["name"] for o in outs],
                    [o["shape"] for o in outs], [o["file"] for o in outs], j["model_dtype"], float(j["rtol"]),
                    j["source"], j.get("onnxruntime_rel_l2"))
    return saved, np.load(d / j["input"]["file"]), [np.load(d / o["file"]) for o in outs]


def verify_io(io_dir: str | os.PathLike, outputs: np.ndarray | Sequence[np.ndarray], *, runtime: str = "client",
              precision: str = "f32", rtol: float | None = None) -> list[ParityRow]:
    """Compare a client's outputs for ``input.npy`` with ``expected.npy`` (one row per output)."""
    saved, _, expected = load_io(io_dir)
    outs = [outputs] if isinstance(outputs, np.ndarray) else list(outputs)
    if len(outs) != len(expected):
        raise UsageError(f"got {len(outs)} output(s), {io_dir} expects {len(expected)}")
    tol = saved.rtol if rtol is None else rtol
    return [parity_row(runtime, precision, o, e, tol) for o, e in zip(outs, expected)]
