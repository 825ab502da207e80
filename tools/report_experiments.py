"""Render ``docs/results.md`` and ``docs/img/*.png`` from the aggregated JSON of ``tools/experiments.py``.

Used by ``tools/experiments.py report`` (and ``all``); reads only ``<out>/<experiment>.json``. Every number and
every sentence of the findings is computed from those files, so the page can be regenerated at any time.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from experiments import EXPERIMENTS, fmt_ms, mean_std, neuron_logit

IMG = "img"


def _load(out: Path) -> dict[str, dict[str, Any]]:
    data = {}
    for e in EXPERIMENTS:
        p = out / f"{e}.json"
        if p.exists():
            data[e] = json.loads(p.read_text())
    return data


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


def _pct(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{100 * x:.{digits}f}"


def _num(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}g}"


def _dur(s: float) -> str:
    return f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"


# ------------------------------------------------------------------------------------------------ trainability


def _train_sizes(rec: dict[str, Any]) -> str:
    t = rec["train"]
    return (f"{t['model']} ({t['neuron']} neuron) on {t['dataset']}, {t.get('train_subset') or 'all'} train / "
            f"{t.get('test_subset') or 'all'} test images (stratified subset, drawn per seed), {t['epochs']} epochs, "
            f"batch {t['batch_size']}, {t['optimizer'].upper()} momentum 0.9, {t['schedule']} schedule, weight decay "
            f"{t['weight_decay']:g}, max_rollbacks={t['max_rollbacks']}")


def _row_head(rec: dict[str, Any], row: list[dict[str, Any]], init: str, reg: str) -> str:
    """``| init | regulariser |`` cells of a grid table row, bold when the row holds a key-comparison cell."""
    key = any(c["key_cell"] for c in row)
    label = rec["regularisers"][reg].get("label", reg)
    return f"| {'**' + init + '**' if key else init} | {'**' + label + '**' if key else label} |"


def trainability_md(env: dict[str, Any], docs: Path) -> tuple[str, list[str]]:
    rec, cells = env["recipe"], env["summary"]["cells"]
    lrs = rec["grid"]["lrs"]
    used = [r for r in rec["grid"]["regularisers"] if any(c["reg"] == r for c in cells)]
    lines = ["## 1. Trainability: ReLinear vs plain initialisation", "",
             f"Command: `{env['command']}` (recipe `{rec['_path']}`).", "",
             f"Setup: {_train_sizes(rec)}. Grid: init ∈ {{{', '.join(rec['grid']['inits'])}}} × regulariser "
             f"∈ {{{', '.join(rec['regularisers'][r].get('label', r) for r in used)}}} × "
             f"LR ∈ {{{', '.join(f'{x:g}' for x in lrs)}}}. Seeds: {rec['grid']['key_seeds']} for the key cells "
             f"({', '.join('+'.join(c) for c in rec['grid']['key_cells'])}), {rec['grid']['seeds']} for the others. "
             "`relinear` init: W_g=0, b_g=1, W_b=0, c=0, W_r Kaiming; `kaiming`: Kaiming-normal weights and zero "
             "biases on every branch (no ReLinear). `sg γ` = learning-rate ratio of the g and b parameters; "
             "`sg γ=1` uses exactly the optimiser of `none` and is reported from the `none` runs.", "",
             f"**Collapse** = any of: `TrainingDiverged` (NaN/Inf, no rollback), training stopped on a non-finite "
             f"BN statistic or test loss (`nonfinite`), skipped NaN steps, final train loss > ln 10 (divergence), "
             f"final test accuracy ≤ {100 * rec['grid']['collapse_acc']:.0f}% (chance is 10%). Accuracy columns "
             "average the runs that finished (a diverged run has no accuracy); `n` counts all runs.", ""]
    hdr = "| init | regulariser |"
    sep = "|---|---|"
    for lr in lrs:
        hdr += f" LR {lr:g}: collapsed | acc % | ‖W_g‖ / ‖W_b‖ (end) |"
        sep += "---|---|---|"
    lines += [hdr, sep]
    for init in rec["grid"]["inits"]:
        for reg in rec["grid"]["regularisers"]:
            row = [c for c in cells if c["init"] == init and c["reg"] == reg]
            if not row:
                continue
            s = _row_head(rec, row, init, reg)
            for lr in lrs:
                c = next((c for c in row if c["lr"] == lr), None)
                if c is None:
                    s += " | | |"
                    continue
                wg = c["per_epoch"]["norm_wg"][-1]["mean"] if c["per_epoch"]["norm_wg"] else None
                wb = c["per_epoch"]["norm_wb"][-1]["mean"] if c["per_epoch"]["norm_wb"] else None
                why = ",".join(sorted(c["collapse_reasons"])) if c["collapse_reasons"] else ""
                s += (f" {c['collapsed']}/{c['n']}{' (' + why + ')' if why else ''} | {fmt_ms(c['final_acc'])} | "
                      f"{_num(wg)} / {_num(wb)} |")
            lines.append(s)
    lines += ["", "Bold rows are the key comparison (≥3 seeds). ‖W_g‖, ‖W_b‖: global L2 norms of the gate and "
              "power-branch weights of all quadratic layers, mean over finished runs.", ""]
    blow = rec["grid"].get("blowup_test_loss", 1e3)
    lines += ["**Instability short of collapse.** `blow-ups`: runs whose test loss exceeded "
              f"{blow:g} at some epoch (logits or BN running statistics exploding; a uniform guess scores 2.3); "
              f"`dips`: runs whose test accuracy fell to ≤ {100 * rec['grid']['collapse_acc']:.0f}% at an epoch "
              "before the last (then recovered); `max test loss`: per run, the largest test loss seen.", ""]
    hdr, sep = "| init | regulariser |", "|---|---|"
    for lr in lrs:
        hdr += f" LR {lr:g}: blow-ups | dips | max test loss |"
        sep += "---|---|---|"
    lines += [hdr, sep]
    for init in rec["grid"]["inits"]:
        for reg in used:
            row = [c for c in cells if c["init"] == init and c["reg"] == reg]
            if not row or any(c["alias_of"] for c in row):
                continue
            s = _row_head(rec, row, init, reg)
            for lr in lrs:
                c = next((c for c in row if c["lr"] == lr), None)
                if c is None or "blowups" not in c:
                    s += " | | |"
                    continue
                s += (f" {c['blowups']}/{c['n']} | {c['dips']}/{c['n']} | "
                      f"{', '.join(f'{m:.2g}' for m in c['max_test_loss'])} |")
            lines.append(s)
    lines.append("")
    rescue = [c for c in cells if c.get("rescue")]
    if rescue:
        lines += ["**Rollback guard** (`max_rollbacks="
                  f"{rec['grid']['rescue_rollbacks']}`, each rollback halves the LR) on the collapsed key-cell runs:", ""]
        for c in rescue:
            r = c["rescue"]
            lines.append(f"- {c['init']} + {c['reg_label']}, LR {c['lr']:g}: {r['rescued']}/{r['n']} rescued "
                         f"(rollbacks used: {r['rollbacks']}; accuracy after rescue {fmt_ms(r['final_acc'])}%).")
        lines.append("")
    elif rec["grid"].get("rescue_rollbacks", 0):
        lines += ["No key-cell run collapsed, so the rollback guard had nothing to rescue.", ""]
    imgs = _trainability_plots(env, docs)
    lines += [f"![weight norms per epoch]({IMG}/{imgs[0]})", "", f"![final accuracy grid]({IMG}/{imgs[1]})", ""]
    return "\n".join(lines), imgs


def _trainability_plots(env: dict[str, Any], docs: Path) -> list[str]:
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


# ---------------------------------------------------------------------------------------------------- accuracy


def accuracy_md(env: dict[str, Any], docs: Path) -> str:
    rec, rows, deltas = env["recipe"], env["summary"]["rows"], env["summary"]["deltas"]
    t, rl = rec["train"], rec["relinear"]
    lines = ["## 2. Accuracy: QResNet vs same-depth and MAC-matched ResNet, neuron types", "",
             f"Command: `{env['command']}` (recipe `{rec['_path']}`).", "",
             f"Recipe (every model): {t['optimizer'].upper()} LR {t['lr']:g} momentum 0.9, {t['schedule']}, "
             f"{t['epochs']} epochs, batch {t['batch_size']}, weight decay {t['weight_decay']:g}; quadratic models: "
             f"ReLinear init + {rl['mode']} (γ_g={rl.get('lr_ratio_g', '')}, γ_b={rl.get('lr_ratio_b', '')}) unless "
             f"noted; seeds {rec['run']['seeds']} (the seed also draws the stratified subset). Datasets: "
             + "; ".join(f"{d['dataset']} {d.get('train_subset') or 'all'} train / {d.get('test_subset') or 'all'} test"
                         for d in rec["datasets"]) + ". Accuracy = final-epoch test accuracy, mean ± sample std. "
             "MACs counted by `count_macs` at 28×28 (every quadratic branch included).", ""]
    for ds in rec["datasets"]:
        lines += [f"### {ds['dataset']}", "", "| group | model | neuron | params | MACs (28×28) | test acc % | Δ vs QResNet (pp) |",
                  "|---|---|---|---|---|---|---|"]
        for group in ds["groups"]:
            grp = [r for r in rows if r["dataset"] == ds["dataset"] and r["group"] == group]
            quad = next((r for r in grp if r["role"] == "quadratic"), None)
            for r in grp:
                d = next((x for x in deltas if x["dataset"] == ds["dataset"] and x["group"] == group
                          and x["baseline"] == r["label"]), None)
                dtxt = "" if d is None else f"{fmt_ms(d['delta'], digits=1)} (Q wins {d['wins']}/{d['n']})"
                note = " (sg off)" if (r.get("relinear") or {}).get("mode") == "none" and r["neuron"] != "relu" else ""
                name = f"**{r['label']}**" if r is quad else r["label"]
                lines.append(f"| {group} | {name} ({r['role']}) | {r['neuron']}{note} | {r['params'] / 1e3:.0f}k | "
                             f"{r['macs_28'] / 1e6:.1f}M | {fmt_ms(r['acc'])}"
                             f"{' ⚠ ' + str(r['failed']) + ' failed' if r['failed'] else ''} | {dtxt} |")
        lines.append("")
    lines += ["Δ = QResNet minus baseline, paired by seed (same subset, same init seed); positive = the quadratic "
              "model is better.", ""]
    _accuracy_plot(env, docs)
    lines += [f"![accuracy vs MACs]({IMG}/accuracy_vs_macs.png)", ""]
    return "\n".join(lines)


def _accuracy_plot(env: dict[str, Any], docs: Path) -> None:
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


# ------------------------------------------------------------------------------------------------ expressivity


def expressivity_md(env: dict[str, Any], docs: Path) -> str:
    p, agg = env["recipe"]["params"], env["summary"]
    lines = ["## 3. Expressivity: single neurons and equal-parameter MLPs", "", f"Command: `{env['command']}`.", "",
             f"**Single neuron, logistic loss.** XOR: 4 Gaussian clusters (σ=0.25) at (±1, ±1), label = same sign; "
             f"disk: uniform points in [-1.6, 1.6]², label ‖x‖ < 1 (points within 0.05 of the circle dropped). "
             f"{p['n_train']} training / {p['n_test']} test points, full-batch Adam LR {p['cls_lr']:g}, "
             f"{p['cls_steps']} steps, seeds {p['cls_seeds']}. Linear = `nn.Linear(2, 1)` (3 parameters); quadratic = "
             "`QuadLinear(2, 1, neuron='fan')` with ReLinear init (9 parameters: W_r, b_r, W_g, b_g, W_b, c).", "",
             "| task | neuron | params | train acc % | test acc % |", "|---|---|---|---|---|"]
    for r in agg["classification"]:
        lines.append(f"| {r['task']} | {r['kind']} | {r['n_params']} | {fmt_ms(r['train_acc'])} | "
                     f"{fmt_ms(r['test_acc'])} |")
    lines += ["", f"![decision boundaries]({IMG}/expressivity_boundaries.png)", "",
              f"**Regression at equal parameter count.** f(x)=‖x‖² (radial) and f(x)=x1·x2 (product) on "
              f"x ~ U[-1, 1]², {p['reg_train']} training / {p['reg_test']} test points; the zoo `mlp` "
              "(2 → w → w → 1, ReLU after each hidden layer) with Fan neurons (ReLinear init) vs ReLU neurons, "
              f"the ReLU width chosen for the closest parameter count; full-batch Adam LR {p['reg_lr']:g} with "
              f"cosine decay, {p['reg_steps']} steps, MSE, seeds {p['reg_seeds']}.", "",
              "`median` = median over seeds; `stuck` = seeds whose test MSE stays above half the target variance "
              "(the fit is stuck near predicting the mean, typically dead ReLUs after the first layer).", "",
              "| function | quad width / params | quad test MSE | quad median | quad stuck | ReLU width / params | "
              "ReLU test MSE | ReLU median | ReLU stuck | median ratio ReLU/quad |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    reg = agg["regression"]
    for fn in p["functions"]:
        q = sorted([r for r in reg if r["function"] == fn and r["neuron"] != "relu"], key=lambda r: r["params"])
        rl = sorted([r for r in reg if r["function"] == fn and r["neuron"] == "relu"], key=lambda r: r["params"])
        for a, b in zip(q, rl):
            ratio = b["median_mse"] / a["median_mse"] if a.get("median_mse") else float("nan")
            lines.append(f"| {fn} | {a['width']} / {a['params']} | {_sci(a['test_mse'])} | {a['median_mse']:.2e} | "
                         f"{a['stuck']}/{a['test_mse']['n']} | {b['width']} / {b['params']} | {_sci(b['test_mse'])} | "
                         f"{b['median_mse']:.2e} | {b['stuck']}/{b['test_mse']['n']} | {ratio:.3g} |")
    lines += ["", f"Target variance: radial {_first(reg, 'radial'):.3g}, product {_first(reg, 'product'):.3g} "
              "(the MSE of predicting the mean).", "", f"![regression MSE vs parameters]({IMG}/expressivity_regression.png)", ""]
    _expressivity_plots(env, docs)
    return "\n".join(lines)


def _first(reg: list[dict[str, Any]], fn: str) -> float:
    return next((r["target_var"] for r in reg if r["function"] == fn), float("nan"))


def _sci(stat: dict[str, Any]) -> str:
    if stat["mean"] is None:
        return "—"
    return f"{stat['mean']:.2e}" + (f" ± {stat['std']:.1e}" if stat["n"] > 1 else "")


def _expressivity_plots(env: dict[str, Any], docs: Path) -> None:
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


# ------------------------------------------------------------------------------------------------- warm start


def warmstart_md(env: dict[str, Any], docs: Path) -> str:
    rec, s = env["recipe"], env["summary"]
    w = rec["warmstart"]
    v = s["variants"]
    E = s["twin_epochs"]
    lines = ["## 4. Warm start from the trained ReLU twin", "", f"Command: `{env['command']}` (recipe `{rec['_path']}`,"
             " `[warmstart]`).", "",
             f"QResNet8 ({w['neuron']} neuron) on {w['dataset']} with the accuracy recipe, (a) from scratch "
             f"(ReLinear init) and (b) warm-started (`TrainConfig.warm_start`) from the ReLU ResNet8 twin of the same "
             f"seed after its {E} epochs: W_r, BN, stem and head copied, W_g=0, b_g=1, W_b=0. Reference: the ReLU "
             f"twin itself, and the twin trained {s['twin_long_epochs']} epochs from scratch (same total epochs as "
             f"twin + warm-started quadratic model). Target = mean final accuracy of the scratch QResNet8 "
             f"({_pct(s['target_acc'])}%); epochs-to-target counts the model's own epochs (per seed; — = not reached).",
             "", "| variant | total epochs spent | final test acc % | acc after its 1st epoch % | epochs to target |",
             "|---|---|---|---|---|"]
    names = {"scratch": ("QResNet8 from scratch", E), "warm": ("QResNet8 warm-started", f"{E} (twin) + {E}"),
             "twin": ("ResNet8 twin", E), "twin_long": (f"ResNet8 twin, {s['twin_long_epochs']} epochs",
                                                        s["twin_long_epochs"])}
    for k, (label, spent) in names.items():
        x = v.get(k)
        if not x or not x["n"]:
            continue
        reach = ", ".join("—" if e is None else str(e) for e in x["epochs_to_target"])
        lines.append(f"| {label} | {spent} | {fmt_ms(x['final_acc'])} | {fmt_ms(x['first_epoch_acc'])} | {reach} |")
    lines += ["", f"![warm start curves]({IMG}/warmstart_curves.png)", ""]
    _warm_plot(env, docs)
    return "\n".join(lines)


def _warm_plot(env: dict[str, Any], docs: Path) -> None:
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


# ------------------------------------------------------------------------------------------------- headline


def headline(data: dict[str, dict[str, Any]]) -> list[str]:
    """Findings sentences computed from the results (no hand-written numbers)."""
    out = []
    tr = data.get("trainability")
    if tr:
        for c in tr["summary"]["key"]:
            out.append(f"Trainability, {c['init']} + {c['reg_label']}, LR {c['lr']:g}: {c['collapsed']}/{c['n']} "
                       f"runs collapsed; final accuracy {fmt_ms(c['final_acc'])}% (finished runs).")
        for c in tr["summary"]["key"]:
            if "blowups" in c:
                out.append(f"Instability, {c['init']} + {c['reg_label']}, LR {c['lr']:g}: test-loss blow-ups in "
                           f"{c['blowups']}/{c['n']} runs, accuracy dips to chance in {c['dips']}/{c['n']}.")
        cells = tr["summary"]["cells"]
        for init in tr["recipe"]["grid"]["inits"]:
            cs = [c for c in cells if c["init"] == init and not c["alias_of"]]
            n, k = sum(c["n"] for c in cs), sum(c["collapsed"] for c in cs)
            b = sum(c.get("blowups", 0) for c in cs)
            if n:
                out.append(f"Whole grid, {init} init: {k}/{n} runs collapsed, {b}/{n} had a test-loss blow-up "
                           "(all regularisers and LRs).")
    ac = data.get("accuracy")
    if ac:
        rows = ac["summary"]["rows"]
        for d in ac["summary"]["deltas"]:
            verdict = _verdict(d["delta"])
            pair = [r for r in rows if r["dataset"] == d["dataset"] and r["group"] == d["group"]
                    and r["label"] in (d["quadratic"], d["baseline"])]
            noisy = [r["label"] for r in pair if (r["acc"]["std"] or 0) > 0.05]
            if noisy:
                verdict += f"; caution: {', '.join(noisy)} unstable across seeds (std > 5 pp)"
            out.append(f"{d['dataset']}: {d['quadratic']} − {d['baseline']} ({'same depth' if d['role'] == 'twin' else 'MAC-matched'})"
                       f" = {fmt_ms(d['delta'])} pp ({verdict}; Q better in {d['wins']}/{d['n']} seeds).")
        nrows = [r for r in ac["summary"]["rows"] if r["group"] == "neurons" and r["acc"]["mean"] is not None]
        if nrows:
            best = max(nrows, key=lambda r: r["acc"]["mean"])
            worst = min(nrows, key=lambda r: r["acc"]["mean"])
            out.append(f"Neuron types ({nrows[0]['dataset']}, resnet8): best {best['neuron']} {fmt_ms(best['acc'])}%, "
                       f"worst {worst['neuron']} {fmt_ms(worst['acc'])}%.")
    ex = data.get("expressivity")
    if ex:
        for r in ex["summary"]["classification"]:
            out.append(f"Single {r['kind']} neuron on {r['task']}: test accuracy {fmt_ms(r['test_acc'])}%.")
        reg = ex["summary"]["regression"]
        for fn in ex["recipe"]["params"]["functions"]:
            q = sorted([r for r in reg if r["function"] == fn and r["neuron"] != "relu"], key=lambda r: r["params"])
            rl = sorted([r for r in reg if r["function"] == fn and r["neuron"] == "relu"], key=lambda r: r["params"])
            wins = sum(a["test_mse"]["mean"] < b["test_mse"]["mean"] for a, b in zip(q, rl))
            mwins = sum(a["median_mse"] < b["median_mse"] for a, b in zip(q, rl))
            stuck_q = sum(a["stuck"] for a in q)
            stuck_r = sum(b["stuck"] for b in rl)
            n = sum(a["test_mse"]["n"] for a in q)
            out.append(f"Regression of {'‖x‖²' if fn == 'radial' else 'x1·x2'}: the quadratic MLP has the lower "
                       f"mean test MSE at {wins}/{len(q)} and the lower median at {mwins}/{len(q)} matched parameter "
                       f"counts; stuck fits: quadratic {stuck_q}/{n}, ReLU {stuck_r}/{n}.")
    ws = data.get("warmstart")
    if ws:
        v = ws["summary"]["variants"]
        if v.get("warm", {}).get("n") and v.get("scratch", {}).get("n"):
            out.append(f"Warm start: QResNet8 warm {fmt_ms(v['warm']['final_acc'])}% vs scratch "
                       f"{fmt_ms(v['scratch']['final_acc'])}% vs ReLU twin with the same total epochs "
                       f"{fmt_ms(v.get('twin_long', {}).get('final_acc', {}))}%; epochs to reach the scratch accuracy: "
                       f"warm {v['warm']['epochs_to_target']}, scratch {v['scratch']['epochs_to_target']}.")
    return out


def _verdict(d: dict[str, Any]) -> str:
    if d["mean"] is None:
        return "no data"
    if d["n"] < 2:
        return "single seed"
    se = d["std"] / math.sqrt(d["n"])
    if abs(d["mean"]) <= 2 * se:
        return "within noise (|Δ| ≤ 2 s.e.)"
    return "quadratic better" if d["mean"] > 0 else "quadratic worse"


def render(out: Path, docs: Path) -> Path:
    """Write ``docs/results.md`` (+ ``docs/img``) from the JSON in ``out``; returns the markdown path."""
    data = _load(out)
    docs.mkdir(parents=True, exist_ok=True)
    budget = next((d["budget"] for d in data.values()), "?")
    cpu = sum(d["cpu_s"] for d in data.values())
    lines = ["# Reproducing the paper's claims on real data (issue #6)", "",
             "Generated by `.venv/bin/python tools/experiments.py report` from "
             f"`{_rel(out)}/*.json` (budget `{budget}`); do not edit by hand. Regenerate everything with "
             f"`.venv/bin/python tools/experiments.py all --budget {budget}` (`make results`).", "",
             "Claims under test (Fan et al., TNNLS 2023): quadratic networks are more expressive than conventional "
             "ones, but collapse more easily under plain training, which ReLinear (ReLinear init + shrinking the "
             "gradients (`sg`) or weights (`sw`) of the quadratic terms) prevents. Everything below is small-scale "
             "(CPU, subsets, few epochs): it tests the direction of the claims, not the paper's CIFAR numbers.", "",
             "## Compute", "",
             f"CPU only: {next((d['cpu_count'] for d in data.values()), '?')} cores shared with other work, one torch "
             "thread per training run, at most 2 runs in parallel. CPU time = sum of the per-run process CPU "
             "times.", "", "| experiment | runs | CPU time | sum of run wall times |", "|---|---|---|---|"]
    for e in EXPERIMENTS:
        if e in data:
            d = data[e]
            lines.append(f"| {e} | {d['n_runs']} | {_dur(d['cpu_s'])} | {_dur(d['run_wall_s'])} |")
    lines += [f"| **total** | {sum(d['n_runs'] for d in data.values())} | **{_dur(cpu)}** | "
              f"{_dur(sum(d['run_wall_s'] for d in data.values()))} |", "",
              "Run wall times exceed CPU times when the cores are busy with other work; the CPU time is the cost "
              "of the experiments themselves.", "",
              "(The warm-start row counts only its own runs; the ReLU twins and scratch QResNet8 runs it reuses are "
              "counted under accuracy.)", "", "## Findings (computed)", ""]
    lines += [f"- {h}" for h in headline(data)] + [""]
    if "trainability" in data:
        lines.append(trainability_md(data["trainability"], docs)[0])
    if "accuracy" in data:
        lines.append(accuracy_md(data["accuracy"], docs))
    if "expressivity" in data:
        lines.append(expressivity_md(data["expressivity"], docs))
    if "warmstart" in data:
        lines.append(warmstart_md(data["warmstart"], docs))
    notes = docs / "results-notes.md"
    if notes.exists():
        lines += ["", notes.read_text()]
    path = docs / "results.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines).rstrip() + "\n")
    os.replace(tmp, path)
    return path


def _rel(p: Path) -> str:
    from experiments import ROOT

    try:
        return str(p.resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


__all__ = ["render", "headline", "mean_std"]
