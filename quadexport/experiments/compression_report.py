"""The compression study's table and aggregated JSON, from its timing runs (:func:`rows`, :func:`table_md`,
:func:`write_report`).

Ratios are p50 latency over the ReLU twin's p50 in the same interleaved timing run; ``ratio_runs<b>`` holds one
ratio per timing run, ``ms<b>`` and ``ratio<b>`` are run 1's. Accuracy deltas are against the source (quadratic)
model. ``seed`` models (same graph as their ReLU model) take that model's latency.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from quadexport.experiments.compression import CompressionStudy, read_json, write_json

log = logging.getLogger(__name__)


def _row(e: dict[str, Any], base: str, batches: list[int], lats: list[dict[tuple[str, int], dict[str, Any]]],
         ref_acc: float | None) -> dict[str, Any]:
    k, lat = e["key"], lats[0]
    row = {"label": k, "kind": e["kind"], "test_acc": e["test_acc"], "macs": e["macs"]}
    for b in batches:
        if (k, b) in lat and (base, b) in lat:
            row[f"ms{b}"] = lat[(k, b)]["p50_ms"]
            row[f"ratio{b}"] = lat[(k, b)]["p50_ms"] / lat[(base, b)]["p50_ms"]
            row[f"ratio_min{b}"] = lat[(k, b)]["min_ms"] / lat[(base, b)]["min_ms"]
            row[f"ratio_runs{b}"] = [o[(k, b)]["p50_ms"] / o[(base, b)]["p50_ms"] for o in lats
                                     if (k, b) in o and (base, b) in o]
    row["delta_pp"] = 100 * (e["test_acc"] - ref_acc) if ref_acc is not None and e["test_acc"] is not None else None
    return row


def _seed_rows(study: CompressionStudy, rows: list[dict[str, Any]], records: dict[str, dict[str, Any]],
               ref_acc: float | None) -> list[dict[str, Any]]:
    """Rows of the ``seed`` models: the latency of the ReLU model with the same model and neuron."""
    out = []
    for m in study.models():
        rec = records.get(m["label"])
        if m["role"] != "seed" or rec is None or rec["final_acc"] is None:
            continue
        same = next((r for r in rows for o in study.models() if o["role"] == "relu" and o["label"] == r["label"]
                     and (o["model"], o["neuron"]) == (m["model"], m["neuron"])), None)
        if same is None:
            continue
        acc = rec["final_acc"]
        out.append({**same, "label": f"{same['label']} (seed {m.get('seed')}; same graph)",
                    "kind": f"relu, seed {m.get('seed')}", "test_acc": acc,
                    "delta_pp": 100 * (acc - ref_acc) if ref_acc is not None else None})
    return out


def rows(study: CompressionStudy, timings: list[dict[str, Any]], records: dict[str, dict[str, Any]]
         ) -> list[dict[str, Any]]:
    """One row per timed model (module docstring), then the ``seed`` rows."""
    t = timings[0]
    lats = [{(r["model"], r["batch"]): r for r in u["rows"]} for u in timings]
    base = study.settings["twin"]
    src = next((e for e in t["entries"] if e["label"] == study.settings["source"]), None)
    ref = src["test_acc"] if src else None
    out = [_row(e, base, t["config"]["batches"], lats, ref) for e in t["entries"]]
    return out + _seed_rows(study, out, records, ref)


def _cells(r: dict[str, Any], batches: list[int]) -> list[str]:
    cells = []
    for b in batches:
        if f"ms{b}" in r:
            cells += [f"{r[f'ms{b}']:.3f}", " / ".join(f"{v:.2f}" for v in r[f"ratio_runs{b}"])]
        else:
            cells += ["–", "–"]
    return cells


def table_md(rws: list[dict[str, Any]], timings: list[dict[str, Any]], source: str, twin: str) -> str:
    """The markdown table of ``docs/compression.md`` and its timing note."""
    t = timings[0]
    batches = t["config"]["batches"]
    runs_hdr = " / ".join(f"run {i + 1}" for i in range(len(timings)))
    lines = [f"| model | kind | test acc | Δ vs {source} | MACs | " +
             " | ".join(f"b={b}: ms | b={b}: × {twin} ({runs_hdr})" for b in batches) + " |",
             "|---|---|--:|--:|--:|" + "--:|--:|" * len(batches)]
    for r in rws:
        acc = "–" if r["test_acc"] is None else f"{100 * r['test_acc']:.2f}%"
        d = "–" if r["delta_pp"] is None else f"{r['delta_pp']:+.2f} pp"
        macs = "–" if not r["macs"] else f"{r['macs'] / 1e6:.1f}M"
        lines.append(f"| {r['label']} | {r['kind']} | {acc} | {d} | {macs} | " + " | ".join(_cells(r, batches)) + " |")
    loads = "".join(f"; run {i + 2}: {u['load_before']} → {u['load_after']}" for i, u in enumerate(timings[1:]))
    lines += ["", f"onnxruntime {t['config'].get('ort', '')} CPU, {t['config']['threads'] or 'default'} intra-op "
              f"thread(s), p50 of interleaved runs (≥{t['config']['min_seconds']} s per model and batch); ms: run 1; "
              f"load average {t['load_before']} → {t['load_after']}{loads}."]
    return "\n".join(lines) + "\n"


def write_report(study: CompressionStudy, timings: list[dict[str, Any]], records: dict[str, dict[str, Any]],
                 docs: Path, command: str, wall_s: float) -> Path:
    """``<out>/compression.json`` (the aggregated study), ``<docs>/compression/table.md`` and ``study.json``, and the
    plots ``<docs>/img/compression_pareto.png`` / ``compression_scores.png``; returns the table's path."""
    from quadexport.experiments.compression_plots import pareto_plot, scores_plot
    from quadexport.experiments.suite import Envelope

    rws = rows(study, timings, records)
    s = study.settings
    md = table_md(rws, timings, s["source"], s["twin"])
    sweep = read_json(study.root / "sweep.json")
    lat = read_json(study.root / f"latsweep-t{study.threads}.json")
    summary = {"rows": rws, "timing": timings[0]["config"],
               "load": [[u["load_before"], u["load_after"]] for u in timings], "table": md,
               "sweep": sweep and {k: sweep[k] for k in ("test_acc", "rows")},
               "latsweep": lat and {k: lat[k] for k in ("rows", "info", "config")}}
    env = Envelope("compression", study.recipe["_budget"], study.recipe, command, summary,
                   [r for r in records.values() if r.get("exp") == "compression"], wall_s)
    write_json(study.out / "compression.json", env.to_dict())
    (docs / "compression").mkdir(parents=True, exist_ok=True)
    table = docs / "compression" / "table.md"
    table.write_text(md)
    write_json(docs / "compression" / "study.json", {"rows": rws, "timing": timings[0]["config"],
                                                     "load": [timings[0]["load_before"], timings[0]["load_after"]]})
    img = docs / "img"
    pareto_plot(rws, timings[0]["config"], s["source"], s["twin"], img / "compression_pareto.png")
    if sweep is not None:
        scores_plot(sweep, img / "compression_scores.png")
    log.info("== compression: %s, %s", table, img / "compression_pareto.png")
    return table


__all__ = ["rows", "table_md", "write_report"]
