"""Plots of a :class:`~quadexport.bench.report.BenchReport` (``rep`` below; typed ``Any`` because the report module
imports this one): p50 latency bars per batch size, and accuracy vs latency (log latency axis, one panel per runtime,
models told apart by colour/marker in one legend so no label overlaps another)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from quadexport.bench.config import MODES

__all__ = ["accuracy_latency_figure", "latency_figure", "save_plots"]

_COLORS = dict(zip(MODES, ("tab:blue", "tab:orange", "tab:green", "tab:gray")))
_MARKERS = "osD^vP*Xh<>p"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _ordered_ids(rep: Any) -> list[str]:
    """Each quadratic model followed by its baselines, then the rest."""
    ids: list[str] = []
    for r in rep.rows:
        if r.role == "quadratic" and r.id not in ids:
            ids.append(r.id)
            ids += [x.baseline for x in rep.ratios if x.quadratic == r.id and x.baseline not in ids]
    return ids + [i for i in dict.fromkeys(r.id for r in rep.rows) if i not in ids]


def _modes(rep: Any) -> list[str]:
    return [m for m in MODES if any(r.mode == m for r in rep.rows)]


def latency_figure(rep: Any, batch: int):
    """Bars of p50 latency (whisker to p90) per model and mode at ``batch``; log axis when p50s span > 30×."""
    plt = _pyplot()
    ids, modes = _ordered_ids(rep), _modes(rep)
    fig, ax = plt.subplots(figsize=(min(16.0, max(6.0, 0.5 + 0.35 * len(ids) * max(1, len(modes)))), 4.5))
    width = 0.8 / max(1, len(modes))
    for j, mode in enumerate(modes):
        pts = [(i, r) for i, mid in enumerate(ids) if (r := rep.row(mid, mode, batch)) is not None]
        if pts:
            ax.bar([i + (j - (len(modes) - 1) / 2) * width for i, _ in pts], [r.p50_ms for _, r in pts], width,
                   label=mode, color=_COLORS.get(mode), capsize=2, error_kw={"elinewidth": 0.8},
                   yerr=np.asarray([[0.0, r.p90_ms - r.p50_ms] for _, r in pts]).T)
    p50s = [r.p50_ms for r in rep.rows if r.batch == batch]
    if p50s and max(p50s) / max(min(p50s), 1e-9) > 30:
        ax.set_yscale("log")
    ax.set_xticks(range(len(ids)))
    ax.set_xticklabels(ids, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("p50 latency (ms), whisker: p90")
    ax.set_title(f"batch {batch}, {rep.config.get('provider')}, {rep.config.get('threads')} thread(s)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _panel_rows(acc: list[Any], mode: str, batch: int) -> list[Any]:
    """The rows of one runtime panel; a ReLU model (one ONNX graph, timed as ``decomposed``) is in every ONNX one."""
    rows = [r for r in acc if r.batch == batch and r.mode == mode]
    if mode != "torch":
        have = {r.id for r in rows}
        rows += [r for r in acc if r.batch == batch and r.mode == "decomposed" and r.neuron == "relu"
                 and r.id not in have]
    return rows


def accuracy_latency_figure(rep: Any):
    """Test accuracy vs p50 latency at the smallest batch with accuracies: one panel per runtime (``onnxruntime
    <mode>``, ``torch eager``), log latency axis, one colour/marker per model explained in a shared legend.
    ``None`` when no row carries a test accuracy."""
    acc = [r for r in rep.rows if isinstance(r.test_acc, (int, float))]
    if not acc:
        return None
    plt = _pyplot()
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    batch = min(r.batch for r in acc)
    modes = [m for m in _modes(rep) if any(r.mode == m and r.batch == batch for r in acc)]
    ids = list(dict.fromkeys(r.id for r in acc))
    style = {mid: (f"C{i % 10}", _MARKERS[i % len(_MARKERS)]) for i, mid in enumerate(ids)}
    fig, axes = plt.subplots(1, len(modes), figsize=(4.2 * len(modes) + 1.8, 4.0), sharey=True, squeeze=False)
    for ax, mode in zip(axes[0], modes):
        for r in _panel_rows(acc, mode, batch):
            color, marker = style[r.id]
            ax.scatter([r.p50_ms], [100 * r.test_acc], color=color, marker=marker, s=40, label=r.id)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())  # no crowded 3×10⁻¹-style minor labels
        ax.set_title("torch eager" if mode == "torch" else f"{rep.config.get('runtime') or 'onnxruntime'} {mode}",
                     fontsize=9)
        ax.set_xlabel(f"p50 latency at batch {batch} (ms, log)")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("test accuracy (%)")
    handles = [plt.Line2D([], [], color=c, marker=m, linestyle="", label=mid) for mid, (c, m) in style.items()]
    fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - 1.8 / (4.2 * len(modes) + 1.8), 1))
    return fig


def save_plots(rep: Any, out: Path) -> list[Path]:
    """Write ``latency_b<batch>.png`` per batch size and ``accuracy_vs_latency.png`` (when there are accuracies)."""
    plt = _pyplot()
    written = []
    figs = [(f"latency_b{b}.png", latency_figure(rep, b)) for b in sorted({r.batch for r in rep.rows})]
    figs.append(("accuracy_vs_latency.png", accuracy_latency_figure(rep)))
    for name, fig in figs:
        if fig is None:
            continue
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(out / name)
    return written
