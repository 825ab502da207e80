"""The equal-cost language-model study (issue #31): parameter-matched ReLU, bilinear (``t4``) and ``fan``
feed-forward layers in the zoo's byte-level ``gpt`` on ``pystdlib``, at the same steps and at the same wall-clock.

Recipe: ``models/exp-lm.toml`` (``[train]``, ``[relinear]`` for the quadratic arms, ``[run] seeds``, one
``[[datasets]]``, ``[[models]]`` with ``role = "baseline"`` for the ReLU arm, ``[lm]``). Phases:

1. *steptime*: the training step of every arm, timed interleaved in one process (one thread, ``[lm]
   timing_steps``), stored in ``<out>/lm/steptime.json`` and reused, so a resumed study keeps its configs;
2. *same steps*: every arm × seed with the recipe's steps;
3. *same wall-clock*: every quadratic arm × seed again with its steps scaled by ``t_relu / t_arm`` (windows per
   evaluation interval scaled, so the curve keeps its points and the cosine schedule still ends); or, with
   ``[lm] equal_time = "curve"``, the same-steps curves read at that step (:func:`equal_time_mode`);
4. *latency*: seed 0 of every arm exported (decomposed, opset 20) and timed interleaved in onnxruntime (one
   thread) at the recipe's batches and the full context.

Training runs are :class:`~quadexport.experiments.runner.Task` records (reused when their config is unchanged), so
an interrupted study resumes; :mod:`~quadexport.experiments.lm_report` aggregates and writes ``docs/lm.md``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import statistics
import time
from pathlib import Path
from typing import Any

from quadexport.experiments.runner import Task, run_tasks, train_task

log = logging.getLogger(__name__)

EXP = "lm"

__all__ = ["arm_config", "lm_tasks", "measure_latency", "measure_step_times", "run_lm"]


def slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def arm_config(recipe: dict[str, Any], arm: dict[str, Any], seed: int, scale: float = 1.0) -> dict[str, Any]:
    """TrainConfig fields of one arm and seed; ``scale`` multiplies the windows per evaluation interval (the
    same-wall-clock runs)."""
    ds = recipe["datasets"][0]
    train = dict(recipe["train"])
    per_eval = int(ds["train_subset"])
    batch = int(train.get("batch_size", 64))
    windows = max(batch, int(round(per_eval * scale / batch)) * batch)
    quadratic = arm["neuron"] not in ("relu", "gelu")
    relinear = dict(recipe.get("relinear", {})) if quadratic else {"mode": "none"}
    return {**train, "model": arm.get("model", "gpt"), "neuron": arm["neuron"], "dataset": ds["dataset"],
            "train_subset": windows, "test_subset": ds.get("test_subset"), "seed": int(seed), "relinear": relinear}


def equal_time_mode(recipe: dict[str, Any]) -> str:
    """``[lm] equal_time``: ``"runs"`` (train the quadratic arms again with ``t_relu / t_arm`` of the steps; ``true``
    means this) or ``"curve"`` (read the same-steps runs' validation curves at that step, linearly between
    evaluations: no extra runs, the cosine schedule not yet at its end there)."""
    mode = recipe.get("lm", {}).get("equal_time", True)
    return "runs" if mode is True else str(mode)


def steps_of(config: dict[str, Any]) -> int:
    return int(config["epochs"]) * (int(config["train_subset"]) // int(config.get("batch_size", 64)))


def lm_tasks(recipe: dict[str, Any], out: Path, ratios: dict[str, float] | None = None) -> list[Task]:
    """Same-steps runs of every arm (``ratios is None``), or the same-wall-clock runs of the quadratic arms
    (``ratios``: ``t_relu / t_arm`` per label)."""
    tasks = []
    for arm in recipe["models"]:
        if ratios is not None and arm.get("role") == "baseline":
            continue
        for seed in recipe["run"]["seeds"]:
            scale = 1.0 if ratios is None else ratios[arm["label"]]
            cfg = arm_config(recipe, arm, seed, scale)
            variant = "steps" if ratios is None else "time"
            key = f"{slug(arm['label'])}-s{seed}" + ("" if ratios is None else "-time")
            tasks.append(train_task(EXP, key, out, cfg, {"label": arm["label"], "neuron": arm["neuron"],
                                                         "role": arm.get("role"), "seed": seed,
                                                         "variant": variant, "steps": steps_of(cfg)},
                                    cost=steps_of(cfg), collapse_acc=0.0))
    return tasks


def measure_step_times(recipe: dict[str, Any], path: Path) -> dict[str, Any]:
    """Seconds per training step of every arm (median of interleaved rounds, one thread), cached in ``path``."""
    if path.exists():
        return json.loads(path.read_text())
    import torch

    from quadexport.data.lm import task_loss
    from quadexport.transforms.build import create_model

    lm = recipe.get("lm", {})
    n, rounds = int(lm.get("timing_steps", 10)), int(lm.get("timing_rounds", 3))
    batch = int(recipe["train"].get("batch_size", 64))
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    arms = {a["label"]: create_model(a.get("model", "gpt"), neuron=a["neuron"]) for a in recipe["models"]}
    ctx = next(iter(arms.values())).token_input.context
    x, y = (torch.randint(0, 256, (batch, ctx), generator=g) for _ in range(2))
    opts = {k: torch.optim.Adam(m.parameters(), 1e-3) for k, m in arms.items()}
    times: dict[str, list[float]] = {k: [] for k in arms}
    for r in range(rounds + 1):  # round 0 warms up
        for k, m in arms.items():
            t0 = time.perf_counter()
            for _ in range(n):
                loss = task_loss(m(x), y)
                opts[k].zero_grad()
                loss.backward()
                opts[k].step()
            if r:
                times[k].append((time.perf_counter() - t0) / n)
    res = {"seconds_per_step": {k: statistics.median(v) for k, v in times.items()}, "rounds": rounds,
           "steps_per_round": n, "batch": batch, "context": ctx, "threads": 1}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1))
    return res


def measure_latency(recipe: dict[str, Any], results: dict[str, dict[str, Any]], out: Path) -> dict[str, Any]:
    """onnxruntime latency (one thread, interleaved) of seed 0 of every arm at the recipe's batches, full
    context; exported decomposed with a dynamic length. Cached in ``<out>/lm/latency.json`` per run id."""
    import onnxruntime as ort

    import quadexport as q
    from quadexport.bench.timing import TimingConfig, TimingUnit, time_sessions

    lm = recipe.get("lm", {})
    seed = recipe["run"]["seeds"][0]
    path = out / "lm" / "latency.json"
    runs = {a["label"]: results[f"{slug(a['label'])}-s{seed}"]["run_dir"] for a in recipe["models"]}
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("runs") == runs:
            return cached
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
    sessions, ctx = {}, 64
    for label, run in runs.items():
        model = q.load(run)
        ctx = model.token_input.context
        f = q.export(model, out / "lm" / "onnx" / f"{slug(label)}.onnx", mode="decomposed", dynamic_size=True)
        sessions[label] = ort.InferenceSession(str(f), so, providers=["CPUExecutionProvider"])
    res: dict[str, Any] = {"runs": runs, "context": ctx, "threads": 1, "batches": {}}
    res["loadavg"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    for batch in lm.get("latency_batches", [1, 64]):
        import numpy as np

        x = np.random.default_rng(0).integers(0, 256, (int(batch), ctx), dtype=np.int64)
        units = [TimingUnit(k, (lambda s=s: s.run(None, {"input": x}))) for k, s in sessions.items()]
        stats = time_sessions(units, TimingConfig(min_seconds=float(lm.get("latency_seconds", 2.0)),
                                                  batch=int(batch)))
        res["batches"][str(batch)] = {k: {"p50_ms": v.p50_ms, "mean_ms": v.mean_ms, "runs": v.runs}
                                      for k, v in stats.items()}
    path.write_text(json.dumps(res, indent=1))
    return res


def run_lm(recipe: dict[str, Any], out: Path, jobs: int = 2, threads: int = 1) -> dict[str, Any]:
    """Run the study (reusing what is done) and return ``{"steptime", "results", "latency", "wall_s"}``."""
    t0 = time.perf_counter()
    base = next(a["label"] for a in recipe["models"] if a.get("role") == "baseline")
    st = measure_step_times(recipe, out / EXP / "steptime.json")
    sec = st["seconds_per_step"]
    log.info("  step time (1 thread): %s", ", ".join(f"{k} {1e3 * v:.0f} ms" for k, v in sec.items()))
    ratios = {k: sec[base] / v for k, v in sec.items()}
    tasks = lm_tasks(recipe, out)
    if equal_time_mode(recipe) == "runs":
        tasks += lm_tasks(recipe, out, ratios)
    results = run_tasks(tasks, jobs, threads)
    latency = measure_latency(recipe, results, out)
    return {"steptime": st, "ratios": ratios, "results": results, "latency": latency,
            "wall_s": time.perf_counter() - t0}
