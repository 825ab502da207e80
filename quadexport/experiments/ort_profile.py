"""Per-op-type kernel time of ONNX models under onnxruntime's profiler, the models interleaved (issue #13).

:func:`profile` opens one profiled ``ORT_ENABLE_ALL`` session per model, times them interleaved
(:func:`quadexport.bench.timing.time_sessions`, so load drift hits all alike) and aggregates the profiler's
per-kernel events per op type and run (onnxruntime writes per-kernel events; nothing aggregates them per op type);
:func:`families` sums them per op family.
"""

from __future__ import annotations

import collections
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from quadexport.bench.timing import TimingConfig, TimingUnit, time_sessions
from quadexport.experiments.onnx_rewrites import op_histogram

__all__ = ["families", "profile"]


def _session(path: Path, threads: int, opt_path: Path, prefix: Path) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.optimized_model_filepath = str(opt_path)
    so.enable_profiling = True
    so.profile_file_prefix = str(prefix)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def profile(paths: dict[str, Path], shape: tuple[int, ...], batches: list[int], threads: int,
            seconds: float) -> dict[str, dict[str, Any]]:
    """Per model: the optimised graph (node count, op histogram) and the profiler's median µs per run and op type,
    per batch (``"run"``: the whole ``Run``; ``"kernels"``: the sum of its kernels). The profiled sessions run
    interleaved (:func:`time_sessions`), so load drift hits all alike."""
    sessions = {k: _session(p, threads, p.with_suffix(".opt.onnx"), p.with_suffix("")) for k, p in paths.items()}
    rng = np.random.default_rng(0)
    plan: dict[str, list[tuple[int, int, int]]] = {k: [] for k in sessions}
    warm = 5
    for b in batches:
        x = rng.standard_normal((b, *shape)).astype(np.float32)
        units = [TimingUnit(k, lambda s=s: s.run(None, {s.get_inputs()[0].name: x})) for k, s in sessions.items()]
        stats = time_sessions(units, TimingConfig(warmup=warm, min_seconds=seconds, chunk_seconds=0.02, batch=b))
        for k, st in stats.items():
            plan[k].append((b, warm, st.runs))
    out = {}
    for k, sess in sessions.items():
        prof = Path(sess.end_profiling())
        events = json.loads(prof.read_text())
        prof.unlink()
        g = onnx.load(str(paths[k].with_suffix(".opt.onnx"))).graph
        label = {n.name: next(iter(op_histogram([n]))) for n in g.node}
        out[k] = {"ort_nodes": len(g.node), "ort_ops": op_histogram(g.node), "profile": _per_op(events, label, plan[k])}
    return out


def _per_op(events: list[dict], label: dict[str, str], plan: list[tuple[int, int, int]]) -> dict[str, Any]:
    runs = sorted((e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"), key=lambda e: e["ts"])
    nodes = sorted((e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")),
                   key=lambda e: e["ts"])
    per_run: list[collections.Counter] = []
    j = 0
    for r in runs:
        c: collections.Counter = collections.Counter()
        while j < len(nodes) and nodes[j]["ts"] <= r["ts"] + r["dur"]:
            if nodes[j]["ts"] >= r["ts"]:
                op = label.get(nodes[j]["name"][:-len("_kernel_time")], nodes[j]["args"].get("op_name", "?"))
                c[op] += nodes[j]["dur"]
            j += 1
        c["kernels"] = sum(c.values())
        c["run"] = r["dur"]
        per_run.append(c)
    out, i = {}, 0
    for b, warm, n in plan:
        chunk = per_run[i + warm:i + warm + n]
        i += warm + n
        ops = sorted(set().union(*chunk)) if chunk else []
        out[str(b)] = {op: float(statistics.median(c.get(op, 0) for c in chunk)) for op in ops}
    return out



def families(prof: dict[str, float]) -> dict[str, float]:
    """Profile µs summed per op family (``conv``: every Conv kind, ``reorder``: NCHWc reorders, ``slice/pad``,
    elementwise ops by name) plus ``overhead``: run − kernels (the executor's per-node cost)."""
    out: dict[str, float] = collections.defaultdict(float)
    for op, us in prof.items():
        fam = ("conv" if "Conv" in op else "reorder" if "Reorder" in op
               else "slice/pad" if op in ("Slice", "Pad", "Split") else op)
        out[fam] += us
    out["overhead"] = prof["run"] - prof["kernels"]
    return dict(out)
