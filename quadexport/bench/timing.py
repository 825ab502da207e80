"""Interleaved round-robin latency timing, shared by :mod:`quadexport.bench` and :mod:`quadexport.compress`.

Public API::

    from quadexport.bench.timing import TimingConfig, TimingUnit, TimingStats, time_sessions

    units = [TimingUnit("quad", lambda: sess_q.run(None, feed)), TimingUnit("relu", lambda: sess_r.run(None, feed))]
    stats = time_sessions(units, TimingConfig(min_seconds=1.0, batch=64))   # {"quad": TimingStats, "relu": ...}
    ratio = stats["quad"].p50_ms / stats["relu"].p50_ms

Method (optimum-benchmark / Olive conventions): ``warmup`` untimed runs per unit (the estimate of one run's time
comes from their second half), then **interleaved** timing: round-robin over the units, each turn a *chunk* of about
``chunk_seconds`` of single-run ``time.perf_counter`` timings (process CPU time is taken around each run too), the
starting unit rotating each round, until every unit has at least ``min_iters`` runs *and* ``min_seconds`` of timed
runs. Drift of the machine (other jobs, thermal, frequency) therefore hits all compared units alike. The garbage
collector is disabled while timing (as ``timeit`` does). A unit's optional ``check`` is called on its output after
the warm-up and after every chunk; a ``False`` raises :class:`NonFiniteOutput`.

:class:`TimingStats` (all times in milliseconds): ``p50_ms``, ``p90_ms``, ``p99_ms``, ``mean_ms``, ``stdev_ms``
(sample standard deviation), ``min_ms``, ``cpu_p50_ms``/``cpu_mean_ms`` (process CPU time per run: with one thread,
the run's compute without the time it was preempted), ``runs``, ``timed_s``, ``rounds`` (of the whole timing) and
``spread``: the relative spread of the unit's timings, ``(p90 - p10) / p50`` of its chunk medians when it had two
or more chunks (one preempted chunk among many does not count), else ``(p90 - p10) / p50`` of its runs. A ratio of two p50s is untrustworthy when either spread is
large (see :data:`SPREAD_WARN`). Threads are not set here: make the sessions (and ``torch.set_num_threads``) first.
"""

from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from quadexport.errors import QuadexportError

__all__ = ["LOAD_WARN_PER_CORE", "NonFiniteOutput", "SPREAD_WARN", "TimingConfig", "TimingStats", "TimingUnit",
           "loadavg", "time_sessions", "usable_cores"]

SPREAD_WARN = 0.5
"""A row whose :attr:`TimingStats.spread` exceeds this (50 %) makes the ratios it enters untrustworthy."""
LOAD_WARN_PER_CORE = 0.5
"""A 1-minute load average above this many per usable core means other jobs competed with the timing."""


class NonFiniteOutput(QuadexportError, ValueError):
    """A timed unit's ``check`` rejected its output (NaN/Inf: the timing would be meaningless)."""


@dataclass
class TimingUnit:
    """One thing to time: ``run()`` does one inference; ``check(output)`` (optional) says whether it is valid."""

    key: str
    run: Callable[[], Any]
    check: Callable[[Any], bool] | None = None


@dataclass(frozen=True)
class TimingConfig:
    """Options of :func:`time_sessions`.

    Attributes:
        warmup: untimed runs per unit before timing (at least one is always made).
        min_iters: minimum timed runs per unit.
        min_seconds: minimum timed seconds per unit.
        chunk_seconds: target length of one unit's turn in a round.
        batch: samples per run (only used for :attr:`TimingStats.throughput`).
        disable_gc: disable the garbage collector while timing.
    """

    warmup: int = 10
    min_iters: int = 20
    min_seconds: float = 1.0
    chunk_seconds: float = 0.1
    batch: int = 1
    disable_gc: bool = True


@dataclass(frozen=True)
class TimingStats:
    """Latency statistics of one unit (milliseconds); see the module docstring."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    stdev_ms: float
    min_ms: float
    cpu_p50_ms: float
    cpu_mean_ms: float
    runs: int
    timed_s: float
    rounds: int
    spread: float
    batch: int = 1

    @property
    def throughput(self) -> float:
        """Samples per second: ``batch / mean``."""
        return self.batch / (self.mean_ms / 1e3)

    @classmethod
    def from_times(cls, times: Sequence[float], cpu: Sequence[float] | None = None, *, batch: int = 1,
                   rounds: int = 0, chunks: Sequence[int] = ()) -> "TimingStats":
        """Statistics of per-run times in seconds; ``chunks``: the number of runs of each chunk, in order."""
        a = np.asarray(times, dtype=np.float64) * 1e3
        if a.size == 0:
            raise ValueError("no timed runs")
        c = np.asarray(cpu if cpu is not None and len(cpu) else times, dtype=np.float64) * 1e3
        p10, p50, p90, p99 = (float(v) for v in np.percentile(a, [10, 50, 90, 99]))
        return cls(p50_ms=p50, p90_ms=p90, p99_ms=p99, mean_ms=float(a.mean()),
                   stdev_ms=float(a.std(ddof=1)) if a.size > 1 else 0.0, min_ms=float(a.min()),
                   cpu_p50_ms=float(np.percentile(c, 50)), cpu_mean_ms=float(c.mean()), runs=int(a.size),
                   timed_s=float(a.sum() / 1e3), rounds=rounds, spread=_spread(a, chunks, p10, p50, p90),
                   batch=batch)


def _spread(a: np.ndarray, chunks: Sequence[int], p10: float, p50: float, p90: float) -> float:
    if len(chunks) >= 2 and sum(chunks) == a.size:
        meds = np.asarray([np.median(part) for part in np.split(a, np.cumsum(chunks)[:-1])])
        lo, mid, hi = np.percentile(meds, [10, 50, 90])
        return float((hi - lo) / mid) if mid > 0 else 0.0
    return (p90 - p10) / p50 if p50 > 0 else 0.0


@dataclass
class _State:
    unit: TimingUnit
    times: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    chunks: list[int] = field(default_factory=list)
    est: float = 1e-3

    def ok(self, out: Any) -> bool:
        return self.unit.check is None or bool(self.unit.check(out))


def _warm(states: list[_State], warmup: int) -> None:
    for s in states:
        ts = []
        out = None
        for _ in range(max(1, warmup)):
            t0 = time.perf_counter()
            out = s.unit.run()
            ts.append(time.perf_counter() - t0)
        if not s.ok(out):
            raise NonFiniteOutput(f"{s.unit.key} produced invalid (NaN/Inf) outputs in the warm-up")
        tail = sorted(ts[len(ts) // 2:])
        s.est = max(tail[len(tail) // 2], 1e-7)


def _chunk(s: _State, chunk_seconds: float, rnd: int) -> None:
    n = max(1, int(round(chunk_seconds / s.est)))
    perf, ptime, run = time.perf_counter, time.process_time, s.unit.run
    times, cpu = s.times, s.cpu
    out = None
    for _ in range(n):
        c0 = ptime()
        t0 = perf()
        out = run()
        t1 = perf()
        cpu.append(ptime() - c0)
        times.append(t1 - t0)
    s.chunks.append(n)
    if not s.ok(out):
        raise NonFiniteOutput(f"{s.unit.key} produced invalid (NaN/Inf) outputs in timing round {rnd}")
    last = sorted(times[-n:])
    s.est = max(last[len(last) // 2], 1e-7)


def time_sessions(units: Sequence[TimingUnit], config: TimingConfig | None = None) -> dict[str, TimingStats]:
    """Time ``units`` interleaved (see the module docstring); returns ``{unit.key: TimingStats}``.

    Raises:
        ValueError: no units, duplicate keys or invalid config values.
        NonFiniteOutput: a unit's ``check`` rejected an output.
    """
    cfg = config or TimingConfig()
    keys = [u.key for u in units]
    if not keys or len(set(keys)) != len(keys):
        raise ValueError(f"time_sessions needs units with distinct keys, got {keys}")
    if cfg.min_iters < 1 or cfg.min_seconds < 0 or cfg.chunk_seconds <= 0 or cfg.warmup < 0:
        raise ValueError(f"invalid timing config {cfg}")
    states = [_State(u) for u in units]
    _warm(states, cfg.warmup)
    gc.collect()
    gc_was = gc.isenabled()
    if cfg.disable_gc:
        gc.disable()
    rounds = 0
    try:
        while not all(len(s.times) >= cfg.min_iters and sum(s.times) >= cfg.min_seconds for s in states):
            k = rounds % len(states)
            for s in states[k:] + states[:k]:
                _chunk(s, cfg.chunk_seconds, rounds)
            rounds += 1
    finally:
        if gc_was:
            gc.enable()
    return {s.unit.key: TimingStats.from_times(s.times, s.cpu, batch=cfg.batch, rounds=rounds, chunks=s.chunks)
            for s in states}


def loadavg() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages (rounded), ``None`` where the OS has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), else ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
