"""Options of :func:`quadexport.compress.compress` (like onnxruntime's ``StaticQuantConfig`` for ``quantize()``) and
the error it raises on a run it cannot compress."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from quadexport.compress.errors import CompressError
from quadexport.compress.taskloss import get_task_loss

__all__ = ["COSTS", "SELECTS", "CompressConfig", "CompressError", "DEFAULT_THRESHOLD"]

DEFAULT_THRESHOLD = 0.05
COSTS = ("macs", "latency")
SELECTS = ("auto", "layers", "threshold")


@dataclass
class CompressConfig:
    """Everything :func:`~quadexport.compress.compress` can be told.

    Attributes:
        threshold: make channels linear whose quadratic score is below this (default
            :data:`DEFAULT_THRESHOLD` unless ``target_ratio`` or only ``quantize`` is given).
        target_ratio: instead of a threshold: the smallest threshold whose ``cost`` vs the ReLU twin is at most this.
        cost: ``"latency"`` (measured onnxruntime p50 ratio, worst of ``batches``; default) or ``"macs"``.
        select: how ``target_ratio`` is met: ``"layers"`` (which layers stay quadratic, by measured cost per
            validation loss: :mod:`quadexport.compress.select`), ``"threshold"`` (bisection on one global channel
            threshold) or ``"auto"`` (default: ``layers`` for the latency cost, ``threshold`` for MACs).
        max_drop: accuracy budget in percentage points, measured on a validation split carved from the training
            data (never the test set); ``None``: no budget. Without ``target_ratio`` the threshold is lowered
            (halved, up to twice) until the budget holds; otherwise a miss is reported.
        val_samples: size of that validation split (taken out of calibration and fine-tuning data).
        quantize: ``None`` or ``"int8"`` (static QDQ, calibrated on ``calib_samples`` training images).
        keep_fp32: int8: ``"none"``, ``"products"`` or ``"quadratic"`` (:mod:`quadexport.compress.quant`).
        finetune_epochs: fine-tune the pruned model this many epochs with the run's recipe (default 1; 0: off).
        finetune_lr: fine-tuning base LR (default: the run's LR × 0.1).
        calib_samples: calibration images (from the run's training subset).
        align: quadratic-prefix alignment of conv layers (default: onnxruntime's NCHWc block, 16 on AVX-512).
        split: ``"conv"`` or ``"slice"`` (:class:`~quadexport.layers.mixed.MixedQuad`).
        shortcut: ``"auto"`` or ``"conv"`` (:func:`~quadexport.compress.rewrite.compress_model`).
        drop_branches: let layers drop an unneeded ``b``/``g`` branch.
        bn_recalibrate: re-estimate BatchNorm statistics on the calibration images after pruning.
        bench: measure onnxruntime latency of the original, compressed (and int8) model and the ReLU twin.
        batches, threads, min_seconds: latency batch sizes, onnxruntime intra-op threads, timed seconds per model.
        twin: run dir of the trained ReLU twin (its accuracy goes into the report).
        data_dir: dataset location override (built-in datasets; ``imagefolder:``/``npz:`` runs reopen the path
            they were trained on).
        check: run the onnxruntime parity check of the fp32 export (``parity.json``).
        overwrite: replace an existing output run dir.
        verbose: log progress at INFO (else DEBUG).
        progress: progress bars (terminals only) on calibration, search and fine-tuning.
        task_loss: a registered task loss (:mod:`quadexport.compress.taskloss`, e.g. ``"distill-mse"``): what
            layer selection, the accuracy budget's place and fine-tuning minimise instead of cross-entropy on class
            labels. Required for a run that is not a classifier (dense maps, several heads); such a run has no
            accuracy: the report's accuracy fields are ``None`` and the validation split reports this loss.
    """

    threshold: float | None = None
    target_ratio: float | None = None
    cost: str = "latency"
    select: str = "auto"
    max_drop: float | None = 0.3
    val_samples: int = 1000
    quantize: str | None = None
    keep_fp32: str = "none"
    finetune_epochs: int = 1
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
    progress: bool = True
    task_loss: str | None = None

    def __post_init__(self) -> None:
        self.batches = tuple(self.batches)
        t, r = self.threshold, self.target_ratio
        if t is not None and r is not None:
            raise CompressError("give --prune-threshold or --target-ratio, not both")
        if t is not None and not (t >= 0 and math.isfinite(t)):
            raise CompressError(f"--prune-threshold must be a finite number >= 0, got {t}")
        if r is not None and not r > 0:
            raise CompressError(f"--target-ratio must be > 0, got {r}")
        if self.cost not in COSTS:
            raise CompressError(f"--cost must be macs or latency, got {self.cost!r}")
        if self.select not in SELECTS:
            raise CompressError(f"--select must be one of {', '.join(SELECTS)}, got {self.select!r}")
        if self.select == "layers" and self.target_ratio is None:
            raise CompressError("--select layers needs --target-ratio")
        if self.select == "layers" and self.cost != "latency":
            raise CompressError("--select layers measures latency: it cannot be combined with --cost macs")
        if self.quantize not in (None, "int8"):
            raise CompressError(f"--quantize must be int8, got {self.quantize!r}")
        if self.finetune_epochs < 0 or self.calib_samples < 1:
            raise CompressError("--finetune-epochs must be >= 0 and --calib-samples >= 1")
        if self.max_drop is not None and not (self.max_drop >= 0 and math.isfinite(self.max_drop)):
            raise CompressError(f"--max-drop must be a finite number of percentage points >= 0, got {self.max_drop}")
        if self.val_samples < 1:
            raise CompressError("--val-samples must be >= 1")
        if self.task_loss is not None:
            get_task_loss(self.task_loss)  # an unknown name is a one-line error naming the choices

    def initial_threshold(self) -> float | None:
        """The threshold when none was given: 0 for a quantisation-only pass, else :data:`DEFAULT_THRESHOLD`
        (``None`` when a target ratio is searched for)."""
        if self.threshold is None and self.target_ratio is None:
            return 0.0 if self.quantize else DEFAULT_THRESHOLD
        return self.threshold

    def selects_layers(self) -> bool:
        """Whether ``target_ratio`` is met by choosing layers (else by a threshold search)."""
        return self.target_ratio is not None and (self.select == "layers" or
                                                  (self.select == "auto" and self.cost == "latency"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
