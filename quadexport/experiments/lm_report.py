"""Aggregate the language-model study (:mod:`quadexport.experiments.lm`) and write its report: ``lm.json``,
``lm.md`` (tables, verdict, the command) and ``img/lm_curves.png`` (validation curves).

Verdict rule (stated in the report): an arm *wins beyond seed noise* when its paired difference to the ReLU arm
(same seed) is negative for every seed and its mean is more than two standard errors below zero, at both the same
steps and the same wall-clock; the cost side holds when its onnxruntime latency is at most 1.1x the ReLU arm's at
every batch measured.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from quadexport.experiments.lm import slug
from quadexport.experiments.stats import mean_std

__all__ = ["aggregate_lm", "lm_experiment", "plot_curves", "render_lm"]

LATENCY_LIMIT = 1.1


def _final(rec: dict[str, Any] | None) -> float | None:
    return rec["epochs"][-1]["val_bpb"] if rec and rec.get("status") == "ok" and rec["epochs"] else None


def _at_step(rec: dict[str, Any] | None, step: float) -> float | None:
    """Validation bits per byte of a run at ``step``, linear between its evaluation points (its last value beyond)."""
    if not rec or rec.get("status") != "ok" or not rec["epochs"]:
        return None
    xs, ys, n = [], [], 0
    for e in rec["epochs"]:
        n += e["steps"]
        xs.append(n)
        ys.append(e["val_bpb"])
    if step >= xs[-1]:
        return ys[-1]
    if step <= xs[0]:
        return ys[0]
    i = next(k for k, x in enumerate(xs) if x >= step)
    return ys[i - 1] + (ys[i] - ys[i - 1]) * (step - xs[i - 1]) / (xs[i] - xs[i - 1])


def _timed(recipe: dict[str, Any], results: dict[str, Any], ratios: dict[str, float], label: str, seed: int,
           mode: str | None = None) -> float | None:
    """The same-wall-clock value of an arm and seed: its own run (``equal_time = "runs"``) or its same-steps curve
    read at ``ratio x`` its steps (``"curve"``; ``mode`` overrides the recipe's)."""
    from quadexport.experiments.lm import equal_time_mode

    if (mode or equal_time_mode(recipe)) == "runs":
        return _final(results.get(f"{slug(label)}-s{seed}-time"))
    rec = results.get(f"{slug(label)}-s{seed}")
    steps = rec["labels"]["steps"] if rec else 0
    return _at_step(rec, min(1.0, ratios[label]) * steps) if rec else None


def _paired(recipe: dict[str, Any], results: dict[str, Any], label: str, base: str, suffix: str,
            ratios: dict[str, float] | None = None, mode: str | None = None) -> dict[str, Any]:
    diffs = []
    for s in recipe["run"]["seeds"]:
        a = (_final(results.get(f"{slug(label)}-s{s}")) if not suffix
             else _timed(recipe, results, ratios or {}, label, s, mode))
        b = _final(results.get(f"{slug(base)}-s{s}"))
        diffs.append(None if a is None or b is None else a - b)
    st = mean_std(diffs)
    se = st["std"] / math.sqrt(st["n"]) if st["n"] > 1 else None
    ok = [d for d in diffs if d is not None]
    beyond = bool(ok) and st["n"] > 1 and all(d < 0 for d in ok) and se is not None and st["mean"] < -2 * se
    return {"per_seed": diffs, **st, "se": se, "wins_beyond_noise": beyond,
            "loses_beyond_noise": bool(ok) and st["n"] > 1 and all(d > 0 for d in ok) and se is not None
            and st["mean"] > 2 * se}


def aggregate_lm(recipe: dict[str, Any], study: dict[str, Any]) -> dict[str, Any]:
    """Per arm: final validation bits per byte (same steps; same wall-clock for quadratic arms), paired
    differences to the ReLU arm, steps, latency ratios at each batch, and the verdict."""
    results, lat = study["results"], study["latency"]
    base = next(a["label"] for a in recipe["models"] if a.get("role") == "baseline")
    seeds = recipe["run"]["seeds"]
    arms = {}
    for arm in recipe["models"]:
        label, quad = arm["label"], arm.get("role") != "baseline"
        steps = [results.get(f"{slug(label)}-s{s}") for s in seeds]
        ratios = study["ratios"]
        timed = [_timed(recipe, results, ratios, label, s) for s in seeds] if quad else [_final(r) for r in steps]
        n_time = int(round(min(1.0, ratios[label]) * steps[0]["labels"]["steps"])) if steps[0] else None
        ratio = {b: v[label]["p50_ms"] / v[base]["p50_ms"] for b, v in lat["batches"].items()}
        arms[label] = {
            "neuron": arm["neuron"], "params": _params(arm),
            "steps": steps[0]["labels"]["steps"] if steps[0] else None,
            "time_steps": (results.get(f"{slug(label)}-s{seeds[0]}-time") or {}).get("labels", {}).get("steps",
                                                                                                       n_time),
            "bpb_steps": mean_std(_final(r) for r in steps), "bpb_time": mean_std(timed),
            "diff_steps": None if not quad else _paired(recipe, results, label, base, ""),
            "diff_time": None if not quad else _paired(recipe, results, label, base, "-time", ratios),
            "diff_time_curve": None if not quad else _paired(recipe, results, label, base, "-time", ratios, "curve"),
            "step_ms": 1e3 * study["steptime"]["seconds_per_step"][label],
            "latency_ms": {b: v[label]["p50_ms"] for b, v in lat["batches"].items()}, "latency_ratio": ratio,
        }
    for label, a in arms.items():
        if a["diff_steps"] is not None:
            a["cheap"] = all(r <= LATENCY_LIMIT for r in a["latency_ratio"].values())
            a["wins"] = a["diff_steps"]["wins_beyond_noise"] and a["diff_time"]["wins_beyond_noise"]
    return {"baseline": base, "seeds": seeds, "arms": arms}


def _params(arm: dict[str, Any]) -> int:
    from quadexport.transforms.build import create_model
    from quadexport.zoo import count_params

    return count_params(create_model(arm.get("model", "gpt"), neuron=arm["neuron"]))


def plot_curves(recipe: dict[str, Any], results: dict[str, Any], path: Path,
                step_s: dict[str, float] | None = None) -> Path:
    """Validation bits per byte against steps (same-steps runs) and against training time (both variants): steps
    times the arm's step time measured interleaved (``step_s``; the shared machine's wall-clock per run depends on
    what else ran); mean over seeds, the band is min..max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for i, arm in enumerate(recipe["models"]):
        color = f"C{i}"
        for suffix, ls in (("", "-"), ("-time", "--")):
            recs = [results.get(f"{slug(arm['label'])}-s{s}{suffix}") for s in recipe["run"]["seeds"]]
            recs = [r for r in recs if r and r.get("status") == "ok" and r["epochs"]]
            if not recs:
                continue
            n = min(len(r["epochs"]) for r in recs)
            y = np.array([[e["val_bpb"] for e in r["epochs"][:n]] for r in recs])
            steps = np.cumsum([e["steps"] for e in recs[0]["epochs"][:n]])
            secs = (np.cumsum([e["steps"] for e in recs[0]["epochs"][:n]]) * step_s[arm["label"]] if step_s else
                    np.mean([np.cumsum([e["seconds"] for e in r["epochs"][:n]]) for r in recs], axis=0))
            lab = arm["label"] + (" (same wall-clock)" if suffix else "")
            if not suffix:
                ax1.plot(steps, y.mean(0), ls, color=color, label=lab)
                ax1.fill_between(steps, y.min(0), y.max(0), color=color, alpha=0.2)
            ax2.plot(secs, y.mean(0), ls, color=color, label=lab)
    xl2 = ("training time (s): steps x the measured step time" if step_s else
           "training seconds (mean over seeds; shared machine)")
    for ax, xl in ((ax1, "optimizer steps"), (ax2, xl2)):
        ax.set_xlabel(xl)
        ax.set_ylabel("validation bits per byte")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_ylim(top=min(ax.get_ylim()[1], 4.0))
    ax1.set_title("same steps")
    ax2.set_title("against training time (one thread)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def verdict(summary: dict[str, Any]) -> list[str]:
    """The report's conclusion, one line per quadratic arm, by the rule in the module docstring."""
    lines = []
    for label, a in summary["arms"].items():
        if a["diff_steps"] is None:
            continue
        lat = ", ".join(f"{r:.2f}x at batch {b}" for b, r in a["latency_ratio"].items())
        if a["wins"] and a["cheap"]:
            lines.append(f"- **{label} wins beyond seed noise at <= {LATENCY_LIMIT}x the ReLU latency** ({lat}).")
        elif a["wins"]:
            lines.append(f"- {label} wins beyond seed noise at both equal steps and equal wall-clock, but **not at "
                         f"<= {LATENCY_LIMIT}x the ReLU latency** ({lat}).")
        else:
            which = [k for k, d in (("same steps", a["diff_steps"]), ("same wall-clock", a["diff_time"]))
                     if d["wins_beyond_noise"]]
            worse = [k for k, d in (("same steps", a["diff_steps"]), ("same wall-clock", a["diff_time"]))
                     if d["loses_beyond_noise"]]
            lines.append(f"- {label} does **not** win beyond seed noise at both costs"
                         + (f": it does at the {', '.join(which)} only" if which else "")
                         + (f"; it is worse beyond seed noise at {', '.join(worse)}" if worse else "")
                         + f" (latency {lat}).")
    return lines


def render_lm(recipe: dict[str, Any], study: dict[str, Any], docs: Path, command: str) -> Path:
    """Write ``docs/lm.md`` and ``docs/img/lm_curves.png`` (plus the aggregated ``lm.json`` beside the results)."""
    from quadexport.experiments.lm_doc import markdown

    summary = aggregate_lm(recipe, study)
    img = plot_curves(recipe, study["results"], docs / "img" / "lm_curves.png",
                      study["steptime"]["seconds_per_step"])
    md = docs / "lm.md"
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(markdown(recipe, study, summary, verdict(summary), command, img.relative_to(docs)))
    return md


def save_summary(path: Path, recipe: dict[str, Any], study: dict[str, Any], command: str) -> None:
    summary = aggregate_lm(recipe, study)
    runs = [{k: r.get(k) for k in ("key", "labels", "status", "epochs", "wall_s", "cpu_s", "run_dir")}
            for r in study["results"].values()]
    path.write_text(json.dumps({"recipe": recipe, "command": command, "summary": summary, "steptime":
                                study["steptime"], "latency": study["latency"], "wall_s": study["wall_s"],
                                "runs": runs}, indent=1))


def lm_experiment(budget: str, out: Path, docs: Path, jobs: int, threads: int, command: str) -> Path:
    """``quadexport experiments lm``: run the study (resuming what is done), save ``<out>/lm.json``, write the
    report into ``docs``; returns the markdown path."""
    import logging

    from quadexport.experiments.lm import run_lm
    from quadexport.experiments.recipes import load_experiment_recipe

    recipe = load_experiment_recipe("lm", budget)
    logging.getLogger(__name__).info("== lm (%s) -> %s", budget, out)
    study = run_lm(recipe, out, jobs, threads)
    save_summary(out / "lm.json", recipe, study, command)
    return render_lm(recipe, study, docs, command)
