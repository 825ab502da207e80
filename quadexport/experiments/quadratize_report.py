"""Tables, JSON and the plot of the quadratize study (:func:`write_report`).

Accuracy is each run's final test accuracy; "paired Δ" is the mean ± sd over seeds of (run − control of the same
seed). Latency is the p50 ratio (decomposed export) to the first ``[bench]`` config's run, from one interleaved
bench; a config whose run was not timed takes the ratio of a timed config with the same neuron (the architecture is
the same; a ReLU config reads 1.00 when the reference is ReLU).
"""

from __future__ import annotations

import logging
import statistics
from pathlib import Path
from typing import Any

from quadexport.experiments.compression import write_json
from quadexport.experiments.quadratize_study import QuadratizeStudy

log = logging.getLogger(__name__)


def accuracies(records: dict[str, dict[str, Any]]) -> dict[str, dict[int, float]]:
    """``{config: {seed: test accuracy (fraction)}}`` of every finished run."""
    out: dict[str, dict[int, float]] = {}
    for r in records.values():
        if r.get("exp") == "quadratize" and r["status"] == "ok" and r["final_acc"] is not None:
            out.setdefault(r["labels"]["config"], {})[int(r["labels"]["seed"])] = float(r["final_acc"])
    return out


def mean_sd(v: list[float]) -> str:
    return f"{100 * statistics.mean(v):.2f} ± {100 * statistics.stdev(v):.2f}" if len(v) > 1 else f"{100 * v[0]:.2f}"


def paired(a: dict[int, float], b: dict[int, float]) -> str:
    """Mean ± sd over the common seeds of ``a − b`` in pp, with their count."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return "–"
    d = [100 * (a[s] - b[s]) for s in seeds]
    sd = f" ± {statistics.stdev(d):.2f}" if len(d) > 1 else ""
    return f"{statistics.mean(d):+.2f}{sd} (n={len(d)})"


def latency(bench: dict[str, Any] | None, ref: str) -> dict[str, dict[int, float]]:
    """``{run dir name: {batch: p50 ratio to the run of config ref}}`` from one interleaved bench report."""
    if not bench:
        return {}
    p50 = {(Path(r.get("source") or r["id"]).name, r["batch"]): r["p50_ms"]
           for r in bench["rows"] if r.get("mode") == "decomposed"}
    base = {b: v for (m, b), v in p50.items() if m.rsplit("-s", 1)[0] == ref}
    out: dict[str, dict[int, float]] = {}
    for (m, b), v in p50.items():
        if b in base:
            out.setdefault(m, {})[b] = v / base[b]
    return out


def table_md(study: QuadratizeStudy, runs: dict[str, dict[int, float]], lat: dict[str, dict[int, float]],
             step: dict[str, dict[str, float]]) -> str:
    """The accuracy table (paired deltas against every control that ran, step-time ratio) and the latency table."""
    controls = {c: h for c, h in study.settings.get("controls", {}).items() if c in runs}
    head = " | ".join(f"{label} (paired Δ pp)" for label in controls.values())
    lines = [f"| model (fine-tune) | seeds | test acc % (mean ± sd) | {head} | train step × ReLU |",
             "|---|---|---|" + "---|" * len(controls) + "---|"]
    relu_first = [c for c in study.configs() if study.neuron(c) == "relu"]
    for cfg in sorted(runs, key=lambda c: (c not in relu_first, c)):
        accs = runs[cfg]
        st = step.get(cfg, {}).get("ratio")
        deltas = " | ".join(paired(accs, runs.get(c, {})) if c != cfg else "–" for c in controls)
        lines.append(f"| {cfg} | {len(accs)} | {mean_sd(list(accs.values()))} | {deltas} | "
                     f"{f'{st:.2f}' if st else '–'} |")
    if lat:
        batches = sorted({b for d in lat.values() for b in d})
        ref = study.recipe["bench"]["configs"][0]
        lines += ["", f"| run | latency × {ref}, " + " | ".join(f"batch {b}" for b in batches) + " |",
                  "|---|" + "---|" * len(batches)]
        for m, d in sorted(lat.items()):
            lines.append(f"| {m} | " + " | ".join(f"{d.get(b, float('nan')):.2f}" for b in batches) + " |")
    return "\n".join(lines) + "\n"


def write_report(study: QuadratizeStudy, records: dict[str, dict[str, Any]], bench: dict[str, Any] | None,
                 step: dict[str, dict[str, float]], docs: Path, command: str, wall_s: float) -> Path:
    """``<out>/quadratize.json`` (the aggregated study) and ``<docs>/quadratize/``: ``table.md``, ``study.json``
    (accuracies, latency ratios, step times), ``steptime.json`` and ``study.png``; returns the table's path."""
    from quadexport.experiments.quadratize_plots import accuracy_vs_latency
    from quadexport.experiments.suite import Envelope

    runs = accuracies(records)
    ref = (study.recipe.get("bench", {}).get("configs") or [None])[0]
    lat = latency(bench, ref) if ref else {}
    md = table_md(study, runs, lat, step)
    summary = {"runs": runs, "latency": lat, "steptime": step, "table": md}
    env = Envelope("quadratize", study.recipe["_budget"], study.recipe, command, summary,
                   [r for r in records.values() if r.get("exp") == "quadratize"], wall_s)
    write_json(study.out / "quadratize.json", env.to_dict())
    folder = docs / "quadratize"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "table.md").write_text(md)
    write_json(folder / "study.json", {"runs": runs, "latency": lat, "steptime": step})
    write_json(folder / "steptime.json", step)
    control = study.settings.get("time_control")
    if lat and control in runs:
        batches = sorted({b for d in lat.values() for b in d})
        accuracy_vs_latency(study, runs, lat, control, batches, folder / "study.png")
    log.info("== quadratize: %s", folder / "table.md")
    return folder / "table.md"


__all__ = ["accuracies", "latency", "mean_sd", "paired", "table_md", "write_report"]
