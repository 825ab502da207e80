"""Parity check of an exported ONNX model against its torch model, failing hard (optimum-style lines).

For every graph-optimisation level × batch size, random standard-normal inputs (and the first 512 test images of the
model's dataset, when known) go through onnxruntime and through the torch model; per output it reports the relative
L2 error ``‖ort − torch‖ / ‖torch‖``, the max abs difference, the NaN/Inf count and the top-1 agreement::

    -[✓] ORT_DISABLE_ALL batch 3 random: rel_l2 1.2e-07 max_abs 3.1e-06 nan/inf 0 top1 100.00%
    -[✗] ORT_ENABLE_ALL batch 64 random: rel_l2 3.4e-02 max_abs 1.1e+00 nan/inf 0 top1 87.50%  (rel_l2 > 1e-05)

A line passes when the output shape matches, ``rel_l2 ≤ rtol`` (default 1e-5 for float32 models, 1e-2 for float16
models), ``max_abs ≤ atol`` if ``atol`` is given, and the NaN/Inf positions equal torch's (so 0 unless torch has them
too). Models with ``quadexport`` nodes are checked with their function bodies inlined and, when the kernel library is
built, with the kernel too. :attr:`CheckReport.ok` is true only if every line passes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from quadexport.errors import UsageError

log = logging.getLogger(__name__)

TOLERANCES = {"float32": 1e-5, "float16": 1e-2}
"""Default ``rtol`` (max relative L2 error) per exported dtype."""
DATASET_SAMPLES = 512
LEVEL_NAMES = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
               "all": "ORT_ENABLE_ALL"}

__all__ = ["CheckLine", "CheckReport", "DATASET_SAMPLES", "TOLERANCES", "check", "compare"]


@dataclass
class CheckLine:
    """One comparison (one opt level × runtime × input set × output)."""

    opt_level: str
    runtime: str
    batch: int
    source: str
    output: str
    rel_l2: float
    max_abs: float
    nan_inf: int
    nan_inf_torch: int
    top1: float | None
    ok: bool
    reason: str = ""
    accuracy: float | None = None

    def format(self) -> str:
        mark = "✓" if self.ok else "✗"
        rt = f" [{self.runtime}]" if self.runtime else ""
        out = f" {self.output}" if self.output != "logits" else ""
        s = (f"-[{mark}] {LEVEL_NAMES.get(self.opt_level, self.opt_level)}{rt} batch {self.batch} {self.source}{out}: "
             f"rel_l2 {self.rel_l2:.1e} max_abs {self.max_abs:.1e} nan/inf {self.nan_inf}")
        if self.top1 is not None:
            s += f" top1 {self.top1:.2f}%"
        if self.accuracy is not None:
            s += f" acc {self.accuracy:.2f}%"
        return s + (f"  ({self.reason})" if self.reason else "")


@dataclass
class CheckReport:
    """Result of :func:`check`.

    Attributes:
        onnx_path: the checked model.
        provider: execution provider.
        rtol: max relative L2 error used.
        atol: max abs difference used (``None``: not checked).
        lines: the comparisons.
        notes: things that were skipped or worth knowing (not failures).
        errors: hard failures outside the comparisons (a session that cannot be created, output mismatch).
        env: library versions, kernel library, model metadata.
    """

    onnx_path: str
    provider: str
    rtol: float
    atol: float | None
    lines: list[CheckLine] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    env: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.lines) and not self.errors and all(line.ok for line in self.lines)

    @property
    def worst_rel_l2(self) -> float:
        vals = [line.rel_l2 for line in self.lines]
        return max(vals) if vals else float("nan")

    def summary(self) -> str:
        failed = sum(not line.ok for line in self.lines) + len(self.errors)
        if self.ok:
            return (f"-[✓] all {len(self.lines)} checks passed (worst rel_l2 {self.worst_rel_l2:.1e}, "
                    f"rtol {self.rtol:g})")
        return f"-[✗] {failed} of {len(self.lines) + len(self.errors)} checks failed (rtol {self.rtol:g})"

    def format(self) -> str:
        """The whole report as text: hard failures, one line per comparison, notes, then the summary."""
        out = [f"-[✗] {e}" for e in self.errors] + [line.format() for line in self.lines]
        out += [f"-[!] {n}" for n in self.notes]
        return "\n".join(out + [self.summary()])

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "onnx_path": self.onnx_path, "provider": self.provider, "rtol": self.rtol,
                "atol": self.atol, "worst_rel_l2": _json_float(self.worst_rel_l2), "errors": self.errors,
                "notes": self.notes, "env": self.env,
                "lines": [{k: _json_float(v) for k, v in asdict(line).items()} for line in self.lines]}

    def save(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_dict` as JSON (atomically)."""
        from quadexport.checkpoint import write_json

        return write_json(path, self.to_dict())


def _json_float(v: Any) -> Any:
    if isinstance(v, float) and not np.isfinite(v):
        return None if np.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def compare(out: np.ndarray, ref: np.ndarray, rtol: float, atol: float | None = None) -> dict[str, Any]:
    """Metrics of one output against the torch reference.

    Returns:
        dict with ``rel_l2``, ``max_abs``, ``nan_inf``, ``nan_inf_torch``, ``top1`` (for ``[N, C>1]`` outputs, else
        ``None``), ``ok`` and ``reason``.
    """
    if out.shape != ref.shape:
        return {"rel_l2": float("inf"), "max_abs": float("inf"), "nan_inf": 0, "nan_inf_torch": 0, "top1": None,
                "ok": False, "reason": f"shape {out.shape} != torch {ref.shape}"}
    out64, ref64 = out.astype(np.float64), ref.astype(np.float64)
    fo, fr = np.isfinite(out64), np.isfinite(ref64)
    both = fo & fr
    diff = np.abs(out64[both] - ref64[both])
    max_abs = float(diff.max()) if diff.size else 0.0
    den = float(np.linalg.norm(ref64[both]))
    num = float(np.linalg.norm(diff))
    rel = num / den if den > 0 else num
    top1 = None
    if out.ndim == 2 and out.shape[1] > 1:
        top1 = float((np.argmax(np.where(fo, out64, -np.inf), 1) == np.argmax(np.where(fr, ref64, -np.inf), 1)).mean()
                     * 100)
    reasons = []
    if not np.array_equal(fo, fr):
        reasons.append(f"nan/inf {int((~fo).sum())} where torch has {int((~fr).sum())}")
    if not rel <= rtol:
        reasons.append(f"rel_l2 > {rtol:g}")
    if atol is not None and not max_abs <= atol:
        reasons.append(f"max_abs > {atol:g}")
    return {"rel_l2": rel, "max_abs": max_abs, "nan_inf": int((~fo).sum()), "nan_inf_torch": int((~fr).sum()),
            "top1": top1, "ok": not reasons, "reason": "; ".join(reasons)}


def _input_shape(sess: Any, model: nn.Module) -> tuple[int, ...]:
    dims = sess.get_inputs()[0].shape[1:]
    if all(isinstance(d, int) for d in dims):
        return tuple(dims)
    meta = getattr(model, "quadexport_meta", None) or {}
    if meta.get("input_shape"):
        return tuple(int(d) for d in meta["input_shape"])
    raise UsageError(f"cannot tell the per-sample input shape (onnx input dims {dims}); the model has no "
                     f"quadexport_meta['input_shape']")


@torch.no_grad()
def _torch_outputs(model: nn.Module, x: np.ndarray) -> list[np.ndarray]:
    out = model(torch.from_numpy(x))
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return [o.detach().float().cpu().numpy() for o in outs]


def _load_dataset(name: str, data_dir: str | os.PathLike | None) -> tuple[np.ndarray, np.ndarray]:
    from quadexport.data import load_dataset

    ds = load_dataset(name, data_dir=data_dir)
    return (ds.x_test[:DATASET_SAMPLES].float().numpy().copy(),
            ds.y_test[:DATASET_SAMPLES].numpy().copy())


def check(onnx_path: str | os.PathLike, model: nn.Module, *, provider: str = "cpu", atol: float | None = None,
          rtol: float | None = None, batches: Sequence[int] = (1, 3, 5, 64), dataset: str | bool | None = None,
          data_dir: str | os.PathLike | None = None, seed: int = 0, opt_levels: Sequence[str] = ("disable", "all"),
          kernel_library: str = "auto", threads: int | None = None, verbose: bool = True,
          json_path: str | os.PathLike | None = None) -> CheckReport:
    """Compare an exported model with its torch model under onnxruntime; fail hard on any miss.

    Args:
        onnx_path: the ``.onnx`` file.
        model: the torch model it was exported from (run in eval mode; its train/eval state is restored).
        provider: ``"cpu"`` or ``"cuda"`` (see :func:`quadexport.make_session`).
        atol: max abs difference per output (``None``: not checked; rel_l2 is the criterion).
        rtol: max relative L2 error (``None``: 1e-5 for float32 models, 1e-2 for float16 ones).
        batches: batch sizes of the random-input checks (the dynamic batch axis is exercised).
        dataset: dataset of the real-data check (default: ``model.quadexport_meta["dataset"]``; ``False``: none);
            the first 512 test images, in batches of ``max(batches)``.
        data_dir: dataset directory (see :func:`quadexport.data.load_dataset`).
        seed: seed of the random inputs.
        opt_levels: onnxruntime graph optimisation levels to check (``disable``, ``basic``, ``extended``, ``all``).
        kernel_library: for models with ``quadexport`` nodes: ``"auto"`` checks with the function bodies and, if the
            kernel library is built, with the kernel; ``"never"`` / ``"always"`` check one way only.
        threads: onnxruntime intra-op threads.
        verbose: log each line as it is produced (``logging`` INFO on ``quadexport.check``);
            :meth:`CheckReport.format` gives the whole report as text.
        json_path: also write the report there as JSON.
    """
    import onnx
    import onnxruntime as ort

    from quadexport.exporter.session import find_kernel_library, model_info

    info = model_info(onnx_path)
    dtype = info.metadata.get("quadexport.dtype", "float32")
    tol = TOLERANCES.get(dtype, TOLERANCES["float32"]) if rtol is None else float(rtol)
    lib = find_kernel_library()
    report = CheckReport(onnx_path=str(onnx_path), provider=provider, rtol=tol, atol=atol)
    report.env = {"onnxruntime": ort.__version__, "onnx": onnx.__version__, "torch": torch.__version__,
                  "kernel_library": str(lib) if lib else None, "export_mode": info.mode or None, "dtype": dtype,
                  "opset": info.metadata.get("quadexport.opset")}
    say: Callable[[str], None] = log.info if verbose else (lambda msg: None)
    runtimes = _runtimes(info, kernel_library, lib is not None, provider, report)
    was_training = model.training
    model.eval()
    try:
        sessions = _open_sessions(onnx_path, provider, opt_levels, runtimes, threads, report, say)
        if sessions:
            shape = _input_shape(next(iter(sessions.values())), model)
            sets = _input_sets(model, shape, batches, seed, dataset, data_dir, report, say)
            _compare_all(sessions, sets, model, report, say)
        say(report.summary())
    finally:
        model.train(was_training)
    return _finish(report, json_path)


def _runtimes(info: Any, kernel_library: str, have_lib: bool, provider: str,
              report: CheckReport) -> list[tuple[str, str]]:
    """``(label, kernel_library policy)`` of each way the model is run."""
    if not info.uses_domain:
        return [("", "auto")]
    if kernel_library != "auto":
        return [("kernel" if kernel_library in ("always", True) else "bodies", kernel_library)]
    runtimes = [] if info.needs_kernel else [("bodies", "never")]
    if (have_lib and provider == "cpu") or info.needs_kernel:
        runtimes.append(("kernel", "always"))  # without the library, make_session raises the clear error
    else:
        report.notes.append("kernel library not built: checked with the function bodies only")
    return runtimes


def _open_sessions(onnx_path: str | os.PathLike, provider: str, opt_levels: Sequence[str],
                   runtimes: list[tuple[str, str]], threads: int | None, report: CheckReport,
                   say: Callable[[str], None]) -> dict[tuple[str, str], Any]:
    from quadexport.exporter.session import make_session

    sessions: dict[tuple[str, str], Any] = {}
    for level in opt_levels:
        for label, kl in runtimes:
            try:
                sessions[(level, label)] = make_session(onnx_path, provider, opt_level=level, threads=threads,
                                                        kernel_library=kl)
            except Exception as e:  # noqa: BLE001 - any failure to create a session is a hard failure
                where = LEVEL_NAMES.get(level, level) + (f" [{label}]" if label else "")
                report.errors.append(f"{where}: {type(e).__name__}: {e}")
                say(f"-[✗] {report.errors[-1]}")
    return sessions


@dataclass
class _InputSet:
    source: str
    batch: int
    chunks: list[np.ndarray]
    labels: np.ndarray | None = None


def _input_sets(model: nn.Module, shape: tuple[int, ...], batches: Sequence[int], seed: int,
                dataset: str | bool | None, data_dir: str | os.PathLike | None, report: CheckReport,
                say: Callable[[str], None]) -> list[_InputSet]:
    """Random batches of every size, then the dataset's first test images (when known and loadable)."""
    rng = np.random.default_rng(seed)
    sets = [_InputSet("random", int(b), [rng.standard_normal((int(b), *shape)).astype(np.float32)]) for b in batches]
    ds_name = None if dataset is False else (dataset or (getattr(model, "quadexport_meta", None) or {}).get(
        "dataset"))
    if not ds_name:
        return sets
    try:
        xs, ys = _load_dataset(ds_name, data_dir)
    except Exception as e:  # noqa: BLE001 - reported (a failure only when the dataset was asked for)
        if dataset:
            report.errors.append(f"dataset {dataset}: {e}")
            say(f"-[✗] dataset {dataset}: {e}")
        else:
            report.notes.append(f"dataset {ds_name} (from the model metadata) not checked: {e}")
            say(f"-[!] dataset {ds_name} not checked: {e}")
        return sets
    bs = max(int(b) for b in batches)
    return sets + [_InputSet(f"{ds_name}[{len(xs)}]", bs, [xs[i:i + bs] for i in range(0, len(xs), bs)], ys)]


def _compare_all(sessions: dict[tuple[str, str], Any], sets: list[_InputSet], model: nn.Module,
                 report: CheckReport, say: Callable[[str], None]) -> None:
    refs = [[_torch_outputs(model, x) for x in s.chunks] for s in sets]
    out_names = [o.name for o in next(iter(sessions.values())).get_outputs()]
    n_ref = len(refs[0][0])
    if n_ref != len(out_names):
        report.errors.append(f"onnx model has {len(out_names)} outputs {out_names}, torch model {n_ref}")
        say(f"-[✗] {report.errors[-1]}")
    for (level, label), sess in sessions.items():
        for s, ref_chunks in zip(sets, refs):
            outs = [sess.run(None, {sess.get_inputs()[0].name: x}) for x in s.chunks]
            for k, name in enumerate(out_names[:n_ref]):
                o = np.concatenate([c[k] for c in outs])
                r = np.concatenate([c[k] for c in ref_chunks])
                m = compare(o, r, report.rtol, report.atol)
                acc = None
                if s.labels is not None and o.ndim == 2 and o.shape[0] == len(s.labels):
                    acc = float((o.argmax(1) == s.labels).mean() * 100)
                line = CheckLine(level, label, s.batch, s.source, name, accuracy=acc, **m)
                report.lines.append(line)
                say(line.format())


def _finish(report: CheckReport, json_path: str | os.PathLike | None) -> CheckReport:
    if json_path is not None:
        report.save(json_path)
    return report
