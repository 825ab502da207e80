"""Run experiment tasks: one training run (or the expressivity demos) per task, cached on disk, in a process pool.

Every task writes one JSON result record to ``task.result_path``; a record made with the same config is reused, so
an interrupted experiment resumes. Each run is a process with ``torch.set_num_threads(threads)``; ``jobs`` run in
parallel, longest first (by :func:`cost`).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from quadexport.experiments.expressivity import run_expressivity
from quadexport.experiments.recipes import SCHEMA_VERSION

log = logging.getLogger(__name__)


@dataclass
class Task:
    """One unit of work of an experiment.

    Attributes:
        kind: ``"train"`` (a :class:`~quadexport.training.loop.TrainConfig` run) or ``"expressivity"``.
        exp: the experiment the result belongs to.
        key: unique name of the run (its result file is ``<key>.json``).
        result_path: where the JSON result record goes.
        config: TrainConfig fields (``train``).
        labels: what the run stands for in the aggregation (init, seed, dataset, ...), stored in the record.
        cost: relative cost, for longest-first scheduling.
        collapse_acc: final test accuracy at or below which a run counts as collapsed.
        init_norms: also record ‖W_g‖, ‖W_b‖ of the freshly built model.
        budget, params: the expressivity budget and its parameters (``expressivity``).
    """
    kind: str
    exp: str
    key: str
    result_path: str
    config: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, Any] = field(default_factory=dict)
    cost: float = 0.0
    collapse_acc: float = 0.15
    init_norms: bool = False
    budget: str | None = None
    params: dict[str, Any] | None = None


def train_task(exp: str, key: str, out: Path, config: dict[str, Any], labels: dict[str, Any], cost: float,
               collapse_acc: float = 0.15, init_norms: bool = False) -> Task:
    """A training task whose run dir is ``<out>/rundirs/<exp>/<key>`` and record ``<out>/runs/<exp>/<key>.json``."""
    config = dict(config, out=str(out / "rundirs" / exp / key))
    return Task("train", exp, key, str(out / "runs" / exp / f"{key}.json"), config, dict(labels), cost,
                collapse_acc, init_norms)


def classify(result: dict[str, Any], collapse_acc: float = 0.15, num_classes: int = 10) -> tuple[bool, list[str]]:
    """Collapse rule of the trainability experiment.

    A run collapsed if any of these holds (the list of reasons is returned):

    - ``diverged``: ``TrainingDiverged`` (NaN/Inf loss or weights; with ``max_rollbacks=0`` there is no rescue);
    - ``nonfinite``: training stopped on non-finite state the NaN guard does not see (BN running stats, test
      loss; train.py then fails to write its checkpoint/metrics);
    - ``nan_steps``: some optimizer steps were skipped for a non-finite loss;
    - ``loss_diverged``: after ≥ 2 epochs, the last epoch's mean training loss is above ln(classes) (worse than a
      uniform guess);
    - ``chance``: final test accuracy ≤ ``collapse_acc``.
    """
    reasons = []
    if result["status"] == "diverged":
        reasons.append("diverged")
    elif result["status"] == "nonfinite":
        reasons.append("nonfinite")
    if result.get("skipped_steps", 0) > 0:
        reasons.append("nan_steps")
    if result["status"] == "ok":
        last = result["epochs"][-1]
        if len(result["epochs"]) >= 2 and (not math.isfinite(last["train_loss"])
                                           or last["train_loss"] > math.log(num_classes)):
            reasons.append("loss_diverged")
        if result["final_acc"] is None or result["final_acc"] <= collapse_acc:
            reasons.append("chance")
    return bool(reasons), reasons


def _init_norms(cfg) -> dict[str, float]:
    """‖W_g‖, ‖W_b‖ of the freshly built model of ``cfg`` (epoch 0)."""
    from quadexport.data import load_dataset
    from quadexport.training.relinear import quadratic_norms
    from quadexport.training.loop import build_model

    data = load_dataset(cfg.dataset, data_dir=cfg.data_dir, train_subset=10, test_subset=1, seed=cfg.seed)
    return quadratic_norms(build_model(cfg, data.num_classes, data.input_shape))


@contextlib.contextmanager
def _capture_training_output(buf: io.StringIO):
    """Send what training prints or logs (epoch lines, rollbacks) to ``buf`` instead of the console."""
    handler = logging.StreamHandler(buf)
    train_log = logging.getLogger("quadexport.training.loop")
    old = (train_log.level, train_log.propagate)
    train_log.addHandler(handler)
    train_log.setLevel(logging.INFO)
    train_log.propagate = False
    try:
        with contextlib.redirect_stdout(buf):
            yield
    finally:
        train_log.removeHandler(handler)
        train_log.setLevel(old[0])
        train_log.propagate = old[1]


def _train_guarded(cfg, buf: io.StringIO) -> tuple[str, str | None]:
    """Train ``cfg``; a divergence is returned as ``(status, error)``, never raised."""
    from quadexport.runs.checkpoint import CheckpointError
    from quadexport.training.loop import TrainingDiverged, train

    try:
        with _capture_training_output(buf):  # no curves.png per run: the report draws its own figures
            train(cfg, progress=False, plot=False)
    except TrainingDiverged as e:
        return "diverged", str(e)
    except (CheckpointError, ValueError) as e:
        # train.py checks parameters for NaN/Inf, not BN buffers or the test loss: a blow-up there surfaces as a
        # refused checkpoint or a metrics.json with NaN. Anything else is a real error.
        msg = str(e)
        if "NaN/Inf" not in msg and "not JSON compliant" not in msg:
            raise
        return "nonfinite", msg
    return "ok", None


def run_train(task: Task) -> dict[str, Any]:
    """Train one configuration (``task.config``: TrainConfig fields) and return its result record.

    Divergence is caught and recorded, never raised. The run dir is wiped first, so a record never mixes runs.
    """
    import torch

    from quadexport.training.loop import TrainConfig

    cfg = TrainConfig(**copy.deepcopy(task.config))
    run_dir = Path(cfg.out)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    t0, c0 = time.perf_counter(), time.process_time()
    torch.manual_seed(cfg.seed)
    status, error = _train_guarded(cfg, buf)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    metrics_path = run_dir / "metrics.json"
    epochs = json.loads(metrics_path.read_text())["epochs"] if metrics_path.exists() else []
    text = buf.getvalue()
    if run_dir.exists():
        (run_dir / "train.log").write_text(text + (f"\n{status}: {error}\n" if error else ""))
    result = {
        "schema": SCHEMA_VERSION, "exp": task.exp, "key": task.key, "labels": task.labels,
        "config": cfg.to_dict(), "status": status, "error": error, "epochs": epochs,
        "epochs_done": len(epochs), "final_acc": epochs[-1]["test_acc"] if status == "ok" and epochs else None,
        "skipped_steps": int(sum(e.get("skipped_steps", 0) for e in epochs)),
        "rollbacks": text.count("rolled back"), "init_norms": _init_norms(cfg) if task.init_norms else None,
        "wall_s": wall, "cpu_s": cpu, "run_dir": str(run_dir),
    }
    classes = 256 if epochs and "val_bpb" in epochs[-1] else 10  # a byte-level language model: 256 next bytes
    result["collapsed"], result["collapse_reasons"] = classify(result, task.collapse_acc, classes)
    return result


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def _dispatch(task: Task) -> dict[str, Any]:
    if task.kind == "train":
        res = run_train(task)
    elif task.kind == "expressivity":
        res = run_expressivity(task.budget)
    else:
        raise ValueError(f"unknown task kind {task.kind!r}")
    Path(task.result_path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(task.result_path + ".tmp")
    tmp.write_text(json.dumps(res, indent=1))
    os.replace(tmp, task.result_path)
    return res


def cached(task: Task) -> dict[str, Any] | None:
    """The stored result of ``task`` if it exists and was made with the same config."""
    p = Path(task.result_path)
    if not p.exists():
        return None
    try:
        res = json.loads(p.read_text())
    except json.JSONDecodeError:
        return None
    if res.get("schema") != SCHEMA_VERSION:
        return None
    if task.kind == "train":
        from quadexport.training.loop import TrainConfig

        if res.get("config") != TrainConfig(**copy.deepcopy(task.config)).to_dict():
            return None
    elif res.get("params") != task.params:
        return None
    return res


def _todo(tasks: list[Task], out: dict[str, dict[str, Any]]) -> list[Task]:
    """The tasks without a cached result (their records go into ``out``), one per key, longest first."""
    uniq: dict[str, Task] = {}
    for t in tasks:
        if t.key in out or t.key in uniq:
            continue
        res = cached(t)
        if res is not None:
            out[t.key] = res
        else:
            uniq[t.key] = t
    return sorted(uniq.values(), key=lambda t: -t.cost)


def _describe(res: dict[str, Any]) -> str:
    if "final_acc" not in res:
        return ""
    acc = res["final_acc"]
    return (f"acc {100 * acc:.1f}%" if acc is not None else res["status"]) + \
        (f" COLLAPSED ({','.join(res['collapse_reasons'])})" if res.get("collapsed") else "")


def run_tasks(tasks: list[Task], jobs: int = 2, threads: int = 1) -> dict[str, dict[str, Any]]:
    """Run tasks (cached ones are reused), longest first, ``jobs`` at a time; returns ``{key: result}``."""
    out: dict[str, dict[str, Any]] = {}
    todo = _todo(tasks, out)
    if todo:
        log.info("  %d run(s) to do, %d cached; %d in parallel, %d thread(s) each", len(todo), len(out),
                 min(jobs, len(todo)), threads)
    pool = None
    if jobs <= 1 or len(todo) <= 1:
        _worker_init(threads)
        it: Iterable[dict[str, Any]] = map(_dispatch, todo)
    else:
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(min(jobs, len(todo)), initializer=_worker_init, initargs=(threads,))
        it = pool.imap_unordered(_dispatch, todo)
    try:
        for n, res in enumerate(it, 1):
            out[res["key"]] = res
            log.info("  [%d/%d] %s: %s %.0f CPU-s", n, len(todo), res["key"], _describe(res), res.get("cpu_s", 0))
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return out


@functools.lru_cache(maxsize=None)
def macs28(model: str, neuron: str) -> int:
    """MACs of the zoo model at 1×28×28."""
    from quadexport.zoo import count_macs
    from quadexport.transforms import create_model

    return count_macs(create_model(model, neuron=neuron, in_channels=1), (1, 28, 28))


def cost(model: str, neuron: str, n_train: int, n_test: int, epochs: int) -> float:
    """Relative cost of a run (MACs × samples), for longest-first scheduling."""
    return macs28(model, neuron) * epochs * (3 * n_train + n_test) / 1e12
