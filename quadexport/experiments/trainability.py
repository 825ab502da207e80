"""Experiment 1, trainability: ReLinear vs plain init × regulariser × learning rate, collapse rates and norms."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable

from quadexport.experiments.runner import Task, cost, train_task
from quadexport.experiments.stats import mean_std


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


def tkey(init: str, reg: str, lr: float, seed: int, rescue: bool = False) -> str:
    """Key of one trainability run."""
    return f"{init}_{reg}_lr{lr:g}_s{seed}" + ("_rescue" if rescue else "")


def _rescue_task(task: Task, rollbacks: int, out: Path) -> Task:
    rk = task.key + "_rescue"
    config = dict(copy.deepcopy(task.config), max_rollbacks=rollbacks, out=str(out / "rundirs" / "trainability" / rk))
    return replace(task, key=rk, result_path=str(out / "runs" / "trainability" / f"{rk}.json"), config=config,
                   labels=dict(task.labels, rescue=True), init_norms=False)


def trainability_tasks(recipe: dict[str, Any], out: Path, rescue_for: Iterable[str] = ()) -> list[Task]:
    """Training tasks of the grid (aliased cells share the runs of their source), plus rescue reruns of the keys
    in ``rescue_for`` with ``max_rollbacks = grid.rescue_rollbacks``."""
    tasks: dict[str, Task] = {}
    base = recipe["train"]
    c = cost(base["model"], base["neuron"], base.get("train_subset") or 60000, base.get("test_subset") or 10000,
             base["epochs"])
    for cell in trainability_cells(recipe):
        for seed in cell["seeds"]:
            key = tkey(cell["init"], cell["source_reg"], cell["lr"], seed)
            tasks[key] = train_task("trainability", key, out, dict(base, lr=cell["lr"], seed=seed,
                                                                     relinear=cell["relinear"]),
                                    {"init": cell["init"], "reg": cell["source_reg"], "lr": cell["lr"],
                                     "seed": seed}, c, recipe["grid"]["collapse_acc"], init_norms=True)
    rescue = recipe["grid"].get("rescue_rollbacks", 0)
    for key in rescue_for:
        if rescue and key in tasks:
            t = _rescue_task(tasks[key], rescue, out)
            tasks[t.key] = t
    return list(tasks.values())


def rescuable(r: dict[str, Any], key_cells: set[tuple[str, str]]) -> bool:
    """A collapsed key-cell run the NaN rollback guard could act on (it only sees NaN/Inf loss or weights)."""
    return (r["collapsed"] and not r["labels"].get("rescue") and (r["labels"]["init"], r["labels"]["reg"]) in key_cells
            and bool({"diverged", "nan_steps"} & set(r["collapse_reasons"])))


def _instability(recipe: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Instability short of collapse: test loss blew up (exploding logits / BN statistics) at some epoch, or test
    accuracy dipped to chance at an epoch before the last."""
    blowup_loss = recipe["grid"].get("blowup_test_loss", 1e3)
    collapse_acc = recipe["grid"]["collapse_acc"]
    max_losses = [max((e["test_loss"] for e in r["epochs"]), default=None) for r in runs]
    return {"blowups": sum(m is not None and m > blowup_loss for m in max_losses),
            "dips": sum(any(e["test_acc"] <= collapse_acc for e in r["epochs"][:-1]) for r in runs),
            "max_test_loss": sorted(m for m in max_losses if m is not None)}


def _rescue_summary(cell: dict[str, Any], results: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    rescued = [results.get(tkey(cell["init"], cell["source_reg"], cell["lr"], s, rescue=True)) for s in cell["seeds"]]
    rescued = [r for r in rescued if r is not None]
    if not rescued:
        return None
    return {"n": len(rescued), "rescued": sum(not r["collapsed"] for r in rescued),
            "rollbacks": [r["rollbacks"] for r in rescued], "final_acc": mean_std(r["final_acc"] for r in rescued)}


def _cell_summary(recipe: dict[str, Any], cell: dict[str, Any], results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    runs = [results[k] for k in (tkey(cell["init"], cell["source_reg"], cell["lr"], s) for s in cell["seeds"])
            if k in results]
    n_ep = recipe["train"]["epochs"]
    per_epoch = {name: [mean_std(r["epochs"][e][name] if len(r["epochs"]) > e else None for r in runs)
                        for e in range(n_ep)]
                 for name in ("norm_wg", "norm_wb", "test_acc", "train_loss")}
    reasons: dict[str, int] = {}
    for r in runs:
        for why in r["collapse_reasons"]:
            reasons[why] = reasons.get(why, 0) + 1
    n_collapsed = sum(r["collapsed"] for r in runs)
    return {
        **{k: cell[k] for k in ("init", "reg", "reg_label", "lr", "key_cell", "alias_of", "relinear")},
        "seeds": [r["labels"]["seed"] for r in runs], "n": len(runs), "collapsed": n_collapsed,
        "collapse_rate": (n_collapsed / len(runs)) if runs else None, "collapse_reasons": reasons,
        "final_acc": mean_std(r["final_acc"] for r in runs), **_instability(recipe, runs),
        "final_acc_all": mean_std((r["final_acc"] if r["final_acc"] is not None else 0.1) for r in runs),
        "per_epoch": per_epoch,
        "init_norms": {k: mean_std((r["init_norms"] or {}).get(k) for r in runs) for k in ("norm_wg", "norm_wb")},
        "rescue": _rescue_summary(cell, results),
    }


def aggregate_trainability(recipe: dict[str, Any], results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per-cell collapse rate, accuracy and weight norms (mean ± std over seeds), plus rescue outcomes."""
    cells = [_cell_summary(recipe, cell, results) for cell in trainability_cells(recipe)]
    return {"cells": cells, "key": [c for c in cells if c["key_cell"]]}
