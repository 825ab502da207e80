"""Repeatability check of ``quadexport bench``: run the same benchmark N times (each in a fresh process, each after
waiting for a quiet machine) and compare the ratios between runs.

Usage (the command behind docs/benchmarks.md)::

    .venv/bin/python tools/bench_report.py --root reports/bench-docs --runs 2 --max-load 1.0 -- \\
        resnet8 resnet20 resnet56 --neuron fan --batch 1 64 --mode decomposed function fused torch --threads 2

Writes ``ROOT/run<i>/`` (bench.json, bench.md, PNGs), ``ROOT/ratios.png`` (quadratic / ReLU-twin ratio of every
run vs the MAC ratio) and ``ROOT/compare.md``: every latency ratio (quadratic / baseline), ORT/torch ratio and mode
ratio of each run side by side with the relative spread between runs (|a - b| / mean), and the load average
before and after each run. Exit code 1 when a ratio spreads by more than ``--tolerance`` (default 10%).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fmt_ratio(x: float) -> str:
    """Three significant digits, as in bench.md (a ratio of 0.0037 never reads 0.00)."""
    return f"{x:.3g}"


def wait_quiet(max_load: float, timeout: float, poll: float = 10.0) -> tuple[float, float]:
    """Wait until the 1-minute load average is <= max_load (or timeout). Returns (load, seconds waited)."""
    t0 = time.monotonic()
    while True:
        load = os.getloadavg()[0]
        waited = time.monotonic() - t0
        if load <= max_load or waited >= timeout:
            return load, waited
        print(f"[bench_report] load {load:.2f} > {max_load}; waiting ({waited:.0f}/{timeout:.0f} s)", flush=True)
        time.sleep(poll)


def _spread(vals: list[float]) -> float:
    m = sum(vals) / len(vals)
    return (max(vals) - min(vals)) / m if m else 0.0


def compare(reports: list[dict], tolerance: float) -> tuple[str, float]:
    """Markdown comparison of the runs' ratios; returns (markdown, worst spread of the quadratic/baseline ratios)."""
    n = len(reports)
    runs = " | ".join(f"run {i + 1}" for i in range(n))
    lines = ["| run | date | load avg before | load avg after | wall s |", "|---|---|---|---|--:|"]
    for i, r in enumerate(reports):
        e = r["environment"]
        lines.append(f"| {i + 1} | {e.get('date')} | {e.get('load_average')} | {e.get('load_average_after')} | "
                     f"{r.get('_wall_s', 0):.0f} |")
    cpus = " | ".join(f"CPU run {i + 1}" for i in range(n))
    lines += ["", "### Latency ratio (p50 quadratic / p50 baseline) vs MAC ratio", "",
              "p50 wall-clock latency ratios (the issue's figure) and, to the right, ratios of the p50 process CPU "
              "time per run (with 1 thread: compute without the time the process was preempted).", "",
              f"| quadratic | baseline | role | batch | mode | MAC ratio | {runs} | spread | {cpus} | CPU spread |",
              "|---|---|---|--:|---|--:|" + "--:|" * n + "--:|" + "--:|" * n + "--:|"]
    worst = 0.0
    keyed = [{(x["quadratic"], x["baseline"], x["batch"], x["mode"]): x for x in r["ratios"]} for r in reports]
    for key, x in keyed[0].items():
        vals = [k[key]["latency_ratio"] for k in keyed if key in k]
        if len(vals) < n:
            continue
        s = _spread(vals)
        worst = max(worst, s)
        flag = " ⚠" if s > tolerance else ""
        cvals = [k[key].get("cpu_ratio") for k in keyed]
        cpu = (" | ".join(fmt_ratio(v) for v in cvals) + f" | {100 * _spread(cvals):.1f}%"
               if all(isinstance(v, (int, float)) for v in cvals) else " | ".join("–" for _ in range(n + 1)))
        lines.append(f"| {key[0]} | {key[1]} | {x['role']} | {key[2]} | {key[3]} | {fmt_ratio(x['mac_ratio'])} | "
                     + " | ".join(fmt_ratio(v) for v in vals) + f" | {100 * s:.1f}%{flag} | {cpu} |")
    lines += ["", "### onnxruntime / torch eager (p50; < 1: ORT faster)", "",
              f"| model | mode | batch | {runs} | spread |", "|---|---|--:|" + "--:|" * n + "--:|"]
    keyed = [{(x["model"], x["mode"], x["batch"]): x for x in r["ort_vs_torch"]} for r in reports]
    for key in keyed[0]:
        vals = [k[key]["ratio"] for k in keyed if key in k]
        if len(vals) == n:
            lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(fmt_ratio(v) for v in vals)
                         + f" | {100 * _spread(vals):.1f}% |")
    keyed = [{(x["model"], x["mode"], x["batch"]): x for x in r["mode_ratios"]} for r in reports]
    if keyed[0]:
        lines += ["", "### Export mode / decomposed (p50)", "",
                  f"| model | mode | batch | {runs} | spread |", "|---|---|--:|" + "--:|" * n + "--:|"]
        for key in keyed[0]:
            vals = [k[key]["ratio"] for k in keyed if key in k]
            if len(vals) == n:
                lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(fmt_ratio(v) for v in vals)
                             + f" | {100 * _spread(vals):.1f}% |")
    lines += ["", "### p50 latency (ms)", "", f"| model | mode | batch | {runs} |", "|---|---|--:|" + "--:|" * n]
    keyed = [{(x["id"], x["mode"], x["batch"]): x for x in r["rows"]} for r in reports]
    for key in keyed[0]:
        vals = [k[key]["p50_ms"] for k in keyed if key in k]
        if len(vals) == n:
            lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
    lines += _warnings(reports)
    lines += ["", f"Worst spread of a quadratic/baseline latency ratio between runs: {100 * worst:.1f}% "
                  f"(tolerance {100 * tolerance:.0f}%)."]
    return "\n".join(lines) + "\n", worst


def _warnings(reports: list[dict]) -> list[str]:
    """The warnings each run's bench.json carries (busy machine, unsteady rows; absent in older files)."""
    lines = []
    for i, r in enumerate(reports):
        lines += [f"- run {i + 1}: ⚠ {w}" for w in r.get("warnings", [])]
    return ["", "### Warnings of the runs", ""] + lines if lines else []


def plot_ratios(reports: list[dict], path: Path) -> Path:
    """One panel per batch size: quadratic / ReLU-twin p50 latency ratio of each run (one marker per run) per model
    and export mode, with the MAC ratio (the physical bound) as a black bar. Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    twin = [x for x in reports[0]["ratios"] if x["role"] == "twin"]
    batches = sorted({x["batch"] for x in twin})
    models = list(dict.fromkeys(x["quadratic"] for x in twin))
    modes = list(dict.fromkeys(x["mode"] for x in twin))
    keyed = [{(x["quadratic"], x["batch"], x["mode"]): x for x in r["ratios"] if x["role"] == "twin"}
             for r in reports]
    fig, axes = plt.subplots(1, len(batches), figsize=(6.2 * len(batches), 4.2), sharey=True)
    axes = list(axes) if hasattr(axes, "__len__") else [axes]
    w = 0.8 / len(modes)
    for ax, b in zip(axes, batches):
        for i, m in enumerate(models):
            for j, mode in enumerate(modes):
                xpos = i + (j - (len(modes) - 1) / 2) * w
                vals = [k[(m, b, mode)]["latency_ratio"] for k in keyed if (m, b, mode) in k]
                ax.scatter([xpos] * len(vals), vals, color=f"C{j}", s=22, zorder=3,
                           label=mode if i == 0 else None)
            mac = keyed[0][(m, b, modes[0])]["mac_ratio"] if (m, b, modes[0]) in keyed[0] else None
            if mac:
                ax.hlines(mac, i - 0.45, i + 0.45, color="k", lw=1.5, label="MAC ratio" if i == 0 else None)
        ax.set_xticks(range(len(models)), models)
        ax.set_title(f"batch {b}: quadratic / ReLU twin, {len(reports)} runs")
        ax.grid(alpha=0.3, axis="y")
        ax.set_ylim(0, None)
    axes[0].set_ylabel("p50 latency ratio")
    axes[0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                usage="%(prog)s [options] -- BENCH ARGS (as for `quadexport bench`, without --out)")
    p.add_argument("--root", default="reports/bench-docs", help="output folder (run<i>/ and compare.md)")
    p.add_argument("--runs", type=int, default=2, help="number of benchmark runs")
    p.add_argument("--max-load", type=float, default=1.0, help="wait until the 1-min load average is <= this")
    p.add_argument("--wait", type=float, default=1800.0, help="give up waiting after this many seconds per run")
    p.add_argument("--tolerance", type=float, default=0.10, help="max relative spread of a ratio between runs")
    p.add_argument("--compare-only", action="store_true", help="only (re)write compare.md from existing runs")
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    args = a.bench_args[1:] if a.bench_args[:1] == ["--"] else a.bench_args
    root = Path(a.root)
    reports = []
    for i in range(1, a.runs + 1):
        out = root / f"run{i}"
        if not a.compare_only:
            load, waited = wait_quiet(a.max_load, a.wait)
            print(f"[bench_report] run {i}/{a.runs}: load {load:.2f} after waiting {waited:.0f} s", flush=True)
            t0 = time.monotonic()
            cmd = [sys.executable, "-m", "quadexport", "bench", *args, "--out", str(out), "--quiet"]
            rc = subprocess.call(cmd, cwd=ROOT)
            if rc != 0:
                print(f"[bench_report] run {i} failed with exit code {rc}", file=sys.stderr)
                return rc
            d = json.loads((out / "bench.json").read_text())
            d["_wall_s"] = time.monotonic() - t0
            (out / "wall_s.txt").write_text(f"{d['_wall_s']:.1f}\n")
        else:
            d = json.loads((out / "bench.json").read_text())
            w = out / "wall_s.txt"
            d["_wall_s"] = float(w.read_text()) if w.exists() else 0.0
        reports.append(d)
    md, worst = compare(reports, a.tolerance)
    cmdline = reports[0]["config"].get("command", "")
    md = f"# Repeatability of `quadexport bench` ({a.runs} runs)\n\n```\n{cmdline}\n```\n\n" + md
    (root / "compare.md").write_text(md)
    plot_ratios(reports, root / "ratios.png")
    print(md)
    return 0 if worst <= a.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
