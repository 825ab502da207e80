"""Interleaved onnxruntime latency of several ONNX models (the compression report's latency ratios).

Same method as :mod:`quadexport.bench`: sessions from :func:`quadexport.make_session` with
``session.intra_op.allow_spinning = 0``; untimed warm-up; then round-robin turns of about ``chunk_seconds`` of
single-run ``perf_counter`` timings per model, the starting model rotating each round, until every model has
``min_iters`` runs and ``min_seconds`` of timed runs. Machine drift hits all compared models alike. Ratios are
computed from medians (p50). The 1-minute load average before and after is recorded.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np


def loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def time_onnx(models: Mapping[str, str | os.PathLike], input_shape: Sequence[int], batches: Sequence[int] = (1, 64),
              threads: int | None = None, min_seconds: float = 1.0, min_iters: int = 20, warmup: int = 5,
              chunk_seconds: float = 0.05, seed: int = 0, opt_level: str = "all") -> dict[str, Any]:
    """Time ONNX files interleaved; returns ``{"rows": [...], "config": ..., "load_before", "load_after"}``.

    Args:
        models: ``{label: path}``.
        input_shape: one sample's shape ``(C, H, W)``.
        batches: batch sizes.
        threads: onnxruntime intra-op threads (default: onnxruntime's, one per core).
        min_seconds: minimum timed seconds per model and batch.
        min_iters: minimum timed runs per model and batch.
        warmup: untimed runs per model and batch.
        chunk_seconds: length of one interleaving turn.
        seed: seed of the random inputs.
        opt_level: onnxruntime graph optimisation level.
    """
    from quadexport.exporter.session import make_session

    sessions = {k: make_session(str(Path(p)), "cpu", opt_level=opt_level, threads=threads) for k, p in models.items()}
    rng = np.random.default_rng(seed)
    rows = []
    load_before = loadavg()
    for batch in batches:
        x = rng.standard_normal((int(batch), *input_shape)).astype(np.float32)
        feeds = {k: {s.get_inputs()[0].name: x} for k, s in sessions.items()}
        for k, s in sessions.items():
            for _ in range(warmup):
                s.run(None, feeds[k])
        times: dict[str, list[float]] = {k: [] for k in sessions}
        spent: dict[str, float] = {k: 0.0 for k in sessions}
        order = list(sessions)
        rounds = 0
        while any(len(times[k]) < min_iters or spent[k] < min_seconds for k in order):
            for k in order[rounds % len(order):] + order[:rounds % len(order)]:
                s, feed = sessions[k], feeds[k]
                t_end = time.perf_counter() + chunk_seconds
                while True:
                    t0 = time.perf_counter()
                    s.run(None, feed)
                    dt = time.perf_counter() - t0
                    times[k].append(dt)
                    spent[k] += dt
                    if time.perf_counter() >= t_end:
                        break
            rounds += 1
        for k in order:
            t = np.asarray(times[k]) * 1e3
            rows.append({"model": k, "batch": int(batch), "p50_ms": float(np.median(t)),
                         "p10_ms": float(np.percentile(t, 10)), "min_ms": float(t.min()),
                         "p90_ms": float(np.percentile(t, 90)),
                         "mean_ms": float(t.mean()), "iters": int(t.size), "rounds": rounds})
    import onnxruntime

    return {"rows": rows, "load_before": load_before, "load_after": loadavg(),
            "config": {"ort": onnxruntime.__version__, "threads": threads, "batches": [int(b) for b in batches],
                       "min_seconds": min_seconds, "min_iters": min_iters, "warmup": warmup,
                       "chunk_seconds": chunk_seconds,
                       "opt_level": opt_level, "allow_spinning": False, "cpu_count": os.cpu_count()}}


def p50(timing: dict[str, Any], model: str, batch: int) -> float | None:
    """Median latency (ms) of ``model`` at ``batch`` in a :func:`time_onnx` result."""
    for r in timing["rows"]:
        if r["model"] == model and r["batch"] == batch:
            return r["p50_ms"]
    return None


__all__ = ["loadavg", "p50", "time_onnx"]
