"""Experiment 2, accuracy: QResNet vs same-depth and MAC-matched ResNet, and the other neuron types."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quadexport.experiments.runner import Task, cost, train_task
from quadexport.experiments.stats import mean_std
from quadexport.pipeline import deep_merge


def selected_models(recipe: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``[[models]]`` of the recipe, restricted to ``run.labels`` when given."""
    labels = recipe.get("run", {}).get("labels") or []
    return [m for m in recipe["models"] if not labels or m["label"] in labels]


def akey(dataset: str, model: str, neuron: str, seed: int, relinear: dict[str, Any] | None = None,
         suffix: str = "") -> str:
    """Key of one accuracy (or warm-start) run."""
    rl = "" if not relinear or relinear == {} else "-" + "-".join(f"{v}" for v in relinear.values())
    return f"{dataset}_{model}-{neuron}{rl}{suffix}_s{seed}"


def acc_config(recipe: dict[str, Any], ds: dict[str, Any], m: dict[str, Any], seed: int) -> dict[str, Any]:
    """TrainConfig fields of model ``m`` on dataset entry ``ds`` (ReLU models never use ReLinear)."""
    rl = {"mode": "none"} if m["neuron"] == "relu" else deep_merge(recipe.get("relinear", {}), m.get("relinear", {}))
    data = {k: v for k, v in ds.items() if k != "groups"}
    return dict(recipe["train"], **data, model=m["model"], neuron=m["neuron"], seed=seed, relinear=rl)


def accuracy_tasks(recipe: dict[str, Any], out: Path) -> list[Task]:
    """One task per (dataset, model, seed); a model in several groups is trained once."""
    tasks = {}
    for ds in recipe["datasets"]:
        for m in selected_models(recipe):
            if m["group"] not in ds["groups"]:
                continue
            for seed in recipe["run"]["seeds"]:
                cfg = acc_config(recipe, ds, m, seed)
                key = akey(ds["dataset"], m["model"], m["neuron"], seed, m.get("relinear"))
                c = cost(m["model"], m["neuron"], ds.get("train_subset") or 60000, ds.get("test_subset") or 10000,
                         cfg["epochs"])
                tasks[key] = train_task("accuracy", key, out, cfg, {"dataset": ds["dataset"], "label": m["label"],
                                                                     "seed": seed}, c)
    return list(tasks.values())


def _row(recipe: dict[str, Any], ds: dict[str, Any], m: dict[str, Any], results: dict[str, dict[str, Any]]
         ) -> dict[str, Any]:
    from quadexport.zoo import count_macs, count_params
    from quadexport.transforms import create_model

    shape = {"digits": (1, 8, 8)}.get(ds["dataset"], (1, 28, 28))
    runs = [results.get(akey(ds["dataset"], m["model"], m["neuron"], s, m.get("relinear")))
            for s in recipe["run"]["seeds"]]
    runs = [r for r in runs if r is not None]
    net = create_model(m["model"], neuron=m["neuron"], in_channels=1, input_size=shape[1:])
    return {"dataset": ds["dataset"], "group": m["group"], "label": m["label"], "model": m["model"],
            "neuron": m["neuron"], "role": m["role"], "relinear": m.get("relinear"),
            "params": count_params(net), "macs": count_macs(net, shape), "macs_28": count_macs(net, (1, 28, 28)),
            "seeds": [r["labels"]["seed"] for r in runs], "acc": mean_std(r["final_acc"] for r in runs),
            "acc_values": [r["final_acc"] for r in runs], "failed": sum(r["status"] != "ok" for r in runs),
            "train_s": mean_std(r["wall_s"] for r in runs)}


def _paired(a: dict[str, Any], b: dict[str, Any]) -> list[float]:
    """Per-seed accuracy differences a − b over the seeds both rows finished."""
    bm = dict(zip(b["seeds"], b["acc_values"]))
    return [x - bm[s] for s, x in zip(a["seeds"], a["acc_values"]) if s in bm and x is not None and bm[s] is not None]


def _deltas(recipe: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Paired deltas (same seed = same data subset and init seed): quadratic minus twin / MAC-matched."""
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
                d = _paired(quad, other)
                deltas.append({"dataset": ds["dataset"], "group": group, "quadratic": quad["label"],
                               "baseline": other["label"], "role": other["role"], "delta": mean_std(d),
                               "wins": sum(x > 0 for x in d), "n": len(d)})
    return deltas


def aggregate_accuracy(recipe: dict[str, Any], results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per dataset and group: each model's params, MACs (28×28 or the dataset's size) and accuracy mean ± std."""
    rows = [_row(recipe, ds, m, results) for ds in recipe["datasets"] for m in selected_models(recipe)
            if m["group"] in ds["groups"]]
    return {"rows": rows, "deltas": _deltas(recipe, rows)}
