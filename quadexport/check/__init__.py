"""Parity check of an exported ONNX model against its torch model, judged against float64, failing hard
(optimum-style lines).

For every setting of the runtime (onnxruntime by default: each graph-optimisation level, kernel or bodies; any
registered runtime with ``runtime=``, :mod:`quadexport.runtimes`) × batch size, random inputs (uniform in the run's
recorded input range, else at its input statistics or its dataset's, N(0, 1) only when nothing is known; one array
per input for a file with several) and the first 512 test images of the model's dataset (when known) go through the
runtime, through the torch model and through a float64 copy of it (:mod:`quadexport.parity`). Per output it reports
the relative L2 error against torch float32 (``rel_l2 = ‖out − torch‖ / ‖torch‖``), against float64 (``vs_fp64``),
the model's own float32 floor (torch float32 against float64), the max abs difference, the NaN/Inf count and the
top-1 agreement::

    -[✓] ORT_DISABLE_ALL batch 3 random: rel_l2 1.2e-07 vs_fp64 1.1e-07 floor 9.8e-08 max_abs 3.1e-06 nan/inf 0 top1 100.00% [<= rtol]
    -[✓] ORT_ENABLE_ALL batch 64 random: rel_l2 2.6e-04 vs_fp64 2.8e-03 floor 2.5e-03 ... [<= 4 x floor]  [!] the model itself loses 4.3 digits in float32 here (floor 2.5e-03)

A line passes when the output shape matches, ``vs_fp64 <= max(rtol, 4 × floor)`` (``rtol`` default 1e-5 for float32
models, 1e-2 for float16 models, a reduced-precision setting (OpenVINO bf16) has its own; without a float64
reference — fp16-only parts, custom ops — ``rel_l2 <= rtol`` as before, and a note says why), ``max_abs ≤ atol`` if
``atol`` is given, and neither output holds a NaN/Inf. Input sets on which the model's own outputs are not finite
give no figure but one error line. Models with ``quadexport`` nodes are checked with their function bodies inlined
and, when the kernel library is built, with the kernel too. :attr:`CheckReport.ok` is true only if every line passes.
"""

from __future__ import annotations

import logging
import os
import sys
import types
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from quadexport.runmeta import RunMeta, config_dict, meta_dict
from quadexport.check.inputs import input_range, random_label, several_batches, several_inputs
from quadexport.check.report import LEVEL_NAMES, TOLERANCES, CheckLine, CheckReport, compare
from quadexport.errors import UsageError
from quadexport.zoo.tokens import token_input

__all__ = ["CheckLine", "CheckReport", "DATASET_SAMPLES", "LEVEL_NAMES", "QDQ_TOP1", "TOLERANCES", "check", "compare",
           "is_qdq"]

log = logging.getLogger(__name__)

DATASET_SAMPLES = 512
QDQ_TOP1 = 95.0
"""Int8 QDQ files: default minimum top-1 agreement with torch on real data, in percent."""


def _input_shapes(dims: list[Any], model: nn.Module, metadata: dict[str, str]) -> list[tuple[int, ...]]:
    """Per-sample input shapes to check: the file's (``dims``: its input's dims after the batch axis) or the run's
    and, for a dynamic-size file, each further size recorded in its metadata (``quadexport.dynamic_size``)."""
    from quadexport.exporter.dynamic import recorded

    recorded_shape = RunMeta.of(model).input_shape
    dyn = recorded(metadata)
    if all(isinstance(d, int) for d in dims):
        shape = tuple(dims)
    elif dyn and isinstance(dims[0], int):
        shape = (dims[0], *dyn["sizes"][0])
    elif recorded_shape:
        shape = recorded_shape
    else:
        raise UsageError(f"cannot tell the per-sample input shape (onnx input dims {dims}); the model has no "
                         f"quadexport_meta['input_shape']")
    if not dyn:
        return [shape]
    sizes = [tuple(int(v) for v in s) for s in dyn["sizes"]]
    return [shape] + [(shape[0], *s) for s in sizes if tuple(s) != tuple(shape[1:])]


def _load_dataset(spec: Any, meta: dict[str, Any], data_dir: str | os.PathLike | None,
                  n: int = DATASET_SAMPLES) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` test samples (normalised model inputs, labels) of ``spec``: an opened
    :class:`~quadexport.data.DataSource`, the run's own data (same subsets, size and normalisation, any dataset kind)
    when ``spec`` is the run's dataset, else the named dataset."""
    from quadexport.data import DataOptions, DataSource, open_dataset, open_run_dataset

    own = meta.get("dataset") or (meta.get("train_config") or {}).get("dataset")
    if isinstance(spec, DataSource):
        src = spec
    elif spec == own:
        src = open_run_dataset(meta, None if data_dir is None else str(data_dir), workers=0)
    else:
        src = open_dataset(spec, DataOptions(data_dir=data_dir, workers=0))
    xs, ys, seen = [], [], 0
    for xb, yb in src.loader("test", n):
        xs.append(xb.float().numpy())
        ys.append(yb.numpy())
        seen += len(xb)
        if seen >= n:
            break
    return np.concatenate(xs)[:n].copy(), np.concatenate(ys)[:n].copy()


def _pairing_error(info: Any, model: nn.Module) -> str | None:
    """Why the ONNX file was not exported from ``model`` (model name or neuron differ), or None."""
    cfg = config_dict(model)
    pairs = [("model", info.metadata.get("quadexport.model"), cfg.get("name")),
             ("neuron", info.metadata.get("quadexport.neuron"), cfg.get("neuron"))]
    diff = [(k, f, r) for k, f, r in pairs if f and r and f != r]
    if not diff:
        return None
    said = lambda i: "/".join(str(d[i]) for d in diff)  # noqa: E731
    return (f"the ONNX file is a {said(1)} model but the run is {said(2)} ({', '.join(d[0] for d in diff)} "
            "differ): check a file against the run it was exported from")


def is_qdq(proto: Any) -> bool:
    """The graph is int8-quantised in QDQ form (QuantizeLinear/DequantizeLinear pairs)."""
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node)


def check(onnx_path: str | os.PathLike, model: nn.Module, *, provider: str = "cpu", atol: float | None = None,
          rtol: float | None = None, batches: Sequence[int] = (1, 3, 5, 64), dataset: Any = None,
          data_dir: str | os.PathLike | None = None, seed: int = 0, opt_levels: Sequence[str] = ("disable", "all"),
          kernel_library: str = "auto", threads: int | None = None, verbose: bool = True,
          json_path: str | os.PathLike | None = None, qdq_top1: float = QDQ_TOP1,
          runtime: str | Any = None, dataset_samples: int = DATASET_SAMPLES) -> CheckReport:
    """Compare an exported model with its torch model under a runtime (default onnxruntime); fail hard on any miss.

    Files exported with ``input="raw"`` (metadata ``quadexport.input = raw``) are fed raw pixels (the same inputs,
    denormalised) and compared with the model behind its preprocessing (:class:`~quadexport.data.preprocess.RawInput`).
    Int8 QDQ files are not expected to match float outputs: they are checked on the dataset only, each line
    passing when the top-1 class agrees with torch on at least ``qdq_top1`` percent of the images.

    Args:
        onnx_path: the ``.onnx`` file.
        model: the torch model it was exported from (run in eval mode; its train/eval state is restored).
        provider: ``"cpu"`` or ``"cuda"``: onnxruntime's provider (``"cuda"`` is runtime ``onnxruntime-cuda``).
        atol: max abs difference per output (``None``: not checked; rel_l2 is the criterion).
        rtol: max relative L2 error (``None``: 1e-5 for float32 models, 1e-2 for float16 ones).
        batches: batch sizes of the random-input checks (the dynamic batch axis is exercised).
        dataset: dataset of the real-data check (default: the model's own, ``quadexport_meta["dataset"]``, with
            its subsets and normalisation; a name; an opened :class:`~quadexport.data.DataSource`; ``False``: none);
            the first 512 test images, in batches of ``max(batches)``.
        data_dir: dataset directory (see :func:`quadexport.data.load_dataset`).
        seed: seed of the random inputs.
        opt_levels: graph optimisation levels to check (``disable``, ``basic``, ``extended``, ``all``), for
            runtimes that have them.
        kernel_library: for models with ``quadexport`` nodes: ``"auto"`` checks with the function bodies and, if the
            kernel library is built, with the kernel; ``"never"`` / ``"always"`` check one way only.
        threads: the runtime's intra-op threads.
        verbose: log each line as it is produced (``logging`` INFO on ``quadexport.check``);
            :meth:`CheckReport.format` gives the whole report as text.
        json_path: also write the report there as JSON.
        qdq_top1: QDQ files: the minimum top-1 agreement with torch, in percent.
        runtime: a registered runtime's name (:func:`quadexport.list_runtimes`), ``MODULE:CLASS`` or a
            :class:`~quadexport.runtimes.Runtime` (``None``: onnxruntime on ``provider``).
        dataset_samples: test images of the real-data check.

    Raises:
        UsageError: the file was exported from another model or neuron than ``model``, the runtime cannot run it
            (mode, dtype, external data), or the dataset's inputs do not have the shape the file takes.
        RuntimeUnavailable: the runtime does not run on this machine (the message says why).
    """
    import onnx

    from quadexport.exporter.extdata import uses_external_data
    from quadexport.exporter.session import model_info
    from quadexport.runtimes import file_io, resolve_runtime

    rt = resolve_runtime(runtime, provider)
    info = model_info(onnx_path)
    pairing = _pairing_error(info, model)
    if pairing:
        raise UsageError(f"{onnx_path}: {pairing}")
    dtype = info.metadata.get("quadexport.dtype", "float32")
    tol = TOLERANCES.get(dtype, TOLERANCES["float32"]) if rtol is None else float(rtol)
    proto = onnx.load(str(onnx_path), load_external_data=False)
    qdq = is_qdq(proto)
    sup = rt.require()
    rt.refuse(onnx_path, (info.mode or "function") if info.uses_domain else "decomposed", "int8" if qdq else dtype,
              uses_external_data(proto))
    report = CheckReport(onnx_path=str(onnx_path), provider=provider, rtol=tol, atol=atol)
    report.env = {**_environment(info, dtype, qdq), "runtime": rt.name, "runtime_version": sup.version}
    say: Callable[[str], None] = log.info if verbose else (lambda msg: None)
    settings, notes = rt.settings(info, opt_levels, kernel_library, threads)
    report.notes += notes
    ref, prep = _reference(model, info.metadata.get("quadexport.input") == "raw")
    was_training = model.training
    ref.eval()
    try:
        sessions = _open_sessions(rt, onnx_path, settings, report, say)
        tok = token_input(model)  # int64 token ids at sequence lengths (quadexport.check.tokens)
        if sessions and tok is not None:
            from quadexport.check.tokens import token_lengths_of, token_sets

            lengths = token_lengths_of(file_io(onnx_path).input_dims, tok, info.metadata)
            sets = token_sets(model, tok, lengths, batches, seed, dataset, report, say, _InputSet)
        elif sessions:
            several = several_inputs(onnx_path, model)  # several inputs: their specs, random batches only
            shapes = ([several] if several is not None else
                      _input_shapes(file_io(onnx_path).input_dims[1:], model, info.metadata))
            sets = _input_sets(model, shapes[0], batches, seed, dataset, data_dir, report, say, prep,
                               dataset_samples)
            sets += _size_sets(model, shapes[1:], batches, seed, prep)
        if sessions:
            if qdq:
                sets = _qdq_sets(sets, report, qdq_top1, say)
            _compare_all(onnx_path, sessions, sets, ref, report, say, qdq_top1 if qdq else None)
        say(report.summary())
    finally:
        model.train(was_training)
    return _finish(report, json_path)


def _environment(info: Any, dtype: str, qdq: bool) -> dict[str, Any]:
    """Library versions, the kernel library and the file's metadata, for the report."""
    import onnx
    import onnxruntime as ort

    from quadexport.exporter.session import find_kernel_library

    lib = find_kernel_library()
    return {"onnxruntime": ort.__version__, "onnx": onnx.__version__, "torch": torch.__version__,
            "kernel_library": str(lib) if lib else None, "export_mode": info.mode or None, "dtype": dtype,
            "opset": info.metadata.get("quadexport.opset"), "input": info.metadata.get("quadexport.input"), "qdq": qdq}


def _reference(model: nn.Module, raw: bool) -> tuple[nn.Module, Any]:
    """The torch model to compare with and, for raw-input files, the preprocessing that maps inputs to raw pixels
    (None otherwise). A model that already is a :class:`~quadexport.data.preprocess.RawInput` is used as it is."""
    if not raw:
        return model, None
    from quadexport.data import run_preprocessing
    from quadexport.data.preprocess import RawInput

    if isinstance(model, RawInput):
        return model, model.preprocessing
    prep = run_preprocessing(meta_dict(model))
    return RawInput(model, prep), prep


def _qdq_sets(sets: list[_InputSet], report: CheckReport, top1: float, say: Callable[[str], None]) -> list[_InputSet]:
    """An int8 QDQ file: keep the real-data set (random inputs would "fail" rel_l2 by design)."""
    real = [s for s in sets if s.labels is not None]
    if not real:
        report.errors.append("int8 QDQ file: it is checked on real data (top-1 agreement) but no dataset is "
                             "available; pass --dataset")
        say(f"-[✗] {report.errors[-1]}")
    else:
        report.notes.append(f"int8 QDQ file: checked by top-1 agreement with torch (>= {top1:g}%) on real data, "
                            "not by rel_l2 on random inputs")
    return real


def _open_sessions(rt: Any, onnx_path: str | os.PathLike, settings: list[Any], report: CheckReport,
                   say: Callable[[str], None]) -> dict[tuple[str, str], Any]:
    """``(label, variant) -> session`` of each setting (a failure to open is a report error, the setting dropped)."""
    from quadexport.exporter.extdata import is_big

    by_key = {(s.label, s.variant): s for s in settings}

    def open_one(key: tuple[str, str]) -> Any:
        return rt.open(onnx_path, by_key[key])

    def failed(key: tuple[str, str], e: Exception) -> None:
        report.errors.append(f"{_where(key)}: {type(e).__name__}: {e}")
        say(f"-[✗] {report.errors[-1]}")

    if is_big(onnx_path):  # several GB of weights: one session (one copy of them) at a time
        from quadexport.check.sessions import OneAtATime

        return OneAtATime(list(by_key), open_one, failed)  # type: ignore[return-value]
    sessions: dict[tuple[str, str], Any] = {}
    for key in by_key:
        try:
            sessions[key] = open_one(key)
        except Exception as e:  # noqa: BLE001 - any failure to create a session is a hard failure
            failed(key, e)
    return sessions


def _where(key: tuple[str, str]) -> str:
    return LEVEL_NAMES.get(key[0], key[0]) + (f" [{key[1]}]" if key[1] else "")


@dataclass
class _InputSet:
    source: str
    batch: int
    chunks: list[np.ndarray]
    labels: np.ndarray | None = None


def _random(model: nn.Module, rng: np.random.Generator, shape: tuple[int, ...],
            dataset_stats: dict[str, Any] | None = None) -> np.ndarray:
    """Random model inputs: uniform in the run's recorded range (``meta["input_range"]``); else at the run's
    recorded input statistics (``meta["input_stats"]``: per-channel ``mean`` and ``std`` of the normalised
    inputs), or at ``dataset_stats`` (measured on its dataset's test images); else standard normal."""
    r = input_range(model)
    if r is not None:
        return rng.uniform(r[0], r[1], shape).astype(np.float32)
    x = rng.standard_normal(shape).astype(np.float32)
    stats = meta_dict(model).get("input_stats") or dataset_stats or {}
    if stats and len(shape) >= 3:
        bc = (-1,) + (1,) * (len(shape) - 2)
        mean = np.asarray(stats.get("mean", 0.0), np.float32).reshape(bc if np.ndim(stats.get("mean", 0)) else ())
        std = np.asarray(stats.get("std", 1.0), np.float32).reshape(bc if np.ndim(stats.get("std", 1)) else ())
        x = (x * std + mean).astype(np.float32)
    return x


def _size_sets(model: nn.Module, shapes: list[tuple[int, ...]], batches: Sequence[int], seed: int,
               prep: Any) -> list[_InputSet]:
    """A dynamic-size file: random inputs at each further size (the two smallest batch sizes)."""
    rng = np.random.default_rng(seed + 1)
    sets = [_InputSet(f"{random_label(model)} {'x'.join(map(str, s[1:]))}", int(b),
                      [_random(model, rng, (int(b), *s))])
            for s in shapes for b in sorted(set(int(b) for b in batches))[:2]]
    if prep is not None:
        from quadexport.data.preprocess import denormalise

        for st in sets:
            st.chunks = [denormalise(torch.from_numpy(x), prep).numpy() for x in st.chunks]
    return sets


def _stats(xs: np.ndarray) -> dict[str, Any] | None:
    """Per-channel mean/std of dataset inputs ``[N, C, ...]`` (None for flat inputs)."""
    if xs.ndim < 3:
        return None
    axes = (0,) + tuple(range(2, xs.ndim))
    return {"mean": xs.mean(axes).tolist(), "std": np.maximum(xs.std(axes), 1e-6).tolist()}


def _input_sets(model: nn.Module, shape: tuple[int, ...], batches: Sequence[int], seed: int,
                dataset: Any, data_dir: str | os.PathLike | None, report: CheckReport,
                say: Callable[[str], None], prep: Any = None, samples: int = DATASET_SAMPLES) -> list[_InputSet]:
    """Random batches of every size, then the dataset's first test images (when known and loadable); with ``prep``
    (a raw-input file) both denormalised to raw pixel values. ``shape``: the specs of a file with several inputs
    (:func:`~quadexport.check.inputs.several_inputs`) gives random batches of every size only. The random batches
    follow the run's recorded range or statistics, else its dataset's (never N(0, 1) when the run knows better)."""
    if not isinstance(shape, tuple):  # several inputs: random batches of every size, a tuple of arrays each
        return [_InputSet(label, b, [xs]) for label, b, xs in several_batches(shape, batches, seed, dataset)]
    rng = np.random.default_rng(seed)
    meta = meta_dict(model)
    ds = None if dataset is False else (dataset or meta.get("dataset"))
    ds_name = getattr(ds, "name", ds)  # a DataSource: its spec
    real: list[_InputSet] = []
    stats = None
    if ds:
        try:
            xs, ys = _load_dataset(ds, meta, data_dir, samples)
        except Exception as e:  # noqa: BLE001 - reported (a failure only when the dataset was asked for)
            if dataset:
                report.errors.append(f"dataset {ds_name}: {e}")
                say(f"-[✗] dataset {ds_name}: {e}")
            else:
                report.notes.append(f"dataset {ds_name} (from the model metadata) not checked: {e}")
                say(f"-[!] dataset {ds_name} not checked: {e}")
        else:
            if tuple(xs.shape[1:]) != tuple(shape):
                raise UsageError(f"dataset {ds_name} has {'x'.join(map(str, xs.shape[1:]))} inputs but the model "
                                 f"takes {'x'.join(map(str, shape))}; pass the run's own dataset "
                                 f"({meta.get('dataset', '?')}) or none")
            bs = max(int(b) for b in batches)
            real.append(_InputSet(f"{ds_name}[{len(xs)}]", bs, [xs[i:i + bs] for i in range(0, len(xs), bs)], ys))
            stats = _stats(xs)
    sets = [_InputSet(random_label(model), int(b), [_random(model, rng, (int(b), *shape), stats)])
            for b in batches] + real
    if prep is not None:
        from quadexport.data.preprocess import denormalise

        for s in sets:
            s.chunks = [denormalise(torch.from_numpy(x), prep).numpy() for x in s.chunks]
    return sets


def _run_chunks(key: tuple[str, str], sess: Any, chunks: list[np.ndarray], report: CheckReport,
                say: Callable[[str], None]) -> list[list[np.ndarray]] | None:
    """The session's outputs for each chunk; ``None`` (a report error) when the runtime fails on one."""
    try:
        return [sess.run(x) for x in chunks]
    except Exception as e:  # noqa: BLE001 - a runtime that cannot run the batch is a hard failure, reported
        report.errors.append(f"{_where(key)}: {type(e).__name__}: {e}")
        say(f"-[✗] {report.errors[-1]}")
        return None


def _compare_all(onnx_path: str | os.PathLike, sessions: dict[tuple[str, str], Any], sets: list[_InputSet],
                 model: nn.Module, report: CheckReport, say: Callable[[str], None],
                 qdq_top1: float | None = None) -> None:
    """One line per session × input set × output: the runtime against torch float32 and float64
    (:mod:`quadexport.check.references`), judged by :func:`quadexport.parity.judge`."""
    from quadexport.check.references import torch_references
    from quadexport.exporter.outputs import structure_of
    from quadexport.parity.inputs import describe

    refs = torch_references(model, sets, describe(meta_dict(model)), report, say)
    structure = structure_of(onnx_path)
    out_names = structure.names
    n_ref = len(refs.fp32[0][0]) if refs.fp32 else 0
    if refs.fp32 and n_ref != len(out_names):
        report.errors.append(f"onnx model has {len(out_names)} outputs {out_names}, torch model {n_ref}")
        say(f"-[✗] {report.errors[-1]}")
    for key, sess in sessions.items():
        rtol = report.rtol if sess.setting.rtol is None else sess.setting.rtol  # reduced precision (bf16)
        for i, s in enumerate(refs.sets):
            outs = _run_chunks(key, sess, s.chunks, report, say)
            if outs is None:
                break
            for k, name in enumerate(out_names[:n_ref]):
                o = np.concatenate([c[k] for c in outs])
                m = compare(o, refs.output(i, k), rtol, report.atol, ref64=refs.output(i, k, "fp64"),
                            classes=structure.kind(name) == "classes")
                if qdq_top1 is not None and m["top1"] is not None:  # int8: judged by top-1 agreement only
                    m["ok"] = 100 * m["top1"] >= qdq_top1  # the threshold is given in percent
                    m["reason"] = "" if m["ok"] else f"top1 < {qdq_top1:g}%"
                acc = None
                if s.labels is not None and o.ndim == 2 and o.shape[0] == len(s.labels):
                    acc = float((o.argmax(1) == s.labels).mean())  # fractions in every JSON, percent on screen
                line = CheckLine(key[0], key[1], s.batch, s.source, name, accuracy=acc, **m)
                report.lines.append(line)
                say(line.format())


def _finish(report: CheckReport, json_path: str | os.PathLike | None) -> CheckReport:
    if json_path is not None:
        report.save(json_path)
    return report


class _CallableModule(types.ModuleType):
    """``quadexport.check`` is this module and, once anything imported it, also the package attribute of the same
    name: calling the module calls :func:`check`, so ``quadexport.check(path, model)`` works either way."""

    def __call__(self, *args: Any, **kwargs: Any) -> CheckReport:
        return check(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
