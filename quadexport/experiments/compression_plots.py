"""Figures of the compression study: accuracy vs latency (:func:`pareto_plot`, one panel per batch size) and the
channel scores / threshold sweep (:func:`scores_plot`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

STYLE = {"relu": ("C0", "o"), "quadratic": ("C3", "s"), "pruned": ("C2", "^"), "pruned + ft": ("C2", "*"),
         "int8": ("C4", "v"), "relu int8": ("C0", "v"), "cheap neuron": ("C1", "D")}
"""Colour and marker per row kind (``relu +N ep`` and ``relu, seed N`` are added by :func:`_style`)."""
LABELLED = ("relu", "quadratic", "cheap neuron", "relu, seed")
"""Kinds whose points are labelled (plus the variants named in :data:`LABELLED_VARIANTS`)."""
LABELLED_VARIANTS = {"prune-t0.15", "prune-r1.5", "prune-t0.2-ft2", "int8 [int8]", "prune-t0.2-ft2-int8 [int8]"}


def _style(kind: str) -> tuple[str, str] | None:
    if kind.startswith("relu +"):
        return "C0", "P"
    if kind.startswith("relu, seed"):
        return "C0", "x"
    return STYLE.get(kind)


def _short(label: str) -> str:
    return label.replace("resnet", "R").replace("; same graph)", ")")


def _labelled(r: dict[str, Any]) -> bool:
    return r["label"] in LABELLED_VARIANTS or (r["kind"].startswith(LABELLED) and "[1x1" not in r["label"])


def _panel(ax: Any, rows: list[dict[str, Any]], b: int, ylo: float) -> None:
    seen = set()
    for r in rows:
        st = _style(r["kind"])
        if r.get(f"ratio{b}") is None or r["test_acc"] is None or st is None:
            continue
        x, y, name = r[f"ratio{b}"], 100 * r["test_acc"], _short(r["label"])
        if y < ylo:  # off the chart (an untrained-looking baseline): marker on the floor, value in the label
            y, name = ylo + 0.05, f"{name} ({100 * r['test_acc']:.1f}% ↓)"
        ax.scatter(x, y, c=st[0], marker=st[1], s=50, zorder=3, label=None if r["kind"] in seen else r["kind"])
        seen.add(r["kind"])
        if _labelled(r):
            ax.annotate(name, (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    relu = sorted((r for r in rows if r["kind"] == "relu" and r.get(f"ratio{b}") and "[" not in r["label"]
                   and r["test_acc"] is not None), key=lambda r: r[f"ratio{b}"])
    ax.plot([r[f"ratio{b}"] for r in relu], [max(100 * r["test_acc"], ylo + 0.05) for r in relu], c="C0", alpha=0.4)


def pareto_plot(rows: list[dict[str, Any]], timing: dict[str, Any], source: str, twin: str, path: Path) -> None:
    """Accuracy against latency / twin, one panel per batch size; dashed: 1.5× the twin, dotted: source − 0.3 pp."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = timing["batches"]
    src = next((r for r in rows if r["label"] == source), None)
    accs = [100 * r["test_acc"] for r in rows if r["test_acc"] is not None]
    ylo = max(min(accs), (100 * src["test_acc"] if src else max(accs)) - 2.5) - 0.3
    fig, axes = plt.subplots(1, len(batches), figsize=(6.8 * len(batches), 5.2), squeeze=False)
    for ax, b in zip(axes[0], batches):
        _panel(ax, rows, b, ylo)
        ax.set_ylim(ylo, max(accs) + 0.3)
        ax.axvline(1.5, ls="--", c="grey", lw=0.8)
        if src:
            ax.axhline(100 * src["test_acc"] - 0.3, ls=":", c="C3", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel(f"onnxruntime latency / {twin} (p50, interleaved)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"batch {b}, {timing['threads'] or 'default'} thread(s)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="lower left", ncol=2)
    fig.suptitle(f"Accuracy vs latency: ReLU ResNets vs {source} and its compressed forms "
                 f"(dashed: 1.5× {twin}; dotted: {source} − 0.3 pp)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def scores_plot(sweep: dict[str, Any], path: Path) -> None:
    """Channel scores per layer (box plot) and MAC ratio / accuracy change per threshold (no fine-tuning)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(12, 4.2))
    names = list(sweep["scores"])
    ax[0].boxplot([sweep["scores"][n] for n in names], showfliers=True)
    ax[0].set_xticks(range(1, len(names) + 1), [n.replace("layer", "L").replace(".conv", ".c") for n in names],
                     rotation=70, fontsize=7)
    ax[0].set_ylabel("channel score (linear-refit residual / std)")
    ax[0].set_title("quadratic contribution per output channel (source model)")
    ax[0].grid(alpha=0.3)
    rs = [r for r in sweep["rows"] if r["threshold"] < 1e8]
    ax[1].plot([r["threshold"] for r in rs], [r["mac_ratio"] for r in rs], "o-", label="MACs / twin")
    ax2 = ax[1].twinx()
    ax2.plot([r["threshold"] for r in rs], [r["delta_pp"] for r in rs], "s-", c="C3", label="Δ accuracy (pp)")
    ax2.set_ylabel("Δ test accuracy vs source (pp), no fine-tuning", color="C3")
    ax[1].set_xlabel("threshold")
    ax[1].set_ylabel("MACs / ReLU twin")
    ax[1].grid(alpha=0.3)
    ax[1].set_title("pruning without fine-tuning")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


__all__ = ["pareto_plot", "scores_plot"]
