"""Experiment 3, expressivity: single neurons on XOR / disk and equal-parameter MLP regression of ‖x‖² and x1·x2.

Tiny 2-D problems, full-batch Adam; the sizes per budget are :data:`EXPRESSIVITY`.
"""

from __future__ import annotations

import time
from typing import Any

from quadexport.experiments.recipes import SCHEMA_VERSION
from quadexport.experiments.stats import mean_std

EXPRESSIVITY: dict[str, dict[str, Any]] = {
    "small": {"n_train": 400, "n_test": 2000, "cls_steps": 1000, "cls_lr": 0.05, "cls_seeds": [0, 1, 2],
              "reg_train": 1024, "reg_test": 4096, "reg_steps": 2000, "reg_lr": 1e-2, "reg_seeds": [0, 1, 2],
              "quad_widths": [1, 2, 3, 4, 6, 8], "functions": ["radial", "product"]},
    "tiny": {"n_train": 200, "n_test": 400, "cls_steps": 400, "cls_lr": 0.05, "cls_seeds": [0],
             "reg_train": 256, "reg_test": 256, "reg_steps": 150, "reg_lr": 1e-2, "reg_seeds": [0],
             "quad_widths": [2], "functions": ["radial", "product"]},
}


def xor_data(n: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]])
    labels = torch.tensor([1.0, 1.0, 0.0, 0.0])
    idx = torch.arange(n) % 4
    x = centers[idx] + 0.25 * torch.randn(n, 2, generator=g)
    return x, labels[idx]


def disk_data(n: int, seed: int, radius: float = 1.0, margin: float = 0.05):
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


def accuracy(neuron, x, y) -> float:
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
    from quadexport.zoo import count_params
    from quadexport.transforms import create_model

    best = min(range(1, 200), key=lambda w: abs(count_params(create_model("mlp", neuron="relu", num_classes=1,
                                                                          in_channels=1, input_size=(1, 2),
                                                                          width=w)) - params))
    return best


def fit_regression(fn: str, neuron: str, width: int, p: dict[str, Any], seed: int) -> dict[str, Any]:
    """Fit f(x) (``radial`` ‖x‖² or ``product`` x1·x2 on [-1, 1]²) with the zoo MLP (2 → w → w → 1)."""
    import torch
    import torch.nn.functional as F

    from quadexport.zoo import count_params
    from quadexport.transforms import create_model

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


def _classification(p: dict[str, Any]) -> list[dict[str, Any]]:
    cls = []
    for task, make in (("xor", xor_data), ("disk", disk_data)):
        for seed in p["cls_seeds"]:
            xtr, ytr = make(p["n_train"], 10 * seed)
            xte, yte = make(p["n_test"], 10 * seed + 1)
            for kind in ("linear", "quadratic"):
                fit = train_neuron(kind, xtr, ytr, p["cls_steps"], p["cls_lr"], seed)
                cls.append({"task": task, "kind": kind, "seed": seed, "train_acc": accuracy(fit["neuron"], xtr, ytr),
                            "test_acc": accuracy(fit["neuron"], xte, yte), "loss": fit["loss"],
                            "params": fit["params"], "n_params": sum(len(v) for v in fit["params"].values()),
                            "points": {"x": xtr.tolist(), "y": ytr.tolist()} if seed == p["cls_seeds"][0] else None})
    return cls


def _regression(p: dict[str, Any]) -> list[dict[str, Any]]:
    from quadexport.zoo import count_params
    from quadexport.transforms import create_model

    reg = []
    for fn in p["functions"]:
        for w in p["quad_widths"]:
            qparams = count_params(create_model("mlp", neuron="fan", num_classes=1, in_channels=1,
                                                input_size=(1, 2), width=w))
            rw = _relu_width_for(qparams)
            for seed in p["reg_seeds"]:
                reg.append(fit_regression(fn, "fan", w, p, seed))
                reg.append(fit_regression(fn, "relu", rw, p, seed))
    return reg


def run_expressivity(budget: str) -> dict[str, Any]:
    """Single-neuron XOR/disk classification and equal-parameter MLP regression of ‖x‖² and x1·x2."""
    p = EXPRESSIVITY[budget]
    t0, c0 = time.perf_counter(), time.process_time()
    cls = _classification(p)
    reg = _regression(p)
    return {"schema": SCHEMA_VERSION, "exp": "expressivity", "key": "expressivity", "params": p,
            "classification": cls, "regression": reg, "wall_s": time.perf_counter() - t0,
            "cpu_s": time.process_time() - c0}


def aggregate_expressivity(res: dict[str, Any]) -> dict[str, Any]:
    """Mean ± std per (task, neuron) and per (function, neuron, width), median and stuck fits of the regressions."""
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
