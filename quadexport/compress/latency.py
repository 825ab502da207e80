"""Interleaved onnxruntime latency of several ONNX files (the compression report's latency ratios and the latency
search), through the bench package's shared timing API (:func:`quadexport.bench.timing.time_sessions`).

Sessions come from :func:`quadexport.exporter.make_session` (``session.intra_op.allow_spinning = 0``); per batch size every
model is timed interleaved with the others, so machine drift hits all alike. The result keeps the readable JSON
form of the compression report: ``{"rows": [{"model", "batch", "p50_ms", ...}], "config", "load_before",
"load_after"}``.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from quadexport.bench.timing import TimingConfig, TimingUnit, loadavg, time_sessions

__all__ = ["p50", "time_onnx"]


def _batch(inputs: Any, batch: int) -> np.ndarray:
    """The first ``batch`` samples of ``inputs`` (repeated when there are fewer), contiguous: float32, token ids
    (integers) kept as they are."""
    x = np.asarray(inputs.numpy() if hasattr(inputs, "numpy") else inputs)
    x = x if np.issubdtype(x.dtype, np.integer) else x.astype(np.float32)  # token ids stay integers
    reps = -(-int(batch) // max(len(x), 1))
    return np.ascontiguousarray(np.concatenate([x] * reps)[:int(batch)] if reps > 1 else x[:int(batch)])


def _finite(out: Any) -> bool:
    return all(bool(np.isfinite(np.asarray(o)).all()) for o in out)


def time_onnx(models: Mapping[str, str | os.PathLike], input_shape: Sequence[int], batches: Sequence[int] = (1, 64),
              threads: int | None = None, min_seconds: float = 1.0, seed: int = 0,
              inputs: Any = None) -> dict[str, Any]:
    """Time ONNX files interleaved (one :func:`time_sessions` call per batch size). Every output of every model is
    checked for NaN/Inf after the warm-up and each chunk (:class:`~quadexport.bench.timing.NonFiniteOutput`).

    Args:
        models: ``{label: path}``.
        input_shape: one sample's shape ``(C, H, W)``.
        batches: batch sizes.
        threads: onnxruntime intra-op threads (default: onnxruntime's, one per core).
        min_seconds: minimum timed seconds per model and batch.
        seed: seed of the random inputs (when no ``inputs`` are given).
        inputs: model inputs ``[N, *input_shape]`` to time on (compress passes the run's calibration data);
            default: standard-normal random inputs.
    """
    import onnxruntime

    from quadexport.exporter import make_session

    sessions = {k: make_session(str(Path(p)), "cpu", threads=threads) for k, p in models.items()}
    rng = np.random.default_rng(seed)
    rows = []
    load_before = loadavg()
    for batch in batches:
        x = (_batch(inputs, batch) if inputs is not None and len(inputs)
             else rng.standard_normal((int(batch), *input_shape)).astype(np.float32))
        feeds = {k: (_tokens(s, x.shape, rng) if not np.issubdtype(x.dtype, np.integer) else x)
                 if s.get_inputs()[0].type == "tensor(int64)" else x
                 for k, s in sessions.items()}  # a language model's file takes int64 token ids
        units = [TimingUnit(k, (lambda s=s, k=k: s.run(None, {s.get_inputs()[0].name: feeds[k]})), _finite)
                 for k, s in sessions.items()]
        stats = time_sessions(units, TimingConfig(min_seconds=min_seconds, warmup=5, chunk_seconds=0.05,
                                                  batch=int(batch)))
        rows += [{"model": k, **asdict(st)} for k, st in stats.items()]
    return {"rows": rows, "load_before": load_before, "load_after": loadavg(),
            "config": {"ort": onnxruntime.__version__, "threads": threads, "batches": [int(b) for b in batches],
                       "inputs": "given" if inputs is not None and len(inputs) else "random normal",
                       "min_seconds": min_seconds, "allow_spinning": False, "cpu_count": os.cpu_count()}}


def _tokens(sess: Any, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Random token ids within the vocabulary the file records (``quadexport.token_input``)."""
    import json

    meta = sess.get_modelmeta().custom_metadata_map
    vocab = int(json.loads(meta.get("quadexport.token_input", "{}")).get("vocab_size", 2))
    return rng.integers(0, vocab, shape, dtype=np.int64)


def p50(timing: dict[str, Any], model: str, batch: int) -> float | None:
    """Median latency (ms) of ``model`` at ``batch`` in a :func:`time_onnx` result."""
    for r in timing["rows"]:
        if r["model"] == model and r["batch"] == batch:
            return r["p50_ms"]
    return None
