""":func:`bench`: export every (model, mode), make the sessions, time them interleaved per batch size
(:func:`quadexport.bench.timing.time_sessions`), and assemble the :class:`BenchReport`."""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from quadexport.bench.baselines import resolve_models
from quadexport.bench.config import ONNX_MODES, PERTURB_STD, BenchConfig, BenchError, parse_input_shape
from quadexport.bench.environment import environment
from quadexport.bench.models import BenchModel
from quadexport.bench.report import BenchReport
from quadexport.bench.rows import BenchRow, compute_ratios
from quadexport.bench.tokens import numpy_input
from quadexport.bench.timing import NonFiniteOutput, TimingConfig, TimingStats, TimingUnit, loadavg, time_sessions
from quadexport.exporter.outputs import flatten

__all__ = ["bench"]

log = logging.getLogger(__name__)

_LEGACY = {"mode": "modes", "batch": "batches"}
_TORCHVISION_NOISE = "torchvision is not installed"


class _DropTorchvisionNotice(logging.Filter):
    """Drops the torch exporter's "torchvision is not installed. Skipping torchvision::nms" lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_TORCHVISION_NOISE)


def _quiet_exporter() -> None:
    lg = logging.getLogger("torch.onnx._internal.exporter._registration")
    if not any(isinstance(f, _DropTorchvisionNotice) for f in lg.filters):
        lg.addFilter(_DropTorchvisionNotice())


def _config(config: BenchConfig | None, options: dict[str, Any]) -> BenchConfig:
    """``config`` with keyword overrides (``mode``/``batch`` accepted for ``modes``/``batches``; ``verbose`` is
    ignored: progress goes to the ``quadexport.bench`` loggers)."""
    cfg = config or BenchConfig()
    opts = {_LEGACY.get(k, k): v for k, v in options.items() if k != "verbose"}
    names = {f.name for f in dataclasses.fields(BenchConfig)}
    unknown = sorted(set(opts) - names)
    if unknown:
        raise BenchError(f"unknown bench option(s) {', '.join(unknown)}; BenchConfig has {', '.join(sorted(names))}")
    if opts.get("threads", 1) is None:  # "not given" (e.g. a recipe without threads): the default, 1
        opts["threads"] = 1
    cfg = dataclasses.replace(cfg, **opts)
    cfg.validate()
    return cfg


def _export(bm: BenchModel, mode: str, folder: Path, opset: int) -> tuple[Path, int]:
    """Export ``bm`` in ``mode``; returns the path and its size (external-data files next to it included)."""
    from quadexport.exporter import export

    path = folder / f"{bm.id.replace('#', '_')}-{mode}.onnx"
    spec = bm.inputs  # several inputs or an input range: the run's record
    export(bm.module, path, mode=mode, opset=opset,
           input_shape=spec.shapes if spec is not None and spec.several else tuple(bm.input_shape),
           input_range=spec.ranges if spec is not None else None)
    size = path.stat().st_size + sum(p.stat().st_size for p in path.parent.glob(path.name + ".*")
                                     if p.is_file() and p != path)
    return path, size


def _sessions(bms: list[BenchModel], modes: list[str], folder: Path, cfg: BenchConfig, notes: list[str]):
    """The plan ``[(model, mode)]`` (ReLU models: one ONNX graph, timed as ``decomposed``), the runtime's sessions
    and the ONNX files per (model id, mode)."""
    from quadexport.runtimes import Setting

    runtime = cfg.resolved_runtime()
    sup = runtime.supports()
    onnx_modes = [m for m in modes if m in ONNX_MODES]
    plan: list[tuple[BenchModel, str]] = []
    for bm in bms:
        plan += [(bm, m) for m in (onnx_modes if bm.is_quadratic else (["decomposed"] if onnx_modes else []))]
        if "torch" in modes:
            plan.append((bm, "torch"))
    sessions: dict[tuple[str, str], Any] = {}
    files: dict[tuple[str, str], tuple[Path, int]] = {}
    device = "cuda" if cfg.provider == "cuda" else "cpu"
    setting = Setting(opt_level=cfg.opt_level if sup.opt_levels else None, threads=cfg.threads)
    for i, (bm, m) in enumerate(plan):
        if m == "torch":
            bm.module.to(device)
            continue
        log.info("export %d/%d: %s (%s)", i + 1, len(plan), bm.id, m)
        files[(bm.id, m)] = _export(bm, m, folder, cfg.opset)
        sess = runtime.open(files[(bm.id, m)][0], setting)
        sessions[(bm.id, m)] = sess
        if m == "fused" and sess.kernel is None:
            notes.append(f"{bm.id} [fused]: no kernel library registered ({runtime.name}, provider {cfg.provider}, "
                         f"or library not built): the function bodies ran, so 'fused' rows equal 'function'")
    if not sup.in_process and sessions:
        notes.append(f"runtime {runtime.name} runs each batch in a new process: its rows include loading the file "
                     "and creating the session")
    return plan, sessions, files


def _torch_runner(mod: torch.nn.Module, xt: torch.Tensor | tuple[torch.Tensor, ...], cuda: bool
                  ) -> Callable[[], Any]:
    xs = xt if isinstance(xt, tuple) else (xt,)

    def run() -> Any:
        with torch.inference_mode():
            y = mod(*xs)
        if cuda:
            torch.cuda.synchronize()
        return y
    return run


def _units(plan, sessions, batch: int, rng: np.random.Generator, cuda: bool) -> list[TimingUnit]:
    inputs: dict[Any, Any] = {}
    units = []
    for bm, m in plan:
        spec = bm.inputs  # several inputs or a range: drawn from the specs (a tuple of arrays)
        token = getattr(bm.module, "token_input", None)  # a token model: int64 ids (quadexport.bench.tokens)
        key = (bm.input_shape, token) if spec is None else (tuple(spec.shapes), tuple(spec.ranges))
        if key not in inputs:
            inputs[key] = (numpy_input(bm.module, (batch, *bm.input_shape), rng) if spec is None
                           else spec.numpy(batch, rng))
        x = inputs[key]
        if m == "torch":
            dev = "cuda" if cuda else "cpu"
            xt = (tuple(torch.from_numpy(a).to(dev) for a in x) if isinstance(x, tuple)
                  else torch.from_numpy(x).to(dev))
            units.append(TimingUnit(f"{bm.id} [{m}]", _torch_runner(bm.module, xt, cuda),
                                    lambda out: all(bool(torch.isfinite(t).all()) for t in flatten(out))))
        else:
            sess = sessions[(bm.id, m)]
            feed = sess.feed(x)  # a tuple: one array per input, in the file's order
            units.append(TimingUnit(f"{bm.id} [{m}]", lambda sess=sess, feed=feed: sess.run(feed),
                                    lambda out: all(np.isfinite(np.asarray(o)).all() for o in out)))
    return units


def _row(bm: BenchModel, mode: str, st: TimingStats, cfg: BenchConfig, files, sessions) -> BenchRow:
    fb = files.get((bm.id, mode))
    sess = sessions.get((bm.id, mode))
    kernel = sess.kernel if sess is not None else None
    return BenchRow(id=bm.id, model=bm.label, neuron=bm.neuron, mode=mode, provider=cfg.provider, batch=st.batch,
                    threads=cfg.threads, p50_ms=st.p50_ms, p90_ms=st.p90_ms, p99_ms=st.p99_ms, mean_ms=st.mean_ms,
                    stdev_ms=st.stdev_ms, throughput=st.throughput, macs=bm.macs, params=bm.params,
                    file_bytes=fb[1] if fb else None, role=bm.role, min_ms=st.min_ms, cpu_p50_ms=st.cpu_p50_ms,
                    cpu_mean_ms=st.cpu_mean_ms, iters=st.runs, timed_s=st.timed_s, rounds=st.rounds,
                    test_acc=bm.test_acc, source=bm.source,
                    onnx=str(fb[0]) if (fb and cfg.out is not None) else None, kernel=str(kernel) if kernel else None,
                    spread=st.spread, runtime=sess.runtime.name if sess is not None else None)


def _time_all(plan, sessions, files, cfg: BenchConfig) -> list[BenchRow]:
    """Time every (model, mode) of the plan at each batch size; logs what it times with an ETA."""
    rng = np.random.default_rng(cfg.seed)
    rows: list[BenchRow] = []
    batches = [int(b) for b in cfg.batches]
    t_start = time.perf_counter()
    for i, batch in enumerate(batches):
        units = _units(plan, sessions, batch, rng, cfg.provider == "cuda")
        done = time.perf_counter() - t_start
        per_batch = done / i if i else len(units) * (max(cfg.min_seconds, 0.05) * 1.2 + 0.05)
        log.info("batch %d (%d/%d): timing %s; ETA ~%.0f s", batch, i + 1, len(batches),
                 ", ".join(u.key for u in units), per_batch * (len(batches) - i))
        t0 = time.perf_counter()
        try:
            stats = time_sessions(units, TimingConfig(warmup=cfg.warmup, min_iters=cfg.min_iters,
                                                      min_seconds=cfg.min_seconds, chunk_seconds=cfg.chunk,
                                                      batch=batch))
        except NonFiniteOutput as e:
            raise BenchError(f"{e} at batch {batch}; the timing would be meaningless. Untrained quadratic nets blow "
                             f"up through depth without the ReLinear initialisation - use trained weights (a run "
                             f"dir) or the zoo's ReLinear init") from None
        log.info("batch %d: %d interleaved rounds in %.1f s", batch, next(iter(stats.values())).rounds,
                 time.perf_counter() - t0)
        rows += [_row(bm, m, stats[u.key], cfg, files, sessions) for (bm, m), u in zip(plan, units)]
    return rows


def _check_runtime(cfg: BenchConfig, modes: list[str]) -> None:
    """The runtime is available and runs the requested modes; CUDA torch rows need a device."""
    from quadexport.runtimes import RuntimeUnavailable

    runtime = cfg.resolved_runtime()
    try:
        sup = runtime.require()
    except RuntimeUnavailable as e:
        raise BenchError(str(e)) from None
    refused = [m for m in modes if m in ONNX_MODES and m not in sup.modes]
    if refused:
        raise BenchError(f"runtime {runtime.name} does not run {', '.join(refused)} files (it runs "
                         f"{', '.join(sup.modes)}): drop --mode {' '.join(refused)}")
    if cfg.provider == "cuda" and "torch" in modes and not torch.cuda.is_available():
        raise BenchError("provider cuda: torch sees no CUDA device (torch eager rows need one)")


def _report_config(cfg: BenchConfig, models: Sequence[Any], modes: list[str], bms: list[BenchModel]) -> dict:
    shapes = list(dict.fromkeys(tuple(m.input_shape) for m in bms))
    d = cfg.to_dict()
    d.pop("modes")
    shape = parse_input_shape(cfg.input_shape)
    return {**d, "models": [str(m) for m in models], "modes": modes, "batches": [int(b) for b in cfg.batches],
            "chunk_seconds": cfg.chunk, "perturb_std": PERTURB_STD, "allow_spinning": False,
            "input_shape": list(shape) if shape else ([list(s) for s in shapes] if len(shapes) > 1
                                                      else list(shapes[0])),
            "timer": "time.perf_counter per run",
            "inputs": "numpy float32 N(0,1), host memory (ORT CUDA rows include the host-device copies)"}


def bench(models: Sequence[str | os.PathLike], config: BenchConfig | None = None, **options: Any) -> BenchReport:
    """Benchmark quadratic models against their ReLU baselines (method: :mod:`quadexport.bench`).

    Args:
        models: zoo names (built untrained: ReLinear init + small perturbation, BN calibrated) or run dirs
            (trained weights).
        config: the options (:class:`BenchConfig`; default ``BenchConfig()``: 1 thread, batches 1 and 64).
        **options: :class:`BenchConfig` fields overriding ``config`` (``mode``/``batch`` accepted for
            ``modes``/``batches``).

    Returns:
        The :class:`BenchReport` (also saved to ``config.out`` when set). Its ``warnings`` (busy machine, unsteady
        rows) are logged too.

    Raises:
        BenchError: bad options, unknown model or mode, unavailable provider, NaN/Inf outputs.
    """
    cfg = _config(config, options)
    modes = cfg.mode_list()
    if not models:
        raise BenchError("no model given; pass zoo names (e.g. resnet20) or run dirs")
    _check_runtime(cfg, modes)
    _quiet_exporter()
    env = environment(cfg.provider, cfg.threads, cfg.opt_level)
    prev_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="quadexport-bench-") as tmp:
        try:
            torch.set_num_threads(cfg.threads)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)
                gen = torch.Generator().manual_seed(cfg.seed)
                bms, pairs, notes = resolve_models([str(m) for m in models], cfg.neuron,
                                                   parse_input_shape(cfg.input_shape), cfg.baselines, gen)
            folder = Path(cfg.out) / "onnx" if cfg.out is not None else Path(tmp)
            folder.mkdir(parents=True, exist_ok=True)
            plan, sessions, files = _sessions(bms, modes, folder, cfg, notes)
            env["ep"] = sorted({p for s in sessions.values() for p in s.devices})
            runtime = cfg.resolved_runtime()
            env["runtime"], env["runtime_version"] = runtime.name, runtime.supports().version
            rows = _time_all(plan, sessions, files, cfg)
            env["load_average_after"] = loadavg()
        finally:
            torch.set_num_threads(prev_threads)
    ratios, ovt, mode_ratios = compute_ratios(rows, {m.id: m.macs for m in bms}, pairs)
    report = BenchReport(rows=rows, ratios=ratios, ort_vs_torch=ovt, mode_ratios=mode_ratios,
                         models=[m.info() for m in bms], notes=notes, config=_report_config(cfg, models, modes, bms),
                         environment=env)
    for w in report.warnings:
        log.warning("%s", w)
    if cfg.out is not None:
        report.save(cfg.out)
    return report
