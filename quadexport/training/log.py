"""What a training run shows: per-epoch progress (a tqdm bar on a terminal, else log lines) and ``curves.png``."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("quadexport.training.loop")  # the training loop's logger: -q/-v apply as to its epoch lines

LOG_EVERY_STEPS = 50
"""Without a terminal (no progress bar), a progress line every this many steps."""


def curves_figure(epochs: list[dict[str, Any]], title: str, quadratic: bool = True) -> Any:
    """The ``curves.png`` figure: loss, test accuracy and (quadratic runs only) the quadratic weight norms, with
    integer epoch ticks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    e = [m["epoch"] for m in epochs]
    fig, ax = plt.subplots(1, 3 if quadratic else 2, figsize=(13 if quadratic else 9, 3.6))
    ax[0].plot(e, [m["train_loss"] for m in epochs], marker=".", label="train")
    ax[0].plot(e, [m["test_loss"] for m in epochs], marker=".", label="test")
    ax[0].set_title("loss"), ax[0].legend()
    ax[1].plot(e, [100 * m["test_acc"] for m in epochs], marker=".", color="C2")
    ax[1].set_title("test accuracy (%)")
    if quadratic:
        ax[2].plot(e, [m["norm_wg"] for m in epochs], marker=".", label="‖W_g‖")
        ax[2].plot(e, [m["norm_wb"] for m in epochs], marker=".", label="‖W_b‖")
        ax[2].set_title("quadratic weight norms"), ax[2].legend()
    for a in ax:
        a.set_xlabel("epoch"), a.grid(alpha=0.3)
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _plot(run_dir: Path, epochs: list[dict[str, Any]], title: str, quadratic: bool = True) -> None:
    import matplotlib.pyplot as plt

    fig = curves_figure(epochs, title, quadratic)
    fig.savefig(run_dir / "curves.png.tmp.png", dpi=110)
    plt.close(fig)
    os.replace(run_dir / "curves.png.tmp.png", run_dir / "curves.png")


class _Progress:
    """Per-epoch progress: a tqdm bar on stderr when it is a terminal (log lines are routed around the bar), else a
    log line every :data:`LOG_EVERY_STEPS` steps; nothing when disabled (``progress=False``, rank > 0, or the
    ``quadexport`` logger above INFO, e.g. ``quadexport -q``)."""

    def __init__(self, loader: Any, desc: str, enabled: bool) -> None:
        self.loader, self.desc, self.loss = loader, desc, float("nan")
        self.enabled = enabled and log.isEnabledFor(logging.INFO)
        self.bar = None
        if self.enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(loader, desc=desc, leave=False, file=sys.stderr)

    def __iter__(self) -> Any:
        if self.bar is not None:
            from tqdm.contrib.logging import logging_redirect_tqdm

            try:
                with logging_redirect_tqdm(loggers=[logging.getLogger("quadexport")]):
                    yield from self.bar
            finally:
                self.bar.close()
            return
        for step, batch in enumerate(self.loader, 1):
            yield batch
            if self.enabled and step % LOG_EVERY_STEPS == 0:
                log.info("%s step %d/%d loss %.4f", self.desc, step, len(self.loader), self.loss)

    def update(self, loss: float) -> None:
        self.loss = loss
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}")
