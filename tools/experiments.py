#!/usr/bin/env python3
"""Reproduce the paper's claims (issue #6): trainability (ReLinear), accuracy, expressivity, warm start.

One entry point, one subcommand per experiment::

    .venv/bin/python tools/experiments.py trainability [--budget small|tiny] [--jobs 2]
    .venv/bin/python tools/experiments.py accuracy
    .venv/bin/python tools/experiments.py expressivity
    .venv/bin/python tools/experiments.py warmstart
    .venv/bin/python tools/experiments.py all        # everything above, then `report`
    .venv/bin/python tools/experiments.py report     # regenerate docs/results.md + docs/img/*.png from the JSON

Recipes: ``models/exp-trainability.toml`` and ``models/exp-accuracy.toml`` (``[budget.<name>]`` tables override the
defaults, which are the ``small`` budget). Expressivity sizes live in :data:`EXPRESSIVITY` below.

Raw results go to ``reports/experiments/<budget>/`` (git-ignored): one JSON per training run under ``runs/<exp>/``
(reused when its config is unchanged, so an interrupted command resumes), the run dirs under ``rundirs/<exp>/``,
and one aggregated ``<exp>.json`` per experiment. ``report`` reads only the aggregated JSON files.

Compute: every training run is one process with ``torch.set_num_threads(1)``; ``--jobs`` runs (default 2) go in
parallel. Each run records its wall and CPU seconds; the report states the totals.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import io
import json
import math
import os
import shutil
import sys
import time
import tomllib
from pathlib import Path
from typing import Any, Callable, Iterable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RECIPES = {"trainability": ROOT / "models" / "exp-trainability.toml",
           "accuracy": ROOT / "models" / "exp-accuracy.toml"}
BUDGETS = ("small", "tiny")
EXPERIMENTS = ("trainability", "accuracy", "expressivity", "warmstart")
SCHEMA_VERSION = 1

# Expressivity demos (tiny 2-D problems; full-batch Adam).
EXPRESSIVITY: dict[str, dict[str, Any]] = {
    "small": {"n_train": 400, "n_test": 2000, "cls_steps": 1000, "cls_lr": 0.05, "cls_seeds": [0, 1, 2],
              "reg_train": 1024, "reg_test": 4096, "reg_steps": 2000, "reg_lr": 1e-2, "reg_seeds": [0, 1, 2],
              "quad_widths": [1, 2, 3, 4, 6, 8], "functions": ["radial", "product"]},
    "tiny": {"n_train": 200, "n_test": 400, "cls_steps": 400, "cls_lr": 0.05, "cls_seeds": [0],
             "reg_train": 256, "reg_test": 256, "reg_steps": 150, "reg_lr": 1e-2, "reg_seeds": [0],
             "quad_widths": [2], "functions": ["radial", "product"]},
}


# ------------------------------------------------------------------------------------------------- recipes, budgets


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated with ``over``: tables merge recursively, anything else (lists included) is replaced."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_recipe(name: str, budget: str, path: str | Path | None = None) -> dict[str, Any]:
    """Recipe ``name`` (trainability/accuracy) with the ``[budget.<budget>]`` overrides applied."""
    if budget not in BUDGETS:
        raise ValueError(f"budget must be one of {BUDGETS}, got {budget!r}")
    path = Path(path or RECIPES[name])
    recipe = tomllib.loads(path.read_text())
    overrides = recipe.pop("budget", {})
    if budget != "small":
        recipe = deep_merge(recipe, overrides.get(budget, {}))
    recipe["_path"] = str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    recipe["_budget"] = budget
    return recipe


# -------------------------------------------------------------------------------------------------------- statistics


def mean_std(values: Iterable[float | None]) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value) of the non-None values."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(xs)
    if n == 0:
        return {"n": 0, "mean": None, "std": None}
    mu = sum(xs) / n
    sd = math.sqrt(sum((x - mu) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    return {"n": n, "mean": mu, "std": sd}


def fmt_ms(stat: dict[str, Any], scale: float = 100.0, digits: int = 1) -> str:
    """``mean ± std`` (scaled, e.g. to percent), ``—`` when there are no values."""
    if not stat or stat.get("mean") is None:
        return "—"
    if stat["n"] == 1:
        return f"{stat['mean'] * scale:.{digits}f}"
    return f"{stat['mean'] * scale:.{digits}f} ± {stat['std'] * scale:.{digits}f}"


# ---------------------------------------------------------------------------------------------------- one train run


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
    from quadexport.relinear import quadratic_norms
    from quadexport.train import build_model

    data = load_dataset(cfg.dataset, data_dir=cfg.data_dir, train_subset=10, test_subset=1, seed=cfg.seed)
    return quadratic_norms(build_model(cfg, data.num_classes, data.input_shape))


def run_train(task: dict[str, Any]) -> dict[str, Any]:
    """Train one configuration (``task["config"]``: TrainConfig fields) and return its result record.

    Divergence is caught and recorded, never raised. The run dir is wiped first, so a record never mixes runs.
    """
    import torch

    from quadexport.checkpoint import CheckpointError
    from quadexport.train import TrainConfig, TrainingDiverged, train

    cfg = TrainConfig(**copy.deepcopy(task["config"]))
    run_dir = Path(cfg.out)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log = io.StringIO()
    status, error = "ok", None
    t0, c0 = time.perf_counter(), time.process_time()
    torch.manual_seed(cfg.seed)
    try:
        with contextlib.redirect_stdout(log):  # no curves.png per run: the report draws its own figures
            train(cfg, progress=False, plot=False)
    except TrainingDiverged as e:
        status, error = "diverged", str(e)
    except (CheckpointError, ValueError) as e:
        # train.py checks parameters for NaN/Inf, not BN buffers or the test loss: a blow-up there surfaces as a
        # refused checkpoint or a metrics.json with NaN. Anything else is a real error.
        msg = str(e)
        if "NaN/Inf" not in msg and "not JSON compliant" not in msg:
            raise
        status, error = "nonfinite", msg
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    metrics_path = run_dir / "metrics.json"
    epochs = json.loads(metrics_path.read_text())["epochs"] if metrics_path.exists() else []
    text = log.getvalue()
    if run_dir.exists():
        (run_dir / "train.log").write_text(text + (f"\n{status}: {error}\n" if error else ""))
    init = _init_norms(cfg) if task.get("init_norms") else None
    result = {
        "schema": SCHEMA_VERSION, "exp": task["exp"], "key": task["key"], "labels": task.get("labels", {}),
        "config": cfg.to_dict(), "status": status, "error": error, "epochs": epochs,
        "epochs_done": len(epochs), "final_acc": epochs[-1]["test_acc"] if status == "ok" and epochs else None,
        "skipped_steps": int(sum(e.get("skipped_steps", 0) for e in epochs)),
        "rollbacks": text.count("rolled back"), "init_norms": init, "wall_s": wall, "cpu_s": cpu,
        "run_dir": str(run_dir),
    }
    result["collapsed"], result["collapse_reasons"] = classify(result, task.get("collapse_acc", 0.15))
    return result


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def _dispatch(task: dict[str, Any]) -> dict[str, Any]:
    if task["kind"] == "train":
        res = run_train(task)
    elif task["kind"] == "expressivity":
        res = run_expressivity(task["budget"])
    else:
        raise ValueError(f"unknown task kind {task['kind']!r}")
    Path(task["result_path"]).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(task["result_path"] + ".tmp")
    tmp.write_text(json.dumps(res, indent=1))
    os.replace(tmp, task["result_path"])
    return res


def cached(task: dict[str, Any]) -> dict[str, Any] | None:
    """The stored result of ``task`` if it exists and was made with the same config."""
    p = Path(task["result_path"])
    if not p.exists():
        return None
    try:
        res = json.loads(p.read_text())
    except json.JSONDecodeError:
        return None
    if res.get("schema") != SCHEMA_VERSION:
        return None
    if task["kind"] == "train":
        from quadexport.train import TrainConfig

        if res.get("config") != TrainConfig(**copy.deepcopy(task["config"])).to_dict():
            return None
    elif res.get("params") != task.get("params"):
        return None
    return res


def run_tasks(tasks: list[dict[str, Any]], jobs: int = 2, threads: int = 1, log: Callable[[str], None] = print
              ) -> dict[str, dict[str, Any]]:
    """Run tasks (cached ones are reused), longest first, ``jobs`` at a time; returns ``{key: result}``."""
    out: dict[str, dict[str, Any]] = {}
    todo = []
    for t in tasks:
        if t["key"] in out:
            continue
        res = cached(t)
        if res is not None:
            out[t["key"]] = res
        else:
            todo.append(t)
    uniq: dict[str, dict[str, Any]] = {}
    for t in todo:
        uniq.setdefault(t["key"], t)
    todo = list(uniq.values())
    todo.sort(key=lambda t: -t.get("cost", 0.0))
    if todo:
        log(f"  {len(todo)} run(s) to do, {len(out)} cached; {min(jobs, len(todo))} in parallel, "
            f"{threads} thread(s) each")
    n = 0
    if jobs <= 1 or len(todo) <= 1:
        _worker_init(threads)
        it: Iterable[dict[str, Any]] = map(_dispatch, todo)
        pool = None
    else:
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(min(jobs, len(todo)), initializer=_worker_init, initargs=(threads,))
        it = pool.imap_unordered(_dispatch, todo)
    try:
        for res in it:
            n += 1
            out[res["key"]] = res
            extra = ""
            if "final_acc" in res:
                acc = res["final_acc"]
                extra = (f"acc {100 * acc:.1f}%" if acc is not None else res["status"]) + \
                        (f" COLLAPSED ({','.join(res['collapse_reasons'])})" if res.get("collapsed") else "")
            log(f"  [{n}/{len(todo)}] {res['key']}: {extra} {res.get('cpu_s', 0):.0f} CPU-s")
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return out


@functools.lru_cache(maxsize=None)
def _macs28(model: str, neuron: str) -> int:
    from quadexport.zoo import count_macs, create_model

    return count_macs(create_model(model, neuron=neuron, in_channels=1), (1, 28, 28))


def _cost(model: str, neuron: str, n_train: int, n_test: int, epochs: int) -> float:
    """Relative cost of a run (MACs × samples), for longest-first scheduling."""
    return _macs28(model, neuron) * epochs * (3 * n_train + n_test) / 1e12


# --------------------------------------------------------------------------------------------- 1. trainability


def trainability_cells(recipe: dict[str, Any]) -> list[dict[str, Any]]:
    """The (init, regulariser, lr) cells of the grid, each with its seeds and ReLinear config (aliases resolved)."""
    g, regs = recipe["grid"], recipe["regularisers"]
    key_cells = {tuple(c) for c in g["key_cells"]}
    cells = []
    for lr in g["lrs"]:
        for init in g["inits"]:
            for reg in g["regularisers"]:
                is_key = (init, reg) in key_cells
                if g.get("only_key") and not is_key:
                    continue
                spec = regs[reg]
                source = spec.get("alias", reg)
                rl = {k: v for k, v in regs[source].items() if k not in ("label", "alias")}
                rl["init"] = init
                cells.append({"init": init, "reg": reg, "reg_label": spec.get("label", reg), "lr": lr,
                              "key_cell": is_key, "alias_of": spec.get("alias"), "source_reg": source,
                              "relinear": rl, "seeds": list(g["key_seeds"] if is_key else g["seeds"])})
    return cells


def _tkey(init: str, reg: str, lr: float, seed: int, rescue: bool = False) -> str:
    return f"{init}_{reg}_lr{lr:g}_s{seed}" + ("_rescue" if rescue else "")


def trainability_tasks(recipe: dict[str, Any], out: Path, rescue_for: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Training tasks of the grid (aliased cells share the runs of their source), plus rescue reruns of the keys
    in ``rescue_for`` with ``max_rollbacks = grid.rescue_rollbacks``."""
    tasks = {}
    base = recipe["train"]
    cost = _cost(base["model"], base["neuron"], base.get("train_subset") or 60000, base.get("test_subset") or 10000,
                 base["epochs"])
    for cell in trainability_cells(recipe):
        for seed in cell["seeds"]:
            key = _tkey(cell["init"], cell["source_reg"], cell["lr"], seed)
            tasks[key] = _train_task("trainability", key, out, dict(base, lr=cell["lr"], seed=seed,
                                                                      relinear=cell["relinear"]),
                                     {"init": cell["init"], "reg": cell["source_reg"], "lr": cell["lr"],
                                      "seed": seed}, cost, recipe["grid"]["collapse_acc"], init_norms=True)
    rescue = recipe["grid"].get("rescue_rollbacks", 0)
    for key in rescue_for:
        if rescue and key in tasks:
            t = copy.deepcopy(tasks[key])
            rk = key + "_rescue"
            t.update(key=rk, result_path=str(out / "runs" / "trainability" / f"{rk}.json"))
            t["config"].update(max_rollbacks=rescue, out=str(out / "rundirs" / "trainability" / rk))
            t["labels"]["rescue"] = True
            t["init_norms"] = False
            tasks[rk] = t
    return list(tasks.values())


def _train_task(exp: str, key: str, out: Path, config: dict[str, Any], labels: dict[str, Any], cost: float,
                collapse_acc: float = 0.15, init_norms: bool = False) -> dict[str, Any]:
    config = dict(config, out=str(out / "rundirs" / exp / key))
    return {"kind": "train", "exp": exp, "key": key, "config": config, "labels": labels, "cost": cost,
            "collapse_acc": collapse_acc, "init_norms": init_norms,
            "result_path": str(out / "runs" / exp / f"{key}.json")}


def aggregate_trainability(recipe: dict[str, Any], results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per-cell collapse rate, accuracy and weight norms (mean ± std over seeds), plus rescue outcomes."""
    cells = []
    for cell in trainability_cells(recipe):
        runs = [results[k] for k in (_tkey(cell["init"], cell["source_reg"], cell["lr"], s) for s in cell["seeds"])
                if k in results]
        n_ep = recipe["train"]["epochs"]
        per_epoch = {}
        for name in ("norm_wg", "norm_wb", "test_acc", "train_loss"):
            per_epoch[name] = [mean_std(r["epochs"][e][name] if len(r["epochs"]) > e else None for r in runs)
                               for e in range(n_ep)]
        init_norms = {k: mean_std((r["init_norms"] or {}).get(k) for r in runs) for k in ("norm_wg", "norm_wb")}
        rescued = [results.get(_tkey(cell["init"], cell["source_reg"], cell["lr"], s, rescue=True))
                   for s in cell["seeds"]]
        rescued = [r for r in rescued if r is not None]
        reasons: dict[str, int] = {}
        for r in runs:
            for why in r["collapse_reasons"]:
                reasons[why] = reasons.get(why, 0) + 1
        blowup_loss = recipe["grid"].get("blowup_test_loss", 1e3)
        collapse_acc = recipe["grid"]["collapse_acc"]
        max_losses = [max((e["test_loss"] for e in r["epochs"]), default=None) for r in runs]
        cells.append({
            **{k: cell[k] for k in ("init", "reg", "reg_label", "lr", "key_cell", "alias_of", "relinear")},
            "seeds": [r["labels"]["seed"] for r in runs], "n": len(runs),
            "collapsed": sum(r["collapsed"] for r in runs),
            "collapse_rate": (sum(r["collapsed"] for r in runs) / len(runs)) if runs else None,
            "collapse_reasons": reasons,
            "final_acc": mean_std(r["final_acc"] for r in runs),
            # instability short of collapse: test loss blew up (exploding logits / BN statistics) at some epoch, or
            # test accuracy dipped to chance at an epoch before the last
            "blowups": sum(m is not None and m > blowup_loss for m in max_losses),
            "dips": sum(any(e["test_acc"] <= collapse_acc for e in r["epochs"][:-1]) for r in runs),
            "max_test_loss": sorted(m for m in max_losses if m is not None),
            "final_acc_all": mean_std((r["final_acc"] if r["final_acc"] is not None else 0.1) for r in runs),
            "per_epoch": per_epoch, "init_norms": init_norms,
            "rescue": {"n": len(rescued), "rescued": sum(not r["collapsed"] for r in rescued),
                       "rollbacks": [r["rollbacks"] for r in rescued],
                       "final_acc": mean_std(r["final_acc"] for r in rescued)} if rescued else None,
        })
    key = [c for c in cells if c["key_cell"]]
    return {"cells": cells, "key": key}


# ------------------------------------------------------------------------------------------------- 2. accuracy


def _models(recipe: dict[str, Any]) -> list[dict[str, Any]]:
    labels = recipe.get("run", {}).get("labels") or []
    return [m for m in recipe["models"] if not labels or m["label"] in labels]


def _akey(dataset: str, model: str, neuron: str, seed: int, relinear: dict[str, Any] | None = None,
          suffix: str = "") -> str:
    rl = "" if not relinear or relinear == {} else "-" + "-".join(f"{v}" for v in relinear.values())
    return f"{dataset}_{model}-{neuron}{rl}{suffix}_s{seed}"


def _acc_config(recipe: dict[str, Any], ds: dict[str, Any], m: dict[str, Any], seed: int) -> dict[str, Any]:
    rl = {"mode": "none"} if m["neuron"] == "relu" else deep_merge(recipe.get("relinear", {}), m.get("relinear", {}))
    data = {k: v for k, v in ds.items() if k != "groups"}
    return dict(recipe["train"], **data, model=m["model"], neuron=m["neuron"], seed=seed, relinear=rl)


def accuracy_tasks(recipe: dict[str, Any], out: Path) -> list[dict[str, Any]]:
    """One task per (dataset, model, seed); a model in several groups is trained once."""
    tasks = {}
    for ds in recipe["datasets"]:
        for m in _models(recipe):
            if m["group"] not in ds["groups"]:
                continue
            for seed in recipe["run"]["seeds"]:
                cfg = _acc_config(recipe, ds, m, seed)
                key = _akey(ds["dataset"], m["model"], m["neuron"], seed, m.get("relinear"))
                cost = _cost(m["model"], m["neuron"], ds.get("train_subset") or 60000,
                             ds.get("test_subset") or 10000, cfg["epochs"])
                tasks[key] = _train_task("accuracy", key, out, cfg, {"dataset": ds["dataset"], "label": m["label"],
                                                                      "seed": seed}, cost)
    return list(tasks.values())


def aggregate_accuracy(recipe: dict[str, Any], results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per dataset and group: each model's params, MACs (28×28 or the dataset's size) and accuracy mean ± std."""
    from quadexport.zoo import count_macs, count_params, create_model

    shapes = {"digits": (1, 8, 8)}
    rows = []
    for ds in recipe["datasets"]:
        shape = shapes.get(ds["dataset"], (1, 28, 28))
        for m in _models(recipe):
            if m["group"] not in ds["groups"]:
                continue
            runs = [results.get(_akey(ds["dataset"], m["model"], m["neuron"], s, m.get("relinear")))
                    for s in recipe["run"]["seeds"]]
            runs = [r for r in runs if r is not None]
            net = create_model(m["model"], neuron=m["neuron"], in_channels=1, input_size=shape[1:])
            rows.append({"dataset": ds["dataset"], "group": m["group"], "label": m["label"], "model": m["model"],
                         "neuron": m["neuron"], "role": m["role"], "relinear": m.get("relinear"),
                         "params": count_params(net), "macs": count_macs(net, shape),
                         "macs_28": count_macs(net, (1, 28, 28)),
                         "seeds": [r["labels"]["seed"] for r in runs],
                         "acc": mean_std(r["final_acc"] for r in runs),
                         "acc_values": [r["final_acc"] for r in runs],
                         "failed": sum(r["status"] != "ok" for r in runs),
                         "train_s": mean_std(r["wall_s"] for r in runs)})
    # paired deltas (same seed = same data subset and init seed): quadratic minus twin / MAC-matched
    deltas = []
    for ds in recipe["datasets"]:
        for group in ds["groups"]:
            grp = [r for r in rows if r["dataset"] == ds["dataset"] and r["group"] == group]
            quad = next((r for r in grp if r["role"] == "quadratic"), None)
            if quad is None:
                continue
            for other in grp:
                if other["role"] not in ("twin", "mac"):
                    continue
                d = [q - o for q, o, sq, so in _paired(quad, other)]
                deltas.append({"dataset": ds["dataset"], "group": group, "quadratic": quad["label"],
                               "baseline": other["label"], "role": other["role"], "delta": mean_std(d),
                               "wins": sum(x > 0 for x in d), "n": len(d)})
    return {"rows": rows, "deltas": deltas}


def _paired(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[float, float, int, int]]:
    bm = dict(zip(b["seeds"], b["acc_values"]))
    return [(x, bm[s], s, s) for s, x in zip(a["seeds"], a["acc_values"])
            if s in bm and x is not None and bm[s] is not None]


# ------------------------------------------------------------------------------------------------- 4. warm start


def warmstart_tasks(recipe: dict[str, Any], out: Path, phase: int) -> list[dict[str, Any]]:
    """Phase 1: the ReLU twins (shared with the accuracy experiment), the scratch quadratic runs, and the twin
    trained ``twin_epochs_factor``× longer. Phase 2: the warm-started quadratic runs (need the phase-1 twins)."""
    w = recipe["warmstart"]
    ds = next((d for d in recipe["datasets"] if d["dataset"] == w["dataset"]), None)
    if ds is None:
        raise ValueError(f"warmstart dataset {w['dataset']!r} is not among the accuracy datasets")
    quad = {"model": w["model"], "neuron": w["neuron"]}
    twin = {"model": w["model"], "neuron": "relu"}
    tasks = []
    n_tr, n_te, ep = ds.get("train_subset") or 60000, ds.get("test_subset") or 10000, recipe["train"]["epochs"]
    cost = {m["neuron"]: _cost(m["model"], m["neuron"], n_tr, n_te, ep) for m in (quad, twin)}
    for seed in w.get("seeds", recipe["run"]["seeds"]):
        tw_key = _akey(ds["dataset"], twin["model"], "relu", seed)
        if phase == 1:
            for m in (quad, twin):
                key = _akey(ds["dataset"], m["model"], m["neuron"], seed)
                tasks.append(_train_task("accuracy", key, out, _acc_config(recipe, ds, m, seed),
                                         {"dataset": ds["dataset"], "label": f"{m['model']}-{m['neuron']}",
                                          "seed": seed}, cost[m["neuron"]]))
            long_cfg = _acc_config(recipe, ds, twin, seed)
            long_cfg["epochs"] = int(w.get("twin_epochs_factor", 2)) * long_cfg["epochs"]
            key = _akey(ds["dataset"], twin["model"], "relu", seed, suffix=f"-ep{long_cfg['epochs']}")
            tasks.append(_train_task("warmstart", key, out, long_cfg, {"dataset": ds["dataset"], "seed": seed,
                                                                      "variant": "twin_long"}, 2 * cost["relu"]))
        else:
            cfg = _acc_config(recipe, ds, quad, seed)
            cfg["warm_start"] = str(out / "rundirs" / "accuracy" / tw_key)
            key = _akey(ds["dataset"], quad["model"], quad["neuron"], seed, suffix="-warm")
            tasks.append(_train_task("warmstart", key, out, cfg, {"dataset": ds["dataset"], "seed": seed,
                                                                  "variant": "warm"}, cost[quad["neuron"]]))
    return tasks


def aggregate_warmstart(recipe: dict[str, Any], results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Final accuracy and epochs-to-target of scratch vs warm-started quadratic model and the ReLU twin.

    The target is the mean final accuracy of the scratch quadratic model; ``epochs_to_target`` is the first epoch
    whose test accuracy reaches it (per seed; ``None`` = never within the run).
    """
    w = recipe["warmstart"]
    seeds = w.get("seeds", recipe["run"]["seeds"])
    ds = w["dataset"]
    long_ep = int(w.get("twin_epochs_factor", 2)) * recipe["train"]["epochs"]
    variants = {
        "scratch": [results.get(_akey(ds, w["model"], w["neuron"], s)) for s in seeds],
        "warm": [results.get(_akey(ds, w["model"], w["neuron"], s, suffix="-warm")) for s in seeds],
        "twin": [results.get(_akey(ds, w["model"], "relu", s)) for s in seeds],
        "twin_long": [results.get(_akey(ds, w["model"], "relu", s, suffix=f"-ep{long_ep}")) for s in seeds],
    }
    target = mean_std(r["final_acc"] for r in variants["scratch"] if r)["mean"]
    out = {"target_acc": target, "dataset": ds, "twin_epochs": recipe["train"]["epochs"], "twin_long_epochs": long_ep,
           "variants": {}}
    for name, runs in variants.items():
        runs = [r for r in runs if r is not None]
        reach = []
        for r in runs:
            hit = next((e["epoch"] for e in r["epochs"] if target is not None and e["test_acc"] >= target), None)
            reach.append(hit)
        n_ep = max((len(r["epochs"]) for r in runs), default=0)
        out["variants"][name] = {
            "n": len(runs), "final_acc": mean_std(r["final_acc"] for r in runs),
            "epochs_to_target": reach,
            "curve": [mean_std(r["epochs"][e]["test_acc"] if len(r["epochs"]) > e else None for r in runs)
                      for e in range(n_ep)],
            "first_epoch_acc": mean_std(r["epochs"][0]["test_acc"] if r["epochs"] else None for r in runs),
        }
    return out


# ---------------------------------------------------------------------------------------------- 3. expressivity


def _xor_data(n: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]])
    labels = torch.tensor([1.0, 1.0, 0.0, 0.0])
    idx = torch.arange(n) % 4
    x = centers[idx] + 0.25 * torch.randn(n, 2, generator=g)
    return x, labels[idx]


def _disk_data(n: int, seed: int, radius: float = 1.0, margin: float = 0.05):
    import torch

    g = torch.Generator().manual_seed(seed)
    xs = []
    while sum(len(t) for t in xs) < n:
        x = (torch.rand(4 * n, 2, generator=g) * 2 - 1) * 1.6
        r = x.norm(dim=1)
        xs.append(x[(r - radius).abs() > margin])
    x = torch.cat(xs)[:n]
    return x, (x.norm(dim=1) < radius).float()


def train_neuron(kind: str, x, y, steps: int, lr: float, seed: int) -> dict[str, Any]:
    """Fit one neuron (``linear`` or the Fan ``quadratic`` neuron with ReLinear init) with a logistic loss."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from quadexport.layers import QuadLinear

    torch.manual_seed(seed)
    neuron = nn.Linear(2, 1) if kind == "linear" else QuadLinear(2, 1, neuron="fan")
    opt = torch.optim.Adam(neuron.parameters(), lr=lr)
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(neuron(x).squeeze(1), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    params = {n: p.detach().flatten().tolist() for n, p in neuron.named_parameters()}
    return {"neuron": neuron, "params": params, "loss": loss.item()}


def neuron_logit(kind: str, params: dict[str, list[float]], x):
    """Recompute a stored neuron's logit on ``x`` (N, 2) from its saved parameters (used by the plots)."""
    import numpy as np

    x = np.asarray(x, dtype=np.float64)

    def lin(prefix: str):
        return x @ np.asarray(params[f"{prefix}weight"]) + np.asarray(params.get(f"{prefix}bias", [0.0]))[0]

    if kind == "linear":
        return lin("")
    return lin("r.") * lin("g.") + (x * x) @ np.asarray(params["b.weight"]) + params.get("b.bias", [0.0])[0]


def _accuracy(neuron, x, y) -> float:
    import torch

    with torch.no_grad():
        return float(((neuron(x).squeeze(1) > 0).float() == y).float().mean())


def _regression_data(fn: str, n: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=g) * 2 - 1
    y = (x * x).sum(1) if fn == "radial" else x[:, 0] * x[:, 1]
    return x, y


def _relu_width_for(params: int) -> int:
    """Width of the ReLU MLP (2 → w → w → 1) whose parameter count is closest to ``params``."""
    from quadexport.zoo import count_params, create_model

    best = min(range(1, 200), key=lambda w: abs(count_params(create_model("mlp", neuron="relu", num_classes=1,
                                                                          in_channels=1, input_size=(1, 2),
                                                                          width=w)) - params))
    return best


def fit_regression(fn: str, neuron: str, width: int, p: dict[str, Any], seed: int) -> dict[str, Any]:
    """Fit f(x) (``radial`` ‖x‖² or ``product`` x1·x2 on [-1, 1]²) with the zoo MLP (2 → w → w → 1)."""
    import torch
    import torch.nn.functional as F

    from quadexport.zoo import count_params, create_model

    xtr, ytr = _regression_data(fn, p["reg_train"], 1000 + seed)
    xte, yte = _regression_data(fn, p["reg_test"], 5000 + seed)
    torch.manual_seed(seed)
    model = create_model("mlp", neuron=neuron, num_classes=1, in_channels=1, input_size=(1, 2), width=width)
    opt = torch.optim.Adam(model.parameters(), lr=p["reg_lr"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, p["reg_steps"])
    for _ in range(p["reg_steps"]):
        loss = F.mse_loss(model(xtr.view(-1, 1, 1, 2)).squeeze(1), ytr)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        test = float(F.mse_loss(model(xte.view(-1, 1, 1, 2)).squeeze(1), yte))
    return {"function": fn, "neuron": neuron, "width": width, "params": count_params(model), "seed": seed,
            "train_mse": loss.item(), "test_mse": test, "target_var": float(yte.var())}


def run_expressivity(budget: str) -> dict[str, Any]:
    """Single-neuron XOR/disk classification and equal-parameter MLP regression of ‖x‖² and x1·x2."""
    import torch

    p = EXPRESSIVITY[budget]
    t0, c0 = time.perf_counter(), time.process_time()
    cls = []
    for task, make in (("xor", _xor_data), ("disk", _disk_data)):
        for seed in p["cls_seeds"]:
            xtr, ytr = make(p["n_train"], 10 * seed)
            xte, yte = make(p["n_test"], 10 * seed + 1)
            for kind in ("linear", "quadratic"):
                fit = train_neuron(kind, xtr, ytr, p["cls_steps"], p["cls_lr"], seed)
                cls.append({"task": task, "kind": kind, "seed": seed, "train_acc": _accuracy(fit["neuron"], xtr, ytr),
                            "test_acc": _accuracy(fit["neuron"], xte, yte), "loss": fit["loss"],
                            "params": fit["params"], "n_params": sum(len(v) for v in fit["params"].values()),
                            "points": {"x": xtr.tolist(), "y": ytr.tolist()} if seed == p["cls_seeds"][0] else None})
    reg = []
    from quadexport.zoo import count_params, create_model

    for fn in p["functions"]:
        for w in p["quad_widths"]:
            qparams = count_params(create_model("mlp", neuron="fan", num_classes=1, in_channels=1,
                                                input_size=(1, 2), width=w))
            rw = _relu_width_for(qparams)
            for seed in p["reg_seeds"]:
                reg.append(fit_regression(fn, "fan", w, p, seed))
                reg.append(fit_regression(fn, "relu", rw, p, seed))
    del torch
    return {"schema": SCHEMA_VERSION, "exp": "expressivity", "key": "expressivity", "params": p,
            "classification": cls, "regression": reg, "wall_s": time.perf_counter() - t0,
            "cpu_s": time.process_time() - c0}


def aggregate_expressivity(res: dict[str, Any]) -> dict[str, Any]:
    cls = {}
    for r in res["classification"]:
        cls.setdefault(f"{r['task']}/{r['kind']}", []).append(r)
    cls_rows = [{"task": k.split("/")[0], "kind": k.split("/")[1], "n_params": v[0]["n_params"],
                 "train_acc": mean_std(r["train_acc"] for r in v), "test_acc": mean_std(r["test_acc"] for r in v)}
                for k, v in cls.items()]
    reg: dict[tuple, list] = {}
    for r in res["regression"]:
        reg.setdefault((r["function"], r["neuron"], r["width"]), []).append(r)
    reg_rows = []
    for (f, n, w), v in reg.items():
        vals = sorted(r["test_mse"] for r in v)
        mid = len(vals) // 2
        median = vals[mid] if len(vals) % 2 else 0.5 * (vals[mid - 1] + vals[mid])
        reg_rows.append({"function": f, "neuron": n, "width": w, "params": v[0]["params"],
                         "test_mse": mean_std(vals), "median_mse": median, "values": vals,
                         # a fit no better than half the target variance is stuck near predicting the mean
                         "stuck": sum(x > 0.5 * v[0]["target_var"] for x in vals), "target_var": v[0]["target_var"]})
    return {"classification": cls_rows, "regression": reg_rows}


# --------------------------------------------------------------------------------------------------- drivers


def _log(msg: str) -> None:
    print(msg, flush=True)


def _paths(out: Path) -> dict[str, Path]:
    return {e: out / f"{e}.json" for e in EXPERIMENTS}


def _write(path: Path, obj: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _envelope(exp: str, budget: str, recipe: dict[str, Any] | None, results: dict[str, dict[str, Any]],
              summary: dict[str, Any], wall: float, cmd: str) -> dict[str, Any]:
    runs = list(results.values())
    return {"schema": SCHEMA_VERSION, "exp": exp, "budget": budget, "recipe": recipe, "command": cmd,
            "summary": summary, "runs": runs, "n_runs": len(runs),
            "cpu_s": sum(r.get("cpu_s", 0.0) for r in runs), "run_wall_s": sum(r.get("wall_s", 0.0) for r in runs),
            "wall_s": wall, "torch_threads_per_run": 1, "cpu_count": os.cpu_count(),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S")}


def _cmd(exp: str, budget: str) -> str:
    return f".venv/bin/python tools/experiments.py {exp} --budget {budget}"


def _rescuable(r: dict[str, Any], key_cells: set[tuple[str, str]]) -> bool:
    """A collapsed key-cell run the NaN rollback guard could act on (it only sees NaN/Inf loss or weights)."""
    return (r["collapsed"] and not r["labels"].get("rescue") and (r["labels"]["init"], r["labels"]["reg"]) in key_cells
            and bool({"diverged", "nan_steps"} & set(r["collapse_reasons"])))


def cmd_trainability(args) -> dict[str, Any]:
    recipe = load_recipe("trainability", args.budget)
    out = Path(args.out)
    t0 = time.perf_counter()
    _log(f"== trainability ({args.budget}): {recipe['train']['model']} on {recipe['train']['dataset']}")
    results = run_tasks(trainability_tasks(recipe, out), args.jobs, args.threads, _log)
    key_cells = {tuple(c) for c in recipe["grid"]["key_cells"]}
    collapsed_keys = [k for k, r in results.items() if _rescuable(r, key_cells)]
    if collapsed_keys and recipe["grid"].get("rescue_rollbacks", 0):
        _log(f"  rescue: rerunning {len(collapsed_keys)} collapsed key-cell run(s) with "
             f"max_rollbacks={recipe['grid']['rescue_rollbacks']}")
        results.update(run_tasks(trainability_tasks(recipe, out, collapsed_keys), args.jobs, args.threads, _log))
    env = _envelope("trainability", args.budget, recipe, results, aggregate_trainability(recipe, results),
                    time.perf_counter() - t0, _cmd("trainability", args.budget))
    _write(_paths(out)["trainability"], env)
    return env


def cmd_accuracy(args) -> dict[str, Any]:
    recipe = load_recipe("accuracy", args.budget)
    out = Path(args.out)
    t0 = time.perf_counter()
    _log(f"== accuracy ({args.budget})")
    results = run_tasks(accuracy_tasks(recipe, out), args.jobs, args.threads, _log)
    env = _envelope("accuracy", args.budget, recipe, results, aggregate_accuracy(recipe, results),
                    time.perf_counter() - t0, _cmd("accuracy", args.budget))
    _write(_paths(out)["accuracy"], env)
    return env


def cmd_warmstart(args) -> dict[str, Any]:
    recipe = load_recipe("accuracy", args.budget)
    out = Path(args.out)
    t0 = time.perf_counter()
    _log(f"== warmstart ({args.budget})")
    results = run_tasks(warmstart_tasks(recipe, out, 1), args.jobs, args.threads, _log)
    results.update(run_tasks(warmstart_tasks(recipe, out, 2), args.jobs, args.threads, _log))
    own = {k: r for k, r in results.items() if r["exp"] == "warmstart"}
    env = _envelope("warmstart", args.budget, recipe, own, aggregate_warmstart(recipe, results),
                    time.perf_counter() - t0, _cmd("warmstart", args.budget))
    _write(_paths(out)["warmstart"], env)
    return env


def _expressivity_task(budget: str, out: Path) -> dict[str, Any]:
    # long single-process job with no dependencies: schedule it first so it overlaps the training runs
    return {"kind": "expressivity", "key": "expressivity", "budget": budget, "params": EXPRESSIVITY[budget],
            "cost": float("inf"), "result_path": str(out / "runs" / "expressivity" / "expressivity.json")}


def cmd_expressivity(args) -> dict[str, Any]:
    out = Path(args.out)
    t0 = time.perf_counter()
    _log(f"== expressivity ({args.budget})")
    res = run_tasks([_expressivity_task(args.budget, out)], 1, args.threads, _log)["expressivity"]
    env = _envelope("expressivity", args.budget, {"params": EXPRESSIVITY[args.budget]}, {"expressivity": res},
                    aggregate_expressivity(res), time.perf_counter() - t0, _cmd("expressivity", args.budget))
    env["raw"] = res
    _write(_paths(out)["expressivity"], env)
    return env


def cmd_all(args) -> None:
    """All experiments with one shared process pool (phase 1: every independent run, longest first; phase 2: the
    runs that depend on phase 1 — warm starts and rescues), then the aggregates and the report."""
    out = Path(args.out)
    t0 = time.perf_counter()
    tr, ac = load_recipe("trainability", args.budget), load_recipe("accuracy", args.budget)
    _log(f"== all ({args.budget}) -> {out}")
    phase1 = trainability_tasks(tr, out) + accuracy_tasks(ac, out) + warmstart_tasks(ac, out, 1)
    phase1.append(_expressivity_task(args.budget, out))
    res = run_tasks(phase1, args.jobs, args.threads, _log)
    key_cells = {tuple(c) for c in tr["grid"]["key_cells"]}
    collapsed = [k for k, r in res.items() if r.get("exp") == "trainability" and _rescuable(r, key_cells)]
    phase2 = warmstart_tasks(ac, out, 2)
    if tr["grid"].get("rescue_rollbacks", 0):
        phase2 += [t for t in trainability_tasks(tr, out, collapsed) if t["labels"].get("rescue")]
    res.update(run_tasks(phase2, args.jobs, args.threads, _log))
    wall = time.perf_counter() - t0
    by_exp = lambda e: {k: r for k, r in res.items() if r.get("exp") == e}  # noqa: E731
    p = _paths(out)
    _write(p["trainability"], _envelope("trainability", args.budget, tr, by_exp("trainability"),
                                        aggregate_trainability(tr, res), wall, _cmd("all", args.budget)))
    _write(p["accuracy"], _envelope("accuracy", args.budget, ac, by_exp("accuracy"), aggregate_accuracy(ac, res),
                                    wall, _cmd("all", args.budget)))
    _write(p["warmstart"], _envelope("warmstart", args.budget, ac, by_exp("warmstart"),
                                     aggregate_warmstart(ac, res), wall, _cmd("all", args.budget)))
    env = _envelope("expressivity", args.budget, {"params": EXPRESSIVITY[args.budget]},
                    {"expressivity": res["expressivity"]}, aggregate_expressivity(res["expressivity"]), wall,
                    _cmd("all", args.budget))
    env["raw"] = res["expressivity"]
    _write(p["expressivity"], env)
    _log(f"== all done in {wall / 60:.1f} min wall")
    cmd_report(args)


def reaggregate(out: Path) -> None:
    """Recompute every ``<exp>.json`` summary from the run records it holds (and the recipe stored with it), so
    ``report`` always reflects the current aggregation code without retraining; wall/CPU totals are kept."""
    p = _paths(out)
    envs = {e: json.loads(p[e].read_text()) for e in EXPERIMENTS if p[e].exists()}
    acc_runs = {r["key"]: r for r in envs.get("accuracy", {}).get("runs", [])}
    for e, env in envs.items():
        runs = {r["key"]: r for r in env["runs"]}
        if e == "trainability":
            env["summary"] = aggregate_trainability(env["recipe"], runs)
        elif e == "accuracy":
            env["summary"] = aggregate_accuracy(env["recipe"], runs)
        elif e == "warmstart":
            env["summary"] = aggregate_warmstart(env["recipe"], {**acc_runs, **runs})
        elif e == "expressivity":
            env["summary"] = aggregate_expressivity(env["raw"])
        _write(p[e], env)


def cmd_report(args) -> None:
    from report_experiments import render  # tools/report_experiments.py

    reaggregate(Path(args.out))
    docs = Path(args.docs) if args.docs else (ROOT / "docs" if args.budget == "small" else Path(args.out) / "docs")
    path = render(Path(args.out), docs)
    _log(f"== report: {path}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/experiments.py", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=[*EXPERIMENTS, "all", "report"])
    p.add_argument("--budget", choices=BUDGETS, default="small",
                   help="small: the documented results; tiny: seconds, for tests")
    p.add_argument("--out", default=None, help="results folder (default reports/experiments/<budget>)")
    p.add_argument("--docs", default=None,
                   help="where report writes results.md and img/ (default docs/ for small, <out>/docs for tiny)")
    p.add_argument("--jobs", type=int, default=2, help="training runs in parallel (processes)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.out is None:
        args.out = str(ROOT / "reports" / "experiments" / args.budget)
    {"trainability": cmd_trainability, "accuracy": cmd_accuracy, "expressivity": cmd_expressivity,
     "warmstart": cmd_warmstart, "all": cmd_all, "report": cmd_report}[args.command](args)
    return 0


TOOLS = str(Path(__file__).resolve().parent)
if TOOLS not in sys.path:
    sys.path.insert(0, TOOLS)

if __name__ == "__main__":
    sys.exit(main())
