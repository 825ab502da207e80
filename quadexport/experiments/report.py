"""Render ``docs/results.md`` (+ ``docs/img/*.png``) from the aggregated JSON of the experiments.

Used by :func:`quadexport.experiments.suite.report`; reads only ``<out>/<experiment>.json``. Every number and every
sentence of the findings is computed from those files, so the page can be regenerated at any time.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from quadexport.experiments.recipes import EXPERIMENTS, ROOT
from quadexport.experiments.report_sections import accuracy_md, expressivity_md, trainability_md, warmstart_md
from quadexport.experiments.report_sections import dur as _dur
from quadexport.experiments.stats import fmt_ms


def _load(out: Path) -> dict[str, dict[str, Any]]:
    data = {}
    for e in EXPERIMENTS:
        p = out / f"{e}.json"
        if p.exists():
            data[e] = json.loads(p.read_text())
    return data



def _headline_trainability(tr: dict[str, Any]) -> list[str]:
    """Findings of the trainability experiment."""
    out = []
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
    return out


def _headline_accuracy(ac: dict[str, Any]) -> list[str]:
    """Findings of the accuracy experiment."""
    out = []
    rows = ac["summary"]["rows"]
    for d in ac["summary"]["deltas"]:
        verdict = _verdict(d["delta"])
        pair = [r for r in rows if r["dataset"] == d["dataset"] and r["group"] == d["group"]
                and r["label"] in (d["quadratic"], d["baseline"])]
        noisy = [r["label"] for r in pair if (r["acc"]["std"] or 0) > 0.05]
        if noisy:
            verdict += f"; caution: {', '.join(noisy)} unstable across seeds (std > 5 pp)"
        kind = "same depth" if d["role"] == "twin" else "MAC-matched"
        out.append(f"{d['dataset']}: {d['quadratic']} − {d['baseline']} ({kind})"
                   f" = {fmt_ms(d['delta'])} pp ({verdict}; Q better in {d['wins']}/{d['n']} seeds).")
    nrows = [r for r in ac["summary"]["rows"] if r["group"] == "neurons" and r["acc"]["mean"] is not None]
    if nrows:
        best = max(nrows, key=lambda r: r["acc"]["mean"])
        worst = min(nrows, key=lambda r: r["acc"]["mean"])
        out.append(f"Neuron types ({nrows[0]['dataset']}, resnet8): best {best['neuron']} {fmt_ms(best['acc'])}%, "
                   f"worst {worst['neuron']} {fmt_ms(worst['acc'])}%.")
    return out


def _headline_expressivity(ex: dict[str, Any]) -> list[str]:
    """Findings of the expressivity experiment."""
    out = []
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
    return out


def _headline_warmstart(ws: dict[str, Any]) -> list[str]:
    """Findings of the warm-start experiment."""
    out = []
    v = ws["summary"]["variants"]
    if v.get("warm", {}).get("n") and v.get("scratch", {}).get("n"):
        out.append(f"Warm start: QResNet8 warm {fmt_ms(v['warm']['final_acc'])}% vs scratch "
                   f"{fmt_ms(v['scratch']['final_acc'])}% vs ReLU twin with the same total epochs "
                   f"{fmt_ms(v.get('twin_long', {}).get('final_acc', {}))}%; epochs to reach the scratch accuracy: "
                   f"warm {v['warm']['epochs_to_target']}, scratch {v['scratch']['epochs_to_target']}.")
    return out


def headline(data: dict[str, dict[str, Any]]) -> list[str]:
    """Findings sentences computed from the results (no hand-written numbers)."""
    parts = (("trainability", _headline_trainability), ("accuracy", _headline_accuracy),
             ("expressivity", _headline_expressivity), ("warmstart", _headline_warmstart))
    return [line for exp, fn in parts if exp in data for line in fn(data[exp])]


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
    try:
        return str(p.resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


__all__ = ["render", "headline"]
