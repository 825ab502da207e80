"""The training configuration (:class:`TrainConfig`, saved as a run's ``config.json``) and the error a diverged run
raises; :mod:`quadexport.training.loop` runs it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from quadexport.training.adapter import parse_train_only
from quadexport.errors import QuadexportError, UsageError
from quadexport.training.relinear import ReLinearConfig

__all__ = ["TrainConfig", "TrainingDiverged"]


class TrainingDiverged(QuadexportError, RuntimeError):
    """Loss or weights went NaN/Inf and rolling back with a lower learning rate did not help."""


@dataclass
class TrainConfig:
    """Everything a training run needs (saved as ``config.json`` in the run dir).

    Args:
        model: zoo model name.
        neuron: neuron type or ``"relu"``.
        dataset: a built-in name (``quadexport.data.list_datasets()``), ``imagefolder:PATH`` or ``npz:FILE``.
        out: run directory.
        epochs: number of epochs.
        batch_size: global batch size (split across DDP processes).
        lr: base learning rate.
        optimizer: ``"sgd"`` (momentum 0.9) or ``"adam"``.
        weight_decay: weight decay (all parameters, as in the seed code).
        schedule: ``"cosine"`` (per epoch) or ``"constant"``.
        relinear: ReLinear settings.
        seed: random seed.
        data_dir: dataset location override.
        train_subset: use only this many training samples (stratified), for quick runs.
        test_subset: evaluate on this many test samples.
        warm_start: run dir of a trained ReLU twin to copy W_r, BN, stem and head from.
        width: width option for mlp/cnn (None = builder default).
        device: ``"cpu"`` or ``"cuda"``.
        amp: ``"bf16"`` autocast (CUDA; quadratic products stay in fp32) or ``"none"``.
        grad_clip: max gradient norm (0 = off).
        max_rollbacks: NaN rollbacks (each halves the LR) before giving up.
        image_size: ``(height, width)`` to resize ``imagefolder:`` images to (default: their common size).
        mean: per-channel normalisation mean for ``imagefolder:``/``npz:`` (default: computed on the train split).
        std: per-channel normalisation std, given together with ``mean``.
        train_only: ``"all"`` or what stays trainable, ``+``-joined parts of ``quadratic``, ``bn``, ``head``
            (:mod:`quadexport.training.adapter`; ``"quadratic+bn+head"``: adapter-only fine-tuning).
        from_run: start from this run dir's trained model (any run: zoo, foreign, quadratized) with a fresh
            schedule; ``model``/``neuron``/``width`` are then taken from it (the data settings are as given here:
            the CLI fills them from the source run).
        weights: a state dict file loaded into the freshly built model (``torch.load(weights_only=True)``; plain
            conv/linear keys land in the ``r`` branch of quadratic layers).
        model_args: further builder options (``{"patch_size": 4}`` for a timm ViT on small images).
    """

    model: str = "cnn"
    neuron: str = "fan"
    dataset: str = "digits"
    out: str = "runs/cnn-fan-digits"
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05
    optimizer: str = "sgd"
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    relinear: ReLinearConfig = field(default_factory=ReLinearConfig)
    seed: int = 0
    data_dir: str | None = None
    train_subset: int | None = None
    test_subset: int | None = None
    warm_start: str | None = None
    width: int | None = None
    device: str = "cpu"
    amp: str = "none"
    grad_clip: float = 0.0
    max_rollbacks: int = 3
    image_size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    train_only: str = "all"
    from_run: str | None = None
    weights: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.relinear, dict):
            self.relinear = ReLinearConfig(**self.relinear)
        for k in ("image_size", "mean", "std"):  # JSON gives lists
            if getattr(self, k) is not None:
                setattr(self, k, tuple(getattr(self, k)))
        checks = [(self.epochs >= 1, "epochs must be >= 1"), (self.batch_size >= 1, "batch size must be >= 1"),
                  (math.isfinite(self.lr) and self.lr > 0, "lr must be a finite number > 0"),
                  (self.optimizer in ("sgd", "adam"), "optimizer must be sgd or adam"),
                  (self.schedule in ("cosine", "constant"), "schedule must be cosine or constant"),
                  (math.isfinite(self.weight_decay) and self.weight_decay >= 0, "weight decay must be >= 0"),
                  (self.amp in ("none", "bf16"), "amp must be none or bf16"),
                  (self.device in ("cpu", "cuda") or self.device.startswith("cuda:"), "device must be cpu or cuda"),
                  (self.train_subset is None or self.train_subset >= 10, "train subset must be >= 10"),
                  (self.test_subset is None or self.test_subset >= 1, "test subset must be >= 1")]
        for ok, msg in checks:
            if not ok:
                raise UsageError(msg)
        parse_train_only(self.train_only)
        starts = [f for f, v in (("--from", self.from_run), ("--warm-start", self.warm_start),
                                 ("--weights", self.weights)) if v]
        if len(starts) > 1:
            raise UsageError(f"give one of {' / '.join(starts)}: each sets the starting weights")
        self.model_args = dict(self.model_args or {})
        self._check_names()

    def _check_names(self) -> None:
        """Unknown model or neuron names fail here, before any data is loaded."""
        from quadexport.layers import get_neuron
        from quadexport.zoo import check_model_name
        from quadexport.zoo.registry import is_plain_neuron

        check_model_name(self.model)
        if not is_plain_neuron(self.model, self.neuron):
            get_neuron(self.neuron)  # UsageError with a suggestion; "lowrank:8" style arguments are checked too

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["relinear"] = self.relinear.to_dict()
        return d
