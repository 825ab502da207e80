"""Latency benchmark of quadratic models against their ReLU baselines, under onnxruntime and torch eager.

``bench(["resnet20"], neuron="fan")`` times, at each batch size:

- the quadratic model in every requested export mode (``decomposed``, ``function``, ``fused``) under onnxruntime,
  and in torch eager (``mode="torch"``);
- its **ReLU twin** (same builder and depth, ``neuron="relu"``) and the **MAC-matched** ReLU model (the zoo model of
  the same family whose MACs are closest to the quadratic model's, e.g. QResNet20 ↔ ResNet56; for families with one
  member - ``mlp``, ``cnn`` - the ReLU twin widened until its MACs match). A ReLU model has no quadratic layer, so
  every ONNX mode gives the same graph: it is exported and timed once, as ``decomposed``.

Method (optimum-benchmark / Olive conventions): ``warmup`` untimed runs per model, then **interleaved** timing:
round-robin over every (model, mode) of the batch size, each turn a chunk of about ``chunk_seconds`` of single-run
``perf_counter`` timings, the starting model rotating each round, until every one has at least ``min_iters`` runs
*and* ``min_seconds`` of timed runs. Drift of the machine (other jobs, thermal, frequency) therefore hits all
compared models alike. onnxruntime sessions are made with ``session.intra_op.allow_spinning = 0`` (so a session's
idle threads do not steal the cores of the next one) and ``threads`` intra-op threads; torch uses
``torch.set_num_threads(threads)``. Reported per row: p50/p90/p99/mean/stdev (ms), throughput (samples/s =
batch / mean), params, MACs, ONNX file size. Outputs are checked to be finite (warm-up and after every chunk).

Untrained zoo models get the ReLinear initialisation plus a small perturbation of the quadratic branches
(``W_g``, ``W_b`` += N(0, 0.001²)) and BatchNorm statistics calibrated on N(0, 1) inputs, so the quadratic terms are
live but the activations stay finite through depth (values do not change the work done, but NaN/Inf can take slow
paths); run dirs are timed with their trained weights (and their test accuracy goes on the accuracy-vs-latency plot).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import gc
import inspect
import math
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

ONNX_MODES = ("decomposed", "function", "fused")
MODES = ONNX_MODES + ("torch",)
ROLES = ("quadratic", "twin", "mac_matched", "relu")
DEFAULT_INPUT_SHAPE = (1, 28, 28)
PERTURB_STD = 1e-3
"""Std of the normal perturbation added to ``W_g`` and ``W_b`` of untrained (ReLinear-initialised) zoo models: the
quadratic terms are live (non-zero; the kernels do the same work whatever the values, as long as they are finite and
not denormal) and, with calibrated BatchNorm statistics, QResNet-8 … QResNet-110 stay finite on N(0, 1) batches of 64
(0.02 overflows QResNet-20 at 28×28, 0.005 QResNet-110)."""

__all__ = ["BenchError", "BenchReport", "MODES", "ONNX_MODES", "bench", "mac_matched_baseline",
           "parse_input_shape"]


class BenchError(ValueError):
    """A benchmark that cannot run: bad input shape, unknown model, non-finite outputs, missing provider..."""


# ---------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class BenchModel:
    """One benchmarked model.

    Attributes:
        id: unique key, ``<label>-<neuron>`` (e.g. ``resnet20-fan``, ``mlp-w170-relu``).
        label: model name, with ``-w<width>`` when the width is not the builder's default.
        name: zoo builder name.
        neuron: neuron type, ``"relu"`` for the ReLU models.
        role: ``quadratic``, ``twin``, ``mac_matched`` or ``relu`` (a ReLU model given without a quadratic one).
        module: the eval-mode torch model.
        input_shape: one sample's shape ``(C, H, W)``.
        macs: MACs of one sample (:func:`quadexport.count_macs`).
        params: learnable parameters.
        source: ``"zoo"`` (built here) or the run dir it was loaded from.
        test_acc: test accuracy of a run dir (``None`` for zoo models).
        note: how the model was chosen (baselines).
    """

    id: str
    label: str
    name: str
    neuron: str
    role: str
    module: nn.Module
    input_shape: tuple[int, ...]
    macs: int
    params: int
    source: str = "zoo"
    test_acc: float | None = None
    note: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    perturb_std: float | None = None

    @property
    def is_quadratic(self) -> bool:
        return self.neuron != "relu"

    def info(self) -> dict[str, Any]:
        return {"id": self.id, "model": self.label, "name": self.name, "neuron": self.neuron, "role": self.role,
                "source": self.source, "input_shape": list(self.input_shape), "macs": self.macs,
                "params": self.params, "test_acc": self.test_acc, "note": self.note, "config": self.config,
                "weights": "trained" if self.source != "zoo" else (
                    ("ReLinear init" + (f" + N(0, {self.perturb_std:g}²) on W_g/W_b" if self.perturb_std else "")
                     if self.is_quadratic else "Kaiming init") + ", BN statistics calibrated on N(0, 1) inputs")}


def parse_input_shape(values: Sequence[Any] | None) -> tuple[int, int, int] | None:
    """Validate one sample's input shape ``(C, H, W)`` (no batch dimension).

    Args:
        values: three positive integers (or strings of them, as given on the command line), or ``None``.

    Raises:
        BenchError: wrong rank, non-integer entries (e.g. ``28.5``, ``float``) or entries < 1.
    """
    if values is None:
        return None
    vals = list(values)
    hint = "give one sample's shape as three positive integers C H W (no batch dimension), e.g. 1 28 28"
    if len(vals) != 3:
        raise BenchError(f"input shape {' '.join(map(str, vals))} has rank {len(vals)}, expected 3 (C H W); {hint}")
    out = []
    for v in vals:
        if isinstance(v, bool):
            raise BenchError(f"input shape entry {v!r} is not an integer; {hint}")
        if isinstance(v, (int, np.integer)):
            n = int(v)
        elif isinstance(v, float) and v.is_integer():
            n = int(v)
        else:
            try:
                n = int(str(v).strip())
            except ValueError:
                raise BenchError(f"input shape entry {v!r} is not an integer (the benchmark input is float32, the "
                                 f"shape takes integers only); {hint}") from None
        if n < 1:
            raise BenchError(f"input shape entry {n} must be >= 1; {hint}")
        out.append(n)
    return tuple(out)  # type: ignore[return-value]


def _builder_default(name: str, arg: str) -> Any:
    from quadexport.zoo.registry import _REGISTRY

    info = _REGISTRY.get(name)
    if info is None:
        return None
    p = inspect.signature(info.builder).parameters.get(arg)
    return None if p is None or p.default is inspect.Parameter.empty else p.default


def _label(name: str, config: dict[str, Any]) -> str:
    w = config.get("width")
    if w is not None and w != _builder_default(name, "width"):
        return f"{name}-w{w}"
    return name


@contextlib.contextmanager
def _one_thread():
    """Single-threaded torch for the tiny probing forwards (MAC counts, shape checks): on a busy machine the
    intra-op thread hand-offs of 2+ threads make a batch-1 ResNet forward 30× slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@functools.lru_cache(maxsize=256)
def _zoo_macs(name: str, neuron: str, shape: tuple[int, ...], kwargs: tuple[tuple[str, Any], ...] = ()) -> int:
    """MACs of a zoo model (independent of its weights; cached, the MAC-matching search probes many models)."""
    from quadexport.zoo import count_macs, create_model

    with torch.random.fork_rng(devices=[]), _one_thread():
        m = create_model(name, neuron, in_channels=shape[0], input_size=tuple(shape[1:]), **dict(kwargs))
        return count_macs(m, tuple(shape))


def _family(name: str) -> str:
    return name.rstrip("0123456789")


@torch.no_grad()
def _perturb(model: nn.Module, std: float, gen: torch.Generator) -> None:
    """Add N(0, std²) to the quadratic-branch weights (``g``, ``b``) of every quadratic layer."""
    from quadexport.layers.quad import QuadLayer

    for m in model.modules():
        if isinstance(m, QuadLayer):
            for br in m.neuron_type.quadratic_branches:
                w = getattr(m, br).weight
                w.add_(torch.randn(w.shape, generator=gen, dtype=w.dtype) * std)


@torch.no_grad()
def _calibrate_bn(model: nn.Module, shape: tuple[int, ...], gen: torch.Generator, batches: int = 1,
                  n: int = 16) -> None:
    """Set BatchNorm running statistics from train-mode passes over N(0, 1) inputs (cumulative average), as a
    trained model has them. Untrained zoo models otherwise keep mean 0 / var 1 and their activations grow through
    depth (ReLU ResNet-56: ~5e4 at the logits); quadratic layers turn that growth into inf/NaN."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    momenta = [b.momentum for b in bns]
    for b in bns:
        b.reset_running_stats()
        b.momentum = None
    model.train()
    try:
        for _ in range(batches):
            model(torch.randn((n, *shape), generator=gen))
    finally:
        for b, mom in zip(bns, momenta):
            b.momentum = mom
        model.eval()


@torch.no_grad()
def _finite_on_random(model: nn.Module, shape: tuple[int, ...], seed: int = 12345, n: int = 16) -> bool:
    x = torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))
    return bool(torch.isfinite(model(x)).all())


def _build(name: str, neuron: str, shape: tuple[int, ...], gen: torch.Generator, **kwargs: Any) -> nn.Module:
    """A zoo model ready for timing: ReLinear init (+ a small perturbation of ``W_g``/``W_b`` for quadratic
    neurons, reduced 4× at a time if the outputs on N(0, 1) inputs are not finite), BN statistics calibrated."""
    from quadexport.zoo import create_model

    std = PERTURB_STD
    for _ in range(4):
        model = create_model(name, neuron, in_channels=shape[0], input_size=tuple(shape[1:]), **kwargs)
        if neuron != "relu":
            _perturb(model, std, gen)
        _calibrate_bn(model, tuple(shape), gen)
        model.eval()
        if neuron == "relu" or _finite_on_random(model, tuple(shape)):
            model.quadexport_bench_perturb = std if neuron != "relu" else None
            return model
        std /= 4
    raise BenchError(f"{name} ({neuron}) gives NaN/Inf outputs on N(0, 1) inputs even with W_g/W_b perturbed by "
                     f"N(0, {4 * std:g}²); pass a trained run dir instead")


def _make(module: nn.Module, role: str, shape: tuple[int, ...], source: str = "zoo",
          note: str | None = None) -> BenchModel:
    from quadexport.zoo import count_macs, count_params

    cfg = dict(getattr(module, "quadexport_config", {}))
    name, neuron = cfg.get("name", type(module).__name__.lower()), cfg.get("neuron", "relu")
    label = _label(name, cfg)
    meta = getattr(module, "quadexport_meta", {}) or {}
    acc = meta.get("test_acc")
    kw = tuple(sorted((k, v) for k, v in cfg.items() if k not in ("name", "neuron", "in_channels", "input_size")))
    try:
        macs = _zoo_macs(name, neuron, tuple(shape), kw) if "name" in cfg else None
    except TypeError:  # unhashable builder options
        macs = None
    if macs is None:
        with _one_thread():
            macs = count_macs(module, tuple(shape))
    return BenchModel(id=f"{label}-{neuron}", label=label, name=name, neuron=neuron, role=role, module=module,
                      input_shape=tuple(shape), macs=macs, params=count_params(module),
                      source=source, test_acc=float(acc) if isinstance(acc, (int, float)) else None, note=note,
                      config={k: v for k, v in cfg.items() if k != "name"},
                      perturb_std=getattr(module, "quadexport_bench_perturb", None))


def _check_forward(module: nn.Module, shape: tuple[int, ...], what: str) -> None:
    cfg = getattr(module, "quadexport_config", {}) or {}
    cin = cfg.get("in_channels")
    if cin is not None and cin != shape[0]:
        raise BenchError(f"{what} takes {cin} input channel(s), but the input shape is {' '.join(map(str, shape))} "
                         f"({shape[0]} channel(s)); pass --input-shape {cin} H W")
    try:
        with torch.inference_mode(), _one_thread():
            out = module(torch.randn((2, *shape), generator=torch.Generator().manual_seed(1)))
    except Exception as e:  # shape errors surface as RuntimeError from torch
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BenchError(f"{what} cannot take input shape {' '.join(map(str, shape))} (C H W): {msg}") from None
    if not torch.isfinite(out).all():
        raise BenchError(f"{what} produces NaN/Inf outputs on N(0, 1) inputs of shape {shape}; the timing would "
                         f"be meaningless (NaN/Inf can take slow paths)")


def _load_entry(entry: str, neuron: str, shape: tuple[int, ...] | None, gen: torch.Generator) -> BenchModel:
    from quadexport.zoo import list_models

    p = Path(entry)
    if p.exists():
        from quadexport.checkpoint import load

        module = load(p)
        meta = getattr(module, "quadexport_meta", {}) or {}
        trained = meta.get("input_shape")
        s = tuple(shape) if shape is not None else (tuple(int(v) for v in trained) if trained else
                                                    DEFAULT_INPUT_SHAPE)
        _check_forward(module, s, f"run dir {entry}")
        cfg = module.quadexport_config
        role = "quadratic" if cfg.get("neuron", "relu") != "relu" else "relu"
        return _make(module, role, s, source=str(p))
    if entry not in list_models():
        raise BenchError(f"{entry!r} is neither a run dir nor a zoo model; zoo models: {', '.join(list_models())}")
    s = tuple(shape) if shape is not None else DEFAULT_INPUT_SHAPE
    try:
        module = _build(entry, neuron, s, gen)
    except BenchError:
        raise
    except ValueError as e:
        raise BenchError(f"cannot build {entry} for input shape {s}: {e}") from None
    _check_forward(module, s, f"{entry} ({neuron})")
    return _make(module, "quadratic" if neuron != "relu" else "relu", s)


def _zoo_kwargs(m: BenchModel) -> dict[str, Any]:
    return {k: v for k, v in m.config.items() if k not in ("neuron", "in_channels", "input_size")}


def mac_matched_baseline(quad: BenchModel, gen: torch.Generator | None = None,
                         build: Callable[..., nn.Module] | None = None) -> tuple[nn.Module | None, str]:
    """The ReLU model whose MACs are closest to ``quad``'s, and a note saying how it was chosen.

    Families with several zoo members (``resnet8`` … ``resnet110``): the member with the closest MACs (the twin is
    refused - then there is no larger member). Families with one member (``mlp``, ``cnn``): the ReLU twin with its
    ``width`` widened to the closest MACs. Otherwise ``(None, reason)``.
    """
    from quadexport.zoo import list_models

    gen = gen or torch.Generator().manual_seed(0)
    if build is None:
        def build(name: str, shp: tuple[int, ...], **kw: Any) -> nn.Module:
            return _build(name, "relu", shp, gen, **kw)
    shape, kw = tuple(quad.input_shape), _zoo_kwargs(quad)
    family = [n for n in list_models() if _family(n) == _family(quad.name)]
    if len(family) > 1:
        fkw = tuple(sorted((k, v) for k, v in kw.items() if k != "width"))
        macs = {n: _zoo_macs(n, "relu", shape, fkw) for n in family}
        best = min(family, key=lambda n: abs(macs[n] - quad.macs))
        if best == quad.name:
            return None, (f"no {_family(quad.name)} in the zoo has MACs closer to {quad.id}'s {quad.macs / 1e6:.1f}M "
                          f"than its twin; MAC-matched baseline skipped")
        return build(best, shape, **dict(fkw)), (
            f"zoo {_family(quad.name)} with the closest MACs ({macs[best] / 1e6:.2f}M vs {quad.macs / 1e6:.2f}M "
            f"among {', '.join(family)})")
    base = kw.get("width", _builder_default(quad.name, "width"))
    if not isinstance(base, int):
        return None, f"{quad.name} has no other depth in the zoo and no width to widen; MAC-matched baseline skipped"

    def macs_at(w: int) -> int:
        return _zoo_macs(quad.name, "relu", shape, tuple(sorted({**kw, "width": w}.items())))

    try:
        if macs_at(base) >= quad.macs:
            return None, f"the ReLU {quad.name} already has >= the quadratic MACs; MAC-matched baseline skipped"
        lo, hi = base, base * 2
        while macs_at(hi) < quad.macs:
            lo, hi = hi, hi * 2
            if hi > base * 256:
                return None, f"widening {quad.name} does not reach {quad.macs} MACs; MAC-matched baseline skipped"
        while hi - lo > 1:  # MACs grow with width: macs_at(lo) < target <= macs_at(hi)
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if macs_at(mid) < quad.macs else (lo, mid)
        w = lo if abs(macs_at(lo) - quad.macs) <= abs(macs_at(hi) - quad.macs) else hi
    except (TypeError, ValueError) as e:
        return None, f"cannot widen {quad.name} ({e}); MAC-matched baseline skipped"
    m = build(quad.name, shape, **{**kw, "width": w})
    return m, (f"ReLU {quad.name} widened from width {base} to {w} to match MACs "
               f"({macs_at(w) / 1e6:.3f}M vs {quad.macs / 1e6:.3f}M)")


def _resolve_models(entries: Sequence[str], neuron: str, shape: tuple[int, ...] | None, baselines: bool,
                    gen: torch.Generator) -> tuple[list[BenchModel], list[tuple[str, str, str]], list[str]]:
    """Load the given models, add baselines, pair them. Returns (models, pairs (quad id, base id, role), notes)."""
    models: list[BenchModel] = []
    notes: list[str] = []
    by_id: dict[str, BenchModel] = {}

    def add(m: BenchModel) -> BenchModel:
        if m.id in by_id:
            old = by_id[m.id]
            if old.source == "zoo" and m.source != "zoo":  # a given (trained) model beats a built one
                models[models.index(old)] = m
                by_id[m.id] = m
                return m
            if m.source != "zoo" and old.source != "zoo" and m.source != old.source:
                k = 2
                while f"{m.id}#{k}" in by_id:
                    k += 1
                m.id = f"{m.id}#{k}"
            else:
                return old
        models.append(m)
        by_id[m.id] = m
        return m

    def build(name: str, shp: tuple[int, ...], **kw: Any) -> nn.Module:
        key = (name, tuple(shp), tuple(sorted(kw.items())))
        if key not in built:
            built[key] = _build(name, "relu", shp, gen, **kw)
        return built[key]

    built: dict[Any, nn.Module] = {}
    for e in entries:
        add(_load_entry(str(e), neuron, shape, gen))
    given = list(models)
    quads = [m for m in given if m.is_quadratic]
    pairs: list[tuple[str, str, str]] = []
    for q in quads:
        twin = next((m for m in given if not m.is_quadratic and m.label == q.label), None)
        if twin is None and baselines:
            tm = build(q.name, q.input_shape, **_zoo_kwargs(q))
            twin = add(_make(tm, "twin", q.input_shape, note=f"ReLU twin of {q.id} (same builder and depth)"))
        if twin is not None:
            pairs.append((q.id, twin.id, "twin"))
        others = [m for m in given if not m.is_quadratic and m.label != q.label]
        if others:
            for o in others:
                pairs.append((q.id, o.id, "mac_matched"))
        elif baselines:
            mm, note = mac_matched_baseline(q, gen, build=build)
            if mm is None:
                notes.append(f"{q.id}: {note}")
            else:
                b = add(_make(mm, "mac_matched", q.input_shape, note=f"MAC-matched to {q.id}: {note}"))
                pairs.append((q.id, b.id, "mac_matched"))
    rank = {"quadratic": 0, "twin": 1, "mac_matched": 2, "relu": 3}
    for m in models:
        roles = [r for (_, b, r) in pairs if b == m.id]
        if roles and not m.is_quadratic:
            m.role = min(roles, key=rank.__getitem__)
    return models, pairs, notes


# ---------------------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class _Unit:
    model: BenchModel
    mode: str
    run: Callable[[], Any]
    check: Callable[[Any], bool]
    times: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    est: float = 1e-3

    @property
    def what(self) -> str:
        return f"{self.model.id} [{self.mode}]"


def _finite_np(out: Any) -> bool:
    return all(np.isfinite(np.asarray(o)).all() for o in out)


def _finite_torch(out: Any) -> bool:
    return bool(torch.isfinite(out).all())


def _nonfinite(u: _Unit, batch: int, when: str) -> BenchError:
    return BenchError(f"{u.what} produced NaN/Inf outputs at batch {batch} ({when}); the timing would be "
                      f"meaningless. Untrained quadratic nets blow up through depth without the ReLinear "
                      f"initialisation - use trained weights (a run dir) or the zoo's ReLinear init")


def _warm(units: list[_Unit], warmup: int, batch: int) -> None:
    for u in units:
        ts = []
        for i in range(max(1, warmup)):
            t0 = time.perf_counter()
            out = u.run()
            ts.append(time.perf_counter() - t0)
            if i == 0 and not u.check(out):
                raise _nonfinite(u, batch, "warm-up")
        if not u.check(out):
            raise _nonfinite(u, batch, "warm-up")
        tail = sorted(ts[len(ts) // 2:])
        u.est = max(tail[len(tail) // 2], 1e-7)


def _interleave(units: list[_Unit], min_iters: int, min_seconds: float, chunk_seconds: float, batch: int) -> int:
    """Round-robin timing until every unit has >= min_iters runs and >= min_seconds timed. Returns the rounds."""
    rounds = 0
    perf, ptime = time.perf_counter, time.process_time
    while not all(len(u.times) >= min_iters and sum(u.times) >= min_seconds for u in units):
        k = rounds % len(units)
        for u in units[k:] + units[:k]:
            n = max(1, int(round(chunk_seconds / u.est)))
            times, cpu = u.times, u.cpu
            out = None
            for _ in range(n):
                c0 = ptime()
                t0 = perf()
                out = u.run()
                t1 = perf()
                cpu.append(ptime() - c0)
                times.append(t1 - t0)
            if not u.check(out):
                raise _nonfinite(u, batch, f"timing round {rounds}")
            chunk = sorted(times[-n:])
            u.est = max(chunk[len(chunk) // 2], 1e-7)
        rounds += 1
    return rounds


def _stats(times: list[float], batch: int, cpu: list[float] | None = None) -> dict[str, float]:
    a = np.asarray(times, dtype=np.float64) * 1e3
    mean = float(a.mean())
    c = np.asarray(cpu if cpu else times, dtype=np.float64) * 1e3
    return {"cpu_p50_ms": float(np.percentile(c, 50)), "cpu_mean_ms": float(c.mean()),
            "p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": mean, "stdev_ms": float(a.std(ddof=1)) if a.size > 1
            else 0.0, "min_ms": float(a.min()), "throughput": batch / (mean / 1e3), "iters": int(a.size),
            "timed_s": float(a.sum() / 1e3)}


# ---------------------------------------------------------------------------------------------------------------
# Environment
# ---------------------------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def environment(provider: str = "cpu", threads: int | None = None, opt_level: str = "all") -> dict[str, Any]:
    """System and library facts recorded with every benchmark."""
    import onnx
    import onnxruntime as ort

    env: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_model(), "cpu_count": os.cpu_count(), "usable_cores": _usable_cores(),
        "threads": threads, "provider": provider, "opt_level": opt_level,
        "platform": platform.platform(), "python": platform.python_version(),
        "torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__,
        "numpy": np.__version__, "ort_available_providers": ort.get_available_providers(),
        "load_average": _loadavg(),
    }
    try:
        from quadexport.exporter.session import find_kernel_library

        lib = find_kernel_library()
    except Exception:  # noqa: BLE001 - the environment record must never fail a benchmark
        lib = None
    if lib is not None:
        import hashlib

        data = Path(lib).read_bytes()
        env["kernel_library"] = {"path": str(lib), "sha256": hashlib.sha256(data).hexdigest()[:16],
                                 "mtime": _dt.datetime.fromtimestamp(Path(lib).stat().st_mtime, _dt.timezone.utc)
                                 .isoformat(timespec="seconds")}
    if os.environ.get("QUADEXPORT_KERNEL_ISA"):
        env["kernel_isa"] = os.environ["QUADEXPORT_KERNEL_ISA"]
    if provider == "cuda" and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


# ---------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------


ROW_KEYS = ("model", "neuron", "mode", "provider", "batch", "threads", "p50_ms", "p90_ms", "p99_ms", "mean_ms",
            "stdev_ms", "throughput", "macs", "params", "file_bytes", "role")
RATIO_KEYS = ("quadratic", "baseline", "batch", "mode", "latency_ratio", "mac_ratio")


@dataclass
class BenchReport:
    """Result of :func:`bench`: rows (one per model × mode × batch), ratios and metadata.

    Attributes:
        rows: per (model, mode, batch): the :data:`ROW_KEYS` plus ``id``, ``iters``, ``timed_s``, ``min_ms``,
            ``cpu_p50_ms``/``cpu_mean_ms`` (process CPU time per run: with 1 thread, the run's compute without the
            time it was preempted; with more threads, the CPU work summed over threads), ``test_acc``, ``source``.
        ratios: per (quadratic, baseline, batch, mode): ``latency_ratio`` (p50 quadratic / p50 baseline) and
            ``mac_ratio`` (MACs quadratic / MACs baseline), plus ``role``, ``baseline_mode``, ``min_latency_ratio``
            and ``cpu_ratio`` (p50 CPU time; the steadier figure on a shared machine at 1 thread).
        ort_vs_torch: per (model, batch, ONNX mode): ``ratio`` = p50 ORT / p50 torch eager.
        mode_ratios: per (quadratic model, batch, mode): p50 of the mode / p50 of ``decomposed``.
        models: what each model id is (:meth:`BenchModel.info`).
        notes: skipped baselines and other remarks.
        config: the arguments of the run.
        environment: CPU, versions, provider, load average (before and after), date.
        files: paths written by :meth:`save`.
    """

    rows: list[dict[str, Any]]
    ratios: list[dict[str, Any]]
    ort_vs_torch: list[dict[str, Any]]
    mode_ratios: list[dict[str, Any]]
    models: list[dict[str, Any]]
    notes: list[str]
    config: dict[str, Any]
    environment: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "ratios": self.ratios, "ort_vs_torch": self.ort_vs_torch,
                "mode_ratios": self.mode_ratios, "models": self.models, "notes": self.notes,
                "config": self.config, "environment": self.environment}

    # -- lookups ---------------------------------------------------------------------------------------------------
    def row(self, model_id: str, mode: str, batch: int) -> dict[str, Any] | None:
        return next((r for r in self.rows if r["id"] == model_id and r["mode"] == mode and r["batch"] == batch),
                    None)

    def _reference(self, r: dict[str, Any]) -> dict[str, Any] | None:
        """The ReLU twin row a row is compared with in the tables (twins: themselves)."""
        info = {m["id"]: m for m in self.models}
        pairs = {(x["quadratic"], x["role"]): x["baseline"] for x in self.ratios}
        ref_id = None
        if r["role"] == "quadratic":
            ref_id = pairs.get((r["id"], "twin")) or pairs.get((r["id"], "mac_matched"))
        elif r["role"] == "twin" or r["role"] == "relu":
            ref_id = r["id"]
        elif r["role"] == "mac_matched":
            q = next((x["quadratic"] for x in self.ratios if x["baseline"] == r["id"]), None)
            ref_id = pairs.get((q, "twin")) if q else None
        if ref_id is None or ref_id not in info:
            return None
        for mode in (r["mode"], "decomposed"):
            if r["mode"] == "torch" and mode != "torch":
                break
            ref = self.row(ref_id, mode, r["batch"])
            if ref is not None:
                return ref
        return None

    # -- rendering -------------------------------------------------------------------------------------------------
    def _table_rows(self) -> list[list[str]]:
        ovt = {(x["id"], x["mode"], x["batch"]): x["ratio"] for x in self.ort_vs_torch}
        out = []
        for r in self.rows:
            ref = self._reference(r)
            lat = f"{r['p50_ms'] / ref['p50_ms']:.2f}" if ref else "–"
            mac = f"{r['macs'] / ref['macs']:.2f}" if ref else "–"
            refname = ref["id"] if ref else "–"
            o = ovt.get((r["id"], r["mode"], r["batch"]))
            out.append([r["model"], r["neuron"], r["role"], r["mode"], str(r["batch"]), f"{r['p50_ms']:.3f}",
                        f"{r['p90_ms']:.3f}", f"{r['p99_ms']:.3f}", f"{r['mean_ms']:.3f} ± {r['stdev_ms']:.3f}",
                        f"{r['throughput']:.0f}", f"{r['macs'] / 1e6:.2f}M", f"{r['params'] / 1e6:.3f}M",
                        f"{r['file_bytes'] / 1e6:.2f}" if r.get("file_bytes") else "–", refname, lat, mac,
                        f"{o:.3g}" if o is not None else "–", str(r["iters"])])
        return out

    _HEAD = ["model", "neuron", "role", "mode", "batch", "p50 ms", "p90 ms", "p99 ms", "mean ± sd ms", "samples/s",
             "MACs", "params", "ONNX MB", "vs", "latency ratio", "MAC ratio", "ORT/torch", "iters"]

    def table(self) -> str:
        """Plain-text table for the terminal."""
        rows = [self._HEAD] + self._table_rows()
        widths = [max(len(r[i]) for r in rows) for i in range(len(self._HEAD))]
        lines = ["  ".join(c.rjust(w) if i >= 4 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
                 for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines.append("")
        lines.append("latency ratio vs MAC ratio (p50, quadratic / baseline):")
        for x in self.ratios:
            lines.append(f"  {x['quadratic']:>14s} / {x['baseline']:<16s} b={x['batch']:<4d} {x['mode']:<10s} "
                         f"latency {x['latency_ratio']:6.2f}   MACs {x['mac_ratio']:5.2f}")
        for n in self.notes:
            lines.append(f"note: {n}")
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """Markdown report: setup, one row per measurement with its ratio next to its MAC ratio, pair ratios,
        ORT vs torch eager, export modes compared."""
        c, e = self.config, self.environment
        lines = ["# quadexport bench", ""]
        if c.get("command"):
            lines += ["```", c["command"], "```", ""]
        lines += [f"- {e.get('date')}, {e.get('cpu')} ({e.get('usable_cores')} usable cores), provider "
                  f"`{e.get('provider')}`, {c.get('threads')} thread(s), ORT opt level `{c.get('opt_level')}`",
                  f"- torch {e.get('torch')}, onnx {e.get('onnx')}, onnxruntime {e.get('onnxruntime')}, numpy "
                  f"{e.get('numpy')}; load average before {e.get('load_average')}, after "
                  f"{e.get('load_average_after')}",
                  f"- warm-up {c.get('warmup')}, then interleaved round-robin chunks (~{c.get('chunk_seconds')} s) "
                  f"until >= {c.get('min_iters')} runs and >= {c.get('min_seconds')} s per row; input shape "
                  f"{tuple(c.get('input_shape') or ())}",
                  "- *vs*: the ReLU twin the row is compared with (quadratic rows: their twin; MAC-matched rows: the "
                  "twin of their quadratic model); ratios are p50 latency / p50 latency and MACs / MACs. ReLU models "
                  "have no quadratic layer, so every ONNX mode is the same graph: they are timed once as "
                  "`decomposed` and ONNX-mode rows of quadratic models are compared with that.", ""]
        lines.append("| " + " | ".join(self._HEAD) + " |")
        lines.append("|" + "|".join("---" if i < 4 else "--:" for i in range(len(self._HEAD))) + "|")
        for r in self._table_rows():
            lines.append("| " + " | ".join(r) + " |")
        if self.ratios:
            lines += ["", "## Quadratic vs baselines (p50)", "",
                      "| quadratic | baseline | role | batch | mode | latency ratio | MAC ratio | CPU-time ratio |",
                      "|---|---|---|--:|---|--:|--:|--:|"]
            for x in self.ratios:
                cpu = f"{x['cpu_ratio']:.2f}" if x.get("cpu_ratio") else "–"
                lines.append(f"| {x['quadratic']} | {x['baseline']} | {x['role']} | {x['batch']} | {x['mode']} | "
                             f"{x['latency_ratio']:.2f} | {x['mac_ratio']:.2f} | {cpu} |")
        if self.ort_vs_torch:
            lines += ["", "## onnxruntime vs torch eager (p50 ORT / p50 torch; < 1: ORT faster)", "",
                      "| model | mode | batch | ORT ms | torch ms | ratio |", "|---|---|--:|--:|--:|--:|"]
            for x in self.ort_vs_torch:
                lines.append(f"| {x['model']} | {x['mode']} | {x['batch']} | {x['ort_p50_ms']:.3f} | "
                             f"{x['torch_p50_ms']:.3f} | {x['ratio']:.3g} |")
        if self.mode_ratios:
            lines += ["", "## Export modes (p50 of the mode / p50 of decomposed)", "",
                      "| model | batch | mode | p50 ms | ratio |", "|---|--:|---|--:|--:|"]
            for x in self.mode_ratios:
                lines.append(f"| {x['model']} | {x['batch']} | {x['mode']} | {x['p50_ms']:.3f} | {x['ratio']:.2f} |")
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        models = [m for m in self.models if m.get("note")]
        if models:
            lines += [""] + [f"- `{m['id']}`: {m['note']}" for m in models]
        return "\n".join(lines) + "\n"

    # -- files -----------------------------------------------------------------------------------------------------
    def plot(self, out: str | Path) -> list[Path]:
        """Latency bars per batch size (``latency_b<batch>.png``) and, when models carry test accuracies,
        ``accuracy_vs_latency.png``."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        out = Path(out)
        written = []
        ids: list[str] = []  # each quadratic model followed by its baselines
        for r in self.rows:
            if r["role"] == "quadratic" and r["id"] not in ids:
                ids.append(r["id"])
                for x in self.ratios:
                    if x["quadratic"] == r["id"] and x["baseline"] not in ids:
                        ids.append(x["baseline"])
        ids += [i for i in dict.fromkeys(r["id"] for r in self.rows) if i not in ids]
        modes = [m for m in MODES if any(r["mode"] == m for r in self.rows)]
        colors = dict(zip(MODES, ("tab:blue", "tab:orange", "tab:green", "tab:gray")))
        for batch in sorted({r["batch"] for r in self.rows}):
            fig, ax = plt.subplots(figsize=(min(16.0, max(6.0, 0.5 + 0.35 * len(ids) * max(1, len(modes)))), 4.5))
            width = 0.8 / max(1, len(modes))
            for j, mode in enumerate(modes):
                xs, ys, err = [], [], []
                for i, mid in enumerate(ids):
                    r = self.row(mid, mode, batch)
                    if r is not None:
                        xs.append(i + (j - (len(modes) - 1) / 2) * width)
                        ys.append(r["p50_ms"])
                        err.append([0.0, r["p90_ms"] - r["p50_ms"]])
                if xs:
                    ax.bar(xs, ys, width, label=mode, color=colors.get(mode),
                           yerr=np.asarray(err).T, capsize=2, error_kw={"elinewidth": 0.8})
            p50s = [r["p50_ms"] for r in self.rows if r["batch"] == batch]
            if p50s and max(p50s) / max(min(p50s), 1e-9) > 30:
                ax.set_yscale("log")
            ax.set_xticks(range(len(ids)))
            ax.set_xticklabels(ids, rotation=30, ha="right", fontsize=8)
            ax.set_ylabel("p50 latency (ms), whisker: p90")
            ax.set_title(f"batch {batch}, {self.config.get('provider')}, {self.config.get('threads')} thread(s)")
            ax.legend(fontsize=8)
            ax.grid(axis="y", alpha=0.3)
            fig.tight_layout()
            p = out / f"latency_b{batch}.png"
            fig.savefig(p, dpi=110)
            plt.close(fig)
            written.append(p)
        acc = [r for r in self.rows if isinstance(r.get("test_acc"), (int, float))]
        if acc:
            batch = min(r["batch"] for r in acc)
            fig, ax = plt.subplots(figsize=(6, 4.2))
            for mode in modes:
                pts = [r for r in acc if r["batch"] == batch and r["mode"] == mode]
                if pts:
                    ax.scatter([r["p50_ms"] for r in pts], [100 * r["test_acc"] for r in pts], label=mode,
                               color=colors.get(mode))
                    for r in pts:
                        ax.annotate(r["id"], (r["p50_ms"], 100 * r["test_acc"]), fontsize=7,
                                    xytext=(3, 3), textcoords="offset points")
            ax.set_xlabel(f"p50 latency at batch {batch} (ms)")
            ax.set_ylabel("test accuracy (%)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            fig.tight_layout()
            p = out / "accuracy_vs_latency.png"
            fig.savefig(p, dpi=110)
            plt.close(fig)
            written.append(p)
        return written

    def save(self, out: str | Path) -> dict[str, str]:
        """Write ``bench.json``, ``bench.md`` and the PNG plots into ``out``."""
        from quadexport.checkpoint import write_json

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "bench.json", self.to_dict())
        (out / "bench.md").write_text(self.to_markdown())
        files = {"json": str(out / "bench.json"), "markdown": str(out / "bench.md")}
        for p in self.plot(out):
            files[p.stem] = str(p)
        self.files = files
        return files


# ---------------------------------------------------------------------------------------------------------------
# Ratios
# ---------------------------------------------------------------------------------------------------------------


def _ratios(rows: list[dict[str, Any]], models: dict[str, BenchModel], pairs: list[tuple[str, str, str]]
            ) -> tuple[list[dict], list[dict], list[dict]]:
    idx = {(r["id"], r["mode"], r["batch"]): r for r in rows}
    ratios = []
    for q, b, role in pairs:
        for r in rows:
            if r["id"] != q:
                continue
            bmode = r["mode"] if (b, r["mode"], r["batch"]) in idx or r["mode"] == "torch" else "decomposed"
            br = idx.get((b, bmode, r["batch"]))
            if br is None:
                continue
            ratios.append({"quadratic": q, "baseline": b, "role": role, "batch": r["batch"], "mode": r["mode"],
                           "baseline_mode": bmode, "latency_ratio": r["p50_ms"] / br["p50_ms"],
                           "mac_ratio": models[q].macs / models[b].macs, "quadratic_p50_ms": r["p50_ms"],
                           "baseline_p50_ms": br["p50_ms"], "min_latency_ratio": r["min_ms"] / br["min_ms"],
                           "cpu_ratio": r["cpu_p50_ms"] / br["cpu_p50_ms"] if br["cpu_p50_ms"] > 0 else None})
    ovt = []
    for r in rows:
        if r["mode"] in ONNX_MODES:
            t = idx.get((r["id"], "torch", r["batch"]))
            if t is not None:
                ovt.append({"id": r["id"], "model": r["id"], "mode": r["mode"], "batch": r["batch"],
                            "ort_p50_ms": r["p50_ms"], "torch_p50_ms": t["p50_ms"], "ratio": r["p50_ms"] / t["p50_ms"],
                            "speedup": t["p50_ms"] / r["p50_ms"]})
    mode_ratios = []
    for r in rows:
        if r["mode"] in ONNX_MODES and r["mode"] != "decomposed":
            d = idx.get((r["id"], "decomposed", r["batch"]))
            if d is not None:
                mode_ratios.append({"model": r["id"], "batch": r["batch"], "mode": r["mode"], "p50_ms": r["p50_ms"],
                                    "decomposed_p50_ms": d["p50_ms"], "ratio": r["p50_ms"] / d["p50_ms"]})
    return ratios, ovt, mode_ratios


# ---------------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------------


def _modes(mode: str | Iterable[str], torch_eager: bool) -> list[str]:
    ms = [mode] if isinstance(mode, str) else list(mode)
    if not ms:
        raise BenchError(f"no mode given; choose from {', '.join(MODES)}")
    for m in ms:
        if m not in MODES:
            raise BenchError(f"unknown mode {m!r}; choose from {', '.join(MODES)}")
    if torch_eager and "torch" not in ms:
        ms.append("torch")
    return list(dict.fromkeys(ms))


def _export(bm: BenchModel, mode: str, folder: Path, opset: int) -> Path:
    from quadexport.exporter import export

    path = folder / f"{bm.id.replace('#', '_')}-{mode}.onnx"
    export(bm.module, path, mode=mode, opset=opset, input_shape=tuple(bm.input_shape))
    return path


def _file_bytes(path: Path) -> int:
    """ONNX file size, external-data files (``<name>.data`` etc. next to it) included."""
    total = path.stat().st_size
    for p in path.parent.glob(path.name + ".*"):
        if p.is_file() and p != path:
            total += p.stat().st_size
    return total


def bench(models: Sequence[str | os.PathLike], *, neuron: str = "fan", mode: str | Sequence[str] = "decomposed",
          provider: str = "cpu", threads: int | None = None, batches: Sequence[int] = (1, 64),
          opt_level: str = "all", baselines: bool = True, torch_eager: bool = True, warmup: int = 10,
          min_iters: int = 20, min_seconds: float = 1.0, input_shape: Sequence[Any] | None = None,
          out: str | os.PathLike | None = None, seed: int = 0, opset: int = 20, chunk_seconds: float | None = None,
          command: str | None = None, verbose: bool = False) -> BenchReport:
    """Benchmark quadratic models against their ReLU baselines (see the module docstring for the method).

    Args:
        models: zoo names (built untrained: ReLinear init + small perturbation, BN calibrated) or run dirs
            (trained weights).
        neuron: neuron type of the zoo models (``"relu"``: plain models, no baselines).
        mode: export mode(s) timed under onnxruntime (``decomposed``, ``function``, ``fused``) and/or ``torch``.
        provider: ``"cpu"`` or ``"cuda"``.
        threads: intra-op threads of onnxruntime and torch (default: all usable cores).
        batches: batch sizes.
        opt_level: onnxruntime graph optimisation level (``disable``, ``basic``, ``extended``, ``all``).
        baselines: add the ReLU twin and the MAC-matched ReLU model of every quadratic model.
        torch_eager: also time every model in torch eager (mode ``torch``).
        warmup: untimed runs per (model, mode, batch).
        min_iters: minimum timed runs per row.
        min_seconds: minimum timed seconds per row.
        input_shape: one sample's ``(C, H, W)``; default: the run dir's, else ``(1, 28, 28)``.
        out: folder for ``bench.json``, ``bench.md``, PNGs and the ONNX files (``onnx/``); ``None``: nothing kept.
        seed: seed of the model init/perturbation and of the random inputs.
        opset: ONNX opset of the exports.
        chunk_seconds: target length of one interleaving turn (default ``clip(min_seconds / 10, 0.002, 0.1)``).
        command: command line recorded in the report (the CLI sets it).
        verbose: print progress.

    Returns:
        The :class:`BenchReport` (also saved to ``out`` when given).

    Raises:
        BenchError: bad input shape, unknown model or mode, unavailable provider, NaN/Inf outputs.
    """
    shape = parse_input_shape(input_shape)
    modes = _modes(mode, torch_eager)
    if provider not in ("cpu", "cuda"):
        raise BenchError(f"unknown provider {provider!r}; choose cpu or cuda")
    batches = [int(b) for b in batches]
    if not batches or any(b < 1 for b in batches):
        raise BenchError(f"batch sizes must be >= 1, got {batches}")
    from quadexport.exporter.session import OPT_LEVELS

    if opt_level not in OPT_LEVELS:
        raise BenchError(f"unknown opt_level {opt_level!r}; choose one of {', '.join(OPT_LEVELS)}")
    if threads is not None and int(threads) < 1:
        raise BenchError(f"threads must be >= 1, got {threads}")
    if warmup < 0 or min_iters < 1 or not (min_seconds >= 0 and math.isfinite(min_seconds)):
        raise BenchError("warmup must be >= 0, min_iters >= 1 and min_seconds a finite number >= 0")
    if not models:
        raise BenchError("no model given")
    nthreads = int(threads) if threads is not None else _usable_cores()
    chunk = float(chunk_seconds) if chunk_seconds else min(0.1, max(0.002, min_seconds / 10))
    if provider == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BenchError("provider cuda: this onnxruntime has no CUDAExecutionProvider (install "
                             "quadexport[gpu], i.e. onnxruntime-gpu)")
        if "torch" in modes and not torch.cuda.is_available():
            raise BenchError("provider cuda: torch sees no CUDA device (torch eager rows need one)")

    def log(msg: str) -> None:
        if verbose:
            print(msg, flush=True)

    env = environment(provider, nthreads, opt_level)
    prev_threads = torch.get_num_threads()
    tmp = None
    try:
        torch.set_num_threads(nthreads)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            gen = torch.Generator().manual_seed(seed)
            bms, pairs, notes = _resolve_models([str(m) for m in models], neuron, shape, baselines, gen)
        by_id = {m.id: m for m in bms}
        if out is not None:
            folder = Path(out) / "onnx"
            folder.mkdir(parents=True, exist_ok=True)
        else:
            tmp = tempfile.TemporaryDirectory(prefix="quadexport-bench-")
            folder = Path(tmp.name)

        # -- runners: one ONNX export + session per (model, ONNX mode), reused across batch sizes ----------------
        from quadexport.exporter.session import make_session

        onnx_modes = [m for m in modes if m in ONNX_MODES]
        plan: list[tuple[BenchModel, str]] = []
        for bm in bms:
            ms = onnx_modes if bm.is_quadratic else (["decomposed"] if onnx_modes else [])
            plan += [(bm, m) for m in ms]
            if "torch" in modes:
                plan.append((bm, "torch"))
        sessions: dict[tuple[str, str], Any] = {}
        files: dict[tuple[str, str], tuple[Path, int]] = {}
        device = "cuda" if provider == "cuda" else "cpu"
        for bm, m in plan:
            if m == "torch":
                bm.module.to(device)
                continue
            log(f"export {bm.id} ({m})")
            path = _export(bm, m, folder, opset)
            files[(bm.id, m)] = (path, _file_bytes(path))
            sess = make_session(path, provider, opt_level=opt_level, threads=nthreads)
            sessions[(bm.id, m)] = sess
            if m == "fused" and getattr(sess, "quadexport_kernel", None) is None:
                notes.append(f"{bm.id} [fused]: no kernel library registered (provider {provider} or library not "
                             f"built): onnxruntime ran the function bodies, so 'fused' rows equal 'function'")
        env["ep"] = sorted({p for s in sessions.values() for p in s.get_providers()})

        rng = np.random.default_rng(seed)
        rows: list[dict[str, Any]] = []
        for batch in batches:
            inputs: dict[tuple[int, ...], np.ndarray] = {}
            units: list[_Unit] = []
            for bm, m in plan:
                if bm.input_shape not in inputs:
                    inputs[bm.input_shape] = rng.standard_normal((batch, *bm.input_shape)).astype(np.float32)
                x = inputs[bm.input_shape]
                if m == "torch":
                    xt = torch.from_numpy(x).to(device)
                    mod = bm.module

                    if device == "cuda":
                        def run(mod=mod, xt=xt):
                            with torch.inference_mode():
                                y = mod(xt)
                            torch.cuda.synchronize()
                            return y
                    else:
                        def run(mod=mod, xt=xt):
                            with torch.inference_mode():
                                return mod(xt)
                    units.append(_Unit(bm, m, run, _finite_torch))
                else:
                    sess = sessions[(bm.id, m)]
                    feed = {sess.get_inputs()[0].name: x}
                    units.append(_Unit(bm, m, lambda sess=sess, feed=feed: sess.run(None, feed), _finite_np))
            log(f"batch {batch}: warm-up of {len(units)} runners")
            _warm(units, warmup, batch)
            t0 = time.perf_counter()
            gc.collect()
            gc_was = gc.isenabled()
            gc.disable()  # as timeit does: no collector pauses inside timed runs
            try:
                n_rounds = _interleave(units, min_iters, min_seconds, chunk, batch)
            finally:
                if gc_was:
                    gc.enable()
            log(f"batch {batch}: {n_rounds} interleaved rounds in {time.perf_counter() - t0:.1f} s")
            for u in units:
                bm = u.model
                st = _stats(u.times, batch, u.cpu)
                fb = files.get((bm.id, u.mode))
                rows.append({"id": bm.id, "model": bm.label, "neuron": bm.neuron, "mode": u.mode,
                             "provider": provider, "batch": batch, "threads": nthreads,
                             **{k: st[k] for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "stdev_ms",
                                                    "throughput")},
                             "macs": bm.macs, "params": bm.params, "file_bytes": fb[1] if fb else None,
                             "role": bm.role, "min_ms": st["min_ms"], "cpu_p50_ms": st["cpu_p50_ms"],
                             "cpu_mean_ms": st["cpu_mean_ms"], "iters": st["iters"],
                             "timed_s": st["timed_s"], "rounds": n_rounds, "test_acc": bm.test_acc,
                             "source": bm.source, "onnx": str(fb[0]) if (fb and out is not None) else None,
                             "kernel": str(getattr(sessions.get((bm.id, u.mode)), "quadexport_kernel", None) or "")
                             or None})
        env["load_average_after"] = _loadavg()
    finally:
        torch.set_num_threads(prev_threads)
        if tmp is not None:
            tmp.cleanup()

    ratios, ovt, mode_ratios = _ratios(rows, by_id, pairs)
    config = {"models": [str(m) for m in models], "neuron": neuron, "modes": modes, "provider": provider,
              "threads": nthreads, "batches": batches, "opt_level": opt_level, "baselines": baselines,
              "torch_eager": torch_eager, "warmup": warmup, "min_iters": min_iters, "min_seconds": min_seconds,
              "chunk_seconds": chunk,
              "input_shape": list(shape) if shape else [list(s) for s in dict.fromkeys(m.input_shape for m in bms)]
              if len({m.input_shape for m in bms}) > 1 else list(bms[0].input_shape), "seed": seed, "opset": opset,
              "perturb_std": PERTURB_STD, "allow_spinning": False, "timer": "time.perf_counter per run",
              "inputs": "numpy float32 N(0,1), host memory (ORT CUDA rows include the host-device copies)",
              "command": command}
    report = BenchReport(rows=rows, ratios=ratios, ort_vs_torch=ovt, mode_ratios=mode_ratios,
                         models=[m.info() for m in bms], notes=notes, config=config, environment=env)
    if out is not None:
        report.save(out)
    return report
