"""Figures of the experiments report (``docs/img/*.png``), drawn from the aggregated results with matplotlib."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from quadexport.experiments.expressivity import neuron_logit

IMG = "img"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)


def _plain_log_ticks(ax) -> None:
    """Log x axis with plain-number major ticks and no (overlapping) minor tick labels."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())

def trainability_plots(env: dict[str, Any], docs: Path) -> list[str]:
    plt = _plt()
    rec, cells = env["recipe"], env["summary"]["cells"]
    lrs = rec["grid"]["lrs"]
    regs = [r for r in rec["grid"]["regularisers"] if not rec["regularisers"][r].get("alias")]
    fig, axes = plt.subplots(len(lrs), 2, figsize=(12, 3.4 * len(lrs)), squeeze=False)
    for i, lr in enumerate(lrs):
        for j, name in enumerate(("norm_wg", "norm_wb")):
            ax = axes[i][j]
            for k, reg in enumerate(regs):
                for init, ls in (("relinear", "-"), ("kaiming", "--")):
                    c = next((c for c in cells if c["init"] == init and c["reg"] == reg and c["lr"] == lr), None)
                    if c is None:
                        continue
                    ys = [c["init_norms"][name]["mean"]] + [e["mean"] for e in c["per_epoch"][name]]
                    xs = list(range(len(ys)))
                    ax.plot(xs, [y if y is not None else float("nan") for y in ys], ls, color=f"C{k}", marker="o",
                            ms=3, label=f"{init} + {rec['regularisers'][reg].get('label', reg)}")
            ax.set_yscale("symlog", linthresh=1e-2)
            ax.set_title(f"{'‖W_g‖' if name == 'norm_wg' else '‖W_b‖'}, LR {lr:g}")
            ax.set_xlabel("epoch"), ax.grid(alpha=0.3)
    axes[0][1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle("Quadratic weight norms per epoch (mean over seeds; epoch 0 = init; missing = diverged)")
    fig.tight_layout()
    _save(fig, docs / IMG / "trainability_norms.png")
    plt.close(fig)

    rows = [(init, reg) for init in rec["grid"]["inits"] for reg in rec["grid"]["regularisers"]
            if any(c["init"] == init and c["reg"] == reg for c in cells)]
    import numpy as np

    grid = np.full((len(rows), len(lrs)), np.nan)
    fig, ax = plt.subplots(figsize=(2.2 + 1.8 * len(lrs), 0.45 * len(rows) + 1.5))
    for i, (init, reg) in enumerate(rows):
        for j, lr in enumerate(lrs):
            c = next((c for c in cells if c["init"] == init and c["reg"] == reg and c["lr"] == lr), None)
            if c is None:
                continue
            v = c["final_acc_all"]["mean"]
            grid[i, j] = np.nan if v is None else 100 * v
            ax.text(j, i, f"{grid[i, j]:.0f}%  ({c['collapsed']}/{c['n']})", ha="center", va="center", fontsize=8)
    ax.imshow(grid, cmap="RdYlGn", vmin=10, vmax=90, aspect="auto")
    ax.set_xticks(range(len(lrs)), [f"LR {x:g}" for x in lrs])
    ax.set_yticks(range(len(rows)), [f"{i} + {rec['regularisers'][r].get('label', r)}" for i, r in rows], fontsize=8)
    ax.set_title("final test accuracy (diverged = 10%), (collapsed/runs)", fontsize=9)
    fig.tight_layout()
    _save(fig, docs / IMG / "trainability_acc.png")
    plt.close(fig)
    return ["trainability_norms.png", "trainability_acc.png"]


def accuracy_plot(env: dict[str, Any], docs: Path) -> None:
    plt = _plt()
    rec, rows = env["recipe"], env["summary"]["rows"]
    dss = [d["dataset"] for d in rec["datasets"]]
    fig, axes = plt.subplots(1, len(dss), figsize=(6.5 * len(dss), 4.2), squeeze=False)
    markers = {"quadratic": "o", "twin": "s", "mac": "D", "neuron": "^"}
    for ax, ds in zip(axes[0], dss):
        seen = set()
        for r in rows:
            if r["dataset"] != ds or r["acc"]["mean"] is None or (r["label"], r["neuron"]) in seen:
                continue
            seen.add((r["label"], r["neuron"]))
            color = "C3" if r["neuron"] != "relu" else "C0"
            ax.errorbar(r["macs_28"] / 1e6, 100 * r["acc"]["mean"], yerr=100 * (r["acc"]["std"] or 0),
                        fmt=markers.get(r["role"], "o"), color=color, capsize=3)
            ax.annotate(r["label"].replace("QResNet8-", ""), (r["macs_28"] / 1e6, 100 * r["acc"]["mean"]),
                        fontsize=7, xytext=(4, 3), textcoords="offset points")
        ax.set_xscale("log")
        _plain_log_ticks(ax)
        ax.set_xlabel("MACs per 28×28 image (M)"), ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{ds}: red = quadratic, blue = ReLU (mean ± std)"), ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, docs / IMG / "accuracy_vs_macs.png")
    plt.close(fig)


def expressivity_plots(env: dict[str, Any], docs: Path) -> None:
    import numpy as np

    plt = _plt()
    raw = env["raw"]["classification"]
    fig, axes = plt.subplots(2, 2, figsize=(8.5, 8))
    for i, task in enumerate(("xor", "disk")):
        for j, kind in enumerate(("linear", "quadratic")):
            ax = axes[i][j]
            r = next((r for r in raw if r["task"] == task and r["kind"] == kind and r["points"]), None)
            if r is None:
                continue
            x, y = np.asarray(r["points"]["x"]), np.asarray(r["points"]["y"])
            lo, hi = x.min() - 0.3, x.max() + 0.3
            gx, gy = np.meshgrid(np.linspace(lo, hi, 250), np.linspace(lo, hi, 250))
            z = neuron_logit(kind, r["params"], np.stack([gx.ravel(), gy.ravel()], 1)).reshape(gx.shape)
            ax.contourf(gx, gy, z > 0, levels=[-0.5, 0.5, 1.5], colors=["#cfe2f3", "#f4cccc"], alpha=0.8)
            ax.contour(gx, gy, z, levels=[0], colors="k", linewidths=1)
            ax.scatter(x[y == 0, 0], x[y == 0, 1], s=6, c="C0", label="class 0")
            ax.scatter(x[y == 1, 0], x[y == 1, 1], s=6, c="C3", label="class 1")
            ax.set_title(f"{task}, {kind} neuron: train acc {100 * r['train_acc']:.1f}%", fontsize=10)
            ax.set_aspect("equal")
    fig.suptitle("Decision boundary (black) of one neuron; shading = predicted class")
    fig.tight_layout()
    _save(fig, docs / IMG / "expressivity_boundaries.png")
    plt.close(fig)

    reg = env["summary"]["regression"]
    fns = env["recipe"]["params"]["functions"]
    fig, axes = plt.subplots(1, len(fns), figsize=(5.5 * len(fns), 4), squeeze=False)
    for ax, fn in zip(axes[0], fns):
        for neuron, color in (("fan", "C3"), ("relu", "C0")):
            rs = sorted([r for r in reg if r["function"] == fn and r["neuron"] == neuron], key=lambda r: r["params"])
            ax.plot([r["params"] for r in rs], [r["median_mse"] for r in rs], marker="o", color=color,
                    label=("quadratic (Fan) MLP" if neuron == "fan" else "ReLU MLP") + ", median")
            ax.scatter([r["params"] for r in rs for _ in r["values"]], [v for r in rs for v in r["values"]],
                       color=color, alpha=0.35, s=12)
        ax.set_xscale("log"), ax.set_yscale("log")
        _plain_log_ticks(ax)
        ax.set_xlabel("parameters"), ax.set_ylabel("test MSE")
        ax.set_title(("f = ‖x‖²" if fn == "radial" else "f = x1·x2") + " (dots = seeds)")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.tight_layout()
    _save(fig, docs / IMG / "expressivity_regression.png")
    plt.close(fig)


def warm_plot(env: dict[str, Any], docs: Path) -> None:
    plt = _plt()
    s = env["summary"]
    E = s["twin_epochs"]
    fig, ax = plt.subplots(figsize=(7, 4))
    spec = {"scratch": ("QResNet8 scratch", 0, "C3", "-"), "warm": ("QResNet8 warm (after twin)", E, "C1", "-"),
            "twin": ("ResNet8 twin", 0, "C0", "-"), "twin_long": (f"ResNet8 {s['twin_long_epochs']} epochs", 0, "C0",
                                                                  ":")}
    for k, (label, off, color, ls) in spec.items():
        c = s["variants"].get(k, {}).get("curve", [])
        if not c:
            continue
        xs = [off + i + 1 for i in range(len(c))]
        m = [100 * (e["mean"] or float("nan")) for e in c]
        sd = [100 * (e["std"] or 0) for e in c]
        ax.plot(xs, m, ls, marker="o", color=color, label=label)
        ax.fill_between(xs, [a - b for a, b in zip(m, sd)], [a + b for a, b in zip(m, sd)], color=color, alpha=0.15)
    if s["target_acc"] is not None:
        ax.axhline(100 * s["target_acc"], color="gray", lw=0.8, ls="--", label="target (scratch QResNet8 final)")
    ax.set_xlabel("total epochs spent (twin epochs included for the warm start)"), ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3), ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, docs / IMG / "warmstart_curves.png")
    plt.close(fig)

