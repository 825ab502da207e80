"""Options of :func:`quadexport.compress.compress` and the error it raises on a run it cannot compress."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from quadexport.errors import QuadexportError

__all__ = ["COSTS", "CompressConfig", "CompressError", "DEFAULT_THRESHOLD"]

DEFAULT_THRESHOLD = 0.05
COSTS = ("macs", "latency")


class CompressError(QuadexportError, ValueError):
    """A run dir that cannot be compressed, or contradictory options."""


@dataclass
class CompressConfig:
    """Everything :func:`~quadexport.compress.compress` can be told (see its docstring for each option)."""

    threshold: float | None = None
    target_ratio: float | None = None
    cost: str = "macs"
    quantize: str | None = None
    keep_fp32: str = "none"
    finetune_epochs: int = 0
    finetune_lr: float | None = None
    calib_samples: int = 1024
    align: int | None = None
    split: str = "conv"
    shortcut: str = "auto"
    drop_branches: bool = True
    bn_recalibrate: bool = False
    bench: bool = True
    batches: tuple[int, ...] = (1, 64)
    threads: int | None = None
    min_seconds: float = 1.0
    twin: str | None = None
    data_dir: str | None = None
    check: bool = True
    overwrite: bool = False
    verbose: bool = True

    def __post_init__(self) -> None:
        self.batches = tuple(self.batches)
        t, r = self.threshold, self.target_ratio
        if t is not None and r is not None:
            raise CompressError("give --prune-threshold or --target-ratio, not both")
        if t is not None and not (t >= 0 and math.isfinite(t)):
            raise CompressError(f"threshold must be a finite number >= 0, got {t}")
        if r is not None and not r > 0:
            raise CompressError(f"target ratio must be > 0, got {r}")
        if self.cost not in COSTS:
            raise CompressError(f"cost must be macs or latency, got {self.cost!r}")
        if self.quantize not in (None, "int8"):
            raise CompressError(f"quantize must be int8, got {self.quantize!r}")
        if self.finetune_epochs < 0 or self.calib_samples < 1:
            raise CompressError("finetune epochs must be >= 0 and calib samples >= 1")

    def initial_threshold(self) -> float | None:
        """The threshold when none was given: 0 for a quantisation-only pass, else :data:`DEFAULT_THRESHOLD`
        (``None`` when a target ratio is searched for)."""
        if self.threshold is None and self.target_ratio is None:
            return 0.0 if self.quantize else DEFAULT_THRESHOLD
        return self.threshold

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
