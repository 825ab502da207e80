"""The :func:`export` function: a model built from quadexport and torch layers → one ``.onnx`` file.

The mode (``decomposed``, ``function``, ``fused``) is an :class:`~quadexport.exporter.targets.ExportTarget` from the
registry in :mod:`quadexport.exporter.targets`, which says how to prepare the model, post-process the graph and open
a session. The caller's model is never modified: everything happens on a copy in eval mode that shares its weights
(``_torchutil.shared_copy``; folding and fp16 make new tensors, they never write into the shared ones). Weights past
~1.8 GB (or ``external_data=True``) go to a data file beside the ``.onnx`` (:mod:`quadexport.exporter.extdata`).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import onnx
import torch
from torch import nn

from quadexport.runmeta import config_dict, meta_dict
from quadexport._torchutil import shared_copy
from quadexport.runs.atomicfile import StagedFile
from quadexport.data.inputs import ModelInputs, as_tuple, explain_forward, resolve
from quadexport.errors import UsageError
from quadexport.exporter import dynamic, extdata, ops, tokens
from quadexport.exporter.fold import fold_batchnorm
from quadexport.exporter.outputs import FlatOutputs, OutputStructure, model_structure
from quadexport.exporter.targets import DEFAULT_OPSET, DYNAMO_OPSETS, ExportTarget, check_opset, get_export_target
from quadexport.zoo.tokens import token_input

log = logging.getLogger(__name__)

INPUT_NAME, OUTPUT_NAME = "input", "logits"

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "export"]


def _example_input(model: nn.Module, example_input: Any, input_shape: Any, input_range: Any = None
                   ) -> tuple[ModelInputs, tuple[torch.Tensor, ...]]:
    """The model's inputs and float32 batches of 2 to trace with, one per input (tracing with batch 1 can freeze
    the batch dimension): ``example_input``, else random ones (:mod:`quadexport.data.inputs`: N(0, 1), or uniform in
    the given or recorded range)."""
    if isinstance(example_input, (tuple, list)) and len(example_input) == 1:
        example_input = example_input[0]
    inputs = resolve(model, example_input=example_input, input_shape=input_shape, input_range=input_range)
    if inputs is None:
        raise UsageError("cannot tell the model's input shape: pass example_input= or input_shape= (per sample, "
                         "without the batch dimension, e.g. (3, 32, 32); one shape per input for several)")
    if example_input is not None:
        xs = tuple(t.detach().float().cpu() for t in as_tuple(example_input))
        return inputs, tuple(torch.cat([x, x]) if x.shape[0] == 1 else x for x in xs)
    return inputs, inputs.example(2)


def _metadata(model: nn.Module, target: ExportTarget, opset: int, fp16: bool, extra: Mapping[str, Any] | None,
              notes: Mapping[str, Any], inputs: ModelInputs | None = None) -> dict[str, str]:
    from quadexport._version import __version__

    cfg = config_dict(model)
    meta = meta_dict(model)
    neurons = sorted({m.neuron for m in model.modules() if hasattr(m, "neuron_type")})
    props: dict[str, Any] = {
        "quadexport.version": __version__,
        "quadexport.export_mode": target.name,
        "quadexport.opset": opset,
        "quadexport.dtype": "float16" if fp16 else "float32",
        "quadexport.model": cfg.get("name", type(model).__name__),
        "quadexport.neuron": cfg.get("neuron", ",".join(neurons) if neurons else "relu"),
        "quadexport.input_shape": meta.get("input_shape") or None,
    }
    if inputs is not None:  # several inputs (names, shapes) and a range: recorded; one input: as it always was
        props.update({f"quadexport.{k}": v for k, v in inputs.meta().items() if k != "input_shape"})
    props.update(target.metadata())
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


def _torch_export(model: nn.Module, x: tuple[torch.Tensor, ...], opset: int, out_names: list[str],
                  table: dict | None, axes: dict[int, str], external_to: Path | None = None,
                  in_names: Sequence[str] = (INPUT_NAME,)) -> onnx.ModelProto:
    """Trace ``model`` on the inputs ``x`` (named ``in_names``; flat tensor outputs ``out_names``); ``axes``: the
    input's dynamic axes besides the batch (one input only). With ``external_to`` (dynamo exporter), the file is
    already written there with external data and returned without it
    (:func:`quadexport.exporter.extdata.write_program`)."""
    quiet = contextlib.redirect_stdout(io.StringIO())
    with quiet, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*shares the same shape constraints")  # several inputs' batch
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message="Constant folding")  # TorchScript exporter on option-A Slices
        if opset >= DYNAMO_OPSETS.start:
            batch = torch.export.Dim("batch")  # one symbol: every input shares the batch dimension
            shapes = tuple({0: batch, **({a: torch.export.Dim.DYNAMIC for a in axes} if i == 0 else {})}
                           for i in range(len(x)))
            if isinstance(model, FlatOutputs):  # forward(*x): torch.export matches the shapes to the varargs
                shapes = (shapes,)
            prog = torch.onnx.export(model, tuple(x), dynamo=True, opset_version=opset, external_data=False,
                                     input_names=list(in_names), output_names=out_names, dynamic_shapes=shapes,
                                     custom_translation_table=table)
            proto = prog.model_proto if external_to is None else extdata.write_program(prog, external_to)
            dynamic.rename_dims(proto, axes)
            return proto
        buf = io.BytesIO()
        out_axes = {n: {0: "batch"} for n in out_names}
        in_axes = {n: {0: "batch", **(axes if i == 0 else {})} for i, n in enumerate(in_names)}
        torch.onnx.export(model, tuple(x), buf, dynamo=False, opset_version=opset, input_names=list(in_names),
                          output_names=out_names, dynamic_axes={**in_axes, **out_axes})
        return onnx.load_from_string(buf.getvalue())


def _untraceable(e: BaseException) -> str | None:
    """torch.export (step 1 of the ONNX export) could not trace the model: why, in one line; else None (a failure
    of the later steps is quadexport's to fix and keeps its traceback)."""
    from torch.onnx._internal.exporter._errors import TorchExportError

    if not isinstance(e, TorchExportError):
        return None
    text = str(e)
    why = re.sub(r"^<class '[\w.]*?(\w+)'>: ", r"\1: ", dynamic.torch_error_line(e))
    where = re.search(r'File "([^"]+)", line (\d+), in \w+\n\s*(.+)', text)
    return why + (f" at {os.path.basename(where[1])}:{where[2]}: {where[3].strip()}" if where else "")


def _trace(work: nn.Module, x: tuple[torch.Tensor, ...], opset: int, structure: OutputStructure,
           table: dict | None, axes: dict[int, str], external_to: Path | None = None,
           in_names: Sequence[str] = (INPUT_NAME,)) -> onnx.ModelProto:
    """:func:`_torch_export` with nested outputs flattened first, and a one-line error when dynamic axes fail or
    the model cannot be traced."""
    flat = isinstance(structure.tree, str) or (isinstance(structure.tree, dict) and all(
        isinstance(t, str) for t in structure.tree.get("tuple", structure.tree.get("list", [None]))))
    module = work if flat else FlatOutputs(work).eval()
    err = io.StringIO()  # torch's own report of a failed trace (graph dumps) is dropped when the error says it all
    try:
        with contextlib.redirect_stderr(err):
            proto = _torch_export(module, x, opset, structure.names, table, axes, external_to, in_names)
        sys.stderr.write(err.getvalue())
        return proto
    except Exception as e:
        why = _untraceable(e) if not axes else None
        if why is None:
            sys.stderr.write(err.getvalue())
        if not axes:
            if why is None:
                raise
            raise UsageError(f"torch.export cannot trace {type(work).__name__} ({why}); make its forward free of "
                             f"data-dependent control flow (Python if/for on tensor values)") from None
        raise dynamic.DynamicSizeError(f"cannot export with a dynamic input size: torch.export refused "
                                       f"({dynamic.torch_error_line(e)}); export without dynamic_size/"
                                       "--dynamic-size") from None


def _fp16_form(work: nn.Module, x: torch.Tensor, calibration_data: torch.Tensor | None) -> Any:
    """Calibrate the float32 copy for the fp16 range check (before the target swaps in its export forms)."""
    from quadexport.exporter.fp16 import calibrate

    calib = calibration_data if calibration_data is not None else torch.randn(
        (64, *x.shape[1:]), generator=torch.Generator().manual_seed(1))
    return calibrate(work, calib)


def _to_fp16(work: nn.Module, report: Any, safety: float | None, notes: dict[str, Any]) -> nn.Module:
    from quadexport.exporter.fp16 import DEFAULT_SAFETY, to_fp16

    work = to_fp16(work, report, DEFAULT_SAFETY if safety is None else safety)
    notes["fp16"] = report.to_dict()
    if report.overflow_count:
        warnings.warn(f"fp16: {report.overflow_count} calibrated value(s) exceed 65504 "
                      f"(in {', '.join(sorted(report.overflow))}); outputs may be inf/NaN", RuntimeWarning,
                      stacklevel=3)
    log.debug("fp16: %d fp32 island(s): %s", len(report.islands), ", ".join(report.islands) or "none")
    return work


def export(model: nn.Module, path: str | os.PathLike, *, mode: str = "decomposed", opset: int = DEFAULT_OPSET,
           example_input: torch.Tensor | Sequence[torch.Tensor] | None = None,
           input_shape: tuple[int, ...] | list[int] | Sequence[Sequence[int]] | None = None,
           fold_bn: bool = True, metadata: Mapping[str, Any] | None = None, fp16: bool = False,
           stack_linear: bool | None = None, calibration_data: torch.Tensor | None = None,
           fp16_safety: float | None = None, check_model: bool = True, dynamic_size: bool = False,
           external_data: bool | None = None, input_range: Any = None) -> Path:
    """Export a model built from quadexport layers (and any torch layers) to one ``.onnx`` file.

    Input ``"input"`` (dynamic batch ``"batch"``); a model whose ``forward`` takes several tensors has one input per
    tensor, named after its parameters (``x``, ``t``), sharing the batch axis. Outputs: ``"logits"`` for one classifier output, else named by
    :mod:`~quadexport.exporter.outputs` (dict keys, ``output_0..n``), with the structure recorded in the metadata
    (:func:`~quadexport.exporter.outputs.rebuild_outputs` rebuilds it from onnxruntime's list). The dynamo
    exporter is used for opsets 18–23; for ``mode="decomposed"`` with opsets 13–17 the legacy TorchScript exporter.

    Args:
        model: the model (not modified; exported from a copy in eval mode that shares its weights).
        path: output ``.onnx`` file (parent folders are created).
        mode: an export target name, :func:`~quadexport.exporter.targets.list_export_targets`: ``"decomposed"``,
            ``"function"`` or ``"fused"`` (see :mod:`quadexport.exporter.targets`).
        opset: ai.onnx opset, 13–23 (default 20); below 18 only for ``"decomposed"`` (TorchScript exporter).
        example_input: a batch to trace with (a tuple of them for several inputs); default: random inputs of
            ``input_shape``.
        input_shape: per-sample input shape (no batch dim), or one per input; default: the run's record
            (``quadexport_meta["inputs"]``/``["input_shape"]``) or ``quadexport_config`` (``in_channels``,
            ``input_size``).
        fold_bn: fold eval-mode BatchNorms that directly follow a conv/linear/quadratic layer (verified in torch).
        metadata: extra ``metadata_props`` (values that are not strings are JSON-encoded).
        fp16: export in float16 (float32 I/O, fp32 islands for quadratic layers whose calibrated range is too
            large); ``"decomposed"`` only.
        stack_linear: stack the ``x`` branches of dense layers into one Gemm (default: the measured choice,
            :data:`quadexport.exporter.decomposed.STACK_LINEAR`); ``"decomposed"`` only.
        calibration_data: inputs for the fp16 range check (default: 64 random-normal samples; pass real data).
        fp16_safety: fraction of 65504 above which a quadratic layer stays float32 (default 0.25).
        check_model: run ``onnx.checker.check_model(full_check=True)`` on the result.
        dynamic_size: H and W (L for 1-D) dynamic besides the batch (:mod:`~quadexport.exporter.dynamic`); the
            model is first run at twice the example size, and one that bakes its size in is refused naming the op.
        external_data: write the weights to ``<path>.data`` beside the file (ONNX external data, relative location);
            ``None`` (default): when they exceed :data:`~quadexport.exporter.extdata.AUTO_BYTES` (~1.8 GB; protobuf
            cannot hold 2 GiB). See :mod:`quadexport.exporter.extdata`.
        input_range: draw the random example inputs uniformly in ``(lo, hi)`` (one pair, or one per input;
            default: the run's ``quadexport_meta["input_range"]``, else N(0, 1)); recorded in the metadata.

    Returns:
        The path written (with its data file, if any, written as a pair: on an error neither appears).

    Raises:
        UsageError: unknown mode, opset out of range or unusable with the mode, fp16 with a mode other than
            ``"decomposed"``, an input shape that cannot be told, inputs the model does not take (one line naming
            the layer), a model torch.export cannot trace, or (``DynamicSizeError``) a model that cannot run at
            another size with ``dynamic_size``.
    """
    target = get_export_target(mode)
    opset = check_opset(opset, target)
    if fp16 and not target.supports_fp16:
        raise UsageError(f"fp16 export is available for mode='decomposed' only, not mode={target.name!r}")
    path = Path(path)
    tok = token_input(model)  # a token model: int64 (batch, length) inputs (quadexport.exporter.tokens)
    if tok is not None:
        if fp16:
            tokens.refuse("fp16 export")
        xs = (tokens.example_tokens(tok, example_input, input_shape),)
        inputs = resolve(model, example_input=xs[0])
    else:
        inputs, xs = _example_input(model, example_input, input_shape, input_range)
    if inputs.several and (fp16 or dynamic_size):
        raise UsageError(f"{'fp16' if fp16 else 'dynamic_size'} export takes a model with one input; this one "
                         f"takes {len(inputs)} ({', '.join(inputs.names)})")
    x = xs if inputs.several else xs[0]
    target.validate(model)
    work = shared_copy(model).float().cpu().eval()  # shares the weights; nothing below writes into them
    for p in work.parameters():
        p.requires_grad_(False)
    notes: dict[str, Any] = {}
    with explain_forward(work, inputs):
        structure = model_structure(work, x)
    clash = set(inputs.names) & set(structure.names)
    if clash:
        raise UsageError(f"input and output share the ONNX name(s) {', '.join(sorted(clash))}; rename the forward "
                         f"parameter(s) or the output key(s)")
    axes = (dict(tokens.AXES) if tok else dynamic.dynamic_axes(x)) if dynamic_size else {}
    if dynamic_size:
        tokens.probe_tokens(work, tok) if tok else dynamic.probe(work, x)
    if fold_bn:
        work, fold_report = fold_batchnorm(work, x)
        notes["bn_fold"] = fold_report.to_dict()
    fp16_report = _fp16_form(work, x, calibration_data) if fp16 else None
    prepared = target.prepare(work, stack_linear=stack_linear)
    notes.update(prepared.notes)
    if fp16_report is not None:
        work = _to_fp16(work, fp16_report, fp16_safety, notes)
    log.debug("tracing %s (mode %s, opset %d, %s exporter)", type(model).__name__, target.name, opset,
              "dynamo" if opset in DYNAMO_OPSETS else "TorchScript")
    external = extdata.wants_external(external_data, extdata.parameter_bytes(
        itertools.chain(work.parameters(), work.buffers())))
    with StagedFile(path) as staged:  # the .onnx and its data file appear together, or neither
        proto = _trace(work, xs, opset, structure, prepared.translation_table, axes,
                       staged.path if external and opset in DYNAMO_OPSETS else None, inputs.names)
        notes.update(target.postprocess(proto))
        sizes = tokens.check_lengths(tok) if tok else dynamic.check_sizes(x) if axes else None
        extra = {**structure.metadata(), **(dynamic.record(axes, sizes) if axes else {}),
                 **({"quadexport.token_input": tok.to_dict()} if tok else {}), **(metadata or {})}
        onnx.helper.set_model_props(proto, _metadata(model, target, opset, fp16, extra, notes, inputs))
        extdata.save_proto(proto, staged.path, external)
        if check_model:
            ops.register_schemas()
            onnx.checker.check_model(str(staged.path) if external else proto, full_check=True)
    log.debug("wrote %s (%d nodes%s)", path, len(proto.graph.node),
              f", weights in {extdata.data_location(path)}" if external else "")
    return path
