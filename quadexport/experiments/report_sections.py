"""The markdown sections of the experiments report (one per experiment), computed from the aggregated results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quadexport.experiments.report_plots import (IMG, accuracy_plot, expressivity_plots, trainability_plots,
                                                 warm_plot)
from quadexport.experiments.stats import fmt_ms


def _pct(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{100 * x:.{digits}f}"


def _num(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}g}"


def dur(s: float) -> str:
    return f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"



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


def _trainability_intro(env: dict[str, Any], used: list[str]) -> list[str]:
    rec = env["recipe"]
    lrs = rec["grid"]["lrs"]
    return ["## 1. Trainability: ReLinear vs plain initialisation", "",
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


def _grid_table(rec: dict[str, Any], cells: list[dict[str, Any]]) -> list[str]:
    lrs = rec["grid"]["lrs"]
    hdr = "| init | regulariser |"
    sep = "|---|---|"
    for lr in lrs:
        hdr += f" LR {lr:g}: collapsed | acc % | ‖W_g‖ / ‖W_b‖ (end) |"
        sep += "---|---|---|"
    lines = [hdr, sep]
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
    return lines


def _instability_table(rec: dict[str, Any], cells: list[dict[str, Any]], used: list[str]) -> list[str]:
    lrs = rec["grid"]["lrs"]
    blow = rec["grid"].get("blowup_test_loss", 1e3)
    lines = ["**Instability short of collapse.** `blow-ups`: runs whose test loss exceeded "
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
    return lines


def _rescue_lines(rec: dict[str, Any], cells: list[dict[str, Any]]) -> list[str]:
    lines: list[str] = []
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
    return lines


def trainability_md(env: dict[str, Any], docs: Path) -> tuple[str, list[str]]:
    """Section 1 (trainability) of the report, and the names of its figures."""
    rec, cells = env["recipe"], env["summary"]["cells"]
    used = [r for r in rec["grid"]["regularisers"] if any(c["reg"] == r for c in cells)]
    lines = _trainability_intro(env, used) + _grid_table(rec, cells)
    lines += ["", "Bold rows are the key comparison (≥3 seeds). ‖W_g‖, ‖W_b‖: global L2 norms of the gate and "
              "power-branch weights of all quadratic layers, mean over finished runs.", ""]
    lines += _instability_table(rec, cells, used) + _rescue_lines(rec, cells)
    imgs = trainability_plots(env, docs)
    lines += [f"![weight norms per epoch]({IMG}/{imgs[0]})", "", f"![final accuracy grid]({IMG}/{imgs[1]})", ""]
    return "\n".join(lines), imgs


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
    accuracy_plot(env, docs)
    lines += [f"![accuracy vs MACs]({IMG}/accuracy_vs_macs.png)", ""]
    return "\n".join(lines)


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
    expressivity_plots(env, docs)
    return "\n".join(lines)


def _first(reg: list[dict[str, Any]], fn: str) -> float:
    return next((r["target_var"] for r in reg if r["function"] == fn), float("nan"))


def _sci(stat: dict[str, Any]) -> str:
    if stat["mean"] is None:
        return "—"
    return f"{stat['mean']:.2e}" + (f" ± {stat['std']:.1e}" if stat["n"] > 1 else "")


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
    warm_plot(env, docs)
    return "\n".join(lines)

