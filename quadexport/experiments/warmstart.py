"""Experiment 4, warm start: the quadratic model initialised from its trained ReLU twin vs from scratch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quadexport.errors import UsageError
from quadexport.experiments.accuracy import acc_config, akey
from quadexport.experiments.runner import Task, cost, train_task
from quadexport.experiments.stats import mean_std


def _phase1(recipe: dict[str, Any], ds: dict[str, Any], out: Path, seed: int, c: dict[str, float]) -> list[Task]:
    w = recipe["warmstart"]
    tasks = []
    for m in ({"model": w["model"], "neuron": w["neuron"]}, {"model": w["model"], "neuron": "relu"}):
        key = akey(ds["dataset"], m["model"], m["neuron"], seed)
        tasks.append(train_task("accuracy", key, out, acc_config(recipe, ds, m, seed),
                                {"dataset": ds["dataset"], "label": f"{m['model']}-{m['neuron']}", "seed": seed},
                                c[m["neuron"]]))
    long_cfg = acc_config(recipe, ds, {"model": w["model"], "neuron": "relu"}, seed)
    long_cfg["epochs"] = int(w.get("twin_epochs_factor", 2)) * long_cfg["epochs"]
    key = akey(ds["dataset"], w["model"], "relu", seed, suffix=f"-ep{long_cfg['epochs']}")
    tasks.append(train_task("warmstart", key, out, long_cfg, {"dataset": ds["dataset"], "seed": seed,
                                                             "variant": "twin_long"}, 2 * c["relu"]))
    return tasks


def warmstart_tasks(recipe: dict[str, Any], out: Path, phase: int) -> list[Task]:
    """Phase 1: the ReLU twins (shared with the accuracy experiment), the scratch quadratic runs, and the twin
    trained ``twin_epochs_factor``× longer. Phase 2: the warm-started quadratic runs (need the phase-1 twins)."""
    w = recipe["warmstart"]
    ds = next((d for d in recipe["datasets"] if d["dataset"] == w["dataset"]), None)
    if ds is None:
        raise UsageError(f"warmstart dataset {w['dataset']!r} is not among the accuracy datasets "
                         f"{[d['dataset'] for d in recipe['datasets']]}: fix [warmstart] dataset in the recipe")
    quad = {"model": w["model"], "neuron": w["neuron"]}
    n_tr, n_te, ep = ds.get("train_subset") or 60000, ds.get("test_subset") or 10000, recipe["train"]["epochs"]
    c = {n: cost(w["model"], n, n_tr, n_te, ep) for n in (w["neuron"], "relu")}
    tasks = []
    for seed in w.get("seeds", recipe["run"]["seeds"]):
        if phase == 1:
            tasks += _phase1(recipe, ds, out, seed, c)
            continue
        cfg = acc_config(recipe, ds, quad, seed)
        cfg["warm_start"] = str(out / "rundirs" / "accuracy" / akey(ds["dataset"], w["model"], "relu", seed))
        key = akey(ds["dataset"], quad["model"], quad["neuron"], seed, suffix="-warm")
        tasks.append(train_task("warmstart", key, out, cfg, {"dataset": ds["dataset"], "seed": seed,
                                                             "variant": "warm"}, c[quad["neuron"]]))
    return tasks


def _variant(runs: list[dict[str, Any] | None], target: float | None) -> dict[str, Any]:
    runs = [r for r in runs if r is not None]
    reach = [next((e["epoch"] for e in r["epochs"] if target is not None and e["test_acc"] >= target), None)
             for r in runs]
    n_ep = max((len(r["epochs"]) for r in runs), default=0)
    return {"n": len(runs), "final_acc": mean_std(r["final_acc"] for r in runs), "epochs_to_target": reach,
            "curve": [mean_std(r["epochs"][e]["test_acc"] if len(r["epochs"]) > e else None for r in runs)
                      for e in range(n_ep)],
            "first_epoch_acc": mean_std(r["epochs"][0]["test_acc"] if r["epochs"] else None for r in runs)}


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
        "scratch": [results.get(akey(ds, w["model"], w["neuron"], s)) for s in seeds],
        "warm": [results.get(akey(ds, w["model"], w["neuron"], s, suffix="-warm")) for s in seeds],
        "twin": [results.get(akey(ds, w["model"], "relu", s)) for s in seeds],
        "twin_long": [results.get(akey(ds, w["model"], "relu", s, suffix=f"-ep{long_ep}")) for s in seeds],
    }
    target = mean_std(r["final_acc"] for r in variants["scratch"] if r)["mean"]
    return {"target_acc": target, "dataset": ds, "twin_epochs": recipe["train"]["epochs"], "twin_long_epochs": long_ep,
            "variants": {name: _variant(runs, target) for name, runs in variants.items()}}
