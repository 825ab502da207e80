"""ONNX export of models built from quadexport and torch layers: :func:`export`.

Modes:

- ``"decomposed"`` (default): standard ONNX ops only (``Conv``/``Gemm``, ``Mul``, ``Add``; ``x*x`` as ``Mul``).
  Runs in any ONNX runtime and tool.
- ``"function"``: one ``quadexport::QuadLinear``/``QuadConv1d``/``QuadConv2d`` node per quadratic layer, with a
  model-local function body in standard ops, so stock onnxruntime and ``onnx.reference`` run it (they inline the
  body) and a runtime with the kernel library runs the fused kernel.
- ``"fused"``: the same graph and bodies, with metadata ``quadexport.runtime=fused``: :func:`make_session` then
  registers the kernel library by default. The bodies are kept so the file still runs anywhere.

The caller's model is never modified: everything happens on a deep copy in eval mode.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any, Mapping

import onnx
import torch
from torch import nn

from quadexport.export import ops
from quadexport.export.decomposed import STACK_LINEAR, prepare_decomposed
from quadexport.export.fold import fold_batchnorm
from quadexport.export.function import (attach_functions, lower_functions, prepare_function, quadexport_nodes,
                                        strip_functions)
from quadexport.export.session import make_session

MODES = ("decomposed", "function", "fused")
DYNAMO_OPSETS = range(18, 24)
DEFAULT_OPSET = 20
INPUT_NAME, OUTPUT_NAME = "input", "logits"

__all__ = ["DEFAULT_OPSET", "MODES", "export", "lower_functions", "make_session", "strip_functions"]


def _example_input(model: nn.Module, example_input: torch.Tensor | None,
                   input_shape: tuple[int, ...] | list[int] | None) -> torch.Tensor:
    """A float32 batch of 2 (tracing with batch 1 can freeze the batch dimension)."""
    if example_input is not None:
        x = example_input.detach().float().cpu()
        return torch.cat([x, x]) if x.shape[0] == 1 else x
    shape = input_shape
    if shape is None:
        meta = getattr(model, "quadexport_meta", None) or {}
        cfg = getattr(model, "quadexport_config", None) or {}
        if meta.get("input_shape"):
            shape = meta["input_shape"]
        elif cfg.get("in_channels") is not None and cfg.get("input_size") is not None:
            size = cfg["input_size"]
            size = [size, size] if isinstance(size, int) else list(size)
            shape = [cfg["in_channels"], *size]
    if shape is None:
        raise ValueError("cannot tell the model's input shape: pass example_input= or input_shape= (per sample, "
                         "without the batch dimension, e.g. (3, 32, 32))")
    g = torch.Generator().manual_seed(0)
    return torch.randn((2, *[int(s) for s in shape]), generator=g)


def _metadata(model: nn.Module, mode: str, opset: int, fp16: bool, extra: Mapping[str, Any] | None,
              notes: Mapping[str, Any]) -> dict[str, str]:
    from quadexport._version import __version__

    cfg = dict(getattr(model, "quadexport_config", None) or {})
    meta = dict(getattr(model, "quadexport_meta", None) or {})
    neurons = sorted({m.neuron for m in model.modules() if hasattr(m, "neuron_type")})
    props: dict[str, Any] = {
        "quadexport.version": __version__,
        "quadexport.export_mode": mode,
        "quadexport.opset": opset,
        "quadexport.dtype": "float16" if fp16 else "float32",
        "quadexport.model": cfg.get("name", type(model).__name__),
        "quadexport.neuron": cfg.get("neuron", ",".join(neurons) if neurons else "relu"),
        "quadexport.input_shape": meta.get("input_shape") or None,
    }
    if mode == "fused":
        props["quadexport.runtime"] = "fused"
    for key in ("relinear", "test_acc", "dataset"):
        if meta.get(key) is not None:
            props[f"quadexport.{key}"] = meta[key]
    norm = meta.get("normalization") or meta.get("normalisation")
    if norm is not None:
        props["quadexport.normalization"] = norm
    if cfg:
        props["quadexport.config"] = cfg
    props.update({f"quadexport.{k}": v for k, v in notes.items()})
    props.update(extra or {})
    return {k: (v if isinstance(v, str) else json.dumps(v, sort_keys=True)) for k, v in props.items()
            if v is not None}


def _torch_export(model: nn.Module, x: torch.Tensor, opset: int, n_out: int, table: dict | None) -> onnx.ModelProto:
    out_names = [OUTPUT_NAME] + [f"output_{i}" for i in range(1, n_out)]
    quiet = contextlib.redirect_stdout(io.StringIO())
    with quiet, warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        if opset >= DYNAMO_OPSETS.start:
            prog = torch.onnx.export(model, (x,), dynamo=True, opset_version=opset, external_data=False,
                                     input_names=[INPUT_NAME], output_names=out_names,
                                     dynamic_shapes=({0: torch.export.Dim("batch")},),
                                     custom_translation_table=table)
            return prog.model_proto
        buf = io.BytesIO()
        torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                          output_names=out_names, dynamic_axes={n: {0: "batch"} for n in [INPUT_NAME, *out_names]})
        return onnx.load_from_string(buf.getvalue())


def export(model: nn.Module, path: str | os.PathLike, *, mode: str = "decomposed", opset: int = DEFAULT_OPSET,
           example_input: torch.Tensor | None = None, input_shape: tuple[int, ...] | list[int] | None = None,
           fold_bn: bool = True, metadata: Mapping[str, Any] | None = None, fp16: bool = False,
           stack_linear: bool | None = None, calibration_data: torch.Tensor | None = None,
           fp16_safety: float | None = None, check_model: bool = True) -> Path:
    """Export a model built from quadexport layers (and any torch layers) to one ``.onnx`` file.

    Input ``"input"`` (dynamic batch ``"batch"``), output ``"logits"``. The dynamo exporter is used for opsets
    18–23; for ``mode="decomposed"`` with an older opset the legacy TorchScript exporter is the fallback.

    Args:
        model: the model (not modified; exported from a deep copy in eval mode).
        path: output ``.onnx`` file (parent folders are created).
        mode: ``"decomposed"``, ``"function"`` or ``"fused"`` (module docstring).
        opset: ai.onnx opset, 18–23 (default 20); below 18 only for ``"decomposed"`` (TorchScript exporter).
        example_input: a batch to trace with; default: random normal of ``input_shape``.
        input_shape: per-sample input shape (no batch dim); default: ``model.quadexport_meta["input_shape"]`` or
            ``quadexport_config`` (``in_channels``, ``input_size``).
        fold_bn: fold eval-mode BatchNorms that directly follow a conv/linear/quadratic layer (verified in torch).
        metadata: extra ``metadata_props`` (values that are not strings are JSON-encoded).
        fp16: export in float16 (float32 I/O, fp32 islands for quadratic layers whose calibrated range is too
            large); ``"decomposed"`` only.
        stack_linear: stack the ``x`` branches of dense layers into one Gemm (default: the measured choice,
            :data:`quadexport.export.decomposed.STACK_LINEAR`); ``"decomposed"`` only.
        calibration_data: inputs for the fp16 range check (default: 64 random-normal samples; pass real data).
        fp16_safety: fraction of 65504 above which a quadratic layer stays float32 (default 0.25).
        check_model: run ``onnx.checker.check_model(full_check=True)`` on the result.

    Returns:
        The path written.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    opset = int(opset)
    if opset > DYNAMO_OPSETS.stop - 1 or opset < 7:
        raise ValueError(f"opset must be between 7 and {DYNAMO_OPSETS.stop - 1} (18–23 recommended), got {opset}")
    if opset < DYNAMO_OPSETS.start and mode != "decomposed":
        raise ValueError(f"mode={mode!r} needs opset ≥ {DYNAMO_OPSETS.start} (dynamo exporter); got {opset}")
    if fp16 and mode != "decomposed":
        raise ValueError("fp16 export is available for mode='decomposed' only")
    path = Path(path)
    x = _example_input(model, example_input, input_shape)
    work = copy.deepcopy(model).float().cpu().eval()
    for p in work.parameters():
        p.requires_grad_(False)
    notes: dict[str, Any] = {}
    with torch.no_grad():
        ref_out = work(x)
    n_out = len(ref_out) if isinstance(ref_out, (tuple, list)) else 1
    if fold_bn:
        work, fold_report = fold_batchnorm(work, x)
        notes["bn_fold"] = fold_report.to_dict()
    fp16_report = None
    if fp16:
        from quadexport.export.fp16 import DEFAULT_SAFETY, calibrate

        calib = calibration_data if calibration_data is not None else torch.randn(
            (64, *x.shape[1:]), generator=torch.Generator().manual_seed(1))
        fp16_report = calibrate(work, calib)
    table = None
    if mode == "decomposed":
        prepare_decomposed(work, STACK_LINEAR if stack_linear is None else stack_linear)
    else:
        kept = prepare_function(work)
        if kept:
            notes["decomposed_layers"] = [f"{n}: {r}" for n, r in kept]
        table = ops.translation_table()
    if fp16_report is not None:
        from quadexport.export.fp16 import to_fp16

        work = to_fp16(work, fp16_report, DEFAULT_SAFETY if fp16_safety is None else fp16_safety)
        notes["fp16"] = fp16_report.to_dict()
        if fp16_report.overflow_count:
            warnings.warn(f"fp16: {fp16_report.overflow_count} calibrated value(s) exceed 65504 "
                          f"(in {', '.join(sorted(fp16_report.overflow))}); outputs may be inf/NaN",
                          RuntimeWarning, stacklevel=2)
    proto = _torch_export(work, x, opset, n_out, table)
    if mode != "decomposed":
        attach_functions(proto)
        n_nodes = len(quadexport_nodes(proto))
        notes["domain"] = f"{ops.DOMAIN}:{ops.DOMAIN_VERSION}" if n_nodes else None
        notes["quadratic_nodes"] = n_nodes
    onnx.helper.set_model_props(proto, _metadata(model, mode, opset, fp16, metadata, notes))
    if check_model:
        ops.register_schemas()
        onnx.checker.check_model(proto, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return path


class _CallableModule(type(os)):
    """``quadexport.export`` is both this subpackage and the :func:`export` function: once the subpackage is
    imported, the attribute on the ``quadexport`` package is the module, so the module itself is made callable."""

    def __call__(self, *args: Any, **kwargs: Any) -> Path:
        return export(*args, **kwargs)


import sys as _sys  # noqa: E402

_sys.modules[__name__].__class__ = _CallableModule
