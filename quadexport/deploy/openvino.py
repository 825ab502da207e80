"""Parity of an exported file under OpenVINO's CPU plugin (optional extra ``quadexport[openvino]``).

:func:`check_openvino` runs inputs through OpenVINO with ``INFERENCE_PRECISION_HINT`` f32 (must match torch to
``rel_l2 ≤ 1e-5`` for float32 files) and, when the CPU supports bfloat16, a separate bf16 row held to the looser
:data:`~quadexport.deploy.parity.BF16_RTOL`. Only decomposed (standard-op) files are accepted: function/fused files
carry ``quadexport`` custom-domain nodes that OpenVINO cannot run; lower them first
(``quadexport.exporter.lower_functions``) or re-export with ``mode="decomposed"``.

The outputs come from the registered ``openvino`` runtime (:mod:`quadexport.runtimes.openvino_cpu`, which
``quadexport check --runtime openvino`` uses too); this module adds the per-precision parity rows and the
``save_io`` folder as a reference::

    report = check_openvino(onnx_path, model)   # report.rows, report.ok, report.format()
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from quadexport.runmeta import RunMeta
from quadexport.deploy.parity import BF16_RTOL, ParityRow, parity_row, tolerance
from quadexport.errors import UsageError
from quadexport.exporter.outputs import flatten
from quadexport.runtimes import Setting, file_io, get_runtime
from quadexport.runtimes.openvino_cpu import (INSTALL_HINT, LABEL, OpenVinoNotInstalled, bf16_supported,
                                              import_openvino)

log = logging.getLogger(__name__)

__all__ = ["INSTALL_HINT", "OpenVinoNotInstalled", "OpenVinoReport", "RUNTIME", "bf16_supported", "check_openvino"]

RUNTIME = LABEL


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


def _input_shape(onnx_path: Path, model: nn.Module | None) -> list[int]:
    dims = file_io(onnx_path).input_dims[1:]
    if all(isinstance(d, int) for d in dims):
        return [int(d) for d in dims]
    recorded = RunMeta.of(model).input_shape
    if recorded:
        return list(recorded)
    raise UsageError(f"cannot tell the per-sample input shape (ONNX input dims {dims}): pass io_dir=")


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
    import_openvino()  # OpenVinoNotInstalled names the extra
    runtime = get_runtime("openvino")
    sup = runtime.require()
    cases = _cases(model, io_dir, batches, seed, _input_shape(onnx_path, model) if io_dir is None else [])
    report = OpenVinoReport(str(onnx_path), str(sup.version))
    precisions = [("f32", tolerance(dtype) if rtol is None else rtol)]
    if bf16 and "bf16" in sup.precisions:
        precisions.append(("bf16", BF16_RTOL))
    elif bf16:
        report.notes.append("bf16 not measured: this CPU has no bfloat16 support in OpenVINO "
                            "(OPTIMIZATION_CAPABILITIES lacks BF16)")
    for precision, tol in precisions:
        session = runtime.open(onnx_path, Setting(precision=precision, threads=threads))
        for x, expected in cases:
            outs = session.run(x)
            for i, ref in enumerate(expected):
                report.rows.append(parity_row(RUNTIME, precision, outs[i], ref, tol))
    log.info("OpenVINO %s on %s: %d rows, ok=%s", report.version, onnx_path, len(report.rows), report.ok)
    return report
