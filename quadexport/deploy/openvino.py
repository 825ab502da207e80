"""Parity of an exported file under OpenVINO's CPU plugin (optional extra ``quadexport[openvino]``).

:func:`check_openvino` runs inputs through OpenVINO with ``INFERENCE_PRECISION_HINT`` f32 (must match torch to
``rel_l2 ≤ 1e-5`` for float32 files) and, when the CPU supports bfloat16, a separate bf16 row held to the looser
:data:`~quadexport.deploy.parity.BF16_RTOL`. Only decomposed (standard-op) files are accepted: function/fused files
carry ``quadexport`` custom-domain nodes that OpenVINO cannot run; lower them first
(``quadexport.exporter.lower_functions``) or re-export with ``mode="decomposed"``.

A one-line hook for ``quadexport check --runtime openvino``::

    report = check_openvino(onnx_path, model)   # report.rows, report.ok, report.format()
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from quadexport.runmeta import RunMeta
from quadexport.deploy.parity import BF16_RTOL, ParityRow, parity_row, tolerance
from quadexport.errors import QuadexportError, UsageError
from quadexport.exporter.outputs import flatten

log = logging.getLogger(__name__)

__all__ = ["OpenVinoNotInstalled", "OpenVinoReport", "RUNTIME", "bf16_supported", "check_openvino"]

RUNTIME = "openvino-cpu"
INSTALL_HINT = "pip install 'quadexport[openvino]'"


class OpenVinoNotInstalled(QuadexportError, ImportError):
    """The ``openvino`` package is not importable."""


@dataclass
class OpenVinoReport:
    """Result of :func:`check_openvino`: one row per precision × batch, plus notes (e.g. bf16 not supported)."""

    onnx_path: str
    version: str
    rows: list[ParityRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(r.ok for r in self.rows)

    def format(self) -> str:
        lines = [f"OpenVINO {self.version} CPU: {self.onnx_path}", *(r.format() for r in self.rows)]
        return "\n".join(lines + [f"   note: {n}" for n in self.notes])


def _import_openvino() -> Any:
    try:
        import openvino
    except ImportError as e:
        raise OpenVinoNotInstalled(f"OpenVINO is not installed ({e}): {INSTALL_HINT}") from None
    return openvino


def bf16_supported(core: Any | None = None) -> bool:
    """Whether OpenVINO's CPU plugin can run bfloat16 on this CPU (``OPTIMIZATION_CAPABILITIES`` has ``BF16``)."""
    core = core if core is not None else _import_openvino().Core()
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _refuse_custom_domain(onnx_path: Path) -> str:
    """The file's exported dtype; a UsageError for files with quadexport custom-domain nodes."""
    from quadexport.exporter.session import model_info  # lazy: the export package may move (L2)

    info = model_info(onnx_path)
    if info.uses_domain:
        raise UsageError(f"{onnx_path} has quadexport custom-domain nodes ({', '.join(sorted(info.used_ops))}; "
                         f"mode {info.mode or '?'}), which OpenVINO cannot run: re-export with mode='decomposed' or "
                         f"lower it with quadexport.exporter.lower_functions")
    return info.metadata.get("quadexport.dtype", "float32")


def _cases(model: nn.Module | None, io_dir: str | os.PathLike | None, batches: Sequence[int], seed: int,
           input_shape: Sequence[int]) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """(input, torch outputs) pairs: the saved batch of ``io_dir``, else random batches through ``model``."""
    if io_dir is not None:
        from quadexport.deploy.saveio import load_io

        _, x, expected = load_io(io_dir)
        return [(x, expected)]
    if model is None:
        raise UsageError("check_openvino needs the torch model (model=) or a save_io folder (io_dir=)")
    g = np.random.default_rng(seed)
    was_training = model.training
    cases = []
    try:
        model.eval()
        for b in batches:
            x = g.standard_normal((int(b), *input_shape), dtype=np.float32)
            with torch.no_grad():
                y = model(torch.from_numpy(x))
            cases.append((x, [t.float().numpy() for t in flatten(y)]))
    finally:
        model.train(was_training)
    return cases


def _input_shape(ov_model: Any, model: nn.Module | None) -> list[int]:
    shape = ov_model.inputs[0].get_partial_shape()
    dims = [d.get_length() if d.is_static else None for d in list(shape)[1:]]
    if all(d is not None for d in dims):
        return [int(d) for d in dims]
    recorded = RunMeta.of(model).input_shape
    if recorded:
        return list(recorded)
    raise UsageError(f"cannot tell the per-sample input shape (OpenVINO input {shape}): pass io_dir=")


def check_openvino(onnx_path: str | os.PathLike, model: nn.Module | None = None, *,
                   io_dir: str | os.PathLike | None = None, batches: Sequence[int] = (1, 4), seed: int = 0,
                   bf16: bool = True, rtol: float | None = None, threads: int | None = None) -> OpenVinoReport:
    """Run a decomposed ONNX file under OpenVINO's CPU plugin and compare with torch.

    Args:
        onnx_path: a decomposed-mode ``.onnx`` file.
        model: the torch model it was exported from (reference for random batches of sizes ``batches``).
        io_dir: a :func:`~quadexport.deploy.saveio.save_io` folder to use instead of ``model`` (its one batch).
        batches: random batch sizes (with ``model``).
        seed: seed of the random batches.
        bf16: add bf16 rows when the CPU supports bfloat16 (a note says so when it does not).
        rtol: max rel_l2 of the f32 rows (default: 1e-5 for float32 files, 1e-2 for float16 ones).
        threads: OpenVINO inference threads (default: OpenVINO's choice).

    Raises:
        UsageError: the file has quadexport custom-domain nodes (function/fused mode), or neither model nor io_dir.
        OpenVinoNotInstalled: ``openvino`` is not importable.
    """
    onnx_path = Path(onnx_path)
    dtype = _refuse_custom_domain(onnx_path)
    ov = _import_openvino()
    core = ov.Core()
    ov_model = core.read_model(str(onnx_path))
    cases = _cases(model, io_dir, batches, seed, _input_shape(ov_model, model) if io_dir is None else [])
    report = OpenVinoReport(str(onnx_path), ov.get_version())
    precisions = [("f32", tolerance(dtype) if rtol is None else rtol)]
    if bf16 and bf16_supported(core):
        precisions.append(("bf16", BF16_RTOL))
    elif bf16:
        report.notes.append("bf16 not measured: this CPU has no bfloat16 support in OpenVINO "
                            "(OPTIMIZATION_CAPABILITIES lacks BF16)")
    for precision, tol in precisions:
        config = {"INFERENCE_PRECISION_HINT": precision}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = str(int(threads))
        compiled = core.compile_model(ov_model, "CPU", config)
        for x, expected in cases:
            result = compiled({0: x})
            for i, ref in enumerate(expected):
                report.rows.append(parity_row(RUNTIME, precision, np.asarray(result[compiled.outputs[i]]), ref, tol))
    log.info("OpenVINO %s on %s: %d rows, ok=%s", report.version, onnx_path, len(report.rows), report.ok)
    return report
