"""Models past protobuf's 2 GiB: ONNX external data, one data file beside the ``.onnx``.

A ``.onnx`` file is one protobuf message, and protobuf refuses to serialise more than 2 GiB. Above
:data:`AUTO_BYTES` of parameters (or when asked, ``export(..., external_data=True)`` / ``--external-data``), the
export writes the weights as ONNX *external data*: ``model.onnx`` keeps the graph, the metadata and the small tensors
(under :data:`SIZE_THRESHOLD` bytes), and every large tensor points into one file beside it, ``model.onnx.data``,
by a relative ``location`` (move the two files together). The names are the torch exporter's own convention.

- Writing: the dynamo exporter's program is saved with ``onnx_ir.save(..., external_data=...)`` (what
  ``ONNXProgram.save(external_data=True)`` does), which streams the tensors straight from the torch parameters into
  the data file, so no protobuf copy of the weights is ever built; the small
  ``.onnx`` is then re-read without its data (``onnx.load(load_external_data=False)``), post-processed (function
  bodies, metadata) and rewritten. A ModelProto that already holds its weights (the legacy TorchScript exporter) is
  written with onnx's helpers (``onnx.save_model(save_as_external_data=True, all_tensors_to_one_file=True)``).
- Reading: onnxruntime, OpenVINO and the C++ client open the ``.onnx`` *by path* (a serialised ModelProto has no
  directory to resolve ``location`` against); quadexport's readers never pass bytes for such files.
- :func:`model_files` lists a file and the data files it references (sizes, copies, clean-up).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable

import onnx
from onnx import external_data_helper

log = logging.getLogger(__name__)

PROTOBUF_LIMIT = 2**31 - 1
"""Largest serialisable protobuf message (bytes)."""
AUTO_BYTES = 1_800_000_000
"""Parameter bytes above which the export writes external data without being asked (the graph, metadata and function
bodies need room under :data:`PROTOBUF_LIMIT` too)."""
SIZE_THRESHOLD = 1024
"""Tensors smaller than this many bytes stay inside the ``.onnx`` (shapes, scalars, tiny biases)."""
BIG_FILE_BYTES = 1 << 30
"""Readers that would hold several copies of the weights (one onnxruntime session per opt level) work one at a time
above this many bytes of weights (:func:`is_big`)."""

__all__ = ["AUTO_BYTES", "BIG_FILE_BYTES", "PROTOBUF_LIMIT", "SIZE_THRESHOLD", "data_location", "external_files",
           "is_big", "model_files", "parameter_bytes", "save_proto", "total_size", "uses_external_data",
           "wants_external", "write_program"]


def data_location(path: str | os.PathLike) -> str:
    """The relative ``location`` of the data file of ``path``: ``<name>.onnx.data`` (the torch exporter's name)."""
    return f"{Path(path).name}.data"


def parameter_bytes(tensors: Iterable[Any]) -> int:
    """Bytes of the distinct tensors (storages) in ``tensors`` (e.g. ``chain(model.parameters(), model.buffers())``);
    tied weights count once."""
    seen: dict[Any, int] = {}
    for t in tensors:
        try:
            key = t.untyped_storage().data_ptr()
        except (AttributeError, RuntimeError):  # meta tensors, tensor subclasses without storage
            key = id(t)
        seen[key] = max(seen.get(key, 0), t.numel() * t.element_size())
    return sum(seen.values())


def wants_external(external_data: bool | None, nbytes: int) -> bool:
    """Whether to write external data: as asked, or (``None``) when the weights exceed :data:`AUTO_BYTES`."""
    if external_data is None:
        return nbytes > AUTO_BYTES
    return bool(external_data)


def uses_external_data(proto: onnx.ModelProto) -> bool:
    """Some tensor of ``proto`` (initializers, attributes, functions included) lives in an external file."""
    return any(external_data_helper.uses_external_data(t) for t in external_data_helper._get_all_tensors(proto))


def external_files(path: str | os.PathLike, proto: onnx.ModelProto | None = None) -> list[Path]:
    """The data files that the ``.onnx`` at ``path`` references (relative to its folder), in first-use order; ``[]``
    for a self-contained file. ``proto``: the file's ModelProto, read without its data, if already loaded."""
    path = Path(path)
    proto = proto if proto is not None else onnx.load(str(path), load_external_data=False)
    found: dict[str, None] = {}
    for t in external_data_helper._get_all_tensors(proto):
        if external_data_helper.uses_external_data(t):
            info = external_data_helper.ExternalDataInfo(t)
            found.setdefault(info.location, None)
    return [path.parent / loc for loc in found]


def model_files(path: str | os.PathLike) -> list[Path]:
    """``[path, *its data files]``: everything that must travel with the model."""
    return [Path(path), *external_files(path)]


def total_size(path: str | os.PathLike) -> int:
    """Bytes of the ``.onnx`` and its data files (missing data files count 0)."""
    return sum(p.stat().st_size for p in model_files(path) if p.is_file())


def is_big(path: str | os.PathLike) -> bool:
    """The model's files hold more than :data:`BIG_FILE_BYTES` (readers keep one session alive at a time); a big
    self-contained file is told by its size, without parsing it."""
    return Path(path).stat().st_size > BIG_FILE_BYTES or total_size(path) > BIG_FILE_BYTES


def save_proto(proto: onnx.ModelProto, path: str | os.PathLike, external: bool) -> Path:
    """Write ``proto`` to ``path``; with ``external``, its tensors of :data:`SIZE_THRESHOLD` bytes or more go to
    ``<name>.data`` beside it (onnx's external-data helpers; ``proto`` is modified: those tensors become references).
    A proto whose tensors already are references (read with ``load_external_data=False``) is written as it is: only
    the ``.onnx``, the data file it points to is left alone."""
    path = Path(path)
    if external and not uses_external_data(proto):
        loc = data_location(path)
        (path.parent / loc).unlink(missing_ok=True)  # onnx appends to an existing data file
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=loc,
                        size_threshold=SIZE_THRESHOLD)
    else:
        onnx.save_model(proto, str(path))
    return path


def write_program(program: Any, path: str | os.PathLike) -> onnx.ModelProto:
    """Write a torch ``ONNXProgram`` to ``path`` with its weights in ``<name>.data`` (streamed from the torch
    tensors by onnx_ir, without building a protobuf of the weights) and return the ``.onnx`` read back without its
    data (tensors as references): small, ready to post-process and rewrite with :func:`save_proto`."""
    import onnx_ir as ir

    path = Path(path)
    (path.parent / data_location(path)).unlink(missing_ok=True)
    ir.save(program.model, str(path), external_data=data_location(path), size_threshold_bytes=SIZE_THRESHOLD)
    proto = onnx.load(str(path), load_external_data=False)
    log.debug("wrote %s with external data %s (%.1f MB)", path.name, data_location(path),
              (path.parent / data_location(path)).stat().st_size / 1e6)
    return proto
