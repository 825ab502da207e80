"""The quadratize study of docs/quadratize.md: a trained ReLU ResNet20 made quadratic and fine-tuned, against ReLU
controls, paired by seed.

    python tools/quadratize_study.py steptime --out docs/quadratize/steptime.json   # interleaved train steps
    python tools/quadratize_study.py report RUNS_DIR --latency BENCH_DIR/bench.json \\
        --steptime docs/quadratize/steptime.json --out docs/quadratize/study.json     # tables (markdown on stdout)

RUNS_DIR holds run dirs named ``<config>-s<seed>`` (``base``, ``relu-ft``, ``relu-adapter``, ``relu-scratch10``,
``relu-time14``, ``fan-full``, ``fan-adapter``, ``lr4-full``, ``lr16-adapter`` ...); the commands that trained them
are in docs/quadratize.md. Accuracy is each run's final test accuracy (full 10k Fashion-MNIST test set).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

CONTROLS = {"relu-ft": "vs ReLU fine-tuned", "relu-adapter": "vs ReLU, BN + head fine-tuned",
            "relu-scratch10": "vs ReLU from scratch, same epochs", "relu-time14": "vs ReLU from scratch, same CPU time"}
"""ReLU controls (column headers): the base fine-tuned the same 2 epochs, fully and with only BatchNorm and head
trainable (``--train-only bn+head``: what adapter-only fine-tuning trains, less the quadratic terms); trained from
scratch for the same total epochs (8 + 2); and for the same total CPU time as the most expensive fine-tune
(8 + 2 × 2.7 ≈ 14 epochs: ``fan`` full; every other row costs less, so this control is at least as strong for
them)."""
TRAIN_ONLY = {"full": None, "adapter": "quadratic+bn+head"}


def _runs(root: Path) -> dict[str, dict[int, float]]:
    """``{config: {seed: test accuracy (fraction)}}`` of every finished run dir under ``root``."""
    out: dict[str, dict[int, float]] = {}
    for m in sorted(root.glob("*-s[0-9]*/metrics.json")):
        match = re.fullmatch(r"(.+)-s(\d+)", m.parent.name)
        metrics, cfg = json.loads(m.read_text()), m.parent / "config.json"
        done = cfg.exists() and len(metrics.get("epochs", [])) >= int(json.loads(cfg.read_text()).get("epochs", 0))
        if match and done and not match.group(1).startswith(("cmp", "qfan")):  # finished study runs only
            out.setdefault(match.group(1), {})[int(match.group(2))] = float(metrics["test_acc"])
    return out


def _mean_sd(v: list[float]) -> str:
    return f"{100 * statistics.mean(v):.2f} ± {100 * statistics.stdev(v):.2f}" if len(v) > 1 else f"{100 * v[0]:.2f}"


def _paired(a: dict[int, float], b: dict[int, float]) -> str:
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return "–"
    d = [100 * (a[s] - b[s]) for s in seeds]
    sd = f" ± {statistics.stdev(d):.2f}" if len(d) > 1 else ""
    return f"{statistics.mean(d):+.2f}{sd} (n={len(d)})"


def _latency(bench_json: Path | None) -> dict[str, dict[int, float]]:
    """``{run dir name: {batch: p50 ratio to the base ReLU run}}`` from one interleaved ``quadexport bench``."""
    if bench_json is None or not bench_json.exists():
        return {}
    rows = json.loads(bench_json.read_text())["rows"]
    p50 = {(Path(r.get("source") or r["id"]).name, r["batch"]): r["p50_ms"]
           for r in rows if r.get("mode") == "decomposed"}
    base = {b: v for (m, b), v in p50.items() if m.startswith("base-")}
    out: dict[str, dict[int, float]] = {}
    for (m, b), v in p50.items():
        if b in base:
            out.setdefault(m, {})[b] = v / base[b]
    return out


def report(a: argparse.Namespace) -> None:
    runs = _runs(Path(a.runs))
    lat = _latency(Path(a.latency) if a.latency else None)
    step = json.loads(Path(a.steptime).read_text()) if a.steptime and Path(a.steptime).exists() else {}
    head = " | ".join(f"{label} (paired Δ pp)" for label in CONTROLS.values())
    lines = [f"| model (fine-tune) | seeds | test acc % (mean ± sd) | {head} | train step × ReLU |",
             "|---|---|---|" + "---|" * len(CONTROLS) + "---|"]
    for cfg in sorted(runs, key=lambda c: (c not in ("base", *CONTROLS), c)):
        accs = runs[cfg]
        key = cfg if cfg in step else "relu" if cfg == "base" or cfg.startswith("relu") else cfg
        st = step.get(key, {}).get("ratio")
        deltas = " | ".join(_paired(accs, runs.get(c, {})) if c != cfg else "–" for c in CONTROLS)
        lines.append(f"| {cfg} | {len(accs)} | {_mean_sd(list(accs.values()))} | {deltas} | "
                     f"{f'{st:.2f}' if st else '–'} |")
    print("\n".join(lines))
    if lat:
        print("\n| run | latency × base ReLU, batch 1 | batch 64 |\n|---|---|---|")
        for m, d in sorted(lat.items()):
            print(f"| {m} | {d.get(1, float('nan')):.2f} | {d.get(64, float('nan')):.2f} |")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"runs": runs, "latency": lat, "steptime": step}, indent=1))
    if a.plot:
        _plot(runs, lat, Path(a.plot))


def _arch_latency(cfg: str, lat: dict[str, dict[int, float]], batch: int) -> float | None:
    """Latency ratio of a configuration's architecture: ReLU rows are the base's; adapter-only rows share the
    architecture of their full fine-tune (``lr4-adapter`` -> ``lr4-full-s0``)."""
    if cfg == "base" or cfg.startswith("relu"):
        return 1.0
    arch = cfg.rsplit("-", 1)[0] + "-full"
    return next((d.get(batch) for m, d in lat.items() if m.rsplit("-s", 1)[0] == arch), None)


def _plot(runs: dict[str, dict[int, float]], lat: dict[str, dict[int, float]], out: Path) -> None:
    """Accuracy minus the same-CPU-time ReLU control of the same seed (every seed, and the mean) against the latency
    ratio to the ReLU model, one panel per batch size. The headline's corner: above 0, left of 1.1×."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ctrl = runs.get("relu-time14", {})
    cfgs = [c for c in sorted(runs) if c != "relu-time14" and set(runs[c]) & set(ctrl)]
    colors = plt.get_cmap("tab20").colors
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.6), sharey=True)
    for ax, batch in zip(axes, (1, 64)):
        ax.axhline(0.0, lw=0.8, color="0.3")
        ax.axvline(1.1, ls="--", lw=0.8, color="k", label="1.1× the ReLU model (the headline's limit)")
        for i, cfg in enumerate(cfgs):
            x = _arch_latency(cfg, lat, batch)
            if x is None:
                continue
            x += 0.015 * (i % 5 - 2) if cfg == "base" or cfg.startswith("relu") else 0.0  # spread the ReLU rows
            x += 0.03 if cfg.endswith("adapter") and not cfg.startswith("relu") else 0.0
            d = [100 * (runs[cfg][s] - ctrl[s]) for s in sorted(set(runs[cfg]) & set(ctrl))]
            c = colors[(2 * i) % 20 if i < 10 else (2 * i + 1) % 20]
            ax.scatter([x] * len(d), d, s=14, alpha=0.6, color=c)
            ax.scatter([x], [statistics.mean(d)], marker="_", s=300, color=c, label=cfg)
        ax.set_xlabel(f"onnxruntime latency × ReLU model (batch {batch})")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy − ReLU same CPU time, same seed (pp)")
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle("ResNet20 on Fashion-MNIST (10k): quadratized + fine-tuned vs a ReLU model trained as long "
                 "(dots: seeds; bars: means)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def steptime(a: argparse.Namespace) -> None:
    """Median train-step time (batch 128, 1×28×28) of each configuration, interleaved with the ReLU twin."""
    import torch

    import quadexport as q
    from quadexport.training.adapter import set_trainable

    torch.set_num_threads(1)
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
    cfgs = {"relu": ("relu", "all"), "relu-adapter": ("relu", "bn+head"), "fan-full": ("fan", "all"),
            "fan-adapter": ("fan", "quadratic+bn+head"), "lr4-full": ("lowrank:4", "all"),
            "lr4-adapter": ("lowrank:4", "quadratic+bn+head"), "lr16-full": ("lowrank:16", "all"),
            "lr16-adapter": ("lowrank:16", "quadratic+bn+head")}
    nets, opts = {}, {}
    for name, (neuron, parts) in cfgs.items():
        m = q.create_model("resnet20", neuron, input_size=28)
        set_trainable(m, parts)  # what --train-only PARTS trains
        nets[name] = m
        opts[name] = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    from step_time import median_step_ms  # tools/ is on sys.path when this script runs

    med = median_step_ms(nets, opts, x, y, a.steps, a.warmup)
    out = {n: {"ms": med[n], "ratio": med[n] / med["relu"]} for n in med}
    for n, v in out.items():
        print(f"{n:12s} {v['ms']:8.1f} ms  {v['ratio']:.2f}x")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("report")
    r.add_argument("runs")
    r.add_argument("--latency")
    r.add_argument("--steptime")
    r.add_argument("--out")
    r.add_argument("--plot", help="write accuracy vs latency (PNG)")
    r.set_defaults(func=report)
    s = sub.add_parser("steptime")
    s.add_argument("--steps", type=int, default=12)
    s.add_argument("--warmup", type=int, default=2)
    s.add_argument("--out", default="docs/quadratize/steptime.json")
    s.set_defaults(func=steptime)
    a = ap.parse_args()
    a.func(a)


if __name__ == "__main__":
    main()
