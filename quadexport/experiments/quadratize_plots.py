"""The quadratize study's figure: accuracy minus the same-CPU-time ReLU control of the same seed (every seed, and the
mean) against the latency ratio to the ReLU model, one panel per batch size. The headline's corner: above 0, left of
1.1×."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from quadexport.experiments.quadratize_study import QuadratizeStudy


def arch_latency(study: "QuadratizeStudy", cfg: str, lat: dict[str, dict[int, float]], batch: int) -> float | None:
    """Latency ratio of a config's architecture: that of a timed run with the same neuron (a config whose run was not
    timed has the architecture of a timed one with its neuron)."""
    for m, d in lat.items():
        if study.neuron(m.rsplit("-s", 1)[0]) == study.neuron(cfg) and batch in d:
            return d[batch]
    return None


def _x(study: "QuadratizeStudy", cfg: str, lat: dict[str, dict[int, float]], batch: int, i: int) -> float | None:
    x = arch_latency(study, cfg, lat, batch)
    if x is None:
        return None
    relu = study.neuron(cfg) == "relu"
    x += 0.015 * (i % 5 - 2) if relu else 0.0  # spread the ReLU rows
    return x + (0.03 if study.parts(cfg) != "all" and not relu else 0.0)


def accuracy_vs_latency(study: "QuadratizeStudy", runs: dict[str, dict[int, float]], lat: dict[str, dict[int, float]],
                        control: str, batches: list[int], out: Path) -> None:
    """Write the figure (module docstring) to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ctrl = runs.get(control, {})
    cfgs = [c for c in sorted(runs) if c != control and set(runs[c]) & set(ctrl)]
    colors = plt.get_cmap("tab20").colors
    fig, axes = plt.subplots(1, len(batches), figsize=(6.25 * len(batches), 4.6), sharey=True, squeeze=False)
    for ax, batch in zip(axes[0], batches):
        ax.axhline(0.0, lw=0.8, color="0.3")
        ax.axvline(1.1, ls="--", lw=0.8, color="k", label="1.1× the ReLU model (the headline's limit)")
        for i, cfg in enumerate(cfgs):
            x = _x(study, cfg, lat, batch, i)
            if x is None:
                continue
            d = [100 * (runs[cfg][s] - ctrl[s]) for s in sorted(set(runs[cfg]) & set(ctrl))]
            c = colors[(2 * i) % 20 if i < 10 else (2 * i + 1) % 20]
            ax.scatter([x] * len(d), d, s=14, alpha=0.6, color=c)
            ax.scatter([x], [statistics.mean(d)], marker="_", s=300, color=c, label=cfg)
        ax.set_xlabel(f"onnxruntime latency × ReLU model (batch {batch})")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"test accuracy − {control}, same seed (pp)")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(f"{study.recipe['train']['model']} on {study.recipe['train']['dataset']}: quadratized + fine-tuned vs "
                 f"a ReLU model trained as long (dots: seeds; bars: means)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


__all__ = ["accuracy_vs_latency", "arch_latency"]
