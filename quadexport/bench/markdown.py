"""``bench.md``: the Markdown rendering of a :class:`~quadexport.bench.report.BenchReport` (``rep`` below; typed
``Any`` because the report module imports this one)."""

from __future__ import annotations

from typing import Any

from quadexport.bench.rows import fmt_ratio, fmt_spread

__all__ = ["MARKDOWN_HEAD", "render_markdown"]

MARKDOWN_HEAD = ["model", "neuron", "role", "mode", "batch", "p50 ms", "p90 ms", "p99 ms", "mean ± sd ms",
                 "spread", "samples/s", "MACs", "params", "ONNX MB", "vs", "latency ratio", "MAC ratio", "ORT/torch",
                 "iters"]


def _setup(rep: Any) -> list[str]:
    c, e = rep.config, rep.environment
    lines = ["# quadexport bench", ""]
    if c.get("command"):
        lines += ["```", c["command"], "```", ""]
    return lines + [
        f"- {e.get('date')}, {e.get('cpu')} ({e.get('usable_cores')} usable cores), runtime "
        f"`{e.get('runtime') or 'onnxruntime'}`, provider `{e.get('provider')}`, "
        f"{c.get('threads')} thread(s), ORT opt level `{c.get('opt_level')}`",
        f"- torch {e.get('torch')}, onnx {e.get('onnx')}, onnxruntime {e.get('onnxruntime')}, numpy "
        f"{e.get('numpy')}; load average before {e.get('load_average')}, after {e.get('load_average_after')}",
        f"- warm-up {c.get('warmup')}, then interleaved round-robin chunks (~{c.get('chunk_seconds')} s) until >= "
        f"{c.get('min_iters')} runs and >= {c.get('min_seconds')} s per row; input shape "
        f"{tuple(c.get('input_shape') or ())}",
        "- *vs*: the ReLU twin the row is compared with (quadratic rows: their twin; MAC-matched rows: the twin of "
        "their quadratic model); ratios are p50 latency / p50 latency and MACs / MACs. ReLU models have no "
        "quadratic layer, so every ONNX mode is the same graph: they are timed once as `decomposed` and ONNX-mode "
        "rows of quadratic models are compared with that. *spread*: relative spread of the row's timings between "
        "chunks.", ""]


def _rows(rep: Any) -> list[str]:
    ovt = {(x.id, x.mode, x.batch): x.ratio for x in rep.ort_vs_torch}
    lines = ["| " + " | ".join(MARKDOWN_HEAD) + " |",
             "|" + "|".join("---" if i < 4 else "--:" for i in range(len(MARKDOWN_HEAD))) + "|"]
    for r in rep.rows:
        ref = rep._reference(r)
        cells = [r.model, r.neuron, r.role, r.mode, str(r.batch), f"{r.p50_ms:.3f}", f"{r.p90_ms:.3f}",
                 f"{r.p99_ms:.3f}", f"{r.mean_ms:.3f} ± {r.stdev_ms:.3f}", fmt_spread(r.spread),
                 f"{r.throughput:.0f}", f"{r.macs / 1e6:.2f}M", f"{r.params / 1e6:.3f}M",
                 f"{r.file_bytes / 1e6:.2f}" if r.file_bytes else "–", ref.id if ref else "–",
                 fmt_ratio(r.p50_ms / ref.p50_ms) if ref else "–", fmt_ratio(r.macs / ref.macs) if ref else "–",
                 fmt_ratio(ovt.get((r.id, r.mode, r.batch))), str(r.iters)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _ratio_sections(rep: Any) -> list[str]:
    lines: list[str] = []
    if rep.ratios:
        lines += ["", "## Quadratic vs baselines (p50)", "",
                  "| quadratic | baseline | role | batch | mode | latency ratio | MAC ratio | CPU-time ratio | "
                  "spread |", "|---|---|---|--:|---|--:|--:|--:|--:|"]
        for x in rep.ratios:
            flag = "" if x.trusted else " ⚠"
            lines.append(f"| {x.quadratic} | {x.baseline} | {x.role} | {x.batch} | {x.mode} | "
                         f"{fmt_ratio(x.latency_ratio)}{flag} | {fmt_ratio(x.mac_ratio)} | "
                         f"{fmt_ratio(x.cpu_ratio) if x.cpu_ratio else '–'} | {fmt_spread(x.spread)} |")
    if rep.ort_vs_torch:
        lines += ["", "## onnxruntime vs torch eager (p50 ORT / p50 torch; < 1: ORT faster)", "",
                  "| model | mode | batch | ORT ms | torch ms | ratio |", "|---|---|--:|--:|--:|--:|"]
        lines += [f"| {x.model} | {x.mode} | {x.batch} | {x.ort_p50_ms:.3f} | {x.torch_p50_ms:.3f} | "
                  f"{fmt_ratio(x.ratio)} |" for x in rep.ort_vs_torch]
    if rep.mode_ratios:
        lines += ["", "## Export modes (p50 of the mode / p50 of decomposed)", "",
                  "| model | batch | mode | p50 ms | ratio |", "|---|--:|---|--:|--:|"]
        lines += [f"| {x.model} | {x.batch} | {x.mode} | {x.p50_ms:.3f} | {fmt_ratio(x.ratio)} |"
                  for x in rep.mode_ratios]
    return lines


def render_markdown(rep: Any) -> str:
    """Setup, warnings, one row per measurement (ratio next to MAC ratio), pair ratios, ORT vs torch, modes."""
    lines = _setup(rep)
    warnings = rep.warnings
    if warnings:
        lines += ["## Warnings", ""] + [f"- ⚠ {w}" for w in warnings] + [""]
    lines += _rows(rep) + _ratio_sections(rep)
    if rep.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in rep.notes]
    noted = [m for m in rep.models if m.get("note")]
    if noted:
        lines += [""] + [f"- `{m['id']}`: {m['note']}" for m in noted]
    return "\n".join(lines) + "\n"
